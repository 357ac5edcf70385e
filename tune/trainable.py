"""One Ray Tune trial: ``lightning-gan fit`` on the base config with the trial's sampled values.

The trial writes its full config (``trial.yaml``, built exactly as ``best.yaml`` is) and runs the same LightningCLI
as the command line, with three callbacks added (toy metrics, Tune reports with checkpoints, optimizer scalars
re-applied after a restore) and an explicit ``LightningEnvironment``: Lightning would otherwise detect SLURM inside
a Ray worker on a SLURM node and register signal handlers off the main thread (PL#3651, T11).

Trials are single-process (``trainer.devices=1``, ``strategy=auto``). A multi-worker trial would run Ray Train's
``TorchTrainer`` (Train V2, Ray's default here, runs it as its own controller inside the trial) with
``GameDDPStrategy`` and Ray's cluster environment in place of ``RayDDPStrategy``, which GANModule refuses (it wraps
the module in DDP), and its checkpoints would pass through Train's storage instead of ``tune.report``: not built,
since it could not be tested on the 2 CPU cores here. For many GPUs per run, search single-GPU trials, then train
the best config with slurm/train.sbatch.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from lightning.fabric.plugins.environments import ClusterEnvironment, LightningEnvironment
from lightning.pytorch import Trainer

from lightning_gan.cli import GANCLI
from tune.metrics import MixtureScore
from tune.report import CHECKPOINT_NAME, ConfigOptimizerScalars, TuneReport
from tune.space import SearchSpace, apply_params, set_path

__all__ = ["TrialCLI", "TrialSetup", "run_trial", "trial_config"]


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


def trial_config(setup: TrialSetup, params: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """The base config with the trial's values, cut to ``max_steps``, in its own run folder, single-process."""
    config = apply_params(setup.base, setup.space.clip(params))
    for path, value in (("trainer.max_steps", setup.max_steps), ("trainer.default_root_dir", run_dir),
                        ("trainer.devices", 1), ("trainer.num_nodes", 1), ("trainer.strategy", "auto"),
                        ("trainer.enable_progress_bar", False)):
        set_path(config, path, value)
    return config


class TrialCLI(GANCLI):
    """GANCLI that adds the trial's callbacks and an explicit cluster environment to the Trainer, and keeps the
    trial's config when it resumes from a checkpoint file."""

    def __init__(self, *args: Any, trial_callbacks: list[Any], **kwargs: Any) -> None:
        self.trial_callbacks = trial_callbacks
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
            plugins.append(LightningEnvironment())
        kwargs["plugins"] = plugins
        return super().instantiate_trainer(**kwargs)


def run_trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """The Tune function trainable; resumes from the trial's checkpoint when Tune hands it one."""
    from ray import tune

    os.chdir(setup.cwd)  # Ray starts workers elsewhere; config paths (data folders) are relative to the driver's
    trial_id = tune.get_context().get_trial_id()
    run_dir = Path(setup.runs_dir) / trial_id
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "trial.yaml"
    with open(config_path, "w") as f:
        yaml.safe_dump(trial_config(setup, params, str(run_dir)), f, sort_keys=False)

    scores = [MixtureScore(every_n_steps=setup.report_every)] if setup.mixture else []
    callbacks = [*scores, TuneReport(setup.metric, setup.mode, setup.report_every, setup.checkpoint_every, scores),
                 ConfigOptimizerScalars()]
    with tempfile.TemporaryDirectory(prefix="tune-restore-") as restore:
        args = ["fit", "--config", str(config_path)]
        checkpoint = tune.get_checkpoint()  # after a failure (FailureConfig) or a PBT exploit
        if checkpoint is not None:
            args += ["--ckpt_path", str(Path(checkpoint.to_directory(restore)) / CHECKPOINT_NAME)]
        argv, sys.argv = sys.argv, sys.argv[:1]  # the worker's own arguments are not the CLI's
        try:
            TrialCLI(args=args, trial_callbacks=callbacks)
        except SystemExit as error:  # the CLI's one-line config errors; a worker must raise, not exit
            raise RuntimeError(f"lightning-gan fit --config {config_path} failed with exit code {error.code}; "
                               "its message is in the trial's log above") from None
        finally:
            sys.argv = argv
