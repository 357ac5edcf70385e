"""Toy games with closed-form equilibria.

Each toy is an ``nn.Module`` with two players, each player an ``nn.Module``
holding its parameters, so the code that drives GAN players (optimizers,
schemes, averaging) drives toys unchanged. Player 0 minimises ``L_0``, player 1
minimises ``L_1``; :meth:`ToyGame.field` returns ``[grad L_0 wrt player 0,
grad L_1 wrt player 1]`` at the current point without touching ``.grad`` or
the parameters, which is exactly the game vector field F(w) = (grad_0 L_0, grad_1 L_1)
of the variational-inequality view of GANs (Gidel et al., "A Variational Inequality
Perspective on Generative Adversarial Networks", ICLR 2019, section 2).

Everything is float64 by default: the tests check contraction factors per
step to 1e-12, which float32 cannot resolve.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

__all__ = [
    "Point",
    "ToyGame",
    "Bilinear1D",
    "BilinearGame",
    "StochasticBilinear",
    "DiracGAN",
]

Field = list[list[Tensor]]


def _as_tensor(value: float | Tensor | Sequence[float], dtype: torch.dtype) -> Tensor:
    return torch.as_tensor(value, dtype=dtype).detach().clone()


class Point(nn.Module):
    """A player that is one parameter tensor (the 'network' of a toy game)."""

    def __init__(self, value: float | Tensor | Sequence[float], name: str = "value",
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.name = name
        self.register_parameter(name, nn.Parameter(_as_tensor(value, dtype)))

    @property
    def tensor(self) -> Tensor:
        """The parameter itself (whatever its registered name)."""
        return getattr(self, self.name)

    def extra_repr(self) -> str:
        return f"{self.name}={self.tensor.detach().tolist()}"


class ToyGame(nn.Module):
    """Two-player game: ``players[i]`` minimises ``losses()[i]``.

    Subclasses implement :meth:`losses` (used by :meth:`autograd_field`) and
    usually override :meth:`field` with the closed form, which is faster and
    exact; the tests check the two agree.
    """

    #: number of samples of a finite-sum game; ``None`` for deterministic games
    num_samples: int | None = None

    def __init__(self, player0: nn.Module, player1: nn.Module) -> None:
        super().__init__()
        self.players = nn.ModuleList([player0, player1])

    # -- the game ---------------------------------------------------------
    def losses(self, sample: object = None) -> tuple[Tensor, Tensor]:
        """``(L_0, L_1)`` at the current point, differentiable in the parameters."""
        raise NotImplementedError

    def field(self, sample: object = None, players: Sequence[int] = (0, 1)) -> Field:
        """Each player's gradient of its own loss at the current point (both players: it is cheap)."""
        return self.autograd_field(sample)

    def autograd_field(self, sample: object = None, *, create_graph: bool = False) -> Field:
        """:meth:`field` by autograd: one forward, one ``autograd.grad`` per player.

        ``create_graph`` keeps the gradients differentiable (not detached), for J^T v products.
        """
        with torch.enable_grad():
            losses = self.losses(sample)
            out: Field = []
            for i, (loss, player) in enumerate(zip(losses, self.players)):
                params = list(player.parameters())
                grads = torch.autograd.grad(loss, params, retain_graph=i == 0 or create_graph,
                                            create_graph=create_graph, allow_unused=True)
                out.append([torch.zeros_like(p) if g is None else g if create_graph else g.detach()
                            for p, g in zip(params, grads)])
        return out

    def graph_field(self, sample: object = None) -> Field:
        """Both players' F, differentiable in the parameters (consensus needs J^T v): from :meth:`losses`."""
        return self.autograd_field(sample, create_graph=True)

    def forward(self, sample: object = None) -> tuple[Tensor, Tensor]:
        """:meth:`losses`, so that ``torch.func.functional_call`` can evaluate them at substituted parameters."""
        return self.losses(sample)

    def unroll_objective(self, sample: object = None) -> _ToyObjective:
        """The losses as functions of player 1's parameters (unrolled games, see :mod:`lightning_gan.game.unrolled`)."""
        return _ToyObjective(self, sample)

    @property
    def equilibrium(self) -> Field:
        """The solution point, structured like :meth:`field`."""
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------
    def point(self) -> Field:
        """A detached copy of the current parameters, structured like :meth:`field`."""
        return [[p.detach().clone() for p in player.parameters()] for player in self.players]

    @torch.no_grad()
    def set_point(self, point: Field) -> None:
        """Overwrite the parameters (in place, so optimizers keep their references)."""
        for player, values in zip(self.players, point):
            for p, v in zip(player.parameters(), values):
                p.copy_(v)

    def flat_point(self) -> Tensor:
        """The current point as one flat vector (player 0 first)."""
        return torch.cat([p.detach().reshape(-1) for player in self.players for p in player.parameters()])

    @torch.no_grad()
    def set_flat_point(self, w: Tensor) -> None:
        """Overwrite the parameters from one flat vector laid out as :meth:`flat_point` (in place)."""
        offset = 0
        for player in self.players:
            for p in player.parameters():
                p.copy_(w[offset:offset + p.numel()].view_as(p))
                offset += p.numel()

    def distance(self) -> float:
        """Euclidean distance of the current point to :attr:`equilibrium`."""
        sq = 0.0
        for player, target in zip(self.players, self.equilibrium):
            for p, t in zip(player.parameters(), target):
                sq += float((p.detach() - t).pow(2).sum())
        return sq ** 0.5


