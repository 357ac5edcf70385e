"""One Ray Tune trial: ``lightning-gan fit`` on the base config with the trial's sampled values.

The trial writes its full config (``trial.yaml``, built exactly as ``best.yaml`` is) and runs the same LightningCLI
as the command line, with three callbacks added (toy metrics, Tune reports with checkpoints, optimizer scalars
re-applied after a restore) and an explicit cluster environment: Lightning would otherwise detect SLURM inside a Ray
worker on a SLURM node and register signal handlers off the main thread (PL#3651, T11). The CLI's SLURM requeue
(``requeue.enabled``) is switched off: a trial must never requeue the search's job.

Two kinds of trials:

* One process (``--workers-per-trial 1``, the default): :func:`run_trial`, a Tune function trainable, runs ``fit``
  itself on ``trainer.devices=1`` with ``strategy=auto`` and ``LightningEnvironment``, and reports (and checkpoints)
  through ``tune.report``; retries and PBT restore from those Tune checkpoints.
* N processes (``--workers-per-trial N``): :class:`tune.workers.WorkersTrial` runs Ray Train's ``TorchTrainer``
  (Train V2) with N workers inside the trial, each the same ``fit`` with ``game_ddp`` placed by Ray
  (``RayGameDDPStrategy``) and Ray's ``RayLightningEnvironment``; rank 0's reports reach Tune, checkpoints stay in
  Ray Train's storage. Ray's own ``RayDDPStrategy`` cannot be used: it wraps the module in DDP, which GANModule
  refuses. Tested with 2 CPU workers (gloo) per trial (tests/test_tune.py, about 60 s on 2 cores).
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from lightning.fabric.plugins.environments import ClusterEnvironment, LightningEnvironment
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import Strategy

from lightning_gan.cli import GANCLI
from tune.metrics import MixtureScore
from tune.report import CHECKPOINT_NAME, ConfigOptimizerScalars, TuneReport
from tune.space import SearchSpace, apply_params, set_path

__all__ = ["TrialCLI", "TrialSetup", "fit_trial", "run_trial", "trial_callbacks", "trial_config",
           "write_trial_config"]


@dataclass
class TrialSetup:
    """What every trial needs besides its sampled values (sent to the workers once, by ``tune.with_parameters``)."""

    base: dict[str, Any]  # the training config, as read from its YAML file
    space: SearchSpace
    metric: str
    mode: str
    max_steps: int
    report_every: int
    checkpoint_every: int  # iterations between checkpoints sent to Tune (a multiple of report_every)
    runs_dir: str  # absolute: <storage>/<experiment>/runs, one folder per trial
    cwd: str  # the driver's working directory: relative paths of the config resolve from here
    mixture: bool  # compute toy metrics (the data module is a 2-D mixture)
    workers: int = 1  # training processes per trial; > 1: tune.workers.WorkersTrial
    resources_per_worker: dict[str, float] = field(default_factory=lambda: {"cpu": 1.0})  # with workers > 1
    max_failures: int = 0  # with workers > 1: Ray Train's restarts of failed workers
    checkpoints_kept: int = 2  # with workers > 1: checkpoints Ray Train keeps


def trial_config(setup: TrialSetup, params: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """The base config with the trial's values, cut to ``max_steps``, in its own run folder; one device per
    process (a multi-worker trial's processes share ``game_ddp``), and no SLURM requeue."""
    config = apply_params(setup.base, setup.space.clip(params))
    for path, value in (("trainer.max_steps", setup.max_steps), ("trainer.default_root_dir", run_dir),
                        ("trainer.devices", 1), ("trainer.num_nodes", 1),
                        ("trainer.strategy", "game_ddp" if setup.workers > 1 else "auto"),
                        ("trainer.enable_progress_bar", False), ("requeue.enabled", False)):
        set_path(config, path, value)
    return config


def write_trial_config(setup: TrialSetup, params: dict[str, Any], run_dir: Path) -> Path:
    """Create the trial's run folder and write ``trial.yaml`` into it; returns its path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "trial.yaml"
    with open(config_path, "w") as f:
        yaml.safe_dump(trial_config(setup, params, str(run_dir)), f, sort_keys=False)
    return config_path


def trial_callbacks(setup: TrialSetup, report: type[TuneReport] = TuneReport, **report_kwargs: Any) -> list[Any]:
    """Toy metrics (on mixtures), the reports (``report``: TuneReport, or TrainReport in Ray Train workers) and the
    optimizer scalars re-applied after a restore."""
    scores = [MixtureScore(every_n_steps=setup.report_every)] if setup.mixture else []
    return [*scores, report(setup.metric, setup.mode, setup.report_every, setup.checkpoint_every, scores,
                            **report_kwargs), ConfigOptimizerScalars()]


class TrialCLI(GANCLI):
    """GANCLI that adds the trial's callbacks, a cluster environment (default ``LightningEnvironment``) and, when
    given, a strategy instance to the Trainer, and keeps the trial's config when it resumes from a checkpoint file."""

    def __init__(self, *args: Any, trial_callbacks: list[Any], cluster_environment: ClusterEnvironment | None = None,
                 strategy: Strategy | None = None, **kwargs: Any) -> None:
        self.trial_callbacks = trial_callbacks
        self.trial_environment = cluster_environment
        self.trial_strategy = strategy
        super().__init__(*args, **kwargs)

    def _parse_ckpt_path(self) -> None:
        """Skip LightningCLI's override of ``model.*`` by the checkpoint's hyper-parameters (done for any
        ``--ckpt_path FILE``): after a PBT exploit the checkpoint is another trial's, and its step sizes and momenta
        would silently replace this trial's mutated ones (found here: every exploited trial trained with the donor's
        values)."""

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_config = self._subconfig(self.config_init)["trainer"]
        callbacks = trainer_config.get("callbacks") or []
        kwargs["callbacks"] = [*(callbacks if isinstance(callbacks, list) else [callbacks]), *self.trial_callbacks]
        plugins = trainer_config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, ClusterEnvironment) for p in plugins):
            plugins.append(self.trial_environment or LightningEnvironment())
        kwargs["plugins"] = plugins
        if self.trial_strategy is not None:
            kwargs["strategy"] = self.trial_strategy
        return super().instantiate_trainer(**kwargs)


