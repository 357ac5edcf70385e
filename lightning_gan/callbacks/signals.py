"""SignalCheckpoint: SIGTERM, Ctrl-C and friends save the current iteration and stop every rank together.

Schedulers, ``timeout``, ``docker stop`` and ``kill`` send SIGTERM. Lightning's own SIGTERM handler forwards the
signal to the processes it launched and then calls ``torch.distributed.broadcast`` *inside the handler*: a rank whose
handler runs while another rank is blocked in the game's gradient all-reduce waits forever (a 2-process run hung in
4 of 8 tries), and a 1-process run exits with code 0 without saving. Here the handler only notes the signal; at the
next iteration boundary the ranks agree on it with one tiny all-reduce (none on one rank), all of them save
``last.ckpt`` at that iteration, training stops, and the ``lightning-gan`` command exits with ``128 + signal`` (143
for SIGTERM, 130 for Ctrl-C), the shell's convention for a process ended by a signal.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from typing_extensions import override

from lightning_gan import distributed

__all__ = ["SignalCheckpoint", "stopped_by_signal"]

log = logging.getLogger(__name__)


class SignalCheckpoint(Callback):
    """On any of ``signal_names``: save ``last.ckpt`` at the current iteration on all ranks, stop, exit ``128 + n``.

    The handlers are installed when training starts (after Lightning installs its own, which they replace) and the
    ones from before ``fit`` are put back at teardown. A second Ctrl-C while the first is being handled interrupts at once, as
    Ctrl-C does elsewhere. Signals that arrive before training starts keep their default action: nothing is lost.

    The checkpoint is written through the run's ``ModelCheckpoint`` with ``save_last`` (the ``lightning-gan``
    command's ``checkpoint`` group), so ``--ckpt_path last`` resumes from it; without one it is
    ``<default_root_dir>/checkpoints/last.ckpt``.

    Args:
        signal_names: the signals to handle, by name. SIGUSR1 is SLURMRequeue's inside SLURM batch jobs.
        check_every_n_steps: iterations between agreements, >= 1; each is one all-reduce of one integer on multi-rank
            runs (nothing on one rank). A signal waits at most this many iterations.

    Attributes:
        stopped_by: the signal that stopped training (None if none did); read by the command to set its exit code.
        saved: the checkpoint written then.
    """

    def __init__(self, signal_names: list[str] = ["SIGTERM", "SIGINT"], check_every_n_steps: int = 1) -> None:  # noqa: B006
        names = list(signal_names)
        unknown = [name for name in names if name not in signal.Signals.__members__ or name in ("SIGKILL", "SIGSTOP")]
        if unknown:
            raise ValueError(f"Invalid signal_names: {unknown[0]!r}; expected names such as 'SIGTERM', 'SIGINT', "
                             "'SIGUSR2' (SIGKILL and SIGSTOP cannot be caught)")
        if isinstance(check_every_n_steps, bool) or not isinstance(check_every_n_steps, int) or check_every_n_steps < 1:
            raise ValueError(f"Invalid check_every_n_steps: {check_every_n_steps!r}; expected an integer >= 1")
        self.signums = [signal.Signals[name] for name in names]
        self.check_every_n_steps = check_every_n_steps
        self.received = 0  # the last signal received and not yet acted on
        self.stopped_by: signal.Signals | None = None
        self.saved: str | None = None
        self._previous: dict[signal.Signals, Any] = {}  # the handlers before fit

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: the user does not want to wait
        self.received = signum  # nothing else: no I/O, no collective (see the module docstring)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Before Lightning installs its handlers: these are the ones to put back at teardown.
        self._previous = {signum: signal.getsignal(signum) for signum in self.signums}

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.received, self.stopped_by, self.saved = 0, None, None
        if threading.current_thread() is threading.main_thread():  # signal.signal refuses other threads
            for signum in self.signums:
                signal.signal(signum, self._on_signal)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step % self.check_every_n_steps != 0:
            return
        # Every rank reaches this line at the same global step, so the all-reduce cannot cross another collective.
        signum = distributed.agree_max(self.received)
        if not signum:
            return
        self.stopped_by = signal.Signals(signum)
        self.saved = self._save(trainer)
        log.info(f"{self.stopped_by.name} received: saved {self.saved} at step {trainer.global_step}; stopping")
        trainer.should_stop = True

    @staticmethod
    def _save(trainer: pl.Trainer) -> str:
        """Save through the run's last-checkpoint writer (so that it will not save this step again), else a file."""
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.save_last:
                callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
                return callback.last_model_path
        path = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        trainer.save_checkpoint(path)  # all ranks (the strategy writes on rank 0)
        return str(path)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, previous in self._previous.items():
                if signal.getsignal(signum) == self._on_signal:  # Lightning restores its own before this hook
                    signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}


def stopped_by_signal(trainer: pl.Trainer) -> bool:
    """Whether a :class:`SignalCheckpoint` stopped this fit: end-of-training work that takes long (a full FID) is
    skipped then, since a scheduler's grace period after SIGTERM is short (SLURM's KillWait: 30 s by default)."""
    return any(isinstance(c, SignalCheckpoint) and c.stopped_by is not None for c in trainer.callbacks)
