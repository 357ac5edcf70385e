"""The relativistic pairing loss with R1 + R2 (R3GAN, Huang et al. 2024): closed forms, Dirac-GAN, schemes, DDP."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddp_harness import run_distributed
from gan_fixtures import (SCHEMES, assert_matches_one_rank, assert_same_state, fit_cli_errors, make_data, make_module,
                          make_trainer, resumed_and_uninterrupted, state_of)
from lightning_gan.game.field import gan_field
from lightning_gan.game.losses import R1Penalty, R2Penalty, RpGANLoss, get_loss
from lightning_gan.variance_reduction import SVREConfig

pytestmark = [
    pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning"),  # torchdata 0.11 on torch 2.14
    pytest.mark.filterwarnings("ignore:(?s).*skip_none parameter was deprecated"),  # Lightning's SaveConfigCallback
]

R3 = {"loss": "rpgan", "r1_gamma": 0.1, "r2_gamma": 0.1}
ALL_SCHEMES = [*SCHEMES, "svre"]
QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart_rpgan.yaml"


class LinearD(nn.Module):
    """D(x) = w . x + b: grad_x D = w for every sample, so R1 = R2 = gamma/2 ||w||^2."""

    def __init__(self, w: list[float], b: float = 0.75) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(b, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w + self.b


class LinearG(nn.Module):
    """G(z) = A z."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a.clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.a.T


def _svre_kwargs(scheme: str) -> dict:
    return {"svre": SVREConfig(snapshot_every=7)} if scheme == "svre" else {}


# -- penalties on a linear D: exact ------------------------------------------------------------------

W = [0.5, -1.25, 2.0]  # dyadic: every sum and product below is exact in float64
W_SQ = 0.25 + 1.5625 + 4.0


@pytest.mark.parametrize(("r1", "r2"), [(3.0, 0.0), (0.0, 0.5), (3.0, 0.5)])
def test_r1_and_r2_on_a_linear_d_equal_half_gamma_norm_w_squared_with_gradient_gamma_w(r1, r2):
    d = LinearD(W)
    g = LinearG(torch.ones(3, 2, dtype=torch.float64))
    real = torch.randn(4, 3, dtype=torch.float64)
    fake = g(torch.randn(4, 2, dtype=torch.float64))
    penalty = RpGANLoss(r1_gamma=r1, r2_gamma=r2).penalty(d, real, fake)
    assert penalty.item() == (r1 + r2) / 2 * W_SQ
    grad_w, grad_b, grad_a = torch.autograd.grad(penalty, [d.w, d.b, g.a], allow_unused=True)
    assert torch.equal(grad_w, (r1 + r2) * d.w.detach())  # gamma w from each penalty
    assert grad_b is None and grad_a is None  # the bias is free; R2 sees G(z) detached


def test_r2_alone_is_r1_on_the_fakes_and_composes_with_every_loss():
    d, real, fake = LinearD(W), torch.randn(4, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    assert R2Penalty(2.0)(d, real, fake).item() == R1Penalty(2.0)(d, fake).item() == W_SQ
    for name in ("minimax", "non_saturating", "wgan", "wgan_gp", "hinge", "rpgan"):
        kwargs = {"gp_weight": 0.0} if name == "wgan_gp" else {}
        assert get_loss(name, r2_gamma=2.0, **kwargs).penalty(d, real, fake).item() == W_SQ, name


# -- the loss: values and gradients by hand -----------------------------------------------------------

D_REAL = [2.0, -0.5, 0.3]
D_FAKE = [-1.0, 0.5, 3.0]


def _softplus(t: float) -> float:
    return math.log1p(math.exp(t))


def _sigmoid(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t))


def test_rpgan_values_and_score_gradients_match_hand_formulas():
    loss, n = RpGANLoss(), len(D_REAL)
    real = torch.tensor(D_REAL, dtype=torch.float64, requires_grad=True)
    fake = torch.tensor(D_FAKE, dtype=torch.float64, requires_grad=True)
    l_d, l_g = loss.discriminator_loss(real, fake), loss.generator_loss(fake, real)
    assert l_d.item() == pytest.approx(sum(_softplus(f - r) for r, f in zip(D_REAL, D_FAKE)) / n, rel=1e-14)
    assert l_g.item() == pytest.approx(sum(_softplus(r - f) for r, f in zip(D_REAL, D_FAKE)) / n, rel=1e-14)
    d_real, d_fake = torch.autograd.grad(l_d, [real, fake])
    want = [_sigmoid(f - r) / n for r, f in zip(D_REAL, D_FAKE)]  # dL_D/ds_fake = -dL_D/ds_real
    assert d_fake.tolist() == pytest.approx(want, rel=1e-14) and d_real.tolist() == pytest.approx(
        [-v for v in want], rel=1e-14)
    g_real, g_fake = torch.autograd.grad(l_g, [real, fake])
    want = [_sigmoid(r - f) / n for r, f in zip(D_REAL, D_FAKE)]
    assert g_fake.tolist() == pytest.approx([-v for v in want], rel=1e-14)
    assert g_real.tolist() == pytest.approx(want, rel=1e-14)
    assert not loss.zero_sum and loss.relativistic


