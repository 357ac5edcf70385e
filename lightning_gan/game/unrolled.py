"""Unrolled GANs (Metz, Poole, Pfau, Sohl-Dickstein, "Unrolled Generative Adversarial Networks", ICLR 2017).

G's part of the field is the gradient of its loss through ``k`` differentiable steps of D's optimizer, while D
takes its normal step on the plain field:

    phi_0 = phi,   phi_{j+1} = phi_j - u_j(grad_phi L_D(theta, phi_j)),   F_G = d/dtheta L_G(theta, phi_k(theta))
    F_D = grad_phi L_D(theta, phi)   (= the first unrolled step's gradient, reused, detached)

with ``u_j`` the update rule of D's optimizer (heavy-ball SGD or Adam, as :mod:`lightning_gan.optim._rules`
computes it, ``eps`` outside the square root), started from D's *current* optimizer state (moments, momentum
buffer, step count: the reference, github poolio/unrolled_gan, unrolls Adam with its slot variables), on the *same*
sample as the evaluation (the reference unrolls on one batch), computed functionally (``create_graph=True``;
``torch.func.functional_call`` with substituted parameters and cloned buffers, so D's real BatchNorm statistics move
only with the first, real forward, as in the plain field). Penalties (R1, R2, GP) are part of L_D at every unrolled
step. The D steps follow the optimizer's *base* rule; a scheme's own corrections (extrapolation, optimistic) and the
projection (WGAN weight clipping) are not unrolled. ``k = 0`` is off: GameStep then takes the plain path, bit for bit.

It is a transform of each evaluation that involves G, so every scheme uses it: simultaneous (both players at once;
the plain D gradient is a by-product), alternating (G's one-player evaluation unrolls D from the current phi; D's
evaluations are plain), extragradient, past extragradient and optimistic (each evaluation of G unrolls from the
point where it is evaluated).

Distributed. Each unrolled step uses the *global* D gradient, so that the ranks stay identical and W ranks x B
samples equal one rank x W B:

    g_j = (1/W) allreduce_sum(g_j^r)       # differentiable: backward = allreduce_sum of the cotangents

one flat tensor per step (one collective forward, one in backward). Why the result is exact: see the W ranks'
computation as one graph with an input copy theta_r per rank (all equal in value) joined by the all-reduce nodes. The
backward of ``y = sum_s x_s`` sums the cotangents of every rank's copy of y, so by induction in reverse topological
order rank r's backward yields d(sum_s L_G^s)/d theta_r: every path from theta_r to any rank's loss is counted, and
each once. The usual mean all-reduce of G's field then gives (1/W) sum_r d(sum_s L_G^s)/d theta_r =
d(mean_s L_G^s)/d theta (the sum over the copies is the derivative in the shared theta), the gradient of the global
loss through the global unrolled D. Collectives per evaluation that involves G: k forward + k backward + the usual
one fused field all-reduce = 2k + 1; an evaluation of D alone (alternating) is plain: 1. Without a process group the
differentiable all-reduce is the identity (no collective).

Cost per evaluation that involves G: k more D forward/double-backward passes (each with the penalty's, if any) and
one backward of G through all of them; memory holds the k unrolled graphs (see ``bench/step_overhead.py --compare
unrolled``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_gan.optim.adam import Adam
from lightning_gan.optim.sgd import SGD

__all__ = ["FunctionalRule", "UnrollObjective", "Unrolled", "check_rule", "check_unroll_steps", "unroll"]

Reduce = Callable[[Tensor], Tensor]


class UnrollObjective(Protocol):
    """A game's losses on one sample as functions of player 1's (D's) parameters, differentiable in both players.

    ``params=None`` means D's live parameters and modules (its buffers move, as in the plain field); a list (in
    ``trainable_parameters`` order) substitutes them, leaving D's buffers untouched.
    """

    def discriminator_loss(self, params: Sequence[Tensor] | None) -> Tensor:
        """L_D(theta, phi), penalties included, averaged over the sample's micro-batches."""

    def generator_loss(self, params: Sequence[Tensor] | None) -> Tensor:
        """L_G(theta, phi), averaged over the sample's micro-batches."""


