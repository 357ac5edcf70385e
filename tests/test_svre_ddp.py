"""SVRE on 2 gloo ranks: equals one rank with the global batch, ranks bit-identical, collectives counted; with
restarts too (their draws come from the trigger's stream, identical on every rank)."""

import pytest
import torch

from ddp_harness import run_distributed
from gan_fixtures import CountAllReduces, make_data, make_module, make_trainer, state_of
from lightning_gan.variance_reduction import SVREConfig

ITERATIONS = 30
SETTINGS = {
    "fixed_epochs": dict(svre=SVREConfig(snapshot_every=12)),
    "random_epochs_latent_bank": dict(svre=SVREConfig(snapshot_probability=0.1), latent_bank_factor=2),
    "restarts": dict(svre=SVREConfig(snapshot_probability=0.3, restart_probability=0.6), average_discriminator=True),
}


def _count_restarts(module) -> list[int]:
    count, original = [0], module.restart_from_averages

    def restart() -> None:
        count[0] += 1
        original()

    module.restart_from_averages = restart
    return count


def _svre_on_two_ranks(rank):
    results = {}
    counter = CountAllReduces()
    for name, kwargs in SETTINGS.items():
        counter.reset()
        module = make_module("svre", init_seed=rank, **kwargs)
        restarts = _count_restarts(module)
        make_trainer(ITERATIONS, devices=2, strategy="game_ddp", callbacks=[counter]).fit(
            module, make_data(batch_size=8))
        results[name] = {"state": state_of(module), "all_reduces": counter.all_reduces,
                         "snapshots": counter.snapshots, "restarts": restarts[0]}
    return results


@pytest.fixture(scope="module")
def two_rank_runs():
    return run_distributed(_svre_on_two_ranks, 2, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("name", SETTINGS)
def test_svre_ranks_bit_identical_and_equal_to_one_rank_with_the_global_batch(two_rank_runs, name):
    rank0, rank1 = (run[name] for run in two_rank_runs)
    assert sum(rank0["snapshots"]) >= 2
    for key in rank0["state"]:
        assert torch.equal(rank0["state"][key], rank1["state"][key]), key
    assert rank0["restarts"] == rank1["restarts"]
    module = make_module("svre", init_seed=0, **SETTINGS[name])
    restarts = _count_restarts(module)
    make_trainer(ITERATIONS).fit(module, make_data(batch_size=16))
    assert module.snapshot_passes == sum(rank0["snapshots"])
    assert restarts[0] == rank0["restarts"] >= (2 if name == "restarts" else 0)
    for key, value in state_of(module).items():
        if key.endswith(".step"):
            assert torch.equal(value, rank0["state"][key]), key
        else:
            torch.testing.assert_close(rank0["state"][key], value, rtol=1e-5, atol=1e-5, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("name", SETTINGS)
def test_svre_all_reduces_two_corrections_per_iteration_plus_one_per_snapshot(two_rank_runs, name):
    for run in two_rank_runs:
        expected = [2 + snapshots for snapshots in run[name]["snapshots"]]
        assert run[name]["all_reduces"] == expected
        assert run[name]["snapshots"][0] == 1
