"""Collective helpers and the "game_ddp" strategy: one flat collective per call, ranks kept bit-identical.

Multi-process tests run 2 gloo ranks on CPU through ``ddp_harness.run_distributed``; each spawned run is a
module-scoped fixture shared by several small tests, so the file spawns processes only four times.
"""

from __future__ import annotations

import time
from collections import Counter

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
from ddp_harness import DistributedRankError, run_distributed
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.strategies import StrategyRegistry
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_gan import distributed as D
from lightning_gan.distributed import (
    GameDDPStrategy,
    all_reduce_mean_,
    all_reduce_sum_,
    broadcast_tensors_,
    check_ddp_consistency,
    reduce_boolean_decision,
)

# ----------------------------------------------------------------------------------------------------------------------
# helpers run in the children (module level so that "spawn" can import them)

_CALLS: Counter = Counter()


def _count_collectives() -> None:
    """Wrap torch.distributed.all_reduce / broadcast so that this process counts the calls made through them."""
    for op in ("all_reduce", "broadcast"):
        original = getattr(dist, op)

        def counted(*args, _original=original, _op=op, **kwargs):
            _CALLS[_op] += 1
            return _original(*args, **kwargs)

        setattr(dist, op, counted)


def _calls(fn, *args, **kwargs) -> dict:
    """Run ``fn`` and return how many all_reduce / broadcast calls it made."""
    before = Counter(_CALLS)
    fn(*args, **kwargs)
    return {op: _CALLS[op] - before[op] for op in ("all_reduce", "broadcast")}


def _error(fn, *args, **kwargs) -> str | None:
    """The message of the RuntimeError ``fn`` raises, or None."""
    try:
        fn(*args, **kwargs)
    except RuntimeError as exc:
        return str(exc)
    return None


def _rank_tensors(rank: int) -> list[torch.Tensor]:
    """Float32 tensors of several shapes (a scalar, a non-contiguous view) holding rank-dependent values."""
    return [
        torch.full((3, 4), float(rank)),
        torch.tensor(10.0 * rank),
        torch.arange(5.0) * (rank + 1),
        torch.full((3, 2), rank + 0.5).t(),  # non-contiguous
    ]


def _collectives_child(rank: int) -> dict:
    dist.init_process_group("gloo")  # MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE come from the harness
    _count_collectives()
    out: dict = {"rank": D.rank(), "world_size": D.world_size(), "is_distributed": D.is_distributed()}

    out["mean"] = _rank_tensors(rank)
    out["mean_calls"] = _calls(all_reduce_mean_, out["mean"])
    mixed = [torch.full((2,), float(rank)), torch.full((3,), float(rank), dtype=torch.float64), torch.ones(1)]
    out["mixed_calls"] = _calls(all_reduce_mean_, mixed)
    out["mixed"] = mixed
    out["empty_calls"] = _calls(all_reduce_mean_, [])
    out["sum"] = [torch.full((2, 2), rank + 1.0), torch.tensor([rank + 1.0])]
    out["sum_calls"] = _calls(all_reduce_sum_, out["sum"])
    out["broadcast"] = _rank_tensors(rank)
    out["broadcast_calls"] = _calls(broadcast_tensors_, out["broadcast"], src=1)
    out["all_of"] = reduce_boolean_decision(rank == 0, all=True)
    out["any_of"] = reduce_boolean_decision(rank == 0, all=False)

    torch.manual_seed(0)  # the same module on both ranks
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    out["equal"] = _error(check_ddp_consistency, net, name="d")
    if rank == 1:
        net[1].running_mean.add_(1.0)
    out["buffer_differs"] = _error(check_ddp_consistency, net, name="d")
    D.sync_buffers_(net)
    if rank == 1:  # one ulp: only a bit-level comparison sees it
        net[0].bias.data[0] = torch.nextafter(net[0].bias.data[0], torch.tensor(float("inf")))
    out["param_differs"] = _error(check_ddp_consistency, net)
    out["shape_differs"] = _error(check_ddp_consistency, [torch.zeros(2)] * (2 + rank), name="grads")
    return out


