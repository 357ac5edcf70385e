"""Data on the device (``on_device=True``): the loader path's (x, index) batches, order, shards and resume state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ddp_harness import run_distributed
from gan_fixtures import make_module, make_trainer, state_of
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from test_data import write_fake_folder, write_fake_mnist

from lightning_gan.data import (
    GaussianMixtureDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
)
from lightning_gan.data.base import DeviceIndices

pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")

EPOCHS = 3


def make(kind: str, tmp_path, on_device: bool, **kwargs):
    if kind == "ring":  # float32 rows
        return GaussianMixtureDataModule(kind="ring", num_samples=40, num_val_samples=0, on_device=on_device, **kwargs)
    write_fake_mnist(tmp_path / "mnist", n=40)  # uint8 rows, scaled after the gather
    return MNISTDataModule(root=str(tmp_path / "mnist"), on_device=on_device, **kwargs)


def batches(dm, loader, n: int | None = None):
    """(x, index) batches of ``loader`` (gathered as Lightning would after the transfer), ``n`` of them or one pass."""
    out = []
    for batch in loader:
        if isinstance(batch, DeviceIndices):
            batch = dm.on_after_batch_transfer(batch, 0)
        out.append(batch)
        if n is not None and len(out) == n:
            break
    return out


def assert_same(expected, actual):
    assert len(expected) == len(actual)
    for (x0, i0), (x1, i1) in zip(expected, actual, strict=True):
        assert torch.equal(i0, i1) and i0.dtype == i1.dtype == torch.int64
        assert torch.equal(x0, x1) and x0.dtype == x1.dtype


def epochs(dm, world, rank):
    loader = dm._train_loader(world, rank)
    return [batch for _ in range(EPOCHS) for batch in batches(dm, loader)]


@pytest.mark.parametrize("kind", ["ring", "mnist-fake"])
@pytest.mark.parametrize("world", [1, 2])
def test_on_device_yields_the_loader_batches_for_three_epochs_on_every_rank(kind, world, tmp_path):
    for rank in range(world):
        loader_dm, device_dm = (make(kind, tmp_path, flag, batch_size=3, seed=4) for flag in (False, True))
        loader_dm.draws_per_step = device_dm.draws_per_step = 2
        expected, actual = epochs(loader_dm, world, rank), epochs(device_dm, world, rank)
        assert len(expected) == EPOCHS * (40 // world // 6)
        assert_same(expected, actual)
        first = torch.cat([i for _, i in expected[:len(expected) // EPOCHS]])
        second = torch.cat([i for _, i in expected[len(expected) // EPOCHS:2 * len(expected) // EPOCHS]])
        assert not torch.equal(first, second)  # a new permutation per pass


def take(dm, loader, n):
    """The first ``n`` batches of ``loader``, across passes, as an uninterrupted run draws them."""
    out, it = [], iter(loader)
    while len(out) < n:
        try:
            out += batches(dm, [next(it)])
        except StopIteration:
            it = iter(loader)
    return out


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("where", ["mid-pass-1", "end-of-pass-1", "mid-pass-2"])
def test_on_device_resumes_mid_epoch_with_the_loader_state(world, where, tmp_path):
    per_pass = 40 // world // 3
    stop = {"mid-pass-1": 2, "end-of-pass-1": per_pass, "mid-pass-2": per_pass + 3}[where]
    for rank in range(world):
        reference = make("ring", tmp_path, False, batch_size=3, seed=1)
        expected = epochs(reference, world, rank)
        assert len(expected) == EPOCHS * per_pass
        plain = reference._train_loader(world, rank)
        take(reference, plain, stop)
        device_dm = make("ring", tmp_path, True, batch_size=3, seed=1)
        loader = device_dm._train_loader(world, rank)
        seen = take(device_dm, loader, stop)
        state = loader.state_dict()
        # the sampler's saved position is the loader path's after the same batches
        assert state["_sampler_iter_state"] == plain.state_dict()["_sampler_iter_state"]
        resumed_dm = make("ring", tmp_path, True, batch_size=3, seed=1)
        resumed = resumed_dm._train_loader(world, rank)
        resumed.load_state_dict(state)
        rest = []
        while len(seen) + len(rest) < len(expected):
            rest += batches(resumed_dm, resumed)  # the rest of the interrupted pass, then whole passes
        assert_same(expected, seen + rest)


def test_on_device_is_refused_for_samples_built_on_access(tmp_path):
    write_fake_folder(tmp_path / "images")
    dm = ImageFolderDataModule(root=str(tmp_path / "images"), image_size=8, batch_size=2)
    dm.on_device = True  # the module does not even take the argument; the base class refuses it too
    with pytest.raises(ValueError, match=r"^Invalid on_device: true; ImageFolderDataModule builds"):
        dm.train_dataloader()


def test_without_on_device_batches_pass_the_hook_untouched():
    dm = GaussianMixtureDataModule(num_samples=40, num_val_samples=0, batch_size=4)
    batch = next(iter(dm.train_dataloader()))
    assert dm.on_after_batch_transfer(batch, 0) is batch


class Record(Callback):
    """The batches the module receives (after the transfer and the gather)."""

    def __init__(self) -> None:
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((batch[0].clone(), batch[1].clone()))


def data(on_device: bool) -> GaussianMixtureDataModule:  # 4 iterations a pass with batch 16
    return GaussianMixtureDataModule(kind="ring", num_samples=64, num_val_samples=0, batch_size=16, seed=0,
                                     on_device=on_device)


def test_training_with_on_device_equals_the_loader_run_bit_for_bit_also_after_a_resume(tmp_path):
    steps, stop = 3 * 4, 6  # three passes, resumed mid-pass 2
    plain, plain_seen = make_module(), Record()
    make_trainer(steps, callbacks=[plain_seen]).fit(plain, datamodule=data(False))

    device, device_seen = make_module(), Record()
    trainer = make_trainer(steps, callbacks=[device_seen])
    trainer.fit(device, datamodule=data(True))
    assert isinstance(next(iter(trainer.train_dataloader)), DeviceIndices)  # the loader hands out indices only
    assert len(device_seen.seen) == steps
    assert_same(plain_seen.seen, device_seen.seen)
    expected = state_of(plain)
    for key, value in state_of(device).items():
        assert torch.equal(expected[key], value), key

    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=stop, save_top_k=-1, save_last=False)
    make_trainer(stop, callbacks=[checkpoint], enable_checkpointing=True).fit(make_module(), datamodule=data(True))
    (saved,) = sorted(tmp_path.glob(f"*step={stop}.ckpt"))
    resumed, resumed_seen = make_module(init_seed=123), Record()
    make_trainer(steps, callbacks=[resumed_seen]).fit(resumed, datamodule=data(True), ckpt_path=saved)
    assert_same(plain_seen.seen[stop:], resumed_seen.seen)
    for key, value in state_of(resumed).items():
        assert torch.equal(expected[key], value), key


# -- two gloo ranks ----------------------------------------------------------------------------------------------

def _two_rank_run(rank, on_device, root, stop):
    """12 iterations (3 passes: 128 samples, 2 ranks x 16 a batch) with or without data on the device; with
    ``stop``, a first run saves at iteration ``stop`` and a second one resumes from there to 12."""
    def fit(module, max_steps, callbacks=(), **kwargs):
        trainer = make_trainer(max_steps, devices=2, strategy="game_ddp", callbacks=list(callbacks),
                               enable_checkpointing=bool(kwargs.pop("checkpointing", False)))
        dm = GaussianMixtureDataModule(kind="ring", num_samples=128, num_val_samples=0, batch_size=16, seed=0,
                                       on_device=on_device)
        trainer.fit(module, datamodule=dm, **kwargs)

    module, record = make_module(), Record()
    if stop is None:
        fit(module, 12, [record])
    else:
        checkpoint = ModelCheckpoint(dirpath=root, every_n_train_steps=stop, save_top_k=-1, save_last=False)
        fit(make_module(), stop, [checkpoint, record], checkpointing=True)
        (saved,) = sorted(Path(root).glob(f"*step={stop}.ckpt"))
        fit(module, 12, [record], ckpt_path=saved)
    return {"seen": record.seen, "state": state_of(module)}


@pytest.mark.slow
def test_two_gloo_ranks_see_the_loader_batches_with_on_device_also_after_a_resume(tmp_path):
    plain = run_distributed(_two_rank_run, 2, False, str(tmp_path / "plain"), None, timeout=300)
    device = run_distributed(_two_rank_run, 2, True, str(tmp_path / "device"), 6, timeout=300)
    assert not torch.equal(plain[0]["seen"][0][1], plain[1]["seen"][0][1])  # two shards
    for rank in range(2):
        assert len(plain[rank]["seen"]) == len(device[rank]["seen"]) == 12
        assert_same(plain[rank]["seen"], device[rank]["seen"])
        for key, value in device[rank]["state"].items():
            assert torch.equal(plain[rank]["state"][key], value), key