def test_rpgan_pairs_sample_by_sample():
    """Permuting the fakes alone changes the loss: it is not a function of the two score sets."""
    loss = RpGANLoss()
    real, fake = torch.tensor(D_REAL), torch.tensor(D_FAKE)
    assert not torch.allclose(loss.discriminator_loss(real, fake), loss.discriminator_loss(real, fake.flip(0)))


@pytest.mark.parametrize("players", [(0, 1), (0,), (1,)])
def test_field_on_linear_players_equals_the_hand_derived_gradients(players):
    """G(z) = A z, D(x) = w.x + b, u_i = D(x_i) - D(G(z_i)) = w.(x_i - A z_i):
    grad_w L_D = -mean sigmoid(-u_i) (x_i - A z_i) + (g1 + g2) w, grad_b L_D = 0,
    grad_A L_G = -mean sigmoid(u_i) w z_i^T (D(x) a constant for G)."""
    torch.manual_seed(0)
    g1, g2 = 0.3, 0.7
    a = torch.randn(3, 2, dtype=torch.float64)
    real, z = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    d, g = LinearD(W), LinearG(a)
    field = gan_field(g, d, RpGANLoss(r1_gamma=g1, r2_gamma=g2), real, z, players=players)
    w = d.w.detach()
    diff = real - z @ a.T
    u = diff @ w
    if 1 in players:
        grad_w, grad_b = field.discriminator_grads
        want_w = -(torch.sigmoid(-u)[:, None] * diff).mean(0) + (g1 + g2) * w
        torch.testing.assert_close(grad_w, want_w, rtol=1e-13, atol=1e-14)
        assert grad_b.item() == 0.0
        assert field.discriminator_loss.item() == pytest.approx(
            F.softplus(-u).mean().item() + (g1 + g2) / 2 * W_SQ, rel=1e-14)
    if 0 in players:
        (grad_a,) = field.generator_grads
        want_a = -(torch.sigmoid(u)[:, None, None] * w[None, :, None] * z[:, None, :]).mean(0)
        torch.testing.assert_close(grad_a, want_a, rtol=1e-13, atol=1e-14)
        assert field.generator_loss.item() == pytest.approx(F.softplus(u).mean().item(), rel=1e-14)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_one_player_evaluations_give_that_players_part_of_the_full_field(batch_norm):
    """Alternating steps: G's step scores the paired real batch too; with a train-mode BatchNorm in D the real
    scores then depend on G, and that coupling is kept as in the full field."""
    torch.manual_seed(0)
    generator = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 4))
    layers = [nn.Linear(4, 8)] + ([nn.BatchNorm1d(8)] if batch_norm else []) + [nn.Tanh(), nn.Linear(8, 1)]
    discriminator, loss = nn.Sequential(*layers), RpGANLoss(r1_gamma=0.5, r2_gamma=0.25)
    real, z = torch.randn(6, 4), torch.randn(6, 3)
    both, g_only, d_only = (gan_field(generator, discriminator, loss, real, z, players=p) for p in ((0, 1), (0,), (1,)))
    for a, b in zip(g_only.generator_grads + d_only.discriminator_grads, both.grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# -- Dirac-GAN: local convergence at the closed-form rate ----------------------------------------------


class DiracG(nn.Module):
    """G(z) = theta: a Dirac at theta, whatever z."""

    def __init__(self, theta: float) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([theta], dtype=torch.float64))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.theta.expand(z.shape[0], 1)


