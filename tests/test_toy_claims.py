"""The papers' claims about toy games, as exact tests.

Parts A-C check each claim with a closed-form update loop written here (plain tensor math on the
toy's field), so a failure points at the claim or at the toy. Part D drives the same toys through
``lightning_gan.optim`` and checks the same claims, plus trajectory equality with the loops of
A-C: that is what proves the optimizers.

Sources: Gidel et al., "A Variational Inequality Perspective on GANs" (ICLR 2019) and "Negative
Momentum for Improved Game Dynamics" (AISTATS 2019); Mescheder et al., "Which Training Methods for
GANs do actually Converge?" (ICML 2018); Chavdarova et al., "Reducing Noise in GAN Training with
Variance Reduced Extragradient" (NeurIPS 2019).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from lightning_gan import optim
from lightning_gan.game.toys import Bilinear1D, BilinearGame, DiracGAN, StochasticBilinear, ToyGame

DT = torch.float64
Vec = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------------------------
# helpers: flat points, closed-form loops, rate estimators
# --------------------------------------------------------------------------------------------
def flat_field(game: ToyGame, w: Tensor | None = None) -> Tensor:
    """F at ``w`` (or at the current point) as one flat vector; moves the game to ``w``."""
    if w is not None:
        game.set_flat_point(w)
    return torch.cat([g.reshape(-1) for grads in game.field() for g in grads])


def field_fn(game: ToyGame) -> Vec:
    return lambda w: flat_field(game, w)


def sim_gd(F: Vec, w: Tensor, eta: float, steps: int) -> list[Tensor]:
    out = [w]
    for _ in range(steps):
        w = w - eta * F(w)
        out.append(w)
    return out


def alt_gd(F: Vec, w: Tensor, eta: float, steps: int, n0: int) -> list[Tensor]:
    """Player 0 (the first ``n0`` coordinates) steps, then player 1 at the new point."""
    out = [w]
    for _ in range(steps):
        w = torch.cat([w[:n0] - eta * F(w)[:n0], w[n0:]])
        w = torch.cat([w[:n0], w[n0:] - eta * F(w)[n0:]])
        out.append(w)
    return out


def extragradient(F: Vec, w: Tensor, eta: float, steps: int) -> list[Tensor]:
    out = [w]
    for _ in range(steps):
        w = w - eta * F(w - eta * F(w))
        out.append(w)
    return out


def past_extragradient(F: Vec, w: Tensor, eta: float, steps: int) -> list[Tensor]:
    """w' = w - eta g_prev (g_prev = 0 at first, so w' = w); g = F(w'); w <- w - eta g."""
    out, g_prev = [w], torch.zeros_like(w)
    for _ in range(steps):
        g_prev = F(w - eta * g_prev)
        w = w - eta * g_prev
        out.append(w)
    return out


def optimistic(F: Vec, w: Tensor, eta: float, steps: int) -> list[Tensor]:
    """w <- w - 2 eta F(w_t) + eta F(w_{t-1}), with F(w_{-1}) = 0 (the optimizer's convention)."""
    out, g_prev = [w], torch.zeros_like(w)
    for _ in range(steps):
        g = F(w)
        w = w - 2 * eta * g + eta * g_prev
        g_prev = g
        out.append(w)
    return out


def heavy_ball(A: Tensor, x: Tensor, y: Tensor, eta: float, beta: float, steps: int,
               alternating: bool) -> tuple[list[Tensor], list[Tensor]]:
    """p_{t+1} = p_t - eta g_t + beta (p_t - p_{t-1}) on min_x max_y x^T A y (p_{-1} = p_0)."""
    xs, ys = [x], [y]
    xp, yp = x, y
    for _ in range(steps):
        xn = x - eta * (A @ y) + beta * (x - xp)
        yn = y + eta * (A.T @ (xn if alternating else x)) + beta * (y - yp)
        xp, yp, x, y = x, y, xn, yn
        xs.append(x)
        ys.append(y)
    return xs, ys


def heavy_ball_mode_operator(sigma: float, eta: float, beta: float, alternating: bool) -> Tensor:
    """The 4x4 linear map on (x, y, x_prev, y_prev) of one singular mode of A (closed form)."""
    a = eta * sigma
    if alternating:
        row_y = [a * (1 + beta), 1 + beta - a * a, -a * beta, -beta]
    else:
        row_y = [a, 1 + beta, 0.0, -beta]
    return torch.tensor([[1 + beta, -a, -beta, 0.0], row_y, [1.0, 0, 0, 0], [0, 1.0, 0, 0]], dtype=DT)


def spectral_radius(M: Tensor) -> float:
    return float(torch.linalg.eigvals(M).abs().max())


def hankel_rate(s: list[float], t: int) -> float:
    """Modulus of a dominant complex pair from a scalar sequence.

    For s_t = a r^t cos(w t + phi), h_t = s_{t+1}^2 - s_t s_{t+2} = a^2 r^(2t+2) sin(w)^2, so
    sqrt(h_{t+1} / h_t) = r exactly; faster modes only add a vanishing error.
    """
    h0 = s[t + 1] ** 2 - s[t] * s[t + 2]
    h1 = s[t + 2] ** 2 - s[t + 1] * s[t + 3]
    return math.sqrt(h1 / h0)


def norms(ws: list[Tensor]) -> Tensor:
    return torch.stack([w.norm() for w in ws])


def orthogonal(n: int, gen: torch.Generator) -> Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DT))
    return q * torch.sign(torch.diagonal(r))


