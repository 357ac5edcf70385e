"""The trainer on 2 gloo ranks: ranks stay bit-identical, 2 ranks equal 1 rank, one all-reduce per evaluation."""

import pytest
import torch

from ddp_harness import run_distributed
from gan_fixtures import SCHEMES, CountAllReduces, make_data, make_module, make_trainer, state_of

ITERATIONS = 20
EVALUATIONS_PER_STEP = {"simultaneous": 1, "alternating": 3, "extragradient": 2, "past_extragradient": 1,
                        "optimistic": 1}


def _train_every_scheme(rank, batch_size, accumulation):
    """On each rank: every scheme from a rank-dependent init (the strategy broadcasts rank 0's)."""
    results = {}
    counter = CountAllReduces()
    for scheme in SCHEMES:
        module = make_module(scheme, init_seed=rank, ema_decay=0.9, accumulation=accumulation)
        trainer = make_trainer(ITERATIONS, devices=2, strategy="game_ddp", callbacks=[counter])
        counter.reset()
        trainer.fit(module, make_data(batch_size=batch_size))
        results[scheme] = {"state": state_of(module), "all_reduces": list(counter.all_reduces),
                           "global_step": trainer.global_step}
    return results


@pytest.fixture(scope="module")
def two_rank_runs():
    return run_distributed(_train_every_scheme, 2, 8, 1, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", SCHEMES)
def test_ranks_hold_bit_identical_parameters(two_rank_runs, scheme):
    rank0, rank1 = (run[scheme] for run in two_rank_runs)
    assert rank0["global_step"] == rank1["global_step"] == ITERATIONS
    assert rank0["state"].keys() == rank1["state"].keys()
    for key in rank0["state"]:
        assert torch.equal(rank0["state"][key], rank1["state"][key]), key


@pytest.mark.slow
@pytest.mark.parametrize("scheme", SCHEMES)
def test_one_all_reduce_per_field_evaluation(two_rank_runs, scheme):
    for run in two_rank_runs:
        assert run[scheme]["all_reduces"] == [EVALUATIONS_PER_STEP[scheme]] * ITERATIONS


@pytest.mark.slow
@pytest.mark.parametrize("scheme", SCHEMES)
def test_two_ranks_with_batch_b_match_one_rank_with_batch_2b(two_rank_runs, scheme):
    module = make_module(scheme, init_seed=0, ema_decay=0.9)
    make_trainer(ITERATIONS).fit(module, make_data(batch_size=16))
    one_rank = state_of(module)
    two_ranks = two_rank_runs[0][scheme]["state"]
    for key, value in one_rank.items():
        if key.endswith(".step"):
            assert torch.equal(value, two_ranks[key]), key
            continue
        torch.testing.assert_close(two_ranks[key], value, rtol=1e-5, atol=1e-5, msg=key)


def _accumulated_run(rank):
    module = make_module("extragradient", init_seed=rank, accumulation=2)
    make_trainer(ITERATIONS, devices=2, strategy="game_ddp").fit(module, make_data(batch_size=4))
    return state_of(module)


@pytest.mark.slow
def test_micro_batch_accumulation_matches_one_large_batch():
    """2 ranks x micro-batch 4 x accumulation 2 = one rank with batch 16."""
    two_ranks = run_distributed(_accumulated_run, 2, timeout=300)
    for key in two_ranks[0]:
        assert torch.equal(two_ranks[0][key], two_ranks[1][key]), key
    module = make_module("extragradient", init_seed=0)
    make_trainer(ITERATIONS).fit(module, make_data(batch_size=16))
    for key, value in state_of(module).items():
        torch.testing.assert_close(two_ranks[0][key], value, rtol=1e-5, atol=1e-5, msg=key)