class DiracD(nn.Module):
    """D(x) = psi x."""

    def __init__(self, psi: float) -> None:
        super().__init__()
        self.psi = nn.Parameter(torch.tensor([psi], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] * self.psi


def _dirac_field(theta: float, psi: float, loss: RpGANLoss) -> np.ndarray:
    """The library's F at (theta, psi), real data at 0."""
    field = gan_field(DiracG(theta), DiracD(psi), loss, torch.zeros(1, 1, dtype=torch.float64),
                      torch.zeros(1, 1, dtype=torch.float64))
    return np.array([field.generator_grads[0].item(), field.discriminator_grads[0].item()])


def _dirac_jacobian(gamma_sum: float) -> np.ndarray:
    """F = (-psi sigmoid(-psi theta), theta sigmoid(psi theta) + (g1 + g2) psi): its Jacobian at (0, 0)."""
    return np.array([[0.0, -0.5], [0.5, gamma_sum]])


def _simultaneous_gd(loss: RpGANLoss, start: tuple[float, float], eta: float, steps: int) -> np.ndarray:
    w, path = np.array(start), [np.array(start)]
    for _ in range(steps):
        w = w - eta * _dirac_field(*w, loss)
        path.append(w)
    return np.array(path)


def _area_rate(path: np.ndarray) -> float:
    """sqrt of det[w_{t+1}, w_{t+2}] / det[w_t, w_{t+1}]: exactly |det M|^(1/2) = rho for a linear map M
    with a complex pair of eigenvalues (both of modulus rho), whatever the start."""
    det = [np.linalg.det(np.stack([path[t], path[t + 1]])) for t in range(len(path) - 1)]
    return math.sqrt(det[-1] / det[-2])


def test_dirac_gan_field_jacobian_at_the_equilibrium_is_the_closed_form():
    loss, h = RpGANLoss(r1_gamma=0.1, r2_gamma=0.2), 1e-5
    columns = [(_dirac_field(*(h * e), loss) - _dirac_field(*(-h * e), loss)) / (2 * h) for e in np.eye(2)]
    np.testing.assert_allclose(np.stack(columns, axis=1), _dirac_jacobian(0.3), atol=1e-9)
    assert np.array_equal(_dirac_field(0.0, 0.0, loss), [0.0, 0.0])


@pytest.mark.parametrize(("gamma", "eta"), [(0.1, 0.2), (0.25, 0.5), (0.05, 0.2)])
def test_simultaneous_gd_with_r1_r2_converges_locally_at_the_spectral_radius(gamma, eta):
    """rho(I - eta J) = sqrt(1 - 2 eta gamma + eta^2 / 4) for 2 gamma < 1 (J from R1 = R2 = gamma):
    e.g. 0.98489 per step for gamma 0.1, eta 0.2."""
    loss = RpGANLoss(r1_gamma=gamma, r2_gamma=gamma)
    rho = max(abs(np.linalg.eigvals(np.eye(2) - eta * _dirac_jacobian(2 * gamma))))
    assert rho == pytest.approx(math.sqrt(1 - 2 * eta * gamma + eta**2 / 4), rel=1e-14) and rho < 1
    local = _simultaneous_gd(loss, (1e-6, -2e-6), eta, 40)
    assert _area_rate(local) == pytest.approx(rho, abs=1e-10)  # measured: within 6e-14


def test_simultaneous_gd_with_r1_r2_converges_from_afar_at_that_rate():
    """From (1, 1), nonlinear at first: gamma 0.25, eta 0.5, rho = sqrt(0.8125) = 0.9014."""
    gamma, eta = 0.25, 0.5
    rho = math.sqrt(1 - 2 * eta * gamma + eta**2 / 4)
    norms = np.linalg.norm(_simultaneous_gd(RpGANLoss(r1_gamma=gamma, r2_gamma=gamma), (1.0, 1.0), eta, 400), axis=1)
    assert norms[-1] < 1e-12 * norms[0]
    assert (norms[-1] / norms[-201]) ** (1 / 200) == pytest.approx(rho, abs=2e-3)


def test_simultaneous_gd_without_penalties_spirals_out_of_the_dirac_equilibrium():
    """gamma = 0: J's eigenvalues are +-i/2, rho(I - eta J) = sqrt(1 + eta^2 / 4) > 1."""
    eta = 0.2
    local = _simultaneous_gd(RpGANLoss(), (1e-6, -2e-6), eta, 40)
    assert _area_rate(local) == pytest.approx(math.sqrt(1 + eta**2 / 4), abs=1e-8)


# -- the trainer: every scheme, accumulation, resume, bad values ----------------------------------------


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_every_scheme_trains_with_rpgan_r1_r2(scheme):
    module = make_module(scheme, **R3, **_svre_kwargs(scheme))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    make_trainer(4).fit(module, make_data())
    after = state_of(module)
    for player in ("generator", "discriminator"):
        assert any(not torch.equal(v, after[k]) for k, v in before.items() if k.startswith(player)), player
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


def test_accumulation_pairs_within_micro_batches_like_one_batch():
    """Batch 16 as 2 micro-batches of 8 (batch_size is per micro-batch): F is the micro-batches' mean,
    pairing within each, as it is within the whole batch."""
    straight, split = make_module("extragradient", **R3), make_module("extragradient", accumulation=2, **R3)
    make_trainer(5).fit(straight, make_data(batch_size=16))
    make_trainer(5).fit(split, make_data(batch_size=8))
    expected, actual = state_of(straight), state_of(split)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("scheme", ["alternating", "svre"])
def test_resume_n_plus_n_equals_2n_bit_for_bit(scheme, tmp_path):
    assert_same_state(*resumed_and_uninterrupted(
        lambda init_seed: make_module(scheme, init_seed=init_seed, **R3, **_svre_kwargs(scheme)), 6, tmp_path,
        resumed_init_seed=99))


@pytest.mark.parametrize(("make", "match"), [
    (lambda: RpGANLoss(r2_gamma=-1.0), r"^Invalid r2_gamma: -1.0; expected >= 0$"),
    (lambda: make_module(loss="rpgan", r2_gamma=float("nan")), r"^Invalid r2_gamma: nan"),
    (lambda: make_module(loss="rpgan", latent_bank_factor=2), r"^Invalid latent_bank_factor: 2 with loss RpGANLoss"),
    (lambda: gan_field(LinearG(torch.ones(3, 2, dtype=torch.float64)), LinearD(W), RpGANLoss(),
                       torch.zeros(4, 3, dtype=torch.float64), torch.zeros(8, 2, dtype=torch.float64)),
     r"^Invalid batch for loss rpgan: 4 real and 8 fake samples"),
    (lambda: RpGANLoss().generator_loss(torch.zeros(3)), r"needs the paired real scores"),
], ids=["negative-r2", "nan-r2-module", "latent-bank", "mismatched-batch", "unpaired-call"])
def test_bad_values_raise_one_line_naming_the_field(make, match):
    with pytest.raises(ValueError, match=match) as error:
        make()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("args", "named"), [
    (["--model.r2_gamma=-0.5"], "Invalid r2_gamma: -0.5"),
    (["--model.latent_bank_factor=2"], "Invalid latent_bank_factor: 2"),
], ids=["negative-r2_gamma", "latent-bank"])
def test_bad_values_through_the_cli_fail_in_one_line_with_exit_2(args, named, tmp_path, capsys):
    errors, err = fit_cli_errors(capsys, QUICKSTART, tmp_path, *args)
    assert len(errors) == 1 and named in errors[0], err
    assert "Traceback" not in err and not list(tmp_path.rglob("*.ckpt"))