SINGULAR_VALUES = torch.linspace(0.5, 1.0, 5, dtype=DT)


@pytest.fixture(scope="module")
def matrix_game_data() -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """A = U diag(0.5..1) V^T with random orthogonal U, V (seed 0), and a random start."""
    gen = torch.Generator().manual_seed(0)
    U, V = orthogonal(5, gen), orthogonal(5, gen)
    A = U @ torch.diag(SINGULAR_VALUES) @ V.T
    x0, y0 = torch.randn(5, generator=gen, dtype=DT), torch.randn(5, generator=gen, dtype=DT)
    return A, U, V, x0, y0


# --------------------------------------------------------------------------------------------
# 0. the toys themselves
# --------------------------------------------------------------------------------------------
def _toys() -> list[ToyGame]:
    gen = torch.Generator().manual_seed(1)
    A = torch.randn(3, 4, generator=gen, dtype=DT)
    return [
        Bilinear1D(0.7, -1.3),
        BilinearGame(A, torch.randn(3, generator=gen, dtype=DT), torch.randn(4, generator=gen, dtype=DT)),
        StochasticBilinear(d=8, n=8, seed=3),
        StochasticBilinear(d=4, n=10, seed=3),
        DiracGAN(0.8, -0.4, "minimax", c=0.0),
        DiracGAN(0.8, -0.4, "non_saturating", c=1.5),
        DiracGAN(0.8, -0.4, "wgan", c=0.5),
        DiracGAN.nonconvex(0.8, -0.4),
    ]


@pytest.mark.parametrize("game", _toys(), ids=lambda g: type(g).__name__ + getattr(g, "loss", ""))
def test_closed_form_field_equals_autograd_and_leaves_grad_alone(game: ToyGame) -> None:
    sample = torch.tensor([0, 2, 2, 5]) if isinstance(game, StochasticBilinear) else None
    closed, auto = game.field(sample), game.autograd_field(sample)
    before = game.point()
    for c_grads, a_grads in zip(closed, auto):
        for c, a in zip(c_grads, a_grads):
            assert c.dtype == torch.float64
            torch.testing.assert_close(c, a, rtol=1e-12, atol=1e-14)
    assert all(p.grad is None for p in game.parameters())
    assert all(torch.equal(p, q) for ps, qs in zip(before, game.point()) for p, q in zip(ps, qs))


@pytest.mark.parametrize("game", _toys(), ids=lambda g: type(g).__name__ + getattr(g, "loss", ""))
def test_field_vanishes_at_the_stated_equilibrium(game: ToyGame) -> None:
    game.set_point(game.equilibrium)
    assert game.distance() == 0.0
    for grads in game.field():
        for g in grads:
            assert g.abs().max() < 1e-12


def test_stochastic_bilinear_solution_is_minus_n_times_the_mean_offsets() -> None:
    """d = n: mean M_i = I/n, so grad_x = y/n + abar = 0 and grad_y = x/n + bbar = 0."""
    game = StochasticBilinear(d=100, n=100, seed=0)
    (x_star,), (y_star,) = game.equilibrium
    torch.testing.assert_close(x_star, -100 * game.b.mean(0), rtol=1e-13, atol=0)
    torch.testing.assert_close(y_star, -100 * game.a.mean(0), rtol=1e-13, atol=0)
    assert game.num_samples == 100
    full = game.field()
    batches = [game.field(torch.arange(i, i + 10)) for i in range(0, 100, 10)]
    for p in range(2):
        mean_of_batches = torch.stack([b[p][0] for b in batches]).mean(0)
        torch.testing.assert_close(mean_of_batches, full[p][0], rtol=1e-12, atol=1e-15)
    assert torch.equal(game.field(torch.arange(100))[0][0], full[0][0])


def test_stochastic_bilinear_samples_with_variance() -> None:
    """Single-sample fields differ from the full field: the benchmark is genuinely stochastic."""
    game = StochasticBilinear(d=10, n=10, seed=0)
    full = game.field()[0][0]
    assert (game.field([3])[0][0] - full).norm() > 0.1 * full.norm()
    with pytest.raises(ValueError, match="n >= d"):
        StochasticBilinear(d=10, n=5)


