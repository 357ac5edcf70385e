"""How the ``lightning-gan`` command refuses a run, and ends one that cannot go on: one line on stderr, an exit code.

Exit codes: 0 done; 1 a fault of the machine (a full disk); 2 bad input (argparse's convention), refused before
anything is trained or written; 3 the game diverged; 4 a rank stopped answering; 128 + n signal n saved the run and
stopped it (143 for SIGTERM, 130 for Ctrl-C).
"""

from __future__ import annotations

import argparse
import errno
import io
import logging
import os
import re
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from lightning.pytorch import Trainer
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy, Strategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_gan.distributed import GameDDPStrategy

PROG = "lightning-gan"
DEFAULT_ROOT_DIR = "runs/default"
EXIT_FAULT = 1
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_RANK_LOST = 4
#: Exceptions that mean "the configuration is wrong" when raised while building or checking the run.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, MisconfigurationException)


def fail(error: BaseException | str) -> NoReturn:
    """Report a configuration error as one line on stderr and exit with status 2 (as argparse does)."""
    print(f"{PROG}: error: {one_line(str(error))}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_BAD_INPUT)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse for the plain subcommands (evaluate, sample): errors are :func:`fail`'s one line and exit code 2,
    without the usage block; abbreviations are off, so that ``--data.*`` overrides pass through untouched."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        fail(message)


_NOISE = ("Given value", "Subtypes:", "Does not validate against any of the Union subtypes", "Errors:",
          "- Expected a <class 'NoneType'>")


def one_line(message: str) -> str:
    """A (jsonargparse) message on one line, without the lines that only repeat the input or list union types."""
    lines = (line.strip() for line in message.splitlines())
    return " ".join(line.removeprefix("- ") for line in lines if line and not line.startswith(_NOISE))


class RankLost(SystemExit):
    """A rank stopped answering; the process must end without the exit-time collectives of torch.distributed."""


def report(message: str, *, rank: int = 0, every_rank: bool = False) -> None:
    """One line on stderr, from global rank 0 only unless ``every_rank``."""
    if every_rank or rank == 0:
        print(f"{PROG}: {one_line(message)}", file=sys.stderr, flush=True)


#: Lightning's loggers, whose lines (seed, device availability) wait until the run is accepted: see held_log_lines.
_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")
SEED_LOGGER = "lightning.fabric.utilities.seed"


def _handlers(logger: logging.Logger | None) -> Iterator[logging.Handler]:
    """The handlers a record of ``logger`` reaches: its own, then its ancestors' while it propagates."""
    while logger is not None:
        yield from logger.handlers
        logger = logger.parent if logger.propagate else None


@contextmanager
def held_log_lines() -> Iterator[None]:
    """Hold Lightning's log lines and the warnings raised while the run is built; print them only if it is accepted,
    so that a refused configuration prints its one error line alone (not after ``Seed set to 0``, ``GPU available:
    ...`` or a warning about the environment)."""
    held: list[tuple[logging.Handler, logging.LogRecord]] = []
    handlers = {id(h): h for name in _LIGHTNING_LOGGERS for h in _handlers(logging.getLogger(name))}.values()
    holds = []
    for handler in handlers:
        def hold(record: logging.LogRecord, handler: logging.Handler = handler) -> bool:
            if not record.name.startswith(_LIGHTNING_LOGGERS):
                return True  # e.g. the root logger's handlers: hold Lightning's lines only
            held.append((handler, record))
            return False
        handler.addFilter(hold)
        holds.append((handler, hold))
    try:
        with warnings.catch_warnings(record=True) as raised:  # the filters in force still apply
            yield
    finally:
        for handler, hold in holds:
            handler.removeFilter(hold)
    for handler, record in held:
        handler.handle(record)
    for warning in raised:
        warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)