def check_unroll_steps(k: Any, *, scheme: str | None = None, consensus: float | None = None,
                       sync_batchnorm: bool = False) -> int:
    """The validated number of unrolled D steps (0: off). Raises a one-line ValueError naming ``unroll_steps``."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"Invalid unroll_steps: {k!r}; expected an integer >= 0 (0 for off)")
    if k == 0:
        return 0
    if scheme == "svre":
        raise ValueError(f"Invalid unroll_steps: {k} with scheme 'svre'; expected 0 (SVRE's variance-reduced "
                         "estimate has no unrolled form)")
    if consensus:
        raise ValueError(f"Invalid unroll_steps: {k} with consensus {consensus!r}; expected 0, or consensus null")
    if sync_batchnorm:
        raise ValueError(f"Invalid unroll_steps: {k} with sync_batchnorm; expected 0, or sync_batchnorm: false "
                         "(unrolling differentiates through D's backward, SyncBatchNorm's has collectives of its own)")
    return k


def _rule_kind(optimizer: Optimizer) -> str | None:
    """"sgd" or "adam" when the optimizer's base rule is one this module reproduces exactly, else None."""
    groups = optimizer.param_groups
    if any(g.get("maximize") for g in groups):
        return None
    if isinstance(optimizer, (SGD, torch.optim.SGD)):
        return "sgd"
    if isinstance(optimizer, (Adam, torch.optim.Adam)):
        if any(g.get("amsgrad") or g.get("decoupled_weight_decay") for g in groups):
            return None
        return "adam"
    return None


def check_rule(optimizer: Optimizer, k: int) -> None:
    if _rule_kind(optimizer) is None:
        raise ValueError(f"Invalid unroll_steps: {k} with the discriminator optimizer {type(optimizer).__name__}; "
                         "expected an SGD or Adam rule (lightning_gan.optim or torch.optim, no amsgrad/maximize/AdamW)")


def _safe_sqrt(v: Tensor) -> Tensor:
    """sqrt(v) for v >= 0 with derivative 0 (not inf, which times 0 is NaN) where v == 0; same value."""
    positive = v > 0
    return torch.where(positive, torch.where(positive, v, torch.ones_like(v)).sqrt(), torch.zeros_like(v))


class FunctionalRule:
    """D's optimizer rule as a differentiable function, started from a *copy* of the optimizer's state.

    ``step(params, grads)`` returns the new parameters ``p - u`` out of place and advances the copied state
    (momentum buffer; Adam's moments and step count) as tensors of the graph. The optimizer is not touched. The
    numbers are those of :func:`lightning_gan.optim._rules.sgd_updates` / ``adam_updates`` (and ``torch.optim``'s
    SGD / Adam), so k calls equal k real ``optimizer.step()`` with the same gradients.
    """

    def __init__(self, optimizer: Optimizer, params: Sequence[Tensor]) -> None:
        kind = _rule_kind(optimizer)
        if kind is None:
            raise ValueError(f"Invalid unroll_steps: the discriminator optimizer {type(optimizer).__name__} has no "
                             "unrollable rule; expected SGD or Adam")
        self.kind = kind
        group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        self.groups, self.state = [], []
        for p in params:
            group = group_of.get(id(p))
            if group is None:
                raise ValueError("Invalid unroll_steps: a discriminator parameter is not in its optimizer")
            self.groups.append(group)
            state = optimizer.state.get(p, {})
            if kind == "sgd":
                buf = state.get("momentum_buffer")
                self.state.append({"buf": None if buf is None else buf.detach().clone()})
            elif "step" in state:
                self.state.append({"m": state["exp_avg"].detach().clone(), "v": state["exp_avg_sq"].detach().clone(),
                                   "step": float(state["step"])})
            else:
                self.state.append({"m": torch.zeros_like(p), "v": torch.zeros_like(p), "step": 0.0})

    def step(self, params: Sequence[Tensor], grads: Sequence[Tensor]) -> list[Tensor]:
        update = self._sgd if self.kind == "sgd" else self._adam
        return [p.sub(update(p, g, group, state)) for p, g, group, state in zip(params, grads, self.groups, self.state)]

    @staticmethod
    def _sgd(p: Tensor, g: Tensor, group: dict, state: dict) -> Tensor:
        if group["weight_decay"] != 0:
            g = g.add(p, alpha=group["weight_decay"])
        momentum = group["momentum"]
        if momentum != 0:
            buf = state["buf"]
            buf = g.clone() if buf is None else buf.mul(momentum).add(g, alpha=1 - group["dampening"])
            state["buf"] = buf
            g = g.add(buf, alpha=momentum) if group["nesterov"] else buf
        return g.mul(float(group["lr"]))

    @staticmethod
    def _adam(p: Tensor, g: Tensor, group: dict, state: dict) -> Tensor:
        beta1, beta2 = group["betas"]
        state["step"] += 1
        step = state["step"]
        if group["weight_decay"] != 0:
            g = g.add(p, alpha=group["weight_decay"])
        m = state["m"].lerp(g, 1 - beta1)
        v = state["v"].mul(beta2).addcmul(g, g, value=1 - beta2)
        state["m"], state["v"] = m, v
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        denom = (_safe_sqrt(v) / bias_correction2_sqrt).add(group["eps"])
        return m.div(denom).mul(float(group["lr"]) / bias_correction1)


