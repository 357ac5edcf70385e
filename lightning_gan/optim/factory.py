"""Per-player optimizer settings as plain config fields, and the optimizer a scheme needs for them.

The scheme picks the family (plain, extragradient, past extragradient, optimistic); the config
picks the base rule and its numbers. So ``lr_D / lr_G`` and the momentum are plain fields that a
YAML file or a hyper-parameter search sets, and a scheme never meets an optimizer it cannot drive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

import torch
from torch.optim import Optimizer

from lightning_gan.optim.adam import Adam
from lightning_gan.optim.extragradient import ExtraAdam, ExtraSGD, PastExtraAdam, PastExtraSGD
from lightning_gan.optim.optimistic import OptimisticAdam, OptimisticSGD
from lightning_gan.optim.sgd import SGD

OPTIMIZER_CLASSES: dict[tuple[str, str], type[Optimizer]] = {
    ("sgd", "plain"): SGD,
    ("adam", "plain"): Adam,
    ("sgd", "extra"): ExtraSGD,
    ("adam", "extra"): ExtraAdam,
    ("sgd", "past_extra"): PastExtraSGD,
    ("adam", "past_extra"): PastExtraAdam,
    ("sgd", "optimistic"): OptimisticSGD,
    ("adam", "optimistic"): OptimisticAdam,
}


@dataclass(frozen=True)
class OptimizerConfig:
    """One player's optimizer.

    Args:
        rule: base update rule, ``"sgd"`` (heavy ball) or ``"adam"``.
        lr: step size, > 0.
        momentum: SGD momentum or Adam beta1, in (-1, 1); negative values give negative momentum.
        beta2: Adam's second-moment coefficient, in [0, 1) (ignored by SGD).
        eps: Adam's denominator term, > 0 (ignored by SGD).
        weight_decay: L2 penalty, >= 0.
    """

    rule: Literal["sgd", "adam"] = "adam"
    lr: float = 2e-4
    momentum: float = 0.5
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0

    def build(self, params: Iterable[torch.Tensor], family: str = "plain") -> Optimizer:
        """The optimizer of ``family`` ("plain", "extra", "past_extra", "optimistic") for this rule."""
        key = (self.rule, family)
        if key not in OPTIMIZER_CLASSES:
            rules = sorted({r for r, _ in OPTIMIZER_CLASSES})
            families = sorted({f for _, f in OPTIMIZER_CLASSES})
            raise ValueError(f"Invalid optimizer rule/family: {key}; expected rule in {rules} and family in {families}")
        cls = OPTIMIZER_CLASSES[key]
        if self.rule == "sgd":
            return cls(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        return cls(params, lr=self.lr, betas=(self.momentum, self.beta2), eps=self.eps,
                   weight_decay=self.weight_decay)

    def validate(self, field: str) -> None:
        """Raise a one-line ValueError naming ``field`` (e.g. ``d_optimizer``) if a value is invalid."""
        try:
            self.build([torch.nn.Parameter(torch.zeros(1))])
        except ValueError as error:
            raise ValueError(f"{field}: {error}") from None
