"""EvaluationBudget: stop training once a budget of vector-field evaluations is spent.

Schemes cost different numbers of F-evaluations per iteration (simultaneous 1, extragradient 2, alternating
n_dis + 1, SVRE 4 plus its snapshot passes), so methods are compared at equal cost, not at equal iterations
(Gidel et al. 2019; Chavdarova et al. 2019). The counter is the module's own (``GANModule.evaluations``),
identical on every rank, so every rank stops at the same iteration without a collective.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

__all__ = ["EvaluationBudget"]


class EvaluationBudget(Callback):
    """Stops ``fit`` after the first iteration at which ``pl_module.evaluations >= max_evaluations``.

    Args:
        max_evaluations: F-evaluations (at the global batch) to spend, >= 1.

    Raises:
        ValueError: ``max_evaluations`` < 1.
    """

    def __init__(self, max_evaluations: int) -> None:
        if isinstance(max_evaluations, bool) or not isinstance(max_evaluations, int) or max_evaluations < 1:
            raise ValueError(f"Invalid max_evaluations: {max_evaluations!r}; expected an integer >= 1")
        self.max_evaluations = max_evaluations

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if getattr(pl_module, "evaluations", 0) >= self.max_evaluations:
            trainer.should_stop = True