def _grad(loss: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """d loss / d params with a graph (``create_graph``), zeros where the loss does not reach a parameter."""
    if not loss.requires_grad:
        return [torch.zeros_like(p) for p in params]
    grads = torch.autograd.grad(loss, list(params), create_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _global(grads: list[Tensor], reduce: Reduce | None) -> list[Tensor]:
    """The mean over ranks of ``grads``, differentiably, one ``reduce`` call per (device, dtype) (one, in practice)."""
    if reduce is None:
        return grads
    groups: dict[tuple, list[int]] = {}
    for i, g in enumerate(grads):
        groups.setdefault((g.device, g.dtype), []).append(i)
    out: list[Tensor] = list(grads)
    for indices in groups.values():
        flat = reduce(torch.cat([grads[i].reshape(-1) for i in indices]))
        for i, part in zip(indices, flat.split([grads[i].numel() for i in indices])):
            out[i] = part.view_as(grads[i])
    return out


def unroll(objective: UnrollObjective, params: Sequence[Tensor], optimizer: Optimizer, k: int,
           reduce: Reduce | None = None) -> tuple[list[Tensor], list[Tensor]]:
    """``(phi_k, g_0)``: D's parameters after ``k`` functional steps of ``optimizer``'s rule from its current state,
    differentiable in G's parameters, and this rank's plain D gradient at phi (detached, not reduced).

    ``reduce`` is the differentiable mean over ranks applied to every step's gradient (None: this rank's own).
    """
    rule = FunctionalRule(optimizer, params)
    current: list[Tensor] = list(params)
    first: list[Tensor] = []
    for j in range(max(k, 1)):
        grads = _grad(objective.discriminator_loss(None if j == 0 else current), current)
        if j == 0:
            first = [g.detach() for g in grads]
        if j < k:
            current = rule.step(current, _global(grads, reduce))
    return current, first


class Unrolled:
    """Evaluates the unrolled field for a game with ``unroll_objective(sample)`` (see :class:`UnrollObjective`).

    Args:
        k: unrolled D steps, >= 1.
        reduce: the differentiable mean over ranks of one tensor (default: one ``all_reduce`` each way, identity
            without a process group), or None to skip it (one rank).
    """

    def __init__(self, k: int, reduce: Reduce | None = None) -> None:
        if check_unroll_steps(k) == 0:
            raise ValueError(f"Invalid unroll_steps: {k!r}; expected an integer >= 1 for an Unrolled transform")
        self.k = k
        self.reduce = reduce

    def field(self, game: Any, params: Sequence[Sequence[Tensor]], sample: Any, players: Sequence[int],
              optimizer: Optimizer) -> list[list[Tensor]]:
        """This rank's field of ``players`` (in that order): G's unrolled, D's plain; not reduced."""
        with torch.enable_grad():
            objective = game.unroll_objective(sample)
            phi_k, d_field = unroll(objective, params[1], optimizer, self.k, self.reduce)
            loss_g = objective.generator_loss(phi_k)
            g_params = list(params[0])
            if loss_g.requires_grad and g_params:
                grads = torch.autograd.grad(loss_g, g_params, allow_unused=True)
                g_field = [torch.zeros_like(p) if g is None else g for p, g in zip(g_params, grads)]
            else:
                g_field = [torch.zeros_like(p) for p in g_params]
        del objective, phi_k, loss_g
        return [g_field if player == 0 else d_field for player in players]

    def __repr__(self) -> str:
        return f"Unrolled(k={self.k})"
