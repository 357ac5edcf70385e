"""Per-player optimizer settings as plain config fields, and the optimizer a scheme needs for them.

The scheme picks the family (plain, extragradient, past extragradient, optimistic); the config
picks the base rule and its numbers. So ``lr_D / lr_G`` and the momentum are plain fields that a
YAML file or a hyper-parameter search sets, and a scheme never meets an optimizer it cannot drive.
Each player's step-size schedule (two time scales, a decaying generator) is a few more such fields, turned into a
LambdaLR by :meth:`OptimizerConfig.scheduler` (see :mod:`lightning_gan.optim.schedules`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

import torch
from torch.optim import Optimizer

from lightning_gan.optim.adam import Adam
from lightning_gan.optim.extragradient import ExtraAdam, ExtraSGD, PastExtraAdam, PastExtraSGD
from lightning_gan.optim.optimistic import OptimisticAdam, OptimisticSGD
from lightning_gan.optim.schedules import GameLR, Schedule
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
        schedule: the step size over game iterations, ``lr`` times a factor (see
            :mod:`lightning_gan.optim.schedules`): ``constant``, ``linear``, ``cosine``, ``step``, ``inverse_sqrt``
            (lr / sqrt(1 + t / t0)) or ``inverse_time`` (lr / (1 + t / t0)).
        warmup: iterations of linear warm-up before the decay starts, >= 0 (any schedule).
        decay_steps: iterations of the linear / cosine decay, or between two steps of ``step``; >= 1.
        final_factor: the step size at the end of a linear / cosine decay over ``lr``, in [0, 1].
        gamma: ``step``'s factor, in (0, 1].
        t0: the time scale of ``inverse_sqrt`` / ``inverse_time`` in iterations, > 0.
        Values a schedule does not use are ignored.
    """

    rule: Literal["sgd", "adam"] = "adam"
    lr: float = 2e-4
    momentum: float = 0.5
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup: int = 0
    decay_steps: int | None = None
    final_factor: float = 0.0
    gamma: float = 0.1
    t0: float = 1.0

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

    def lr_schedule(self) -> Schedule:
        """The factor eta_t / lr of this player's step size at game iteration t."""
        return Schedule(self.schedule, self.warmup, self.decay_steps, self.final_factor, self.gamma, self.t0)

    def scheduler(self, optimizer: Optimizer) -> GameLR:
        """The LambdaLR to step once per game iteration (sets ``optimizer``'s lr to iteration 0's value)."""
        return GameLR(optimizer, self.lr_schedule())

    def validate(self, field: str) -> None:
        """Raise a one-line ValueError naming ``field`` (e.g. ``d_optimizer``) if a value is invalid."""
        self.lr_schedule().check(field)
        try:
            self.build([torch.nn.Parameter(torch.zeros(1))])
        except ValueError as error:
            raise ValueError(f"{field}: {error}") from None
