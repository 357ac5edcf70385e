"""Iteration schemes: where the game's vector field is evaluated and how the players step.

A scheme knows nothing about GANs, data or ranks. It drives a :class:`GameStep`, which evaluates
the (estimated, all-reduced) field on a sample and writes it into the players' ``.grad``, and the
players' optimizers. The same schemes drive the toy games of :mod:`lightning_gan.game.toys` and the
GANs of :class:`lightning_gan.module.GANModule`, so the toys' closed-form answers test the code
that trains GANs.

Player 0 is the generator (or the minimising player), player 1 the discriminator.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, Sequence

from torch.optim import Optimizer

GENERATOR, DISCRIMINATOR = 0, 1
BOTH = (GENERATOR, DISCRIMINATOR)


class GameStep(Protocol):
    """What a scheme needs from the game it drives."""

    optimizers: Sequence[Optimizer]

    def evaluate(self, sample: Any, players: Sequence[int] = BOTH) -> None:
        """Evaluate the field on ``sample`` at the current point and store it in the players' ``.grad``."""

    def project(self) -> None:
        """Apply the constraint projection (e.g. WGAN weight clipping) after a parameter move."""


class Scheme:
    """One game iteration. ``draws_per_step`` fresh samples are consumed per iteration."""

    name: ClassVar[str]
    #: which optimizer family the players need: "plain", "extra", "past_extra" or "optimistic"
    optimizer_family: ClassVar[str] = "plain"
    #: whether the scheme evaluates a variance-reduced estimate (needs snapshot players)
    variance_reduced: ClassVar[bool] = False

    @property
    def draws_per_step(self) -> int:
        return 1

    @property
    def evaluations_per_step(self) -> int:
        """Field evaluations per iteration (all-reduces: one per ``game.evaluate`` call)."""
        return 1

    def step(self, game: GameStep, samples: Sequence[Any]) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Simultaneous(Scheme):
    """Both players step on the field at the same point: w <- w - eta F(w)."""

    name = "simultaneous"

    def step(self, game: GameStep, samples: Sequence[Any]) -> None:
        game.evaluate(samples[0])
        for optimizer in game.optimizers:
            optimizer.step()
        game.project()


class Alternating(Scheme):
    """``n_dis`` discriminator steps on fresh samples, then one generator step at the new point.

    Args:
        n_dis: discriminator steps per generator step, >= 1.
    """

    name = "alternating"

    def __init__(self, n_dis: int = 1) -> None:
        if isinstance(n_dis, bool) or not isinstance(n_dis, int) or n_dis < 1:
            raise ValueError(f"Invalid n_dis: {n_dis!r}; expected an integer >= 1")
        self.n_dis = n_dis

    @property
    def draws_per_step(self) -> int:
        return self.n_dis + 1

    @property
    def evaluations_per_step(self) -> int:
        return self.n_dis + 1

    def step(self, game: GameStep, samples: Sequence[Any]) -> None:
        generator_optimizer, discriminator_optimizer = game.optimizers
        for k in range(self.n_dis):
            game.evaluate(samples[k], players=(DISCRIMINATOR,))
            discriminator_optimizer.step()
            game.project()
        game.evaluate(samples[self.n_dis], players=(GENERATOR,))
        generator_optimizer.step()
        game.project()

    def __repr__(self) -> str:
        return f"Alternating(n_dis={self.n_dis})"


class Extragradient(Scheme):
    """w' = w - eta F(w; xi1); w <- w - eta F(w'; xi2), both players extrapolated jointly."""

    name = "extragradient"
    optimizer_family = "extra"

    @property
    def draws_per_step(self) -> int:
        return 2

    @property
    def evaluations_per_step(self) -> int:
        return 2

    def step(self, game: GameStep, samples: Sequence[Any]) -> None:
        game.evaluate(samples[0])
        for optimizer in game.optimizers:
            optimizer.extrapolation()
        game.project()
        game.evaluate(samples[1])
        for optimizer in game.optimizers:
            optimizer.step()
        game.project()


class SVRE(Extragradient):
    """Extragradient on the variance-reduced estimate F(w; xi) - F(w_snap; xi) + mu (Chavdarova et al., 2019).

    The iteration is extragradient's; the estimator (see :mod:`lightning_gan.optim.svre`) makes the
    difference: each half-step evaluates F at the live and at the snapshot point on the same sample.
    """

    name = "svre"
    variance_reduced = True

    @property
    def evaluations_per_step(self) -> int:
        return 4


class PastExtragradient(Scheme):
    """Extrapolation from the past: w' = w - eta F(w'_prev); w <- w - eta F(w'; xi). One evaluation."""

    name = "past_extragradient"
    optimizer_family = "past_extra"

    def step(self, game: GameStep, samples: Sequence[Any]) -> None:
        for optimizer in game.optimizers:
            optimizer.extrapolation()
        game.project()
        game.evaluate(samples[0])
        for optimizer in game.optimizers:
            optimizer.step()
        game.project()


class Optimistic(Scheme):
    """Optimistic gradient: w <- w - 2 eta F(w_t) + eta F(w_{t-1}). One evaluation."""

    name = "optimistic"
    optimizer_family = "optimistic"

    def step(self, game: GameStep, samples: Sequence[Any]) -> None:
        game.evaluate(samples[0])
        for optimizer in game.optimizers:
            optimizer.step()
        game.project()


SCHEMES: dict[str, type[Scheme]] = {
    cls.name: cls for cls in (Simultaneous, Alternating, Extragradient, PastExtragradient, Optimistic, SVRE)
}


def make_scheme(name: str, n_dis: int = 1) -> Scheme:
    """Build a scheme by name; ``n_dis`` is used by the alternating scheme only."""
    if name not in SCHEMES:
        raise ValueError(f"Invalid scheme: {name!r}; expected one of {', '.join(SCHEMES)}")
    if name == Alternating.name:
        return Alternating(n_dis)
    if n_dis != 1:
        raise ValueError(f"Invalid n_dis: {n_dis!r}; n_dis applies to the alternating scheme only (scheme={name!r})")
    return SCHEMES[name]()
