"""Adam whose first-moment coefficient may be negative."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT, _get_scalar_dtype

from lightning_gan.optim._rules import adam_updates
from lightning_gan.optim.base import (
    GameOptimizer,
    check_momentum,
    check_non_negative,
    check_positive,
    check_unit_interval,
)


class Adam(GameOptimizer):
    """Adam with ``-1 < beta1 < 1``.

    Same update as ``torch.optim.Adam`` (L2 ``weight_decay``, no amsgrad) for ``beta1 >= 0``;
    ``torch.optim.Adam`` rejects ``beta1 < 0``, which Gidel et al. (AISTATS 2019) use as negative
    momentum for GANs. Betas are cast to float, so numpy values sampled by a search are accepted.

    Args:
        params: parameters or parameter groups.
        lr: step size, > 0.
        betas: ``(beta1, beta2)`` with -1 < beta1 < 1 and 0 <= beta2 < 1.
        eps: added to the denominator, > 0.
        weight_decay: L2 penalty, >= 0.
        foreach: use the multi-tensor path (default: on where torch uses it, i.e. not on CPU).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
    ) -> None:
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"Invalid betas: {betas!r}; expected a pair (beta1, beta2)")
        defaults = dict(
            lr=check_positive("lr", lr),
            betas=(check_momentum("beta1", betas[0]), check_unit_interval("beta2", betas[1])),
            eps=check_positive("eps", eps),
            weight_decay=check_non_negative("weight_decay", weight_decay),
            foreach=foreach,
        )
        super().__init__(params, defaults)

    def _updates(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        for p in params:
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        beta1, beta2 = group["betas"]
        return adam_updates(
            params, grads,
            [self.state[p]["exp_avg"] for p in params],
            [self.state[p]["exp_avg_sq"] for p in params],
            [self.state[p]["step"] for p in params],
            lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
            weight_decay=group["weight_decay"], foreach=self._use_foreach(group, params),
        )
