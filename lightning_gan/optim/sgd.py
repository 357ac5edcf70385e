"""SGD with heavy-ball momentum that may be negative."""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.optim.optimizer import ParamsT

from lightning_gan.optim._rules import sgd_updates
from lightning_gan.optim.base import (
    GameOptimizer,
    check_momentum,
    check_non_negative,
    check_positive,
    check_unit_interval,
)


class SGD(GameOptimizer):
    """Stochastic gradient descent with momentum in (-1, 1).

    Same update as ``torch.optim.SGD`` (``buf = momentum * buf + (1 - dampening) * g``,
    ``p -= lr * buf``), which for a constant step is the heavy ball
    ``p_{t+1} = p_t - lr * g_t + momentum * (p_t - p_{t-1})``. Unlike ``torch.optim.SGD`` it accepts
    ``momentum < 0``: negative momentum (Gidel et al., AISTATS 2019) makes alternating gradient
    descent converge on bilinear games, where zero momentum cycles and positive momentum diverges.

    Args:
        params: parameters or parameter groups.
        lr: step size, > 0.
        momentum: heavy-ball coefficient, -1 < momentum < 1.
        dampening: dampening of the momentum, 0 <= dampening < 1.
        nesterov: use Nesterov momentum (needs momentum != 0 and dampening == 0).
        weight_decay: L2 penalty, >= 0.
        foreach: use the multi-tensor path (default: on where torch uses it, i.e. not on CPU).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=check_positive("lr", lr),
            momentum=check_momentum("momentum", momentum),
            dampening=check_unit_interval("dampening", dampening),
            nesterov=bool(nesterov),
            weight_decay=check_non_negative("weight_decay", weight_decay),
            foreach=foreach,
        )
        if nesterov and (defaults["momentum"] == 0 or defaults["dampening"] != 0):
            raise ValueError(f"Invalid nesterov: True with momentum={momentum}, dampening={dampening}; "
                             "Nesterov momentum needs momentum != 0 and dampening == 0")
        super().__init__(params, defaults)

    def _updates(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        momentum_buffers = [self.state[p].get("momentum_buffer") for p in params]
        updates = sgd_updates(
            params, grads, momentum_buffers,
            lr=group["lr"], momentum=group["momentum"], dampening=group["dampening"],
            nesterov=group["nesterov"], weight_decay=group["weight_decay"],
            foreach=self._use_foreach(group, params),
        )
        if group["momentum"] != 0:
            for p, buf in zip(params, momentum_buffers):
                self.state[p]["momentum_buffer"] = buf
        return updates

