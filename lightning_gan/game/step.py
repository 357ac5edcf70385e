"""One evaluation of a game's vector field as a scheme needs it: estimate, all-reduce once, write ``.grad``.

A *game* is anything with ``players`` (two ``nn.Module``) and ``field(sample)`` returning each
player's gradient list at the current point without writing ``.grad`` (:class:`GANGame`, the toys
of :mod:`lightning_gan.game.toys`). :class:`GameStep` turns it into the
:class:`~lightning_gan.schemes.GameStep` that the schemes drive, so GANs and toys share one path:

    local = game.field(sample)                        # this rank, no communication
    local = estimator.correct(local, sample)          # SVRE: F(w) - F(w_snap), same sample
    all_reduce_mean_(local of the evaluated players)  # ONE collective, both players fused
    estimate = estimator.add_mean(...)                # SVRE: + mu (already global)

With ``consensus`` (gamma) the evaluation is instead F + gamma J^T F from ``game.graph_field`` and two
collectives (see :mod:`lightning_gan.game.consensus`); off, the path above is unchanged. With ``unroll_steps`` (k)
an evaluation that involves player 0 takes G's part through k differentiable steps of D's optimizer
(``game.unroll_objective``, 2k + 1 collectives, see :mod:`lightning_gan.game.unrolled`); 0 is the path above.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_gan import distributed
from lightning_gan.game.consensus import Consensus
from lightning_gan.game.field import flat_norm
from lightning_gan.game.finite import FiniteCheck
from lightning_gan.game.unrolled import Unrolled, check_rule, check_unroll_steps
from lightning_gan.schemes import BOTH, GENERATOR

Field = list[list[Tensor]]


class Game(Protocol):
    players: Sequence[nn.Module]

    def field(self, sample: Any, players: Sequence[int] = BOTH) -> Field:
        """The players' gradients (a list per player) at the current point, on this rank's sample.

        Only ``players`` need be computed; lists of other players may be empty. Consensus also needs
        ``graph_field(sample)``: both players' gradients, differentiable in the parameters; unrolling needs
        ``unroll_objective(sample)`` (see :class:`lightning_gan.game.unrolled.UnrollObjective`).
        """


class Estimator(Protocol):
    """What is evaluated in place of the plain field (see :mod:`lightning_gan.optim.svre`)."""

    def correct(self, local: Field, sample: Any, players: Sequence[int]) -> Field:
        """The part of the estimate that is all-reduced, computed from the plain local field."""

    def add_mean(self, grads: Sequence[list[Tensor]], players: Sequence[int]) -> None:
        """Complete the all-reduced part in place (e.g. add the snapshot mean mu)."""


class GameStep:
    """Drives ``game`` for a scheme: evaluate, reduce, write ``.grad``; project after moves.

    Args:
        game: the game (players and field).
        optimizers: one optimizer per player, in player order.
        estimator: None for the plain field, or a variance-reduced estimator.
        reduce: the in-place mean over ranks, called once per evaluation.
        projection: called after every parameter move (e.g. WGAN weight clipping of D).
        check_finite: record ``max |F|`` of every evaluation in :attr:`finite_check` (read once per iteration by
            the trainer, see :mod:`lightning_gan.game.finite`).
        consensus: gamma of consensus optimization (F + gamma J^T F at every evaluation), None or 0 for off.
        unroll_steps: k of unrolled GANs (G's field through k differentiable steps of D's optimizer), 0 for off.
        unroll_reduce: the differentiable mean over ranks of one tensor used by each unrolled step (None: skip it).
    """

    def __init__(
        self,
        game: Game,
        optimizers: Sequence[Optimizer],
        *,
        estimator: Estimator | None = None,
        reduce: Callable[[Sequence[Tensor]], None] = distributed.all_reduce_mean_,
        projection: Callable[[], None] | None = None,
        check_finite: bool = False,
        consensus: float | None = None,
        unroll_steps: int = 0,
        unroll_reduce: Callable[[Tensor], Tensor] | None = distributed.all_reduce_mean_differentiable,
    ) -> None:
        self.game = game
        self.optimizers = list(optimizers)
        self.estimator = estimator
        self.reduce = reduce
        self.projection = projection
        self.params = [[p for p in player.parameters() if p.requires_grad] for player in game.players]
        self.last_grads: dict[int, list[Tensor]] = {}  # for logging ||F|| (computed only when logged)
        self.evaluations = 0
        self.finite_check = FiniteCheck() if check_finite else None
        self.consensus = Consensus(consensus) if consensus else None
        if self.consensus is not None and estimator is not None:
            raise ValueError(f"Invalid consensus: {consensus!r} with a variance-reduced estimator; expected null")
        if self.consensus is not None and not hasattr(game, "graph_field"):
            raise ValueError(f"Invalid consensus: {consensus!r}; {type(game).__name__} has no differentiable "
                             "field (graph_field)")
        k = check_unroll_steps(unroll_steps, consensus=consensus)
        self.unrolled = Unrolled(k, reduce=unroll_reduce) if k else None
        if self.unrolled is not None:
            if estimator is not None:
                raise ValueError(f"Invalid unroll_steps: {k} with a variance-reduced estimator; expected 0")
            if not hasattr(game, "unroll_objective"):
                raise ValueError(f"Invalid unroll_steps: {k}; {type(game).__name__} has no unroll_objective; "
                                 "expected 0")
            check_rule(self.optimizers[1], k)

    def evaluate(self, sample: Any, players: Sequence[int] = BOTH) -> None:
        """Evaluate the (estimated) field on ``sample``, all-reduce it in one collective, write ``.grad``."""
        if self.consensus is not None:
            grads = self.consensus.field(self.game, self.params, sample, players, self.reduce)
            self._write(players, grads)
            return
        if self.unrolled is not None and GENERATOR in players:
            grads = self.unrolled.field(self.game, self.params, sample, players, self.optimizers[1])
            self.reduce([g for player_grads in grads for g in player_grads])
            self._write(players, grads)
            return
        local = self.game.field(sample, players)
        if self.estimator is not None:
            local = self.estimator.correct(local, sample, players)
        grads = [local[player] for player in players]
        self.reduce([g for player_grads in grads for g in player_grads])
        if self.estimator is not None:
            self.estimator.add_mean(grads, players)
        self._write(players, grads)

    def _write(self, players: Sequence[int], grads: list[list[Tensor]]) -> None:
        """``.grad`` of the evaluated players, the last field for logging, the finiteness record."""
        for player, player_grads in zip(players, grads):
            for p, g in zip(self.params[player], player_grads):
                p.grad = g
            self.last_grads[player] = player_grads
        if self.finite_check is not None:
            self.finite_check.record(players, grads)
        self.evaluations += 1

    def project(self) -> None:
        if self.projection is not None:
            self.projection()

    def grad_norm(self, player: int) -> Tensor | None:
        """||F|| of ``player``'s part at its last evaluation (None if it was never evaluated)."""
        grads = self.last_grads.get(player)
        return None if grads is None else flat_norm(grads)
