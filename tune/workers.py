"""A Ray Tune trial of several workers: Ray Train's ``TorchTrainer`` runs ``lightning-gan fit`` on N processes.

``python -m tune.search --workers-per-trial N`` makes each trial a :class:`WorkersTrial`. The trial's actor is only a
driver: it writes the trial's config, starts a ``TorchTrainer`` (Ray Train V2, Ray's default here) whose N workers
each run the same LightningCLI ``fit`` (:func:`train_worker`), and passes their reports on to Tune. Ray Train sets up
the process group (gloo on CPU, NCCL on GPU) and places the workers; each worker trains with :class:`RayGameDDPStrategy`
(``game_ddp`` with Ray's device and world size) and Ray's ``RayLightningEnvironment`` (ranks from Ray Train's
context, never SLURM's), so the module all-reduces its own gradients over the N workers as under
``--trainer.devices N``: the global batch is N x ``data.batch_size``.

Reports and checkpoints: every ``report_every`` iterations all workers call ``ray.train.report`` (rank 0 with the
checkpoint, which Ray Train copies to ``<runs>/<trial id>/train/``); the driver forwards rank 0's metrics to Tune
(ASHA decides on them). A worker that fails is restarted by Ray Train (``FailureConfig``) from the latest checkpoint,
and a retried trial's new driver finds its run in the same storage and resumes it. PBT is refused: it moves
checkpoints through Tune, which this trial leaves to Ray Train.

Why a class trainable and not Ray's function-trainable recipe (a function calling ``TorchTrainer.fit`` with
``ray.tune.integration.ray_train.TuneReportCallback``): when Tune stops a function trial early (ASHA), it ends the
actor at once, the Train controller dies with it, and its workers' placement group stays reserved. Ray 2.60 removes
it with a ``PlacementGroupCleaner`` that asks the State API, which needs the dashboard (``ray[default]``, not
installed here, and off in slurm/tune.sbatch); tried here on 2 CPUs, the next trial was still waiting for its
workers 5 minutes later. Tune waits for a class trainable's ``cleanup()``: it asks the workers to stop (a file
they check after each report) and waits until Ray Train has ended the run and released the workers.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from ray import tune
from ray.train import UserCallback
from typing_extensions import override

from lightning_gan.distributed import GameDDPStrategy
from tune.report import CHECKPOINT_NAME, TrainReport
from tune.trainable import TrialSetup, fit_trial, trial_callbacks, write_trial_config

__all__ = ["DRIVER_RESOURCES", "RayGameDDPStrategy", "WorkersTrial", "train_worker"]

#: What Tune reserves for a trial's driver. No CPU: it only waits on its workers, which reserve their own
#: (--resources-per-trial each); memory because Tune refuses an empty request, and the process holds ~0.5 GB.
DRIVER_RESOURCES = {"cpu": 0, "memory": 512 * 2**20}
#: File in the trial's run folder whose existence tells the workers to stop (written when Tune stops the trial).
STOP_FILE = "stop-requested"
#: Seconds ``cleanup()`` waits for the workers to stop; they check after each report.
STOP_TIMEOUT_S = 300.0


class RayGameDDPStrategy(GameDDPStrategy):
    """``game_ddp`` inside a Ray Train worker: the device Ray assigned to this worker, and samplers over Ray's world.

    Lightning's DDP picks ``parallel_devices[local_rank]`` and shards data over ``num_nodes x devices``, which assume
    that Lightning laid out the processes; Ray Train did, so these two come from Ray (as ``RayDDPStrategy`` does, which
    GANModule refuses because it wraps the module in DDP). The process group is Ray Train's (Lightning keeps an
    existing one).
    """

    @property
    @override
    def root_device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    @property
    @override
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        return {"num_replicas": self.world_size, "rank": self.global_rank}


def train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the trial's ``fit`` on Ray's process group, resumed from Ray Train's latest checkpoint
    (after a worker failure or a retried trial)."""
    import ray.train
    from ray.train.lightning import RayLightningEnvironment

    setup: TrialSetup = config["setup"]
    os.chdir(setup.cwd)  # Ray starts workers elsewhere; config paths (data folders) are relative to the driver's
    # Lightning read this process's rank from RANK/LOCAL_RANK when it was imported, before Ray Train set them, and
    # fixes it only when fit starts; until then every worker would act as rank 0 (the CLI's loggers each created a
    # version_<k> folder). As Lightning's own set_world_ranks() does:
    rank_zero_only.rank = ray.train.get_context().get_world_rank()
    callbacks = trial_callbacks(setup, TrainReport, stop_file=config["stop_file"])
    checkpoint = ray.train.get_checkpoint()
    with tempfile.TemporaryDirectory(prefix="train-restore-") as restore:
        ckpt_path = str(Path(checkpoint.to_directory(restore)) / CHECKPOINT_NAME) if checkpoint else None
        fit_trial(config["config_path"], callbacks, ckpt_path, cluster_environment=RayLightningEnvironment(),
                  strategy=RayGameDDPStrategy())


