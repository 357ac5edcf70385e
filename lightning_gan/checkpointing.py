"""Checkpoint files: atomic writes in the target's own directory, rotation of previous states, and safe reads.

Lightning's ``TorchCheckpointIO`` saves through an fsspec transaction that writes the temporary file in ``$TMPDIR`` and
moves it over the target: across filesystems (a scratch mount, /dev/shm, NFS) that move is a copy over ``last.ckpt``,
so a kill or a full disk during the copy leaves a truncated checkpoint and a stray temporary in ``$TMPDIR``.
:class:`AtomicCheckpointIO` writes the temporary beside the target and renames it, which a file system does
atomically: a reader sees the old file or the new one, never part of one.

    Trainer(plugins=[AtomicCheckpointIO()])          # the ``lightning-gan`` command adds it by itself
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from lightning.fabric.plugins import CheckpointIO, TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH
from typing_extensions import override

__all__ = [
    "AtomicCheckpointIO",
    "atomic_save",
    "checkpoint_problem",
    "keep_previous",
    "previous_path",
    "read_checkpoint",
    "with_atomic_checkpoint_io",
]

#: The entry GANModule.on_save_checkpoint adds; a checkpoint without it was not written by GANModule.
MODULE_KEY = "lightning_gan"


def _temporary_path(path: Path) -> Path:
    """``.<name>.tmp-<pid>`` beside ``path``: same file system (so os.replace is atomic), hidden, not ``*.ckpt``."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _remove_stale_temporaries(path: Path) -> None:
    """Remove temporaries of ``path`` left by a writer that was killed (one writer per target: rank 0 of the run)."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        with contextlib.suppress(OSError):
            stale.unlink()


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable (the directory entry); some file systems refuse fsync on directories."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace_with(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(temporary)`` then ``os.replace``; on failure remove the temporary, re-raise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    temporary = _temporary_path(path)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:  # KeyboardInterrupt too: never leave a partial temporary behind
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _fsync_directory(path.parent)


def atomic_save(checkpoint: Any, path: _PATH) -> None:
    """``torch.save`` into a temporary beside ``path``, flush and fsync it, then ``os.replace`` it over ``path``.

    The previous file at ``path`` stays whole until the new one is complete on disk.
    """

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as file:
            try:
                torch.save(checkpoint, file)
            except RuntimeError as error:  # torch reports a failed write (a full disk) as its zip writer's error
                raise _os_error_in(error) or error from None
            file.flush()
            os.fsync(file.fileno())

    _replace_with(Path(path), write)


def _os_error_in(error: BaseException) -> Optional[OSError]:
    """The OSError (ENOSPC, EIO, ...) behind ``error``, if there is one in its chain."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _copy_file(source: Path, temporary: Path) -> None:
    with open(source, "rb") as src, open(temporary, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())


def _link_or_copy(source: Path, target: Path) -> None:
    """Make ``target`` hold ``source``'s bytes, atomically: a hard link (no copy) where possible, else a copy."""

    def write(temporary: Path) -> None:
        try:
            os.link(source, temporary)
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            _copy_file(source, temporary)

    _replace_with(target, write)


def previous_path(last: _PATH, k: int) -> Path:
    """``last-previous-<k>.ckpt`` beside ``last.ckpt``: the k-th newest state before it."""
    last = Path(last)
    return last.with_name(f"{last.stem}-previous-{k}{last.suffix}")


def keep_previous(last: _PATH, count: int) -> None:
    """Shift ``last.ckpt`` into ``last-previous-1.ckpt`` (and that into ``-2``, ... up to ``count``) before a new save.

    Only renames and a hard link (or copy), each atomic: ``last.ckpt`` is there, whole, at every instant.
    """
    last = Path(last)
    if count < 1 or not last.is_file():
        return
    for k in range(count - 1, 0, -1):
        if previous_path(last, k).is_file():
            os.replace(previous_path(last, k), previous_path(last, k + 1))
    _link_or_copy(last, previous_path(last, 1))


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic and durable (see :func:`atomic_save`); remote paths
    (``s3://`` ...) go to Lightning's own writer. Loading is unchanged."""

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_save(checkpoint, path)


def with_atomic_checkpoint_io(plugins: Any, strategy: Any = None) -> Optional[list[Any]]:
    """``plugins`` (None, one or a list) plus an :class:`AtomicCheckpointIO`, or None when the user chose a
    ``CheckpointIO`` already (as a plugin or on a strategy instance)."""
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if any(isinstance(p, CheckpointIO) for p in plugins) or getattr(strategy, "_checkpoint_io", None) is not None:
        return None
    return [*plugins, AtomicCheckpointIO()]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0].strip() if text else type(error).__name__
    line = line.split(" This is an internal miniz error")[0]  # torch's advice to file a bug, not about the file
    return line if len(line) <= 160 else line[:157] + "..."


def checkpoint_problem(path: _PATH) -> Optional[str]:
    """What makes ``path`` unusable as a file to load (missing, a directory, empty), or None."""
    path = Path(path)
    if not path.exists():
        return "it does not exist"
    if path.is_dir():
        return "it is a directory; expected a checkpoint file"
    if path.stat().st_size == 0:
        return "it is empty (0 bytes)"
    return None


def read_checkpoint(path: _PATH, *, mmap: bool = False) -> dict[str, Any]:
    """Load a GANModule checkpoint on the CPU with ``weights_only=True``, or raise a one-line ``ValueError`` saying
    what is wrong with it. ``mmap=True`` reads tensors lazily: cheap for looking at ``global_step``, but it does not
    read (so does not check) the tensor bytes."""
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(problem)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # noqa: BLE001  (torch raises RuntimeError, UnpicklingError, EOFError, ...)
        raise ValueError(f"it does not load (truncated, corrupt or not a PyTorch checkpoint: {_first_line(error)})"
                         ) from None
    if not isinstance(checkpoint, dict) or MODULE_KEY not in checkpoint:
        raise ValueError(f"it was not written by GANModule (no {MODULE_KEY!r} entry)")
    for key in ("state_dict", "global_step"):
        if key not in checkpoint:
            raise ValueError(f"it is incomplete (no {key!r} entry)")
    return checkpoint