class _TwoPlayers(pl.LightningModule):
    """Minimal two-player game trained the lightning-gan way: manual optimization, one fused gradient all-reduce."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.g = nn.Linear(3, 2)  # "generator": z -> x
        self.d = nn.Linear(2, 1)  # "discriminator": x -> score
        self.collectives_per_step: list[dict] = []
        self.sampler = None

    def training_step(self, batch, batch_idx):
        if self.sampler is None:
            self.sampler = self.trainer.train_dataloader.sampler
        z, real = batch
        g_opt, d_opt = self.optimizers(use_pl_optimizer=False)
        fake = self.g(z)
        loss_d = (self.d(real) - 1).pow(2).mean() + self.d(fake).pow(2).mean()
        loss_g = (self.d(fake) - 1).pow(2).mean()
        players = [*self.g.parameters(), *self.d.parameters()]
        # both players' gradients at the same point, before any parameter moves
        grads = [
            *torch.autograd.grad(loss_g, list(self.g.parameters()), retain_graph=True),
            *torch.autograd.grad(loss_d, list(self.d.parameters())),
        ]
        self.collectives_per_step.append(_calls(all_reduce_mean_, grads))
        for p, grad in zip(players, grads):
            p.grad = grad
        g_opt.step()
        d_opt.step()
        # raw optimizers leave global_step at 0: count one step per game iteration (as GANModule._count_iteration)
        progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        progress.increment_ready()
        progress.increment_completed()

    def configure_optimizers(self):
        return torch.optim.SGD(self.g.parameters(), lr=0.1), torch.optim.SGD(self.d.parameters(), lr=0.1)

    def train_dataloader(self):
        data = torch.Generator().manual_seed(1234)  # the same dataset on every rank; the sampler shards it
        dataset = TensorDataset(torch.randn(64, 3, generator=data), torch.randn(64, 2, generator=data) + 2)
        return DataLoader(dataset, batch_size=4, shuffle=True)


def _lightning_child(rank: int) -> dict:
    _count_collectives()
    torch.manual_seed(rank)  # different initial players per rank: fit must start from rank 0's
    module = _TwoPlayers()
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="game_ddp",
        max_steps=5,
        max_epochs=2,  # a safety stop (8 batches per rank per epoch) in case step counting broke
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module)
    check_ddp_consistency(module, name="players")  # raises on both ranks if anything drifted
    return {
        "initial": initial,
        "final": {k: v.clone() for k, v in module.state_dict().items()},
        "strategy": type(trainer.strategy).__name__,
        "wrapped": isinstance(trainer.strategy.model, DistributedDataParallel),
        "model_is_module": trainer.strategy.model is module,
        "sampler": type(module.sampler).__name__,
        "num_replicas": getattr(module.sampler, "num_replicas", None),
        "sampler_rank": getattr(module.sampler, "rank", None),
        "global_step": trainer.global_step,
        "collectives_per_step": module.collectives_per_step,
    }


def _failing_child(rank: int, message: str) -> None:
    if rank == 1:
        raise ValueError(message)
    time.sleep(30)  # rank 0 would block; the harness must stop it


def _sleeping_child(rank: int) -> None:
    time.sleep(60)


# ----------------------------------------------------------------------------------------------------------------------
# single process


@pytest.fixture
def no_collectives(monkeypatch):
    """Make any collective call fail the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a collective was called")

    for op in ("all_reduce", "broadcast", "all_gather"):
        monkeypatch.setattr(dist, op, forbidden)


def _all_helpers(tensors: list[torch.Tensor]) -> None:
    all_reduce_mean_(tensors)
    all_reduce_sum_(tensors)
    broadcast_tensors_(tensors)
    check_ddp_consistency(tensors, name="x")
    check_ddp_consistency(nn.Linear(2, 2))
    D.sync_buffers_(nn.BatchNorm1d(2))
    assert reduce_boolean_decision(True) and not reduce_boolean_decision(False, all=False)


def test_helpers_are_noops_without_process_group(no_collectives):
    tensors = _rank_tensors(3)
    expected = [t.clone() for t in tensors]
    _all_helpers(tensors)
    assert all(torch.equal(t, e) for t, e in zip(tensors, expected))
    assert (D.is_distributed(), D.world_size(), D.rank()) == (False, 1, 0)


def test_helpers_make_no_collective_call_with_one_rank(no_collectives):
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        assert (D.is_distributed(), D.world_size(), D.rank()) == (True, 1, 0)
        tensors = _rank_tensors(3)
        expected = [t.clone() for t in tensors]
        _all_helpers(tensors)
        assert all(torch.equal(t, e) for t, e in zip(tensors, expected))
    finally:
        dist.destroy_process_group()


def test_helpers_name_bad_inputs():
    with pytest.raises(TypeError, match=r"tensors\[1\] is NoneType"):
        all_reduce_mean_([torch.ones(2), None])
    with pytest.raises(TypeError, match=r"tensors\[0\] has dtype torch.int64"):
        all_reduce_mean_([torch.ones(2, dtype=torch.int64)])
    with pytest.raises(TypeError, match="a single Tensor"):
        all_reduce_sum_(torch.ones(2))
    with pytest.raises(ValueError, match="Invalid src rank: 1"):
        broadcast_tensors_([torch.ones(1)], src=1)
    with pytest.raises(TypeError, match="'w' is float"):
        check_ddp_consistency({"w": 1.0})


