"""Consensus optimization (Mescheder, Nowozin, Geiger, "The Numerics of GANs", NeurIPS 2017).

The field F is replaced by

    F + gamma * J^T F = F + gamma * grad_w (1/2 ||F(w)||^2)

(reference: ``ConsensusOptimizer`` in github LMescheder/TheNumericsOfGANs, ``consensus_gan/optimizer.py``, there
with ``alpha`` = gamma = 10). The regularizer pulls both players towards points where the field is small, which
damps the rotation that makes simultaneous gradient steps spiral out (J^T J is positive semi-definite).

It is a transform of each evaluation, so every scheme uses it unchanged: extragradient evaluates the transformed
field at the point and at the extrapolated point; a one-player evaluation (alternating) computes the whole F and
keeps that player's part of F + gamma J^T F.

Distributed, the regularizer is the gradient of the squared norm of the *global* field. Each rank computes its
local field F_r with a graph, then

    F = mean_r F_r                       # collective 1 (detached copies)
    v_r = J_r^T F                        # vector-Jacobian product of the local field, cotangent the global F
    J^T F = mean_r v_r                   # collective 2

which is exact: at a point shared by all ranks (they are bit-identical) F = mean_r F_r as functions of w, so
J = mean_r J_r and mean_r J_r^T F = J^T F. Two collectives per evaluation, each fusing both players.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

Field = list[list[Tensor]]


def check_consensus(gamma: float | None, *, variance_reduced: bool = False) -> float | None:
    """The validated gamma, or None when off (None or 0). Raises a one-line ValueError naming ``consensus``."""
    if gamma is None:
        return None
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma >= 0 or gamma == float("inf"):
        raise ValueError(f"Invalid consensus: {gamma!r}; expected a finite number >= 0 (gamma), or null for off")
    if gamma == 0:
        return None
    if variance_reduced:
        raise ValueError(f"Invalid consensus: {gamma!r} with scheme 'svre'; consensus applies to the other schemes "
                         "(SVRE's estimate has no J^T F correction), expected null")
    return float(gamma)


def vjp(outputs: Sequence[Tensor], inputs: Sequence[Tensor], cotangents: Sequence[Tensor]) -> list[Tensor]:
    """sum_k <cotangent_k, d output_k / d inputs>: J^T v, zeros where the outputs do not reach an input."""
    pairs = [(o, c) for o, c in zip(outputs, cotangents) if o.requires_grad]
    if not pairs or not inputs:
        return [torch.zeros_like(p) for p in inputs]
    grads = torch.autograd.grad([o for o, _ in pairs], list(inputs), grad_outputs=[c for _, c in pairs],
                                allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(inputs, grads)]


class Consensus:
    """Evaluates F + gamma J^T F for a game with a differentiable field (``game.graph_field(sample)``).

    Args:
        gamma: the regularization weight, > 0.
    """

    def __init__(self, gamma: float) -> None:
        checked = check_consensus(gamma)
        if checked is None:
            raise ValueError(f"Invalid consensus: {gamma!r}; expected a number > 0 for a Consensus transform")
        self.gamma = checked

    def field(self, game: Any, params: Sequence[Sequence[Tensor]], sample: Any, players: Sequence[int],
              reduce: Callable[[Sequence[Tensor]], None]) -> list[list[Tensor]]:
        """The all-reduced transformed field of ``players`` (in that order), with exactly two ``reduce`` calls."""
        with torch.enable_grad():
            local = [g for grads in game.graph_field(sample) for g in grads]
            field = [g.detach().clone() for g in local]
            reduce(field)  # collective 1: the global F, both players
            wrt = [p for player in players for p in params[player]]
            correction = vjp(local, wrt, field)  # J_r^T F, only for the evaluated players
        del local
        reduce(correction)  # collective 2: J^T F
        offsets = _offsets([len(player_params) for player_params in params])
        out, k = [], 0
        for player in players:
            start, stop = offsets[player], offsets[player + 1]
            player_field = field[start:stop]
            torch._foreach_add_(player_field, correction[k:k + stop - start], alpha=self.gamma)
            out.append(player_field)
            k += stop - start
        return out

    def __repr__(self) -> str:
        return f"Consensus(gamma={self.gamma})"


def _offsets(sizes: Sequence[int]) -> list[int]:
    out = [0]
    for size in sizes:
        out.append(out[-1] + size)
    return out
