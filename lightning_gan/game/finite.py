"""Divergence: a finite check of every evaluation of the all-reduced field, read once per iteration.

With a step size too large the losses turn NaN within a few iterations and stay so; without a check a run goes on
to ``max_steps``, writes NaN sample grids and overwrites its last good checkpoint with NaN weights. The check looks
at the field *after* the all-reduce, which is the same on every rank, so all ranks reach the same verdict at the
same iteration without a collective of their own (a NaN on one rank's micro-batch is a NaN of the sum).

Cost: one multi-tensor norm per evaluation (no host sync), and one host sync per iteration when
:meth:`FiniteCheck.verdict` reads them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

PLAYER_NAMES = ("generator", "discriminator")


class DivergenceError(RuntimeError):
    """The game diverged: a non-finite field or non-finite parameters. The message is one line naming the iteration,
    the player and the quantity."""


@dataclass(frozen=True)
class NonFinite:
    """Where the first non-finite value was seen."""

    evaluation: int  # 1-based, within the iteration
    evaluations: int
    players: tuple[int, ...]  # the players whose part of F is not finite at that evaluation
    values: tuple[float, ...]  # nan or inf: a norm of a tensor of each of those players' parts

    def describe(self) -> str:
        parts = " and ".join(f"the {PLAYER_NAMES[p]}'s field F is {_word(v)}" for p, v in zip(self.players, self.values))
        return f"{parts} at evaluation {self.evaluation} of {self.evaluations}"


class FiniteCheck:
    """Records the 2-norm of every tensor of the field at each evaluation; :meth:`verdict` reads them once.

    A norm is NaN or inf when an entry is, so the norms tell where F stopped being finite. One multi-tensor norm per
    evaluation is the cheapest reduction torch has on CPU and GPU (the infinity norm is 30x slower on CPU). A 2-norm
    overflows float32 only when |F| exceeds about 1e19, which counts as divergence too.
    """

    def __init__(self) -> None:
        self._norms: list[Tensor] = []  # every recorded tensor's norm, in order
        self._owners: list[tuple[int, int]] = []  # (evaluation, player) of each norm
        self._evaluation = 0

    def record(self, players: Sequence[int], grads: Sequence[Sequence[Tensor]]) -> None:
        """Note one evaluation: ``grads[i]`` is the (all-reduced) field of ``players[i]``."""
        tensors = [g for player_grads in grads for g in player_grads]
        if tensors:
            self._norms.extend(torch._foreach_norm(tensors))
            self._owners.extend((self._evaluation, player) for player, player_grads in zip(players, grads)
                                for _ in player_grads)
        self._evaluation += 1

    def verdict(self) -> NonFinite | None:
        """The first evaluation since the last verdict with a non-finite field (None: all finite); then reset."""
        norms, owners, evaluations = self._norms, self._owners, self._evaluation
        self._norms, self._owners, self._evaluation = [], [], 0
        if not norms:
            return None
        stacked = torch.stack(norms)
        if bool(torch.isfinite(stacked).all()):  # the one host sync of the iteration
            return None
        bad: dict[tuple[int, int], float] = {}
        for owner, value in zip(owners, stacked.float().cpu().tolist()):
            if not math.isfinite(value):
                bad.setdefault(owner, value)
        first = min(evaluation for evaluation, _ in bad)
        players = sorted(player for evaluation, player in bad if evaluation == first)
        return NonFinite(first + 1, evaluations, tuple(players), tuple(bad[(first, p)] for p in players))


def first_non_finite_parameter(modules: dict[str, nn.Module]) -> str | None:
    """``"<module>.<parameter>"`` of the first parameter or floating buffer holding a NaN or an infinity, else None.

    One multi-tensor norm and one host sync for all of them; names are looked up only when one is not finite.
    """
    named = [(f"{name}.{key}", tensor) for name, module in modules.items()
             for key, tensor in [*module.named_parameters(), *module.named_buffers()] if tensor.is_floating_point()]
    if not named:
        return None
    norms = torch.stack([n.float() for n in torch._foreach_norm([t.detach() for _, t in named])])
    if bool(torch.isfinite(norms).all()):
        return None
    for (name, tensor), norm in zip(named, norms.tolist()):
        if not math.isfinite(norm) and not bool(torch.isfinite(tensor).all()):
            return name
    # A 2-norm overflowed (entries beyond ~1e19) although every entry is finite: not a divergence to refuse.
    return None


def _word(value: float) -> str:
    return "NaN" if math.isnan(value) else "infinite"
