"""Specification of the GAN losses: values, gradients, penalties, validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_gan.game.losses import (
    LOSSES,
    GANLoss,
    GradientPenalty,
    HingeLoss,
    MinimaxLoss,
    NonSaturatingLoss,
    R1Penalty,
    WGANGPLoss,
    WGANLoss,
    clip_weights_,
    get_loss,
)

D_REAL = [2.0, -0.5, 0.3]
D_FAKE = [-1.0, 0.5, 3.0]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _softplus(t: float) -> float:
    return math.log(1.0 + math.exp(t))


def _sigmoid(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t))


def _scores() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(D_REAL, dtype=torch.float64), torch.tensor(D_FAKE, dtype=torch.float64)


class Linear(nn.Module):
    """D(x) = w . x, so grad_x D = w for every sample: penalties in closed form."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w


# -- values against hand-computed formulas ---------------------------------------------------

JS_L_D = _mean([-math.log(_sigmoid(r)) for r in D_REAL]) + _mean(
    [-math.log(1.0 - _sigmoid(f)) for f in D_FAKE]
)


@pytest.mark.parametrize(
    ("loss", "l_d", "l_g"),
    [
        (MinimaxLoss(), JS_L_D, _mean([math.log(1.0 - _sigmoid(f)) for f in D_FAKE])),
        (NonSaturatingLoss(), JS_L_D, _mean([-math.log(_sigmoid(f)) for f in D_FAKE])),
        (WGANLoss(), _mean(D_FAKE) - _mean(D_REAL), -_mean(D_FAKE)),
        (WGANGPLoss(), _mean(D_FAKE) - _mean(D_REAL), -_mean(D_FAKE)),
        (
            HingeLoss(),
            _mean([max(0.0, 1 - r) for r in D_REAL]) + _mean([max(0.0, 1 + f) for f in D_FAKE]),
            -_mean(D_FAKE),
        ),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, GANLoss) else "",
)
def test_loss_values_match_hand_formulas(loss: GANLoss, l_d: float, l_g: float) -> None:
    d_real, d_fake = _scores()
    assert loss.discriminator_loss(d_real, d_fake).item() == pytest.approx(l_d, rel=1e-12)
    assert loss.generator_loss(d_fake).item() == pytest.approx(l_g, rel=1e-12)


def test_zero_sum_flags_follow_the_definition() -> None:
    """zero_sum iff L_G = -L_D + (terms free of G): check it numerically on random scores."""
    d_real = torch.tensor([0.3, -1.2, 2.0, 0.0, -0.4])
    d_fake = torch.tensor([-3.0, -0.5, 0.2, 2.0, -1.5])  # on both sides of the hinge at -1
    d_fake2 = torch.tensor([1.0, -2.5, 0.7, -0.1, 0.4])
    for name, cls in LOSSES.items():
        loss = cls()
        # L_G + L_D must not depend on d_fake for a zero-sum loss.
        s1 = loss.generator_loss(d_fake) + loss.discriminator_loss(d_real, d_fake)
        s2 = loss.generator_loss(d_fake2) + loss.discriminator_loss(d_real, d_fake2)
        assert torch.allclose(s1, s2, atol=1e-6) == cls.zero_sum, name
    assert [n for n, c in LOSSES.items() if c.zero_sum] == ["minimax", "wgan", "wgan_gp"]


def test_js_losses_are_stable_at_extreme_scores() -> None:
    """softplus form: log(1 - sigmoid(100)) would be -inf in the naive form."""
    d_real = torch.tensor([-100.0, 100.0], requires_grad=True)
    d_fake = torch.tensor([100.0, -100.0], requires_grad=True)
    for loss in (MinimaxLoss(), NonSaturatingLoss()):
        total = loss.discriminator_loss(d_real, d_fake) + loss.generator_loss(d_fake)
        grads = torch.autograd.grad(total, (d_real, d_fake))
        assert torch.isfinite(total)
        assert all(torch.isfinite(g).all() for g in grads)
    assert MinimaxLoss().generator_loss(torch.tensor([100.0])).item() == pytest.approx(-100.0)


def test_non_saturating_vs_minimax_generator_gradients() -> None:
    """dL_G/ds = -sigmoid(s)/N (minimax) vs -sigmoid(-s)/N (non-saturating).

    Same sign (both push s_fake up), equal at s = 0; as s -> -inf the minimax
    gradient vanishes while the non-saturating one tends to -1/N.
    """
    s = torch.tensor([0.0, -5.0, -30.0], dtype=torch.float64, requires_grad=True)
    n = s.numel()
    (g_mm,) = torch.autograd.grad(MinimaxLoss().generator_loss(s), s)
    (g_ns,) = torch.autograd.grad(NonSaturatingLoss().generator_loss(s), s)
    assert torch.allclose(g_mm, -torch.sigmoid(s.detach()) / n)
    assert torch.allclose(g_ns, -torch.sigmoid(-s.detach()) / n)
    assert (g_mm < 0).all() and (g_ns < 0).all()
    assert g_mm[0] == g_ns[0]
    assert abs(g_mm[2]) < 1e-13 and g_ns[2] == pytest.approx(-1.0 / n)


# -- penalties -------------------------------------------------------------------------------


def test_gradient_penalty_is_zero_for_unit_linear_critic() -> None:
    w = torch.randn(6, dtype=torch.float64)
    real, fake = torch.randn(2, 8, 2, 3, dtype=torch.float64)
    unit = WGANGPLoss(gp_weight=10.0).penalty(Linear(w / w.norm()), real, fake)
    assert unit is not None and unit.abs().item() < 1e-20