class _ForwardReports(UserCallback):
    """In Ray Train's controller: rank 0's metrics of each report (and the stored checkpoint's path) to the driver."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        result = dict(metrics[0])
        if checkpoint is not None:
            result["checkpoint_path"] = checkpoint.path
        self.queue.put(result)


class WorkersTrial(tune.Trainable):
    """The Tune trainable of a multi-worker trial: each ``step()`` returns the workers' next report.

    ``setup`` (``tune.with_parameters``) is the search's :class:`~tune.trainable.TrialSetup`; ``setup.workers`` workers
    get ``setup.resources_per_worker`` each (keys ``cpu``, ``gpu``, or custom Ray resources).
    """

    @override
    def setup(self, config: dict[str, Any], setup: TrialSetup) -> None:
        import ray.train
        from ray.train.torch import TorchTrainer
        from ray.util.queue import Queue

        os.chdir(setup.cwd)
        run_dir = Path(setup.runs_dir) / self.trial_id
        config_path = write_trial_config(setup, config, run_dir)
        self._stop_file = run_dir / STOP_FILE
        self._stop_file.unlink(missing_ok=True)  # left by an earlier try of this trial
        self._reports = Queue(actor_options={"num_cpus": 0})
        self._train_dir = run_dir / "train"  # Ray Train's storage_path / name, below
        resources = {k.upper() if k in ("cpu", "gpu") else k: v for k, v in setup.resources_per_worker.items() if v}
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={"setup": setup, "config_path": str(config_path), "stop_file": str(self._stop_file)},
            scaling_config=ray.train.ScalingConfig(num_workers=setup.workers, use_gpu=resources.get("GPU", 0) > 0,
                                                   resources_per_worker=resources),
            # The same (storage_path, name) on a retry of this trial: Ray Train then resumes the run it finds there.
            run_config=ray.train.RunConfig(
                name="train", storage_path=str(run_dir), callbacks=[_ForwardReports(self._reports)],
                failure_config=ray.train.FailureConfig(max_failures=setup.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=setup.checkpoints_kept)),
        )
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._fit, args=(trainer,), name="train-driver", daemon=True)
        self._thread.start()

    def _fit(self, trainer: Any) -> None:
        try:
            trainer.fit()
        except BaseException as error:  # raised in Tune's thread by step()
            self._error = error

    @override
    def step(self) -> dict[str, Any]:
        from ray.tune.result import RESULT_DUPLICATE
        from ray.util.queue import Empty

        while True:
            try:
                return self._reports.get(timeout=1.0)
            except Empty:
                if self._thread.is_alive():
                    continue
            try:  # the run ended; a report put just before its end may still be waiting
                return self._reports.get_nowait()
            except Empty:
                break
        if self._error is not None:
            raise self._error
        return {RESULT_DUPLICATE: True}  # Tune ends the trial with its last result, as for a function that returns

    @override
    def save_checkpoint(self, checkpoint_dir: str) -> None:
        """Tune's checkpoint of this trial is only a pointer: the training state is in Ray Train's storage."""
        Path(checkpoint_dir, "train_run.txt").write_text(f"{self._train_dir}\n")

    @override
    def load_checkpoint(self, checkpoint: Any) -> None:
        """Nothing to load: the new ``TorchTrainer`` of a retried trial resumes from Ray Train's storage itself."""

    @override
    def cleanup(self) -> None:
        """Tune stops the trial (ASHA, or the search's end): let the workers stop at their next report, then wait for
        Ray Train to end the run, which releases the workers' placement group."""
        if self._thread.is_alive():
            self._stop_file.touch()
            self._thread.join(timeout=STOP_TIMEOUT_S)
        self._reports.shutdown()
