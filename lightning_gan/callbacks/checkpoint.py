"""FinalStepCheckpoint: Lightning's ModelCheckpoint that also leaves ``last.ckpt`` at the run's final iteration.

ModelCheckpoint writes ``last.ckpt`` when it saves (every ``every_n_train_steps`` iterations here) and, at train end,
only when it never saved at all: a run of 150 iterations with ``every_n_train_steps=100`` ends with ``last.ckpt`` at
step 100, so ``--ckpt_path last`` and ``lightning-gan evaluate`` would silently use a stale state. This subclass adds
one save at train end when the last save was at another step.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override

__all__ = ["FinalStepCheckpoint"]


class FinalStepCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (same arguments) that, with ``save_last``, also saves ``last.ckpt`` when training ends at a
    step it has not saved yet (max_steps reached, or a callback stopped the run).

    Every rank takes part in that save, as Lightning requires: ``on_train_end`` runs on all ranks, and the decision
    depends only on the global step, which all ranks share. A run that fails does not reach ``on_train_end``
    (``save_on_exception`` covers that case). It relies on ModelCheckpoint's own bookkeeping of the last saved step
    and its last-checkpoint writer (``_last_global_step_saved``, ``_should_skip_saving_checkpoint``,
    ``_save_last_checkpoint``), read with lightning 2.6.6.
    """

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Skipped when already saved at this step, during fast_dev_run, or outside fit (Lightning's own rules).
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)