class _ToyObjective:
    """``L_1`` and ``L_0`` at player 1's parameters ``params`` (None: the live ones), via ``functional_call``."""

    def __init__(self, game: ToyGame, sample: object) -> None:
        self.game, self.sample = game, sample
        self.names = [f"players.1.{name}" for name, p in game.players[1].named_parameters() if p.requires_grad]

    def _losses(self, params: Sequence[Tensor] | None) -> tuple[Tensor, Tensor]:
        if params is None:
            return self.game.losses(self.sample)
        return torch.func.functional_call(self.game, dict(zip(self.names, params)), (self.sample,))

    def discriminator_loss(self, params: Sequence[Tensor] | None) -> Tensor:
        return self._losses(params)[1]

    def generator_loss(self, params: Sequence[Tensor] | None) -> Tensor:
        return self._losses(params)[0]


class Bilinear1D(ToyGame):
    """``min_x max_y x*y``: F = (y, -x), the pure rotation; solution (0, 0).

    The smallest game on which simultaneous GD diverges: every claim about
    rotation (simultaneous, alternating, extragradient, averaging) has an exact
    per-step factor here.
    """

    def __init__(self, x0: float = 1.0, y0: float = 1.0, dtype: torch.dtype = torch.float64) -> None:
        super().__init__(Point(x0, "x", dtype), Point(y0, "y", dtype))

    @property
    def x(self) -> Tensor:
        return self.players[0].x

    @property
    def y(self) -> Tensor:
        return self.players[1].y

    def losses(self, sample: object = None) -> tuple[Tensor, Tensor]:
        value = self.x * self.y
        return value, -value

    def field(self, sample: object = None, players: Sequence[int] = (0, 1)) -> Field:
        x, y = self.x.detach(), self.y.detach()
        return [[y.clone()], [-x]]

    @property
    def equilibrium(self) -> Field:
        return [[torch.zeros_like(self.x.detach())], [torch.zeros_like(self.y.detach())]]


