"""Small GAN runs for the trainer's tests: MLP players on a 2-D mixture, CPU, quiet trainers."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_gan.data import GaussianMixtureDataModule
from lightning_gan.models import MLPDiscriminator, MLPGenerator
from lightning_gan.module import GANModule
from lightning_gan.optim.factory import OptimizerConfig

SCHEMES = ["simultaneous", "alternating", "extragradient", "past_extragradient", "optimistic"]


def make_module(scheme: str = "simultaneous", *, init_seed: int = 0, **kwargs) -> GANModule:
    torch.manual_seed(init_seed)
    kwargs.setdefault("g_optimizer", OptimizerConfig(rule="adam", lr=1e-3, momentum=0.5, beta2=0.9))
    kwargs.setdefault("d_optimizer", OptimizerConfig(rule="sgd", lr=2e-3, momentum=-0.3))
    if scheme == "alternating":
        kwargs.setdefault("n_dis", 2)
    return GANModule(
        # Smooth activations: with ReLU kinks, the float rounding of different batch splits can flip a
        # unit's derivative, and "2 ranks x B = 1 rank x 2B" would hold only up to such jumps.
        MLPGenerator(latent_dim=4, hidden_dim=32, num_layers=2, activation="silu"),
        MLPDiscriminator(hidden_dim=32, num_layers=2, activation="silu"),
        scheme=scheme,
        **kwargs,
    )


def make_data(batch_size: int = 16, num_samples: int = 512, seed: int = 0) -> GaussianMixtureDataModule:
    return GaussianMixtureDataModule(kind="ring", num_samples=num_samples, batch_size=batch_size, seed=seed)


def make_trainer(max_steps: int, **kwargs) -> pl.Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    kwargs.setdefault("log_every_n_steps", 1)  # the module logs only on Lightning's flush steps
    return pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **kwargs,
    )


def state_of(module: GANModule) -> dict[str, torch.Tensor]:
    """Everything that must match between two runs: players, averages and optimizer states."""
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    for i, optimizer in enumerate(module.optimizers(use_pl_optimizer=False)):
        for j, per_param in optimizer.state_dict()["state"].items():
            for key, value in per_param.items():
                if torch.is_tensor(value):
                    state[f"optimizer{i}.{j}.{key}"] = value.detach().clone()
    return state


class CountAllReduces(Callback):
    """torch.distributed.all_reduce calls and SVRE snapshot passes in each training step.

    It wraps ``torch.distributed.all_reduce`` for the rest of the process: build one per process and
    :meth:`reset` it between runs.
    """

    def __init__(self) -> None:
        self.all_reduces: list[int] = []
        self.snapshots: list[int] = []
        self._count, self._passes = 0, 0
        original = torch.distributed.all_reduce

        def counting(*args, **kwargs):
            self._count += 1
            return original(*args, **kwargs)

        torch.distributed.all_reduce = counting

    def reset(self) -> None:
        self.all_reduces, self.snapshots = [], []

    def on_train_batch_start(self, trainer, module, *args) -> None:
        self._count, self._passes = 0, getattr(module, "snapshot_passes", 0)

    def on_train_batch_end(self, trainer, module, *args) -> None:
        self.all_reduces.append(self._count)
        self.snapshots.append(getattr(module, "snapshot_passes", 0) - self._passes)


def fit_in_process(root, config, *args: str):
    """``lightning-gan fit --config CONFIG ARGS`` in this process, on one CPU device without a process group, with
    sys.argv and the thread count restored after; returns the run's ``checkpoints/last.ckpt``."""
    import sys
    from pathlib import Path

    import torch.distributed as dist

    from lightning_gan.cli import GANCLI

    threads, argv = torch.get_num_threads(), sys.argv
    sys.argv = ["lightning-gan"]  # the CLI gets its arguments from `args` only
    try:
        GANCLI(args=["fit", "--config", str(config), f"--trainer.default_root_dir={root}", "--trainer.strategy=auto",
                     "--trainer.accelerator=cpu", *args])
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return Path(root) / "checkpoints" / "last.ckpt"


def resumed_and_uninterrupted(make, n: int, tmp_path, resumed_init_seed: int = 123):
    """``(state_of(uninterrupted), state_of(resumed))``: ``make(init_seed=0)`` fitted for 2n iterations with a
    checkpoint at n, and ``make(init_seed=resumed_init_seed)`` resumed from that checkpoint to 2n."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=n, save_top_k=-1, save_last=False)
    uninterrupted = make(init_seed=0)
    make_trainer(2 * n, callbacks=[checkpoint], enable_checkpointing=True).fit(uninterrupted, make_data())
    (saved,) = sorted(tmp_path.glob(f"*step={n}.ckpt"))
    resumed = make(init_seed=resumed_init_seed)
    make_trainer(2 * n).fit(resumed, make_data(), ckpt_path=saved)
    return state_of(uninterrupted), state_of(resumed)


def assert_same_state(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    """The same keys and bit-identical tensors."""
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def assert_matches_one_rank(rank_state: dict[str, torch.Tensor], one_rank: dict[str, torch.Tensor], what="") -> None:
    """A rank's state after W ranks x B equals one rank's with W B: step counters exactly, the rest to 1e-5."""
    for key, value in one_rank.items():
        if key.endswith(".step"):
            assert torch.equal(value, rank_state[key]), (what, key)
        else:
            torch.testing.assert_close(rank_state[key], value, rtol=1e-5, atol=1e-5, msg=f"{what} {key}")


def fit_cli_errors(capsys, config, root, *args: str) -> tuple[list[str], str]:
    """``lightning-gan fit --config CONFIG --trainer.default_root_dir ROOT ARGS`` in this process, which must stop
    with exit code 2; returns its ``lightning-gan: error:`` lines and the whole stderr (sys.argv and the thread count
    are restored)."""
    import sys

    import pytest

    from lightning_gan.cli import main

    threads, argv = torch.get_num_threads(), sys.argv
    sys.argv = ["lightning-gan"]  # the CLI gets its arguments from `args` only
    try:
        with pytest.raises(SystemExit) as exit_:
            main(["fit", "--config", str(config), f"--trainer.default_root_dir={root}", *args])
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line.startswith("lightning-gan: error:")], err