# -- 2 gloo ranks ----------------------------------------------------------------------------------------

ITERATIONS = 20


def _every_scheme_on_two_ranks(rank):
    """One launch: every scheme with rpgan + R1 + R2 (rank-dependent init: the strategy broadcasts rank 0's),
    then extragradient with 2 micro-batches of 4 per rank."""
    runs = {scheme: {"scheme": scheme, **_svre_kwargs(scheme)} for scheme in ALL_SCHEMES}
    runs["accumulation"] = {"scheme": "extragradient", "accumulation": 2}
    results = {}
    for name, kwargs in runs.items():
        module = make_module(init_seed=rank, ema_decay=0.9, **R3, **kwargs)
        make_trainer(ITERATIONS, devices=2, strategy="game_ddp").fit(
            module, make_data(batch_size=4 if name == "accumulation" else 8))
        results[name] = state_of(module)
    return results


@pytest.mark.slow
def test_two_ranks_bit_identical_and_equal_to_one_rank_with_the_global_batch():
    two_ranks = run_distributed(_every_scheme_on_two_ranks, 2, timeout=900)
    for name, rank0 in two_ranks[0].items():
        for key in rank0:
            assert torch.equal(rank0[key], two_ranks[1][name][key]), (name, key)
        scheme = "extragradient" if name == "accumulation" else name
        module = make_module(init_seed=0, ema_decay=0.9, scheme=scheme, **R3, **_svre_kwargs(scheme))
        make_trainer(ITERATIONS).fit(module, make_data(batch_size=16))
        assert_matches_one_rank(rank0, state_of(module), name)