class BilinearGame(ToyGame):
    """``min_x max_y x^T A y``: F = (A y, -A^T x); solution 0 (unique iff A is invertible).

    The game of the negative-momentum paper (Gidel et al., AISTATS 2019): its
    rates depend only on the singular values of A and the step size.
    """

    def __init__(self, A: Tensor, x0: Tensor | Sequence[float], y0: Tensor | Sequence[float],
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__(Point(x0, "x", dtype), Point(y0, "y", dtype))
        A = _as_tensor(A, dtype)
        if A.dim() != 2 or A.shape != (self.x.numel(), self.y.numel()):
            raise ValueError(f"A must have shape (len(x0), len(y0)) = "
                             f"({self.x.numel()}, {self.y.numel()}), got {tuple(A.shape)}")
        self.register_buffer("A", A)

    @property
    def x(self) -> Tensor:
        return self.players[0].x

    @property
    def y(self) -> Tensor:
        return self.players[1].y

    def losses(self, sample: object = None) -> tuple[Tensor, Tensor]:
        value = self.x @ self.A @ self.y
        return value, -value

    def field(self, sample: object = None, players: Sequence[int] = (0, 1)) -> Field:
        x, y = self.x.detach(), self.y.detach()
        return [[self.A @ y], [-(self.A.T @ x)]]

    @property
    def equilibrium(self) -> Field:
        return [[torch.zeros_like(self.x.detach())], [torch.zeros_like(self.y.detach())]]


class StochasticBilinear(ToyGame):
    """The SVRE bilinear benchmark (Chavdarova et al., NeurIPS 2019).

    ``min_x max_y (1/n) sum_i (x^T M_i y + a_i^T x + b_i^T y)`` with
    ``M_i = e_{i mod d} e_{i mod d}^T`` and ``a_i, b_i ~ N(0, I/d)``.

    Closed-form solution. Write ``M = (1/n) sum_i M_i = diag(m)`` (``m = 1/n``
    everywhere when ``d = n``, the paper's case) and ``abar, bbar`` the sample
    means. Then ``grad_x = M y + abar`` and ``grad_y = M^T x + bbar``; setting
    both to zero gives ``y* = -M^{-1} abar`` and ``x* = -M^{-T} bbar``, i.e.
    ``x* = -n bbar, y* = -n abar`` when ``d = n``. ``n >= d`` keeps M invertible.

    ``field(indices)`` is the mini-batch mean over the given sample indices
    (repeats count), ``field(None)`` the full-data field.
    """

    def __init__(self, d: int = 100, n: int = 100, seed: int = 0,
                 x0: Tensor | None = None, y0: Tensor | None = None,
                 dtype: torch.dtype = torch.float64) -> None:
        if n < d:
            raise ValueError(f"need n >= d so that mean M_i is invertible, got d={d}, n={n}")
        gen = torch.Generator().manual_seed(seed)
        a = torch.randn(n, d, generator=gen, dtype=dtype) / d ** 0.5
        b = torch.randn(n, d, generator=gen, dtype=dtype) / d ** 0.5
        if x0 is None:
            x0 = torch.randn(d, generator=gen, dtype=dtype)
        if y0 is None:
            y0 = torch.randn(d, generator=gen, dtype=dtype)
        super().__init__(Point(x0, "x", dtype), Point(y0, "y", dtype))
        self.d, self.num_samples = d, n
        self.register_buffer("a", a)
        self.register_buffer("b", b)
        self.register_buffer("coord", torch.arange(n) % d)  # M_i = e_coord[i] e_coord[i]^T

    @property
    def x(self) -> Tensor:
        return self.players[0].x

    @property
    def y(self) -> Tensor:
        return self.players[1].y

    def _indices(self, sample: object) -> Tensor:
        if sample is None:
            return torch.arange(self.num_samples)
        idx = torch.as_tensor(sample, dtype=torch.long).reshape(-1)
        if idx.numel() == 0:
            raise ValueError("empty mini-batch")
        return idx

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """Uniform sample indices with replacement, for :meth:`field`."""
        return torch.randint(self.num_samples, (batch_size,), generator=generator)

    def _m(self, idx: Tensor) -> Tensor:
        """Diagonal of the mini-batch mean of M_i."""
        m = torch.zeros(self.d, dtype=self.a.dtype)
        m.index_add_(0, self.coord[idx], torch.ones(idx.numel(), dtype=self.a.dtype))
        return m / idx.numel()

    def losses(self, sample: object = None) -> tuple[Tensor, Tensor]:
        idx = self._indices(sample)
        value = (self._m(idx) * self.x * self.y).sum() + self.a[idx].mean(0) @ self.x \
            + self.b[idx].mean(0) @ self.y
        return value, -value

    def field(self, sample: object = None, players: Sequence[int] = (0, 1)) -> Field:
        idx = self._indices(sample)
        m = self._m(idx)
        x, y = self.x.detach(), self.y.detach()
        return [[m * y + self.a[idx].mean(0)], [-(m * x + self.b[idx].mean(0))]]

    @property
    def equilibrium(self) -> Field:
        m = self._m(torch.arange(self.num_samples))
        return [[-self.b.mean(0) / m], [-self.a.mean(0) / m]]


DiracLoss = Literal["minimax", "non_saturating", "wgan"]


class DiracGAN(ToyGame):
    """Dirac-GAN (Mescheder et al., ICML 2018).

    Real data is a Dirac at ``c``, the generator a Dirac at ``theta`` (player 0),
    the discriminator the linear logit ``D(x) = psi * x`` (player 1, positive
    means "real"). Equilibrium ``(theta, psi) = (c, 0)``. Losses, with
    ``softplus(t) = log(1 + e^t)``:

    - discriminator (minimax, non_saturating): ``softplus(-psi c) + softplus(psi theta)``;
      wgan: ``psi theta - psi c`` (unclipped critic: the game is bilinear);
    - generator: minimax ``-softplus(psi theta)``, non_saturating
      ``softplus(-psi theta)``, wgan ``-psi theta``.

    With ``c = 0`` and the minimax loss F = sigmoid(psi theta) (-psi, theta): a
    rotation field scaled by a positive number, hence simultaneous GD spirals out.
    With ``c != 0`` the real-data term adds curvature ``c^2/4`` to D's loss; the
    Jacobian at the equilibrium is ``[[0, -1/2], [1/2, c^2/2]]``.
    """

    def __init__(self, theta0: float = 1.0, psi0: float = 1.0, loss: DiracLoss = "minimax",
                 c: float = 0.0, dtype: torch.dtype = torch.float64) -> None:
        if loss not in ("minimax", "non_saturating", "wgan"):
            raise ValueError(f"loss must be 'minimax', 'non_saturating' or 'wgan', got {loss!r}")
        super().__init__(Point(theta0, "theta", dtype), Point(psi0, "psi", dtype))
        self.loss, self.c = loss, float(c)

    @classmethod
    def nonconvex(cls, theta0: float = 1.0, psi0: float = 1.0,
                  dtype: torch.dtype = torch.float64) -> DiracGAN:
        """Gidel et al.'s non-convex toy: minimax loss, target -2, equilibrium (-2, 0)."""
        return cls(theta0, psi0, loss="minimax", c=-2.0, dtype=dtype)

    @property
    def theta(self) -> Tensor:
        return self.players[0].theta

    @property
    def psi(self) -> Tensor:
        return self.players[1].psi

    def losses(self, sample: object = None) -> tuple[Tensor, Tensor]:
        theta, psi, c = self.theta, self.psi, self.c
        if self.loss == "wgan":
            return -psi * theta, psi * theta - psi * c
        loss_d = nnf.softplus(-psi * c) + nnf.softplus(psi * theta)
        loss_g = -nnf.softplus(psi * theta) if self.loss == "minimax" else nnf.softplus(-psi * theta)
        return loss_g, loss_d

    def field(self, sample: object = None, players: Sequence[int] = (0, 1)) -> Field:
        theta, psi, c = self.theta.detach(), self.psi.detach(), self.c
        if self.loss == "wgan":
            return [[-psi], [theta - c]]
        grad_psi = -c * torch.sigmoid(-psi * c) + theta * torch.sigmoid(psi * theta)
        if self.loss == "minimax":
            grad_theta = -psi * torch.sigmoid(psi * theta)
        else:
            grad_theta = -psi * torch.sigmoid(-psi * theta)
        return [[grad_theta], [grad_psi]]

    @property
    def equilibrium(self) -> Field:
        ref = self.theta.detach()
        return [[torch.full_like(ref, self.c)], [torch.zeros_like(self.psi.detach())]]
