"""Lightning callbacks that connect a training run to its Ray Tune trial.

* :class:`TuneReport` reports the logged metrics (and a checkpoint) to Tune every few iterations, which is what
  ASHA and PBT decide on and what a retried or exploited trial restores from.
* :class:`TrainReport` does the same from the Ray Train workers of a multi-worker trial (tune/workers.py).
* :class:`ConfigOptimizerScalars` writes the config's step sizes and momenta back into the optimizers after a
  checkpoint is restored: ``load_state_dict`` restores the old ones, which silently undoes PBT's mutations
  (ray#36660).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

__all__ = ["CHECKPOINT_NAME", "ConfigOptimizerScalars", "TrainReport", "TuneReport"]

#: File name of the Lightning checkpoint inside each Tune checkpoint folder.
CHECKPOINT_NAME = "model.ckpt"


class TuneReport(Callback):
    """Every ``every_n_steps`` iterations and at the end: ``ray.tune.report`` of the logged scalars with ``step``.

    The metric must be among them; a non-finite value (a diverged GAN) is reported as the worst value for ``mode``,
    so that ASHA stops the trial instead of keeping it (a NaN compares as never worse). Values of ``scores`` (e.g. a
    :class:`~tune.metrics.MixtureScore`'s ``last``) are added, so a score computed at train end is reported too.

    Args:
        metric: the key that ranks trials.
        mode: ``min`` or ``max``.
        every_n_steps: iterations between reports, >= 1.
        checkpoint_every_n_steps: iterations between checkpoints attached to a report (a multiple of every_n_steps
            keeps them aligned; one is attached at the end too); 0: none. Retries, resumes and PBT need them.
        scores: callbacks with a ``last`` dict of further values.

    Raises:
        ValueError: bad ``mode`` or ``every_n_steps``; at the first report, a ``metric`` that nothing logs.
    """

    def __init__(self, metric: str, mode: str, every_n_steps: int, checkpoint_every_n_steps: int | None = None,
                 scores: list[Any] | None = None) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"Invalid mode: {mode!r}; expected 'min' or 'max'")
        if every_n_steps < 1:
            raise ValueError(f"Invalid every_n_steps: {every_n_steps}; expected an integer >= 1")
        self.metric, self.mode, self.every_n_steps = metric, mode, every_n_steps
        self.checkpoint_every = every_n_steps if checkpoint_every_n_steps is None else checkpoint_every_n_steps
        self.scores = scores or []
        self._reported_step: int | None = None

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self.report(trainer, checkpoint=self.checkpoint_every > 0
                        and trainer.global_step % self.checkpoint_every == 0)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._reported_step != trainer.global_step:
            self.report(trainer, checkpoint=self.checkpoint_every > 0)

    def metrics(self, trainer: pl.Trainer) -> dict[str, float]:
        values: dict[str, float] = {}
        for key, value in trainer.callback_metrics.items():
            if getattr(value, "numel", lambda: 1)() == 1:
                values[key] = float(value)
        for score in self.scores:
            values.update(score.last)
        if self.metric not in values:
            raise ValueError(f"Invalid metric: {self.metric!r} is not logged by this run; logged: "
                             f"{', '.join(sorted(values)) or 'nothing'}")
        if not math.isfinite(values[self.metric]):
            values[self.metric] = math.inf if self.mode == "min" else -math.inf
        values["step"] = trainer.global_step
        return values

    def report(self, trainer: pl.Trainer, checkpoint: bool = True) -> None:
        metrics = self.metrics(trainer)
        self._reported_step = trainer.global_step
        if not checkpoint:
            self.send(trainer, metrics, None)
            return
        with tempfile.TemporaryDirectory(prefix="tune-ckpt-") as folder:
            trainer.save_checkpoint(Path(folder) / CHECKPOINT_NAME)  # every rank calls it; rank 0 writes
            self.send(trainer, metrics, folder)

    def send(self, trainer: pl.Trainer, metrics: dict[str, float], folder: str | None) -> None:
        """``tune.report`` of ``metrics``, with the checkpoint ``folder`` unless None (Tune copies it)."""
        from ray import tune

        tune.report(metrics, checkpoint=None if folder is None else tune.Checkpoint.from_directory(folder))


class TrainReport(TuneReport):
    """TuneReport in the Ray Train workers of a multi-worker trial (:mod:`tune.workers`).

    Every rank calls ``ray.train.report`` at the same iterations (it is a barrier of the workers), rank 0 with the
    checkpoint folder, which Ray Train copies to the trial's storage; the trial's driver passes rank 0's metrics on to
    Tune. After each report the ranks agree (one all-reduce of a flag) on whether ``stop_file`` exists, which the
    driver writes when Tune stops the trial, and then end training normally (``trainer.should_stop``).

    Args:
        *args: as for :class:`TuneReport`.
        stop_file: path of the driver's stop request; None: never stop early.
        **kwargs: as for :class:`TuneReport`.
    """

    def __init__(self, *args: Any, stop_file: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop_file = None if stop_file is None else Path(stop_file)

    @override
    def send(self, trainer: pl.Trainer, metrics: dict[str, float], folder: str | None) -> None:
        import ray.train

        rank0_folder = folder if trainer.is_global_zero else None  # the others' folders are empty
        ray.train.report(metrics, checkpoint=None if rank0_folder is None else
                         ray.train.Checkpoint.from_directory(rank0_folder))
        if self.stop_file is not None and trainer.strategy.reduce_boolean_decision(self.stop_file.exists(), all=False):
            trainer.should_stop = True


class ConfigOptimizerScalars(Callback):
    """At train start, after any checkpoint restore, set lr / momentum / betas / eps / weight decay of both players'
    optimizers from the module's own optimizer configs (``g_optimizer_config``, ``d_optimizer_config``)."""

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        configs = (pl_module.g_optimizer_config, pl_module.d_optimizer_config)
        for optimizer, config in zip(trainer.optimizers, configs):
            for group in optimizer.param_groups:
                group["lr"] = float(config.lr)
                if "momentum" in group:
                    group["momentum"] = float(config.momentum)
                if "betas" in group:
                    group["betas"] = (float(config.momentum), float(config.beta2))
                if "eps" in group:
                    group["eps"] = float(config.eps)
                if "weight_decay" in group:
                    group["weight_decay"] = float(config.weight_decay)