def test_game_ddp_is_registered_and_selected_by_name():
    assert "game_ddp" in StrategyRegistry
    trainer = pl.Trainer(strategy="game_ddp", accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    assert isinstance(trainer.strategy, GameDDPStrategy)


def test_game_ddp_rejects_wrapper_options():
    with pytest.raises(TypeError, match="find_unused_parameters"):
        GameDDPStrategy(find_unused_parameters=True)


def test_game_ddp_refuses_automatic_optimization():
    strategy = GameDDPStrategy()
    strategy.connect(BoringModel())  # automatic optimization: nothing would sync its gradients
    with pytest.raises(MisconfigurationException, match="BoringModel uses automatic optimization"):
        strategy.configure_ddp()


def test_convert_sync_batchnorm_replaces_batchnorm():
    net = D.convert_sync_batchnorm(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    assert isinstance(net[1], nn.SyncBatchNorm)


# ----------------------------------------------------------------------------------------------------------------------
# two gloo ranks: collective helpers


@pytest.fixture(scope="module")
def collectives():
    return run_distributed(_collectives_child, 2)


@pytest.mark.slow
def test_rank_queries_on_two_ranks(collectives):
    assert [(r["rank"], r["world_size"], r["is_distributed"]) for r in collectives] == [(0, 2, True), (1, 2, True)]


@pytest.mark.slow
def test_all_reduce_mean_is_the_mean_in_one_all_reduce(collectives):
    expected = [(a + b) / 2 for a, b in zip(_rank_tensors(0), _rank_tensors(1))]
    for result in collectives:
        assert result["mean_calls"] == {"all_reduce": 1, "broadcast": 0}
        assert all(torch.equal(t, e) for t, e in zip(result["mean"], expected))
        assert result["mean"][3].shape == (2, 3)  # the non-contiguous view kept its shape


@pytest.mark.slow
def test_all_reduce_mean_sends_one_buffer_per_dtype(collectives):
    for result in collectives:
        assert result["mixed_calls"]["all_reduce"] == 2
        assert [t.dtype for t in result["mixed"]] == [torch.float32, torch.float64, torch.float32]
        assert all(torch.equal(t, torch.full_like(t, 0.5)) for t in result["mixed"][:2])
        assert result["empty_calls"]["all_reduce"] == 0


@pytest.mark.slow
def test_all_reduce_sum_and_broadcast_use_one_collective(collectives):
    for result in collectives:
        assert result["sum_calls"] == {"all_reduce": 1, "broadcast": 0}
        assert torch.equal(result["sum"][0], torch.full((2, 2), 3.0))
        assert torch.equal(result["sum"][1], torch.tensor([3.0]))
        assert result["broadcast_calls"] == {"all_reduce": 0, "broadcast": 1}
        assert all(torch.equal(t, e) for t, e in zip(result["broadcast"], _rank_tensors(1)))


@pytest.mark.slow
def test_reduce_boolean_decision_agrees_on_all_ranks(collectives):
    assert [(r["all_of"], r["any_of"]) for r in collectives] == [(False, True), (False, True)]


@pytest.mark.slow
def test_check_ddp_consistency_names_the_tensor_that_differs(collectives):
    for result in collectives:  # every rank raises, so no rank is left waiting in a collective
        assert result["equal"] is None
        assert "'d.1.running_mean' differs from rank 0's copy on 1 of 1" in result["buffer_differs"]
        assert "'0.bias' differs" in result["param_differs"]  # one ulp apart
        assert "'grads'" in result["shape_differs"] and "different numbers or sizes" in result["shape_differs"]


# ----------------------------------------------------------------------------------------------------------------------
# two gloo ranks: a Lightning run with the "game_ddp" strategy


@pytest.fixture(scope="module")
def lightning_run():
    return run_distributed(_lightning_child, 2)


@pytest.mark.slow
def test_game_ddp_keeps_ranks_bit_identical(lightning_run):
    rank0, rank1 = lightning_run
    assert not torch.equal(rank0["initial"]["g.weight"], rank1["initial"]["g.weight"])
    for key, value in rank0["final"].items():
        assert torch.equal(value, rank1["final"][key]), key
        assert not torch.equal(value, rank0["initial"][key]), f"{key} did not train"


@pytest.mark.slow
def test_game_ddp_does_not_wrap_the_module(lightning_run):
    for result in lightning_run:
        assert result["strategy"] == "GameDDPStrategy"
        assert result["model_is_module"] and not result["wrapped"]


@pytest.mark.slow
def test_game_ddp_shards_data_with_distributed_sampler(lightning_run):
    assert [(r["sampler"], r["num_replicas"], r["sampler_rank"]) for r in lightning_run] == [
        (DistributedSampler.__name__, 2, 0),
        (DistributedSampler.__name__, 2, 1),
    ]


@pytest.mark.slow
def test_one_all_reduce_per_iteration_and_max_steps_counts_iterations(lightning_run):
    for result in lightning_run:
        assert result["global_step"] == 5
        assert result["collectives_per_step"] == [{"all_reduce": 1, "broadcast": 0}] * 5


# ----------------------------------------------------------------------------------------------------------------------
# the harness itself


@pytest.mark.slow
def test_harness_reraises_a_rank_error_with_its_traceback():
    with pytest.raises(DistributedRankError, match="rank 1 of _failing_child raised") as info:
        run_distributed(_failing_child, 2, "boom from rank 1", timeout=60)
    assert "ValueError: boom from rank 1" in str(info.value) and "Traceback" in str(info.value)


@pytest.mark.slow
def test_harness_times_out_instead_of_hanging():
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"ranks \[0, 1\] did not finish in 1 s"):
        run_distributed(_sleeping_child, 2, timeout=1)
    assert time.monotonic() - start < 20