# --------------------------------------------------------------------------------------------
# A. 1-D bilinear x*y, closed-form loops
# --------------------------------------------------------------------------------------------
ETAS = [0.1, 0.3]


def _sq(ws: list[Tensor]) -> Tensor:
    return norms(ws) ** 2


@pytest.mark.parametrize("eta", ETAS)
def test_simultaneous_gd_expands_bilinear_by_exact_factor(eta: float) -> None:
    game = Bilinear1D(1.0, 0.5)
    sq = _sq(sim_gd(field_fn(game), game.flat_point(), eta, 1000))
    ratio = sq[1:] / sq[:-1]
    assert ((ratio - (1 + eta**2)).abs() / (1 + eta**2)).max() < 1e-12
    assert float(sq[-1]) == pytest.approx(float(sq[0]) * (1 + eta**2) ** 1000, rel=1e-10)


@pytest.mark.parametrize("eta", ETAS)
def test_extragradient_contracts_bilinear_by_exact_factor(eta: float) -> None:
    game = Bilinear1D(1.0, 0.5)
    sq = _sq(extragradient(field_fn(game), game.flat_point(), eta, 1000))
    factor = 1 - eta**2 + eta**4
    assert ((sq[1:] / sq[:-1] - factor).abs() / factor).max() < 1e-12
    assert float(sq[-1]) == pytest.approx(float(sq[0]) * factor**1000, rel=1e-10)  # 0.9901^1000 = 4.8e-5


@functools.cache
def _alternating_bilinear_1d(eta: float, steps: int = 10_000) -> list[Tensor]:
    """Alternating GD on x*y from (1, 0.5), F = (y, -x) in Python floats (IEEE doubles, like float64
    tensors, and 100x faster for 10k scalar steps); shared by the tests reading this trajectory."""
    x, y = 1.0, 0.5
    out = [(x, y)]
    for _ in range(steps):
        x = x - eta * y
        y = y + eta * x
        out.append((x, y))
    return list(torch.tensor(out, dtype=DT))


@pytest.mark.parametrize("eta", ETAS)
def test_alternating_gd_conserves_x2_plus_y2_minus_eta_xy(eta: float) -> None:
    """x' = x - eta y, y' = y + eta x' preserves Q = x^2 + y^2 - eta x y (x moves first).

    Proof: Q(x', y') = x'^2 (1 + eta^2 - eta^2) + y^2 + eta x' y = x'(x' + eta y) + y^2 = x x' + y^2
    = x^2 - eta x y + y^2. Since (1 - eta/2) r^2 <= Q <= (1 + eta/2) r^2, the norm stays within
    sqrt((1 + eta/2) / (1 - eta/2)) of the start, both ways: bounded and not convergent.
    """
    W = torch.stack(_alternating_bilinear_1d(eta))
    Q = W[:, 0] ** 2 + W[:, 1] ** 2 - eta * W[:, 0] * W[:, 1]
    assert ((Q - Q[0]).abs() / Q[0]).max() < 1e-12
    r = W.norm(dim=1)
    bound = math.sqrt((1 + eta / 2) / (1 - eta / 2))
    assert r.max() <= bound * r[0] * (1 + 1e-12)
    assert r[-1] >= r[0] / bound * (1 - 1e-12) > 0.5 * r[0]


@pytest.mark.parametrize("eta", ETAS)
def test_uniform_average_of_alternating_iterates_goes_to_zero_like_one_over_t(eta: float) -> None:
    """The iterates rotate on a closed orbit, so their sum stays bounded.

    With S the alternating map, sum_{t=1..T} S^t w0 = (I - S)^{-1} (S - S^{T+1}) w0, hence
    ||average_T|| <= 2 ||(I - S)^{-1}|| max_t ||w_t|| / T.
    """
    ws = _alternating_bilinear_1d(eta)
    W = torch.stack(ws[1:])
    csum = W.cumsum(0)
    S = torch.tensor([[1.0, -eta], [eta, 1 - eta**2]], dtype=DT)
    inv = torch.linalg.inv(torch.eye(2, dtype=DT) - S)
    w0 = ws[0]
    for T in (1000, 10_000):
        exact = inv @ (S @ w0 - torch.linalg.matrix_power(S, T + 1) @ w0)
        torch.testing.assert_close(csum[T - 1], exact, rtol=1e-9, atol=1e-9)
    bound = 2 * torch.linalg.matrix_norm(inv, ord=2) * W.norm(dim=1).max()
    avg_1k, avg_10k = csum[999].norm() / 1000, csum[-1].norm() / 10_000
    assert avg_1k <= bound / 1000 and avg_10k <= bound / 10_000
    assert avg_10k < avg_1k
    assert avg_10k < 2e-3 * w0.norm()