@pytest.mark.parametrize("scale", [0.3, 2.0])
def test_gradient_penalty_is_weight_times_squared_excess_and_exact_for_d(scale: float) -> None:
    """GP = lambda (||w|| - 1)^2 for D(x) = w.x; its grad in w is 2 lambda (||w|| - 1) w / ||w||."""
    w = torch.randn(4, dtype=torch.float64)
    w = scale * w / w.norm()
    d = Linear(w)
    real, fake = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    gp = WGANGPLoss(gp_weight=3.0).penalty(d, real, fake)
    assert gp is not None and gp.item() == pytest.approx(3.0 * (scale - 1) ** 2, rel=1e-12)
    (grad_w,) = torch.autograd.grad(gp, d.w)
    assert torch.allclose(grad_w, 2 * 3.0 * (scale - 1) * w / scale)


def test_r1_is_half_gamma_times_squared_norm_and_exact_for_d() -> None:
    w = torch.randn(4, dtype=torch.float64)
    d = Linear(w)
    real = torch.randn(7, 4, dtype=torch.float64)
    r1 = R1Penalty(gamma=5.0)(d, real)
    assert r1.item() == pytest.approx(2.5 * w.pow(2).sum().item(), rel=1e-12)
    (grad_w,) = torch.autograd.grad(r1, d.w)
    assert torch.allclose(grad_w, 5.0 * w)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_r1_composes_with_every_loss(name: str) -> None:
    w = torch.randn(3, dtype=torch.float64)
    real, fake = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    kwargs = {"gp_weight": 0.0} if name == "wgan_gp" else {}
    pen = get_loss(name, r1_gamma=2.0, **kwargs).penalty(Linear(w), real, fake)
    assert pen is not None and pen.item() == pytest.approx(w.pow(2).sum().item(), rel=1e-12)
    assert get_loss(name, **kwargs).penalty(Linear(w), real, fake) is None


def test_wgan_gp_adds_r1_on_top() -> None:
    w = 2.0 * torch.nn.functional.normalize(torch.randn(3, dtype=torch.float64), dim=0)
    real, fake = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    pen = WGANGPLoss(gp_weight=1.0, r1_gamma=2.0).penalty(Linear(w), real, fake)
    assert pen is not None and pen.item() == pytest.approx(1.0 + 4.0, rel=1e-12)


def test_penalties_do_not_leak_gradient_into_the_generator() -> None:
    g = nn.Linear(2, 3)
    d = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    fake = g(torch.randn(6, 2))
    real = torch.randn(6, 3)
    pen = WGANGPLoss(r1_gamma=1.0).penalty(d, real, fake)
    assert pen is not None
    grads = torch.autograd.grad(pen, [*g.parameters(), *d.parameters()], allow_unused=True)
    assert all(gr is None for gr in grads[:2])  # G: untouched
    assert all(gr is not None for gr in grads[2:5])  # D: grad_x D does not depend on the last bias



def test_gradient_penalty_rng_is_explicit() -> None:
    """Same seed, same alphas; the global RNG is neither used nor advanced."""
    d = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    real, fake = torch.randn(6, 3), torch.randn(6, 3)
    gp = GradientPenalty(weight=1.0)
    state = torch.get_rng_state()
    a = gp(d, real, fake, generator=torch.Generator().manual_seed(0))
    b = gp(d, real, fake, generator=torch.Generator().manual_seed(0))
    c = gp(d, real, fake, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)


# -- clipping, validation, registry ----------------------------------------------------------


def test_clip_weights_projects_trainable_parameters_only() -> None:
    d = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    with torch.no_grad():
        for p in d.parameters():
            p.mul_(100)
    d[1].weight.requires_grad_(False)
    frozen = d[1].weight.clone()
    inside = d[0].weight.clamp(-0.01, 0.01).clone()
    clip_weights_(d, 0.01)
    assert all(p.abs().max() <= 0.01 for p in d.parameters() if p.requires_grad)
    assert torch.equal(d[1].weight, frozen)
    assert torch.equal(d[0].weight, inside)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: WGANGPLoss(gp_weight=-1.0), r"Invalid gp_weight: -1.0; expected >= 0"),
        (lambda: WGANGPLoss(gp_weight=float("nan")), r"Invalid gp_weight: nan"),
        (lambda: NonSaturatingLoss(r1_gamma=-0.5), r"Invalid r1_gamma: -0.5; expected >= 0"),
        (lambda: R1Penalty(gamma=-2.0), r"Invalid gamma: -2.0; expected >= 0"),
        (lambda: GradientPenalty(weight=-2.0), r"Invalid weight: -2.0; expected >= 0"),
        (lambda: clip_weights_(nn.Linear(1, 1), 0.0), r"Invalid clip: 0.0; expected > 0"),
        (lambda: get_loss("lsgan"), r"Unknown loss: 'lsgan'; expected one of \['hinge', 'minimax'"),
    ],
)
def test_invalid_arguments_raise_with_allowed_range(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_get_loss_builds_by_name_and_repr_shows_hyperparameters() -> None:
    loss = get_loss("wgan_gp", gp_weight=5.0)
    assert loss == WGANGPLoss(5.0)
    assert repr(loss) == "WGANGPLoss(gp_weight=5.0, r1_gamma=0.0)"
    assert get_loss("non_saturating", r1_gamma=10.0) != NonSaturatingLoss()
