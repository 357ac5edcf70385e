"""SLURMRequeue: SLURM requeue without collectives in a signal handler.

SIGUSR1 sets a flag; the ranks agree on it at an iteration boundary, save ``hpc_ckpt_<n>.ckpt`` together, and rank 0
requeues the job. Lightning's own auto-requeue saves the checkpoint *inside* the SIGUSR1 handler; its
``save_checkpoint`` ends with a barrier. A rank whose handler runs while the other rank is blocked in the game's
gradient all-reduce then waits forever in that barrier (PL#21406; it hung on the first try on the local 2-node
cluster, slurm/local-cluster.sh). This callback switches Lightning's handler off and does the work where every rank
is at the same point.

The ``lightning-gan`` command adds it to every run, configured from its ``requeue`` group; by default
(``requeue.enabled: auto``) it is active only inside a SLURM batch job (see :func:`in_slurm_batch_job`), so that
other runs make exactly the collectives they made without it.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any, Literal, Union

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

__all__ = ["SLURMRequeue", "hpc_checkpoint_path", "in_slurm_batch_job"]

log = logging.getLogger(__name__)

#: SLURM_JOB_NAME of interactive allocations (``srun --pty bash``, ``salloc``), as Lightning's SLURMEnvironment
#: recognises them; such a shell may not be requeued and may run anything, so ``auto`` leaves it alone.
INTERACTIVE_JOB_NAMES = ("bash", "interactive")


def in_slurm_batch_job() -> bool:
    """Whether this process runs inside a SLURM job that is not an interactive shell: ``SLURM_JOB_ID`` is set and
    ``SLURM_JOB_NAME`` is not ``bash`` or ``interactive`` (Lightning's own rule for "launched by SLURM")."""
    return bool(os.environ.get("SLURM_JOB_ID")) and os.environ.get("SLURM_JOB_NAME") not in INTERACTIVE_JOB_NAMES


def hpc_checkpoint_path(root: str | Path) -> Path:
    """``<root>/hpc_ckpt_<n+1>.ckpt`` after the highest existing n: the name Lightning resumes from on SLURM."""
    numbers = [int(m.group(1)) for p in Path(root).glob("hpc_ckpt_*.ckpt")
               if (m := re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name))]
    return Path(root) / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt"


class SLURMRequeue(Callback):
    """On SIGUSR1 (``#SBATCH --signal=SIGUSR1@90`` or ``scancel --signal=USR1 JOBID``): save and requeue.

    The handler only sets a flag. Every ``check_every_n_steps`` game iterations the ranks OR their flags with one
    tiny all-reduce; when set, all ranks save ``<default_root_dir>/hpc_ckpt_<n>.ckpt`` and training stops; at
    teardown rank 0 runs ``scontrol requeue $SLURM_JOB_ID`` (outside SLURM it only saves and stops). The requeued job
    resumes from that step: Lightning picks ``hpc_ckpt_*`` by itself on SLURM when no ``--ckpt_path`` is given, and
    slurm/train.sbatch passes the newest checkpoint, which is the CLI's ``last.ckpt`` of the same step (written when
    training ends, see :class:`~lightning_gan.callbacks.FinalStepCheckpoint`).

    Inactive, the callback does nothing at all: no signal handler, no all-reduce, and Lightning's own SLURM handling
    (which saves inside the handler, see the module docstring) is left as it is.

    Args:
        enabled: ``auto`` (default): active inside a SLURM batch job (``SLURM_JOB_ID`` set, ``SLURM_JOB_NAME`` not
            ``bash`` or ``interactive``), else inactive; ``true`` or ``false`` force it.
        check_every_n_steps: iterations between agreements, >= 1 (each is one all-reduce of one integer).
        signal_name: the signal to catch, by name (``SIGUSR1``, ``SIGUSR2``, ...).
        requeue_job: run ``scontrol requeue`` on SLURM after saving (false: save and stop only).

    Raises:
        ValueError: an ``enabled`` other than auto, true or false; ``check_every_n_steps`` < 1; an unknown
            ``signal_name``.
    """

    def __init__(self, enabled: Union[bool, Literal["auto"]] = "auto", check_every_n_steps: int = 1,
                 signal_name: str = "SIGUSR1", requeue_job: bool = True) -> None:
        if enabled not in (True, False, "auto"):
            raise ValueError(f"Invalid enabled: {enabled!r}; expected auto, true or false")
        if check_every_n_steps < 1:
            raise ValueError(f"Invalid check_every_n_steps: {check_every_n_steps}; expected an integer >= 1")
        if signal_name not in signal.Signals.__members__:
            raise ValueError(f"Invalid signal_name: {signal_name!r}; expected a name such as 'SIGUSR1'")
        self.enabled = enabled
        self.active = in_slurm_batch_job() if enabled == "auto" else bool(enabled)
        self.check_every_n_steps = check_every_n_steps
        self.signum = signal.Signals[signal_name]
        self.requeue_job = requeue_job
        self.received = False
        self.saved: str | None = None  # the checkpoint written on the signal, until the requeue
        self._previous_handler: Any = None
        self._installed = False

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received = True  # nothing else: no I/O, no collective (see the module docstring)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.active:
            return
        environment = trainer._accelerator_connector.cluster_environment  # the one the strategy uses
        if isinstance(environment, SLURMEnvironment):
            environment.auto_requeue = False  # Lightning registers its handlers later (in fit), and now skips them
        if threading.current_thread() is threading.main_thread():  # signal.signal refuses other threads
            self._previous_handler = signal.signal(self.signum, self._on_signal)
            self._installed = True

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self.active or trainer.global_step % self.check_every_n_steps != 0:
            return
        # Every rank reaches this line at the same global step, so the all-reduce cannot cross another collective.
        if not trainer.strategy.reduce_boolean_decision(self.received, all=False):
            return
        path = hpc_checkpoint_path(trainer.default_root_dir)
        path = Path(trainer.strategy.broadcast(str(path)))  # rank 0's numbering, in case the folder is not shared
        log.warning(f"SLURMRequeue: {self.signum.name} received; saving {path} at step {trainer.global_step}")
        trainer.save_checkpoint(path)  # all ranks (the strategy writes on rank 0), ends with a barrier
        trainer.should_stop = True  # end fit normally: loggers flush, then teardown() requeues
        self.received = False
        self.saved = str(path)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._installed:
            # A late signal must not kill a finished run (SIGUSR1's default action terminates the process).
            previous = self._previous_handler
            signal.signal(self.signum, signal.SIG_IGN if previous in (None, signal.SIG_DFL) else previous)
            self._installed = False
        if self.saved is None:
            return
        # Requeue last: SLURM kills the job's processes as soon as it requeues, so everything else must be done.
        trainer.strategy.barrier("SLURMRequeue")
        job_id = _job_id()
        if self.requeue_job and job_id is not None and trainer.is_global_zero:
            result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
            if result.returncode == 0:
                log.warning(f"SLURMRequeue: requeued job {job_id} after saving {self.saved}")
            else:
                log.error(f"SLURMRequeue: `scontrol requeue {job_id}` failed ({result.returncode}): "
                          f"{result.stderr.strip()}")
        self.saved = None


def _job_id() -> str | None:
    """The id ``scontrol requeue`` wants: ``<array job>_<task>`` for array jobs, else ``SLURM_JOB_ID``."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")