def check_trainer_values(config: dict[str, Any]) -> None:
    """Refuse what Lightning accepts but makes no run (``max_steps: 0`` trains nothing yet writes a run folder), or
    fails on later with a traceback (a run directory that is a file or cannot be written)."""
    if config.get("max_steps") == 0:
        raise ValueError("Invalid trainer.max_steps: 0; expected an integer >= 1, or -1 for no limit "
                         "(max_epochs then ends the run)")
    root = Path(config.get("default_root_dir") or DEFAULT_ROOT_DIR).expanduser()
    existing = next(p for p in (root, *root.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"Invalid trainer.default_root_dir: {root}; {existing} is a file, expected a folder "
                         "(created if absent)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"Invalid trainer.default_root_dir: {root}; {existing} is not writable, expected a folder "
                         "this user can write")


def check_strategy(strategy: Strategy, given: Any) -> None:
    """Refuse before training the strategies GANModule.setup refuses mid-fit (a 40-line traceback through the
    launcher): GANModule syncs both players' gradients itself, which only one device or game_ddp leaves to it."""
    if isinstance(strategy, (SingleDeviceStrategy, GameDDPStrategy)):
        return
    name = given if isinstance(given, str) else type(strategy).__name__
    why = "would sync the gradients a second time" if isinstance(strategy, DDPStrategy) else "is not supported"
    raise ValueError(f"Invalid trainer.strategy: {name!r} ({type(strategy).__name__}, which {why}); expected "
                     "'game_ddp' (one or more devices) or 'auto' on one device")


def last_checkpoint_note(trainer: Trainer) -> str:
    callback = trainer.checkpoint_callback
    path = getattr(callback, "last_model_path", "")
    if not path:
        return "; no checkpoint was saved"
    return f"; the last checkpoint, {path}, is from step {getattr(callback, '_last_global_step_saved', '?')}"


#: errno values of a full disk or quota: a fault of the machine, not of the input (exit status 1, not 2).
_FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
_PATH_NAMES = ("filepath", "file_path", "filename", "fname", "urlpath", "path")


@contextmanager
def full_disk_ends_run() -> Iterator[None]:
    """A full disk or quota while writing (checkpoints, logs, sample grids) ends the run with one line naming the
    file and exit status 1, not a 60-130 line traceback. Every other error propagates unchanged.

    Writer threads (TensorBoard's event writer) meet the full disk first: their error is kept quietly instead of
    printed by ``threading.excepthook``, and names the file when the main thread's error does not.
    """
    in_threads: list[OSError] = []
    previous_hook = threading.excepthook

    def keep_full_disk(args: threading.ExceptHookArgs) -> None:
        if isinstance(args.exc_value, OSError) and args.exc_value.errno in _FULL_DISK:
            in_threads.append(args.exc_value)
        else:
            previous_hook(args)

    threading.excepthook = keep_full_disk
    try:
        yield
    except OSError as error:
        if error.errno not in _FULL_DISK:
            raise
        path = _written_path(error)
        if path == _UNKNOWN_FILE and in_threads:
            path = _written_path(in_threads[0])
        print(f"{PROG}: error: no space left on device writing {path} ({error.strerror}); free "
              "space or choose another trainer.default_root_dir, then resume with --ckpt_path last",
              file=sys.stderr, flush=True)
        raise SystemExit(EXIT_FAULT) from None
    finally:
        threading.excepthook = previous_hook


_UNKNOWN_FILE = "an unknown file"


def _written_path(error: OSError) -> str:
    """The file being written: the error's filename, else the innermost open file or path variable of the traceback
    (an error from write() or flush() names no file); an atomic write's temporary is named by its target."""
    if error.filename:
        return _target_of(os.fsdecode(error.filename))
    for frame, _ in reversed(list(traceback.walk_tb(error.__traceback__))):
        for name, value in frame.f_locals.items():
            if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
                return _target_of(value.name)
            if name in _PATH_NAMES and isinstance(value, (str, os.PathLike)):
                return _target_of(os.fsdecode(value))
    return _UNKNOWN_FILE


def _target_of(path: str) -> str:
    """``<dir>/last.ckpt`` for the temporary ``<dir>/.last.ckpt.tmp-<pid>`` that AtomicCheckpointIO writes first."""
    match = re.fullmatch(r"\.(.+)\.tmp-\d+", os.path.basename(path))
    return os.path.join(os.path.dirname(path), match.group(1)) if match else path
