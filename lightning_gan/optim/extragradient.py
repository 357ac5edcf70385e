"""Extragradient and extrapolation from the past (Gidel et al., ICLR 2019).

Usage, one iteration of extragradient for a player::

    opt.zero_grad(); L(w).backward()          # gradient at w
    opt.extrapolation()                       # saves w, moves to w' = w - u(grad(w))
    opt.zero_grad(); L(w').backward()         # gradient at the extrapolated point
    opt.step()                                # w <- w - u(grad(w')), from the SAVED w

Extrapolation from the past needs one gradient per iteration: ``extrapolation()`` reuses the
gradient of the previous ``step()`` (kept in ``state``), so the first call only saves the point.

As in the reference code, the base rule's state sees both half-steps: ExtraAdam's moments take the
extrapolation gradient and the update gradient, and its step count grows by 2 per iteration.
The saved parameters and the previous gradient live in ``state``: an optimizer saved between
``extrapolation()`` and ``step()`` and loaded into a fresh one continues identically.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.optim.optimizer import _use_grad_for_differentiable

from lightning_gan.optim.adam import Adam
from lightning_gan.optim.base import GameOptimizer
from lightning_gan.optim.sgd import SGD


class Extragradient(GameOptimizer):
    """Adds ``extrapolation()`` to a base rule; ``step()`` updates from the saved point."""

    def _extrapolation_grads(self, group: dict) -> tuple[list[Tensor], list[Tensor]]:
        """The parameters that move at the extrapolation, and the gradients that move them."""
        return self._params_with_grads(group)

    def is_extrapolated(self) -> bool:
        """True between ``extrapolation()`` and ``step()``."""
        return any("saved_param" in self.state[p] for g in self.param_groups for p in g["params"])

    @_use_grad_for_differentiable
    def extrapolation(self) -> None:
        """Save the current point (once per iteration) and move to the extrapolated point.

        Calling it again before ``step()`` extrapolates further from the point reached; ``step()``
        still starts from the point saved by the first call, as in the reference code.
        """
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if "saved_param" not in state:
                    state["saved_param"] = p.detach().clone(memory_format=torch.preserve_format)
            params, grads = self._extrapolation_grads(group)
            if params:
                torch._foreach_sub_(params, self._updates(group, params, grads))

    @_use_grad_for_differentiable
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Update the saved point with the gradient now in ``.grad`` (taken at the extrapolated point).

        Parameters without a gradient return to the saved point.
        """
        if not self.is_extrapolated():
            raise RuntimeError(
                f"{type(self).__name__}.step() was called before extrapolation(); call extrapolation() "
                "once per iteration, compute the gradient at the extrapolated point, then call step()"
            )
        loss = self._run_closure(closure)
        for group in self.param_groups:
            params, grads = self._params_with_grads(group)
            if params:
                saved = [self.state[p]["saved_param"] for p in params]
                torch._foreach_sub_(saved, self._updates(group, params, grads))
            self._after_update(group, params, grads)
            for p in group["params"]:
                p.copy_(self.state[p].pop("saved_param"))
        return loss

    def _after_update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        """Hook for variants that remember something of this iteration's gradient."""


class PastExtragradient(Extragradient):
    """Extrapolation from the past: the extrapolation reuses the previous iteration's gradient."""

    def _extrapolation_grads(self, group: dict) -> tuple[list[Tensor], list[Tensor]]:
        params = [p for p in group["params"] if "prev_grad" in self.state[p]]
        return params, [self.state[p]["prev_grad"] for p in params]

    def _after_update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        for p, grad in zip(params, grads):
            self.state[p]["prev_grad"] = grad.detach().clone(memory_format=torch.preserve_format)


class ExtraSGD(Extragradient, SGD):
    """Extragradient with the SGD rule (momentum in (-1, 1)); see :class:`SGD` for the arguments."""


class ExtraAdam(Extragradient, Adam):
    """Extragradient with the Adam rule (beta1 in (-1, 1)); see :class:`Adam` for the arguments."""


class PastExtraSGD(PastExtragradient, SGD):
    """Extrapolation from the past with the SGD rule; see :class:`SGD` for the arguments."""


class PastExtraAdam(PastExtragradient, Adam):
    """Extrapolation from the past with the Adam rule; see :class:`Adam` for the arguments."""
