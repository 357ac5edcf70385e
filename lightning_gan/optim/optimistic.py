"""Optimistic gradient (Daskalakis et al., 2018; Gidel et al., 2019): one gradient per iteration.

``p <- p - 2 u_t + u_{t-1}``, where ``u_t`` is the base rule's update for the current gradient.
For Adam this is ``p <- p - 2 lr m_t/(sqrt(v_t)+eps) + lr m_{t-1}/(sqrt(v_{t-1})+eps)`` (with
torch's bias corrections inside ``u``). The previous update is kept in ``state["prev_update"]``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.optim.optimizer import _use_grad_for_differentiable

from lightning_gan.optim.adam import Adam
from lightning_gan.optim.base import GameOptimizer
from lightning_gan.optim.sgd import SGD


class Optimistic(GameOptimizer):
    """Adds the optimistic correction ``+u_{t-1} - u_t`` to a base rule's plain step."""

    @_use_grad_for_differentiable
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = self._run_closure(closure)
        for group in self.param_groups:
            params, grads = self._params_with_grads(group)
            if not params:
                continue
            updates = self._updates(group, params, grads)
            for p, update in zip(params, updates):
                state = self.state[p]
                previous = state.get("prev_update")
                p.sub_(update, alpha=2)
                if previous is not None:
                    p.add_(previous)
                state["prev_update"] = update
        return loss


class OptimisticSGD(Optimistic, SGD):
    """Optimistic gradient with the SGD rule; see :class:`SGD` for the arguments."""


class OptimisticAdam(Optimistic, Adam):
    """Optimistic Adam; see :class:`Adam` for the arguments."""