# --------------------------------------------------------------------------------------------
# B. negative momentum on a 5x5 bilinear game, closed-form loops
# --------------------------------------------------------------------------------------------
ETA_B = 0.3
MOMENTUM_CASES = [  # (alternating, beta, expected behaviour)
    (False, -0.5, "diverges"),
    (False, 0.0, "diverges"),
    (False, 0.5, "diverges"),
    (True, 0.5, "diverges"),
    (True, 0.0, "bounded"),
    (True, -0.5, "converges"),
]


def _steps_for(behaviour: str, rho: float) -> int:
    """Divergent runs last as long as theory needs for 1e4x growth (the test asks for 1e3x)."""
    if behaviour == "diverges":
        return int(math.log(1e4) / math.log(rho)) + 50
    return {"bounded": 10_000, "converges": 5000}[behaviour]


def _dominant_mode(eta: float, beta: float, alternating: bool) -> tuple[int, float]:
    radii = [spectral_radius(heavy_ball_mode_operator(float(s), eta, beta, alternating)) for s in SINGULAR_VALUES]
    k = max(range(len(radii)), key=radii.__getitem__)
    return k, radii[k]


@pytest.mark.parametrize("alternating,beta,behaviour", MOMENTUM_CASES)
def test_heavy_ball_on_bilinear_game_follows_negative_momentum_theory(
        matrix_game_data, alternating: bool, beta: float, behaviour: str) -> None:
    """Gidel et al. 2019: simultaneous diverges for every beta; alternating diverges for beta > 0,
    is bounded for beta = 0 and converges linearly for beta < 0. The measured rate of the dominant
    singular mode equals the spectral radius of its closed-form 4x4 operator."""
    A, U, _, x0, y0 = matrix_game_data
    k, rho = _dominant_mode(ETA_B, beta, alternating)
    steps = _steps_for(behaviour, rho)
    xs, ys = heavy_ball(A, x0, y0, ETA_B, beta, steps, alternating)
    dist = torch.stack([torch.cat([x, y]).norm() for x, y in zip(xs, ys)])
    mode = [float(U[:, k] @ x) for x in xs]  # decoupled: U^T x evolves per singular value
    measured = hankel_rate(mode, steps - 4)
    assert measured == pytest.approx(rho, rel=1e-9)
    if behaviour == "diverges":
        assert rho > 1.005
        assert dist[-1] > 1e3 * dist[0]
    elif behaviour == "bounded":
        assert rho == pytest.approx(1.0, abs=1e-12)
        # beta = 0: Q = |x|^2 + |y|^2 - eta x^T A y is conserved (per mode as in part A), so the
        # distance stays within sqrt((1 + eta s_max/2) / (1 - eta s_max/2)) of the start.
        Q = torch.stack([x @ x + y @ y - ETA_B * x @ A @ y for x, y in zip(xs, ys)])
        assert ((Q - Q[0]).abs() / Q[0]).max() < 1e-11
        bound = math.sqrt((1 + ETA_B / 2) / (1 - ETA_B / 2))
        assert dist.max() <= bound * dist[0] and dist[-1] >= dist[0] / bound
    else:
        assert rho < 0.997
        first = int((dist < 1e-6).nonzero()[0])
        assert first < 4500
        assert dist[-1] < 1e-7