def fit_trial(config_path: str | Path, callbacks: list[Any], ckpt_path: str | None = None, **cli_kwargs: Any) -> None:
    """``lightning-gan fit --config config_path [--ckpt_path ckpt_path]`` in this process, through :class:`TrialCLI`.

    Raises:
        RuntimeError: the CLI exited (its one-line config errors); a Ray worker must raise, not exit.
    """
    args = ["fit", "--config", str(config_path)]
    if ckpt_path is not None:
        args += ["--ckpt_path", ckpt_path]
    argv, sys.argv = sys.argv, sys.argv[:1]  # the worker's own arguments are not the CLI's
    try:
        TrialCLI(args=args, trial_callbacks=callbacks, **cli_kwargs)
    except SystemExit as error:
        raise RuntimeError(f"lightning-gan fit --config {config_path} failed with exit code {error.code}; "
                           "its message is in the trial's log above") from None
    finally:
        sys.argv = argv


def run_trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """The Tune function trainable of a one-process trial; resumes from the trial's checkpoint when Tune hands it
    one."""
    from ray import tune

    os.chdir(setup.cwd)  # Ray starts workers elsewhere; config paths (data folders) are relative to the driver's
    run_dir = Path(setup.runs_dir) / tune.get_context().get_trial_id()
    config_path = write_trial_config(setup, params, run_dir)
    with tempfile.TemporaryDirectory(prefix="tune-restore-") as restore:
        checkpoint = tune.get_checkpoint()  # after a failure (FailureConfig) or a PBT exploit
        ckpt_path = str(Path(checkpoint.to_directory(restore)) / CHECKPOINT_NAME) if checkpoint else None
        fit_trial(config_path, trial_callbacks(setup), ckpt_path)
