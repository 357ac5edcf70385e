"""FinalStepCheckpoint: Lightning's ModelCheckpoint with ``last.ckpt`` always the newest state of its own folder.

ModelCheckpoint writes ``last.ckpt`` when it saves (every ``every_n_train_steps`` iterations here) and, at train end,
only when it never saved at all: a run of 150 iterations with ``every_n_train_steps=100`` ends with ``last.ckpt`` at
step 100, so ``--ckpt_path last`` and ``lightning-gan evaluate`` would silently use a stale state. This subclass adds
one save at train end when the last save was at another step.

ModelCheckpoint also writes ``last-v1.ckpt``, ``last-v2.ckpt``, ... whenever ``last.ckpt`` exists but is not the path
it remembers: after the run folder was moved or copied (the remembered path is the old absolute one) and when a
config is re-run in the same folder. ``last.ckpt`` then stays stale. Here ``last.ckpt`` is always overwritten, and
the state it held is kept as ``last-previous-1.ckpt`` (``keep_previous`` of them).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor
from typing_extensions import override

from lightning_gan.checkpointing import keep_previous, read_checkpoint

__all__ = ["FinalStepCheckpoint"]

log = logging.getLogger(__name__)

#: Entries of ModelCheckpoint's state that hold file paths inside its ``dirpath``.
_PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")


class FinalStepCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (same arguments) that, with ``save_last``, also saves ``last.ckpt`` when training ends at a
    step it has not saved yet (max_steps reached, or a callback stopped the run), always writes ``last.ckpt`` itself
    (never ``last-v1.ckpt``), and keeps the states it replaces.

    Every rank takes part in that save, as Lightning requires: ``on_train_end`` runs on all ranks, and the decision
    depends only on the global step, which all ranks share. A run that fails does not reach ``on_train_end``
    (``save_on_exception`` covers that case). It relies on ModelCheckpoint's own bookkeeping of the last saved step
    and its last-checkpoint writer (``_last_global_step_saved``, ``_should_skip_saving_checkpoint``,
    ``_save_last_checkpoint``), read with lightning 2.6.6.

    Args:
        keep_previous: states kept beside ``last.ckpt`` when it is overwritten: ``last-previous-1.ckpt`` (the one
            before), ... ``last-previous-<n>.ckpt``; 0 keeps none. Hard links where the file system has them, so
            the cost is a directory entry. The other arguments are ModelCheckpoint's.
    """

    def __init__(self, *args: Any, keep_previous: int = 1, **kwargs: Any) -> None:
        if isinstance(keep_previous, bool) or not isinstance(keep_previous, int) or keep_previous < 0:
            raise ValueError(f"Invalid keep_previous: {keep_previous!r}; expected an integer >= 0")
        super().__init__(*args, **kwargs)
        self.keep_previous = keep_previous

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Skipped when already saved at this step, during fast_dev_run, or outside fit (Lightning's own rules).
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Rebase the paths of a moved or copied run folder on this ``dirpath``, so that Lightning restores them
        (it drops them, with a warning, when ``dirpath`` differs) and they name this folder's files."""
        super().load_state_dict(_rebased(state_dict, self.dirpath))

    @override
    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        if self.save_last is not True:  # "link": Lightning's own (a symlink to the top-k file)
            super()._save_last_checkpoint(trainer, monitor_candidates)
            return
        filepath = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)  # no version suffix
        self.last_model_path = filepath  # before saving: it is part of the saved state
        if trainer.is_global_zero:  # the strategy writes on rank 0 only
            self._keep_previous(filepath, trainer.global_step)
        self._save_checkpoint(trainer, filepath)

    def _keep_previous(self, last: str, step: int) -> None:
        """Rotate ``last.ckpt`` into ``last-previous-1.ckpt`` if it is a loadable state of another step.

        Rank 0 only, so it must not raise (the other ranks would wait in the save's barrier): a failure is logged.
        """
        if self.keep_previous < 1 or not os.path.isfile(last):
            return
        try:
            if read_checkpoint(last, mmap=True)["global_step"] == step:
                return  # the same state again: keep the older ones
        except ValueError as error:
            log.warning(f"FinalStepCheckpoint: overwriting {last}, not keeping it: {error}")
            return
        try:
            keep_previous(last, self.keep_previous)
        except OSError as error:
            log.warning(f"FinalStepCheckpoint: could not keep the previous state of {last}: {error}")


def _rebased(state_dict: dict[str, Any], dirpath: Any) -> dict[str, Any]:
    """``state_dict`` with the paths under its saved ``dirpath`` moved under ``dirpath``."""
    old = state_dict.get("dirpath")
    if not old or not dirpath or Path(old) == Path(dirpath):
        return state_dict

    def move(path: Any) -> Any:
        if not isinstance(path, str) or not path or Path(old) not in Path(path).parents:
            return path
        return str(Path(dirpath) / Path(path).relative_to(old))

    state = dict(state_dict, dirpath=dirpath)
    state.update({key: move(state[key]) for key in _PATH_KEYS if key in state})
    if isinstance(state.get("best_k_models"), dict):
        state["best_k_models"] = {move(path): score for path, score in state["best_k_models"].items()}
    return state
