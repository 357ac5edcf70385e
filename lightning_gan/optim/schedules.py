"""Per-player step-size schedules, counted in game iterations.

A schedule is a factor of the player's base step size ``eta_0`` (``g_optimizer.lr`` / ``d_optimizer.lr``) at
iteration ``t`` (0, 1, ...: ``trainer.global_step`` when the iteration starts)::

    eta_t = eta_0 * warm(t) * decay(s),   s = max(0, t - warmup),   warm(t) = min(1, (t + 1) / (warmup + 1))

    constant       decay(s) = 1
    linear         decay(s) = 1 - (1 - final_factor) * min(s, T) / T                        T = decay_steps
    cosine         decay(s) = final_factor + (1 - final_factor) * (1 + cos(pi * min(s, T) / T)) / 2
    step           decay(s) = gamma ** floor(s / T)
    inverse_sqrt   decay(s) = 1 / sqrt(1 + s / t0)
    inverse_time   decay(s) = 1 / (1 + s / t0)

so the ``warmup`` first iterations ramp up linearly (never at 0: no iteration is wasted) and the decay starts after
them. Two time-scale updates (Heusel et al., 2017) give each player its own ``eta_0`` and schedule.

The factor is one closed form (:class:`Schedule`, a picklable callable) under one ``torch.optim.lr_scheduler.LambdaLR``
per player (:class:`GameLR`), stepped once per game iteration after the scheme's step: every half-step of an
iteration (extragradient's extrapolation and update, alternating's D and G steps) sees the same value, every rank
computes the same value without communication, and a resumed run the same value. torch's own LinearLR,
CosineAnnealingLR, StepLR and SequentialLR are chainable (each value is the previous one times a ratio), so their
value after t steps carries t roundings and depends on the lr a callback last wrote; the closed form does not.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from collections.abc import Iterable
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["SCHEDULES", "GameLR", "Schedule", "resync_schedulers", "step_schedulers"]

SCHEDULES = ("constant", "linear", "cosine", "step", "inverse_sqrt", "inverse_time")
#: The schedules whose decay needs ``decay_steps`` (their length, or step's period).
_NEEDS_DECAY_STEPS = ("linear", "cosine", "step")


@dataclass
class Schedule:
    """The factor ``eta_t / eta_0`` at iteration ``t`` (see the module docstring); fields as in OptimizerConfig.

    A plain class with a plain ``__dict__``, so that LambdaLR's ``state_dict`` holds it and checkpoints still load
    with ``torch.load(weights_only=True)``.
    """

    name: str = "constant"
    warmup: int = 0
    decay_steps: int | None = None
    final_factor: float = 0.0
    gamma: float = 0.1
    t0: float = 1.0

    def __call__(self, t: int) -> float:
        return self.warm(t) * self.decay(max(0, t - self.warmup))

    def warm(self, t: int) -> float:
        return 1.0 if t >= self.warmup else (t + 1) / (self.warmup + 1)

    def decay(self, s: int) -> float:
        if self.name == "constant":
            return 1.0
        if self.name == "inverse_sqrt":
            return 1.0 / math.sqrt(1.0 + s / self.t0)
        if self.name == "inverse_time":
            return 1.0 / (1.0 + s / self.t0)
        T = self.decay_steps
        if self.name == "step":
            return self.gamma ** (s // T)
        progress = min(s, T) / T
        if self.name == "linear":
            return 1.0 - (1.0 - self.final_factor) * progress
        return self.final_factor + (1.0 - self.final_factor) * (1.0 + math.cos(math.pi * progress)) / 2

    @property
    def trivial(self) -> bool:
        """Constant without warm-up: no scheduler is built (the run is exactly the unscheduled one)."""
        return self.name == "constant" and self.warmup == 0

    def check(self, field: str) -> None:
        """Raise a one-line ValueError naming ``field.<key>`` for the first invalid value this schedule uses.

        Values the chosen schedule does not use are ignored (as beta2 under SGD), so that a search may switch the
        schedule while the other keys stay fixed. A decay longer than the run is not an error: the run stops on the
        way (and a resume with a larger ``max_steps`` continues the same schedule); a run longer than the decay
        keeps the final factor.
        """
        if not isinstance(self.name, str) or self.name not in SCHEDULES:
            raise ValueError(f"Invalid {field}.schedule: {self.name!r}; expected one of {', '.join(SCHEDULES)}")
        if not _is_int(self.warmup) or self.warmup < 0:
            raise ValueError(f"Invalid {field}.warmup: {self.warmup!r}; expected an integer >= 0 "
                             "(iterations of linear warm-up)")
        if self.name in _NEEDS_DECAY_STEPS and (not _is_int(self.decay_steps) or self.decay_steps < 1):
            what = "iterations between two multiplications by gamma" if self.name == "step" else "length of the decay"
            raise ValueError(f"Invalid {field}.decay_steps: {self.decay_steps!r}; expected an integer >= 1 for "
                             f"schedule {self.name!r} ({what}, in iterations)")
        if self.name in ("linear", "cosine") and not (_is_real(self.final_factor) and 0 <= self.final_factor <= 1):
            raise ValueError(f"Invalid {field}.final_factor: {self.final_factor!r}; expected 0 <= final_factor <= 1 "
                             "(the step size at the end of the decay over the initial one)")
        if self.name == "step" and not (_is_real(self.gamma) and 0 < self.gamma <= 1):
            raise ValueError(f"Invalid {field}.gamma: {self.gamma!r}; expected 0 < gamma <= 1")
        if self.name in ("inverse_sqrt", "inverse_time") and not (
                _is_real(self.t0) and self.t0 > 0 and math.isfinite(self.t0)):
            raise ValueError(f"Invalid {field}.t0: {self.t0!r}; expected a finite number > 0 (iterations)")


class GameLR(LambdaLR):
    """A player's LambdaLR, stepped once per game iteration, whose only restored state is the iteration count.

    ``eta_0`` and the schedule are the run's own values: after a resume those are the checkpoint's (or a step size
    allowed by ``--resume_allow``), under PBT the trial's mutated ones. So loading keeps the constructed
    ``base_lrs`` and :class:`Schedule` and sets each group's lr to ``eta_0 * factor(t)`` at the restored ``t``,
    replacing the raw lr a resume override wrote into the restored optimizer state.
    """

    def __init__(self, optimizer: Optimizer, schedule: Schedule) -> None:
        super().__init__(optimizer, schedule)  # sets the lr of iteration 0 (warm-up's first value)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict.get("_step_count", self.last_epoch + 1))
        self.resync()

    def resync(self) -> None:
        """Set every group's lr to ``eta_0 * factor(t)`` (the expression LambdaLR steps with: bit-identical)."""
        lrs = [base_lr * fn(self.last_epoch) for fn, base_lr in zip(self.lr_lambdas, self.base_lrs)]
        for group, base_lr, lr in zip(self.optimizer.param_groups, self.base_lrs, lrs):
            group["lr"], group["initial_lr"] = lr, base_lr  # a restored optimizer state holds the saved eta_0
        self._last_lr = list(lrs)


def _schedulers(schedulers: Any) -> Iterable[Any]:
    """``LightningModule.lr_schedulers()`` returns None, one scheduler or a list."""
    if schedulers is None:
        return ()
    return schedulers if isinstance(schedulers, (list, tuple)) else (schedulers,)


def step_schedulers(schedulers: Any) -> None:
    """Once per game iteration, after the scheme's step: the next iteration's step sizes."""
    for scheduler in _schedulers(schedulers):
        scheduler.step()


def resync_schedulers(schedulers: Any) -> None:
    """At train start: callbacks (Tune's ConfigOptimizerScalars) may have written raw lrs; put the schedule's back."""
    for scheduler in _schedulers(schedulers):
        if isinstance(scheduler, GameLR):
            scheduler.resync()


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)
