"""Shared machinery of the game optimizers: argument checks, gradient collection, the plain step."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT, _default_to_fused_or_foreach, _use_grad_for_differentiable


def check_positive(name: str, value: Any) -> float:
    """Return ``value`` as a float, or raise if it is not a finite number > 0."""
    if not _is_real(value) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"Invalid {name}: {value!r}; expected a finite number > 0")
    return float(value)


def check_non_negative(name: str, value: Any) -> float:
    if not _is_real(value) or not value >= 0 or not math.isfinite(value):
        raise ValueError(f"Invalid {name}: {value!r}; expected a finite number >= 0")
    return float(value)


def check_momentum(name: str, value: Any) -> float:
    """Momentum may be negative (Gidel et al., 2019) but must lie strictly inside (-1, 1)."""
    if not _is_real(value) or not -1 < value < 1:
        raise ValueError(f"Invalid {name}: {value!r}; expected -1 < {name} < 1 (negative values give negative momentum)")
    return float(value)


def check_unit_interval(name: str, value: Any) -> float:
    if not _is_real(value) or not 0 <= value < 1:
        raise ValueError(f"Invalid {name}: {value!r}; expected 0 <= {name} < 1")
    return float(value)


def _is_real(value: Any) -> bool:
    # Tune samples numpy floats and 0-d tensors; bool is an int subclass but never a valid rate.
    if isinstance(value, bool):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


class GameOptimizer(Optimizer):
    """A ``torch.optim.Optimizer`` whose base rule (SGD or Adam) maps gradients to updates.

    Subclasses implement :meth:`_updates`; schemes (plain, extragradient, optimistic) decide where
    the update is applied. All hyper-parameters live in ``param_groups`` and all tensors in
    ``state``, so ``state_dict()`` captures an optimizer completely, even mid-iteration.
    """

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        if defaults.get("differentiable", False):
            raise ValueError("Invalid differentiable: True; the game optimizers support only differentiable=False")
        foreach = defaults.get("foreach")
        if foreach is not None and not isinstance(foreach, bool):
            raise ValueError(f"Invalid foreach: {foreach!r}; expected True, False or None")
        defaults = {**defaults, "differentiable": False}
        super().__init__(params, defaults)

    def _updates(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        """Advance the rule's state with ``grads`` and return the updates (parameters move by -u)."""
        raise NotImplementedError

    def _use_foreach(self, group: dict[str, Any], params: list[Tensor]) -> bool:
        if group["foreach"] is None:
            _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
            return foreach
        return group["foreach"]

    @staticmethod
    def _params_with_grads(group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
        params, grads = [], []
        for p in group["params"]:
            if p.grad is not None:
                if p.grad.is_sparse:
                    raise RuntimeError("The game optimizers do not support sparse gradients")
                params.append(p)
                grads.append(p.grad)
        return params, grads

    @staticmethod
    def _run_closure(closure: Callable[[], float] | None) -> float | None:
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    @_use_grad_for_differentiable
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One plain step ``p <- p - u(grad)`` with the gradient now in ``.grad``."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            params, grads = self._params_with_grads(group)
            if params:
                torch._foreach_sub_(params, self._updates(group, params, grads))
        return loss
