"""Variance reduction for games (SVRE, Chavdarova et al., NeurIPS 2019): the SVRG estimator.

    d(w) = F(w; xi) - F(w_snap; xi) + mu,      mu = (1/n) sum_i F(w_snap; xi_i) over the whole data

With the extragradient scheme this is SVRE: one estimate per half-step, each on a fresh sample xi
with the same real batch and z for the live and the snapshot terms. Across ranks only the
correction ``F(w; xi) - F(w_snap; xi)`` is all-reduced (by :class:`~lightning_gan.game.step.GameStep`,
once per half-step, both players fused); ``mu`` is already global: each rank sums F over its shard
of the data, then ONE all-reduce of the sums and the sample count.

The estimator is game-agnostic: it drives GANs and the toy games alike (the stochastic bilinear
game of the paper is its test). The snapshot is a second game object whose players are copies.

Difference from the paper's released code (on purpose, as in the paper's algorithm): both players
are evaluated at the joint extrapolated point and each player keeps one optimizer state; the code
evaluated each player's update at (its own point, the opponent's extrapolated point) with separate
Adam states per half-step.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from lightning_gan import distributed
from lightning_gan.game.field import flat_norm

Field = list[list[Tensor]]


class SVRGEstimator:
    """The SVRG estimate of a game's field around a snapshot.

    Args:
        game: the live game (``players``, ``field(sample)``).
        snapshot: a game of the same structure whose players hold the snapshot point; its
            ``field(sample)`` must consume ``sample`` exactly as ``game.field`` does.
        reduce_sum: in-place sum over ranks (one collective per call).
    """

    def __init__(self, game: Any, snapshot: Any,
                 reduce_sum: Callable[[Sequence[Tensor]], None] = distributed.all_reduce_sum_) -> None:
        self.game = game
        self.snapshot = snapshot
        self.reduce_sum = reduce_sum
        self.mu: Field | None = None
        self.snapshots_taken = 0

    # -- the estimate ----------------------------------------------------------------------------

    def correct(self, local: Field, sample: Any, players: Sequence[int] = (0, 1)) -> Field:
        """``F(w; xi) - F(w_snap; xi)`` on this rank for ``players``: the part that is all-reduced."""
        if self.mu is None:
            raise RuntimeError("SVRGEstimator: no snapshot yet; call take_snapshot() before the first estimate")
        snap = self.snapshot.field(sample, players)
        for player in players:
            live, at_snapshot = local[player], snap[player]
            if live:
                torch._foreach_sub_(live, at_snapshot)
        return local

    def add_mean(self, grads: Sequence[list[Tensor]], players: Sequence[int]) -> None:
        """Add mu to the all-reduced corrections of ``players`` (in place)."""
        assert self.mu is not None
        for player_grads, player in zip(grads, players):
            if player_grads:
                torch._foreach_add_(player_grads, self.mu[player])

    # -- the snapshot ----------------------------------------------------------------------------

    @torch.no_grad()
    def copy_players(self, source: Sequence[nn.Module] | None = None) -> None:
        """Snapshot players <- the live players (or ``source``), parameters and buffers."""
        for snap, live in zip(self.snapshot.players, source or self.game.players):
            snap.load_state_dict(live.state_dict())

    def take_snapshot(self, full_pass: Iterable[tuple[Any, int]]) -> None:
        """Copy the live players and compute mu over ``full_pass``: this rank's ``(sample, count)`` pairs.

        Each sample's field is weighted by its count; one all-reduce of the sums and the total count
        makes mu the mean over the whole data set, whatever its split over ranks.
        """
        self.copy_players()
        sums: Field | None = None
        count = 0
        for sample, n in full_pass:
            field = self.snapshot.field(sample)
            if sums is None:
                sums = [[g.mul(n) for g in player] for player in field]
            else:
                for total, player in zip(sums, field):
                    if total:
                        torch._foreach_add_(total, player, alpha=n)
            count += n
        if sums is None:
            raise RuntimeError("SVRGEstimator.take_snapshot: the full pass yielded no sample on this rank")
        flat = [g for player in sums for g in player]
        total_count = torch.tensor([float(count)], dtype=flat[0].dtype, device=flat[0].device)
        self.reduce_sum(flat + [total_count])
        for player in sums:
            if player:
                torch._foreach_div_(player, total_count.item())  # a host sync, once per snapshot
        self.mu = sums
        self.snapshots_taken += 1

    def mu_is_finite(self) -> bool:
        """Whether every entry of mu is finite (one host sync)."""
        assert self.mu is not None
        norms = torch._foreach_norm([g for player in self.mu for g in player])
        return bool(torch.isfinite(torch.stack(norms)).all())

    def mu_norm(self) -> Tensor:
        assert self.mu is not None
        return flat_norm([g for player in self.mu for g in player])

    # -- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """mu and the counter; the snapshot players are saved by their owner (e.g. as submodules)."""
        return {"mu": self.mu, "snapshots_taken": self.snapshots_taken}

    def load_state_dict(self, state: dict) -> None:
        self.mu = state["mu"]
        self.snapshots_taken = state["snapshots_taken"]


class SnapshotTrigger:
    """Decides when to take a new snapshot, identically on every rank.

    With probability ``probability`` per iteration (the paper: 1/n, n = iterations per data pass),
    or every ``every`` iterations; always at the first iteration. The random draws come from a
    generator seeded identically on every rank, so ranks never disagree.
    """

    def __init__(self, *, probability: float | None = None, every: int | None = None, seed: int = 0) -> None:
        if (probability is None) == (every is None):
            raise ValueError(f"Invalid snapshot trigger: probability={probability!r}, every={every!r}; "
                             "set exactly one of them")
        if probability is not None and not 0 < probability <= 1:
            raise ValueError(f"Invalid snapshot probability: {probability!r}; expected 0 < probability <= 1")
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"Invalid snapshot_every: {every!r}; expected an integer >= 1")
        self.probability = probability
        self.every = every
        self.generator = torch.Generator().manual_seed(seed)
        self.last = -1  # iteration of the last snapshot

    def __call__(self, iteration: int) -> bool:
        if self.last < 0:
            fire = True
        elif self.every is not None:
            fire = iteration - self.last >= self.every
        else:
            fire = bool(torch.rand((), generator=self.generator) < self.probability)
        if fire:
            self.last = iteration
        return fire

    def draw(self) -> float:
        """A further uniform draw from the shared stream (e.g. the restart decision)."""
        return float(torch.rand((), generator=self.generator))

    def restarts(self, probability: float) -> bool:
        """At a snapshot, whether to restart from the averages first: one draw from the shared stream, with
        ``probability`` (the paper's code: p = 1/10); no draw when ``probability`` is 0."""
        return probability > 0 and self.draw() < probability

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "last": self.last}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.last = state["last"]
