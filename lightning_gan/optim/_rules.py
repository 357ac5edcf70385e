"""The two base update rules, heavy-ball SGD and Adam, as functions from gradients to updates.

Every game optimizer composes one of these rules with a scheme (a plain step, an extrapolation
step, an optimistic correction). A rule returns the update ``u`` (the parameter moves by ``-u``)
instead of applying it, so a scheme can apply it to the current parameters, to a saved copy, or
twice. Both rules accept a negative momentum coefficient: ``torch.optim`` refuses one, and negative
momentum is what makes alternating gradient converge on bilinear games (Gidel et al., 2019).

The numbers follow ``torch.optim.SGD`` and ``torch.optim.Adam`` (first momentum buffer = first
gradient; Adam's bias correction and ``eps`` placement), so for beta >= 0 a plain step matches them.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, _get_value


def sgd_updates(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    foreach: bool,
) -> list[Tensor]:
    """Heavy-ball SGD: ``buf = momentum * buf + (1 - dampening) * g``, ``u = lr * buf``.

    ``momentum_buffers`` is updated in place; a ``None`` entry is replaced by a new buffer, which the
    caller stores in the optimizer state.
    """
    if foreach and momentum_buffers and all(b is not None for b in momentum_buffers):
        return _sgd_updates_foreach(params, grads, momentum_buffers, lr=lr, momentum=momentum,
                                    dampening=dampening, nesterov=nesterov, weight_decay=weight_decay)
    updates = []
    for i, (param, grad) in enumerate(zip(params, grads)):
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        if momentum != 0:
            buf = momentum_buffers[i]
            if buf is None:
                buf = torch.clone(grad).detach()
                momentum_buffers[i] = buf
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            grad = grad.add(buf, alpha=momentum) if nesterov else buf
        updates.append(grad.mul(lr))
    return updates


def _sgd_updates_foreach(params, grads, momentum_buffers, *, lr, momentum, dampening, nesterov,
                         weight_decay) -> list[Tensor]:
    """Multi-tensor version of :func:`sgd_updates` for when every momentum buffer exists."""
    updates: list[Tensor | None] = [None] * len(params)
    grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads, momentum_buffers],
                                                           with_indices=True)
    for (dev_params, dev_grads, dev_bufs), indices in grouped.values():
        if weight_decay != 0:
            dev_grads = torch._foreach_add(dev_grads, dev_params, alpha=weight_decay)
        if momentum != 0:
            torch._foreach_mul_(dev_bufs, momentum)
            torch._foreach_add_(dev_bufs, dev_grads, alpha=1 - dampening)
            dev_grads = torch._foreach_add(dev_grads, dev_bufs, alpha=momentum) if nesterov else dev_bufs
        for index, update in zip(indices, torch._foreach_mul(dev_grads, lr)):
            updates[index] = update
    return updates  # type: ignore[return-value]


def adam_updates(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    foreach: bool,
) -> list[Tensor]:
    """Adam: moments and step counts are updated in place; ``u = lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)``.

    With ``-1 < beta1 < 0`` the bias correction ``1 - beta1**t`` stays in (0, 2), so the rule is
    well defined for negative momentum too.
    """
    if foreach:
        return _adam_updates_foreach(params, grads, exp_avgs, exp_avg_sqs, steps, lr=lr, beta1=beta1,
                                     beta2=beta2, eps=eps, weight_decay=weight_decay)
    updates = []
    for param, grad, exp_avg, exp_avg_sq, step_t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        step_t += 1
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = _get_value(step_t)
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        # one new tensor per parameter: the denominator, then the update written over it (same kernels and
        # operands as ``(exp_avg_sq.sqrt() / bc2).add_(eps)`` and ``exp_avg.div(denom).mul_(...)``: same bits)
        denom = exp_avg_sq.sqrt().div_(bias_correction2_sqrt).add_(eps)
        updates.append(torch.div(exp_avg, denom, out=denom).mul_(lr / bias_correction1))
    return updates


def _adam_updates_foreach(params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1, beta2, eps,
                          weight_decay) -> list[Tensor]:
    """Multi-tensor version of :func:`adam_updates`."""
    updates: list[Tensor | None] = [None] * len(params)
    grouped = Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, exp_avgs, exp_avg_sqs, steps], with_indices=True)
    for (dev_params, dev_grads, dev_exp_avgs, dev_exp_avg_sqs, dev_steps), indices in grouped.values():
        torch._foreach_add_(dev_steps, 1)
        if weight_decay != 0:
            dev_grads = torch._foreach_add(dev_grads, dev_params, alpha=weight_decay)
        torch._foreach_lerp_(dev_exp_avgs, dev_grads, 1 - beta1)
        torch._foreach_mul_(dev_exp_avg_sqs, beta2)
        torch._foreach_addcmul_(dev_exp_avg_sqs, dev_grads, dev_grads, 1 - beta2)
        step_sizes = [lr / (1 - beta1 ** _get_value(s)) for s in dev_steps]
        bias_correction2_sqrt = [(1 - beta2 ** _get_value(s)) ** 0.5 for s in dev_steps]
        denom = torch._foreach_sqrt(dev_exp_avg_sqs)
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, eps)
        dev_updates = torch._foreach_div(dev_exp_avgs, denom)
        torch._foreach_mul_(dev_updates, step_sizes)
        for index, update in zip(indices, dev_updates):
            updates[index] = update
    return updates  # type: ignore[return-value]