def test_heavy_ball_recursion_equals_torch_momentum_buffer(matrix_game_data) -> None:
    """p_{t+1} = p_t - eta g_t + beta (p_t - p_{t-1}) is torch's buf = beta buf + g; p -= eta buf."""
    A, _, _, x0, y0 = matrix_game_data
    xs, ys = heavy_ball(A, x0, y0, 0.1, -0.5, 50, alternating=False)
    x, y, bx, by = x0, y0, torch.zeros(5, dtype=DT), torch.zeros(5, dtype=DT)
    for t in range(50):
        gx, gy = A @ y, -(A.T @ x)
        bx, by = -0.5 * bx + gx, -0.5 * by + gy
        x, y = x - 0.1 * bx, y - 0.1 * by
    torch.testing.assert_close(torch.cat([x, y]), torch.cat([xs[-1], ys[-1]]), rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------------
# C. Dirac-GAN, closed-form loops
# --------------------------------------------------------------------------------------------
def dirac_jacobian(c: float) -> Tensor:
    """dF/dw at (c, 0) for the minimax loss: [[0, -1/2], [1/2, c^2/2]]."""
    return torch.tensor([[0.0, -0.5], [0.5, c * c / 2]], dtype=DT)


def test_dirac_jacobian_matches_autograd() -> None:
    for c in (0.0, -2.0, 1.0):
        game = DiracGAN(c, 0.0, "minimax", c=c)
        loss_g, loss_d = game.losses()
        (g0,) = torch.autograd.grad(loss_g, game.theta, create_graph=True)
        (g1,) = torch.autograd.grad(loss_d, game.psi, create_graph=True)
        J = torch.stack([torch.stack(torch.autograd.grad(g, [game.theta, game.psi], retain_graph=True))
                         for g in (g0, g1)])
        torch.testing.assert_close(J, dirac_jacobian(c), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("eta", ETAS)
def test_simultaneous_gd_spirals_out_on_dirac_gan(eta: float) -> None:
    """c = 0, minimax: F = sigmoid(psi theta) (-psi, theta), a scaled rotation, so each step
    multiplies theta^2 + psi^2 by exactly 1 + eta^2 sigmoid(psi theta)^2 > 1."""
    game = DiracGAN(1.0, 1.0, "minimax", c=0.0)
    ws = sim_gd(field_fn(game), game.flat_point(), eta, 2000)
    W = torch.stack(ws)
    sq = (W**2).sum(1)
    s = torch.sigmoid(W[:-1, 0] * W[:-1, 1])
    expected = 1 + eta**2 * s**2
    assert ((sq[1:] / sq[:-1] - expected).abs() / expected).max() < 1e-12
    assert (sq[1:] > sq[:-1]).all()
    assert sq[-1].sqrt() > 2 * sq[0].sqrt()


@pytest.mark.parametrize("eta", ETAS)
def test_alternating_gd_cycles_on_dirac_gan(eta: float) -> None:
    """Mescheder et al.: alternating GD neither converges nor diverges on Dirac-GAN (c = 0)."""
    game = DiracGAN(1.0, 1.0, "minimax", c=0.0)
    d = norms(alt_gd(field_fn(game), game.flat_point(), eta, 2000, n0=1))
    assert d.max() < 1.2 * d[0] and d[1000:].min() > 0.7 * d[0]


DIRAC_ETA = 0.3
DIRAC_CASES = [(0.0, "extragradient"), (0.0, "optimistic"), (-2.0, "extragradient"), (-2.0, "optimistic")]


def _linear_operator(method: str, J: Tensor, eta: float) -> Tensor:
    """The linearisation at the equilibrium: EG I - eta J + eta^2 J^2; OGD on (w_t, w_{t-1})."""
    eye = torch.eye(2, dtype=DT)
    if method == "extragradient":
        return eye - eta * J + eta**2 * J @ J
    if method == "simultaneous":
        return eye - eta * J
    return torch.cat([torch.cat([eye - 2 * eta * J, eta * J], 1), torch.cat([eye, 0 * eye], 1)], 0)


def _dirac_run(method: str, c: float, eta: float, steps: int) -> list[Tensor]:
    game = DiracGAN(1.0, 1.0, "minimax", c=c)
    loop = {"extragradient": extragradient, "optimistic": optimistic, "simultaneous": sim_gd}[method]
    return loop(field_fn(game), game.flat_point(), eta, steps)


def _measured_rate(ws: list[Tensor], c: float, M: Tensor, t: int) -> float:
    """Hankel estimate if the dominant eigenvalue of M is a complex pair, plain ratio if real."""
    ev = torch.linalg.eigvals(M)
    top = ev[ev.abs().argmax()]
    s = [float(w[0] - c) for w in ws]
    if abs(top.imag) > 1e-9:
        return hankel_rate(s, t)
    return abs(s[t + 1] / s[t])


@pytest.mark.parametrize("c,method", DIRAC_CASES)
def test_extragradient_and_optimistic_converge_on_dirac_gan(c: float, method: str) -> None:
    """Both converge to (c, 0), at the spectral radius of their linearisation at the equilibrium."""
    ws = _dirac_run(method, c, DIRAC_ETA, 2000)
    target = torch.tensor([c, 0.0], dtype=DT)
    dist = torch.stack([(w - target).norm() for w in ws])
    first = int((dist < 1e-6).nonzero()[0])
    assert first < 1500
    rho = spectral_radius(_linear_operator(method, dirac_jacobian(c), DIRAC_ETA))
    assert rho < 1
    measured = _measured_rate(ws, c, _linear_operator(method, dirac_jacobian(c), DIRAC_ETA), first)
    assert measured == pytest.approx(rho, rel=1e-5)


def test_simultaneous_gd_converges_on_nonconvex_dirac_gan_because_real_data_curves_d() -> None:
    """The 'spirals out' claim holds for c = 0 only. With c = -2 the real-data term softplus(-psi c)
    gives D's loss curvature c^2/4 at psi = 0: J = [[0, -1/2], [1/2, 2]] has real eigenvalues
    1 -+ sqrt(3)/2 > 0, so simultaneous GD contracts locally (rate 1 - eta (1 - sqrt(3)/2))."""
    lam = torch.linalg.eigvals(dirac_jacobian(-2.0))
    assert lam.imag.abs().max() == 0
    torch.testing.assert_close(lam.real.sort().values,
                               torch.tensor([1 - 3**0.5 / 2, 1 + 3**0.5 / 2], dtype=DT))
    ws = _dirac_run("simultaneous", -2.0, DIRAC_ETA, 2000)
    dist = torch.stack([(w - torch.tensor([-2.0, 0.0], dtype=DT)).norm() for w in ws])
    first = int((dist < 1e-6).nonzero()[0])
    assert first < 1000
    rho = 1 - DIRAC_ETA * (1 - 3**0.5 / 2)
    assert abs(float(ws[first + 1][0] + 2) / float(ws[first][0] + 2)) == pytest.approx(rho, rel=1e-5)


def test_optimistic_needs_eta_below_two_thirds_over_lambda_max_on_nonconvex_dirac_gan() -> None:
    """OGD on a real eigenvalue a = eta*lambda: z^2 - (1 - 2a) z - a = 0 has a root at -1 when
    a = 2/3. With lambda_max = 1 + sqrt(3)/2 the threshold is eta = 0.357; eta = 0.5 fails."""
    eta_max = (2 / 3) / (1 + 3**0.5 / 2)
    J = dirac_jacobian(-2.0)
    assert spectral_radius(_linear_operator("optimistic", J, 0.99 * eta_max)) < 1
    assert spectral_radius(_linear_operator("optimistic", J, 1.01 * eta_max)) > 1
    assert spectral_radius(_linear_operator("optimistic", J, 0.5)) > 1
    ws = _dirac_run("optimistic", -2.0, 0.5, 2000)
    assert (ws[-1] - torch.tensor([-2.0, 0.0], dtype=DT)).norm() > 0.1


# --------------------------------------------------------------------------------------------
# D. the same claims through lightning_gan.optim (one optimizer per player, .grad from field())
# --------------------------------------------------------------------------------------------
class GameDriver:
    """Feeds ``game.field()`` into ``.grad`` and steps one optimizer per player.

    The iteration schemes of :mod:`lightning_gan.schemes` in miniature: where F is evaluated and who steps when.
    """

    def __init__(self, game: ToyGame, make_optimizer: Callable, **kwargs) -> None:
        self.game = game
        self.optimizers = [make_optimizer(player.parameters(), **kwargs) for player in game.players]

    def _load(self, players: tuple[int, ...] = (0, 1)) -> None:
        field = self.game.field()
        for i in players:
            for p, g in zip(self.game.players[i].parameters(), field[i]):
                p.grad = g

    def simultaneous(self) -> None:
        self._load()
        for opt in self.optimizers:
            opt.step()

    optimistic = simultaneous  # the optimizer applies the correction

    def alternating(self) -> None:
        self._load((0,))
        self.optimizers[0].step()
        self._load((1,))
        self.optimizers[1].step()

    def extragradient(self) -> None:
        self._load()
        for opt in self.optimizers:
            opt.extrapolation()
        self._load()
        for opt in self.optimizers:
            opt.step()

    def past_extragradient(self) -> None:
        for opt in self.optimizers:
            opt.extrapolation()
        self._load()
        for opt in self.optimizers:
            opt.step()

    def run(self, scheme: str, steps: int, on_step: Callable[[], None] | None = None) -> list[Tensor]:
        """The flat points w_0..w_steps."""
        iterate = getattr(self, scheme)
        out = [self.game.flat_point()]
        for _ in range(steps):
            iterate()
            if on_step is not None:
                on_step()
            out.append(self.game.flat_point())
        return out


SCHEMES = {  # scheme -> (optimizer class name, closed-form loop)
    "simultaneous": ("SGD", sim_gd),
    "alternating": ("SGD", None),
    "extragradient": ("ExtraSGD", extragradient),
    "past_extragradient": ("PastExtraSGD", past_extragradient),
    "optimistic": ("OptimisticSGD", optimistic),
}


def _toy_for_equality(kind: str) -> tuple[ToyGame, int]:
    if kind == "bilinear1d":
        return Bilinear1D(1.0, 0.5), 1
    if kind == "matrix":
        gen = torch.Generator().manual_seed(0)
        A = orthogonal(5, gen) @ torch.diag(SINGULAR_VALUES) @ orthogonal(5, gen).T
        return BilinearGame(A, torch.randn(5, generator=gen, dtype=DT), torch.randn(5, generator=gen, dtype=DT)), 5
    return DiracGAN(1.0, 1.0, "minimax", c=-2.0 if kind == "dirac_nonconvex" else 0.0), 1


@pytest.mark.parametrize("kind", ["bilinear1d", "matrix", "dirac", "dirac_nonconvex"])
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_optimizer_trajectory_equals_closed_form_loop(scheme: str, kind: str) -> None:
    """Step for step, to 1e-12: the optimizers implement exactly the update rules of the papers."""
    game, n0 = _toy_for_equality(kind)
    name, loop = SCHEMES[scheme]
    eta = 0.3
    reference_game, _ = _toy_for_equality(kind)
    F = field_fn(reference_game)
    w0 = game.flat_point()
    expected = alt_gd(F, w0, eta, 100, n0) if loop is None else loop(F, w0, eta, 100)
    got = GameDriver(game, getattr(optim, name), lr=eta).run(scheme, 100)
    scale = max(float(w.norm()) for w in expected)
    err = max(float((g - e).norm()) for g, e in zip(got, expected))
    assert err <= 1e-12 * scale


@pytest.mark.parametrize("eta", ETAS)
def test_sgd_simultaneous_expands_bilinear_by_exact_factor(eta: float) -> None:
    sq = _sq(GameDriver(Bilinear1D(1.0, 0.5), optim.SGD, lr=eta).run("simultaneous", 300))
    assert ((sq[1:] / sq[:-1] - (1 + eta**2)).abs() / (1 + eta**2)).max() < 1e-12


@pytest.mark.parametrize("eta", ETAS)
def test_extrasgd_contracts_bilinear_by_exact_factor(eta: float) -> None:
    sq = _sq(GameDriver(Bilinear1D(1.0, 0.5), optim.ExtraSGD, lr=eta).run("extragradient", 300))
    factor = 1 - eta**2 + eta**4
    assert ((sq[1:] / sq[:-1] - factor).abs() / factor).max() < 1e-12


@pytest.mark.parametrize("eta", ETAS)
def test_past_extrasgd_and_optimistic_sgd_contract_bilinear(eta: float) -> None:
    """Both are one-gradient approximations of extragradient; their rate is the spectral radius of
    the 4x4 operator on (w_t, w_{t-1}) (the same operator for both on a linear field)."""
    J = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=DT)  # F(w) = J w for x*y
    rho = spectral_radius(_linear_operator("optimistic", J, eta))
    assert rho < 1
    steps = 400 if eta == 0.3 else 800
    for name, scheme in (("PastExtraSGD", "past_extragradient"), ("OptimisticSGD", "optimistic")):
        ws = GameDriver(Bilinear1D(1.0, 0.5), getattr(optim, name), lr=eta).run(scheme, steps)
        assert hankel_rate([float(w[0]) for w in ws], steps - 4) == pytest.approx(rho, rel=1e-6)
        assert ws[-1].norm() < rho ** (steps / 2) * ws[0].norm()


def test_alternating_sgd_conserves_invariant_and_its_uniform_average_converges() -> None:
    """Alternating SGD keeps Q = x^2 + y^2 - eta x y; AveragedModel's uniform average -> 0 as 1/T."""
    eta = 0.3
    game = Bilinear1D(1.0, 0.5)
    average = torch.optim.swa_utils.AveragedModel(game)
    driver = GameDriver(game, optim.SGD, lr=eta)
    avg_dist: list[float] = []

    def on_step() -> None:
        average.update_parameters(game)
        avg_dist.append(average.module.distance())

    W = torch.stack(driver.run("alternating", 3000, on_step))
    Q = W[:, 0] ** 2 + W[:, 1] ** 2 - eta * W[:, 0] * W[:, 1]
    assert ((Q - Q[0]).abs() / Q[0]).max() < 1e-12
    torch.testing.assert_close(torch.tensor(avg_dist[-1], dtype=DT), W[1:].mean(0).norm(), rtol=1e-9, atol=1e-12)
    S = torch.tensor([[1.0, -eta], [eta, 1 - eta**2]], dtype=DT)
    bound = 2 * torch.linalg.matrix_norm(torch.linalg.inv(torch.eye(2, dtype=DT) - S), ord=2) * W.norm(dim=1).max()
    assert avg_dist[299] <= bound / 300 and avg_dist[-1] <= bound / 3000
    assert avg_dist[-1] < avg_dist[299] and avg_dist[-1] < 2e-3 * W[0].norm()
    assert W[-1].norm() > 0.5 * W[0].norm()  # the last iterate does not converge


@pytest.mark.parametrize("alternating,beta,behaviour", MOMENTUM_CASES)
def test_sgd_with_momentum_follows_negative_momentum_theory(
        matrix_game_data, alternating: bool, beta: float, behaviour: str) -> None:
    """SGD(momentum=beta) reproduces part B: same trajectory as the heavy-ball recursion, same rate."""
    A, U, _, x0, y0 = matrix_game_data
    k, rho = _dominant_mode(ETA_B, beta, alternating)
    steps = {"bounded": 2000, "converges": 4500}.get(behaviour) or _steps_for(behaviour, rho)
    game = BilinearGame(A, x0, y0)
    ws = GameDriver(game, optim.SGD, lr=ETA_B, momentum=beta).run(
        "alternating" if alternating else "simultaneous", steps)
    xs, ys = heavy_ball(A, x0, y0, ETA_B, beta, steps, alternating)
    expected = torch.stack([torch.cat([x, y]) for x, y in zip(xs, ys)])
    W = torch.stack(ws)
    rel = ((W - expected).norm(dim=1) / expected.norm(dim=1).clamp_min(1e-300)).max()
    assert rel < 1e-9
    dist = W.norm(dim=1)
    assert hankel_rate([float(U[:, k] @ w[:5]) for w in ws], steps - 4) == pytest.approx(rho, rel=1e-9)
    if behaviour == "diverges":
        assert dist[-1] > 1e3 * dist[0]
    elif behaviour == "bounded":
        bound = math.sqrt((1 + ETA_B / 2) / (1 - ETA_B / 2))
        assert dist.max() <= bound * dist[0] and dist[-1] >= dist[0] / bound
    else:
        assert int((dist < 1e-6).nonzero()[0]) < 4100 and dist[-1] < 3e-7


def test_sgd_simultaneous_spirals_out_on_dirac_gan() -> None:
    ws = GameDriver(DiracGAN(1.0, 1.0, "minimax"), optim.SGD, lr=0.3).run("simultaneous", 1000)
    d = norms(ws)
    assert (d[1:] > d[:-1]).all() and d[-1] > 2 * d[0]


@pytest.mark.parametrize("c", [0.0, -2.0])
@pytest.mark.parametrize("name,scheme", [("ExtraSGD", "extragradient"), ("OptimisticSGD", "optimistic"),
                                         ("PastExtraSGD", "past_extragradient")])
def test_extrapolation_methods_converge_on_dirac_gan(name: str, scheme: str, c: float) -> None:
    game = DiracGAN(1.0, 1.0, "minimax", c=c)
    dist: list[float] = []
    steps = 1700 if c == 0 else 600  # c = -2 contracts ~4x faster (rate 0.961 vs 0.989 per step)
    GameDriver(game, getattr(optim, name), lr=DIRAC_ETA).run(scheme, steps, lambda: dist.append(game.distance()))
    assert dist[-1] < 1e-8
    assert min(i for i, d in enumerate(dist) if d < 1e-6) < 1500


def _bilinear_adam_run(name: str, scheme: str, game: ToyGame, steps: int, lr: float,
                       betas: tuple[float, float]) -> list[float]:
    dist: list[float] = []
    GameDriver(game, getattr(optim, name), lr=lr, betas=betas).run(scheme, steps, lambda: dist.append(game.distance()))
    return dist


ADAM_SCHEMES = [("ExtraAdam", "extragradient"), ("PastExtraAdam", "past_extragradient"),
                ("OptimisticAdam", "optimistic")]


@pytest.mark.parametrize("name,scheme", ADAM_SCHEMES + [("Adam", "simultaneous")])
def test_adam_methods_reach_only_a_neighbourhood_on_matrix_bilinear(matrix_game_data, name: str, scheme: str) -> None:
    """Constant-lr Adam does not converge on bilinear games: its normalised step stays ~lr as the
    gradient shrinks. Measured (lr 0.02, betas (0, 0.99), d0 = 2.68, steps 2000-10000): ExtraAdam
    stays in [0.03, 0.10], PastExtraAdam [0.01, 0.14], OptimisticAdam [0.03, 0.22], while
    simultaneous Adam stays in [1.0, 1.5]. (On x*y alone Adam methods can collapse far below 1e-6,
    but only transiently: the lagging second moment inflates the step until it overshoots.)"""
    A, _, _, x0, y0 = matrix_game_data
    game = BilinearGame(A, x0, y0)
    d0 = game.distance()
    dist = _bilinear_adam_run(name, scheme, game, 2500, 0.02, (0.0, 0.99))
    tail = dist[2000:]
    if name == "Adam":
        assert min(tail) > 0.3 * d0
    else:
        assert max(tail) < 0.1 * d0 and min(tail) > 1e-3 * d0


def test_toy_games_example_writes_pngs(tmp_path) -> None:
    """The trajectory figure script runs end to end (few steps) and writes its two PNGs."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "toy_games.py"
    spec = importlib.util.spec_from_file_location("toy_games_example", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.main(["--out", str(tmp_path), "--steps", "30"])
    assert [p.name for p in written] == ["toy_trajectories.png", "toy_distances.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
