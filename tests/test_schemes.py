"""The schemes that train GANs, driven on toy games through GameStep, reproduce the closed-form claims."""

import pytest
import torch

from lightning_gan.game.step import GameStep
from lightning_gan.game.toys import Bilinear1D, BilinearGame, DiracGAN
from lightning_gan.optim.factory import OptimizerConfig
from lightning_gan.schemes import SCHEMES, Alternating, make_scheme


def drive(game, scheme_name, steps, lr, momentum=0.0, n_dis=1):
    scheme = make_scheme(scheme_name, n_dis)
    config = OptimizerConfig(rule="sgd", lr=lr, momentum=momentum)
    optimizers = [config.build(player.parameters(), scheme.optimizer_family) for player in game.players]
    step = GameStep(game, optimizers, reduce=lambda tensors: None)
    norms = [game.distance()]
    for _ in range(steps):
        scheme.step(step, [None] * scheme.draws_per_step)
        norms.append(game.distance())
    return torch.tensor(norms, dtype=torch.float64), step


@pytest.mark.parametrize("eta", [0.1, 0.3])
def test_simultaneous_scheme_expands_bilinear_by_exactly_one_plus_eta_squared(eta):
    norms, _ = drive(Bilinear1D(1.0, 0.5), "simultaneous", 50, eta)
    ratios = (norms[1:] / norms[:-1]) ** 2
    torch.testing.assert_close(ratios, torch.full_like(ratios, 1 + eta**2), rtol=1e-12, atol=0)


@pytest.mark.parametrize("eta", [0.1, 0.3])
def test_extragradient_scheme_contracts_bilinear_by_exactly_1_minus_eta2_plus_eta4(eta):
    norms, step = drive(Bilinear1D(1.0, 0.5), "extragradient", 50, eta)
    ratios = (norms[1:] / norms[:-1]) ** 2
    torch.testing.assert_close(ratios, torch.full_like(ratios, 1 - eta**2 + eta**4), rtol=1e-12, atol=0)
    assert step.evaluations == 100  # two field evaluations per iteration


def test_alternating_scheme_with_negative_momentum_converges_where_positive_diverges():
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    a = u @ torch.diag(torch.linspace(0.5, 1.0, 5, dtype=torch.float64)) @ v.T
    start = (torch.ones(5, dtype=torch.float64), -torch.ones(5, dtype=torch.float64))
    negative, _ = drive(BilinearGame(a, *start), "alternating", 5000, 0.3, momentum=-0.5)
    zero, _ = drive(BilinearGame(a, *start), "alternating", 5000, 0.3, momentum=0.0)
    positive, _ = drive(BilinearGame(a, *start), "alternating", 300, 0.3, momentum=0.5)
    assert negative[-1] < 1e-6
    assert 0.3 * zero[0] < zero[-1] < 3 * zero[0] and zero.max() < 3 * zero[0]  # bounded, not converging
    assert positive[-1] > 1e3 * positive[0]


@pytest.mark.parametrize("scheme", ["extragradient", "past_extragradient", "optimistic"])
def test_dirac_gan_converges_under_the_extrapolation_schemes(scheme):
    norms, _ = drive(DiracGAN(1.0, 1.0), scheme, 2000, 0.3)
    assert norms[-1] < 1e-6


def test_simultaneous_scheme_spirals_out_on_dirac_gan():
    norms, _ = drive(DiracGAN(1.0, 1.0), "simultaneous", 500, 0.3)
    assert torch.all(norms[1:] > norms[:-1])


def test_alternating_discriminator_steps_first_and_counts_evaluations():
    calls = []

    class Recorder:
        optimizers = [type("G", (), {"step": lambda self: calls.append("G.step")})(),
                      type("D", (), {"step": lambda self: calls.append("D.step")})()]

        def evaluate(self, sample, players=(0, 1)):
            calls.append(f"F{tuple(players)}")

        def project(self):
            calls.append("project")

    scheme = Alternating(n_dis=2)
    scheme.step(Recorder(), [None] * scheme.draws_per_step)
    assert calls == ["F(1,)", "D.step", "project", "F(1,)", "D.step", "project", "F(0,)", "G.step", "project"]
    assert scheme.evaluations_per_step == scheme.draws_per_step == 3


def test_unknown_scheme_names_the_choices():
    with pytest.raises(ValueError, match="Invalid scheme: 'sgda'; expected one of " + ", ".join(SCHEMES)):
        make_scheme("sgda")
    with pytest.raises(ValueError, match="n_dis applies to the alternating scheme only"):
        make_scheme("extragradient", n_dis=5)
