"""Consensus optimization (Mescheder et al., NeurIPS 2017): F + gamma J^T F at every evaluation.

Toys give exact answers. On ``min_x max_y x*y`` (player 0 minimises x*y, player 1 minimises -x*y, see
:mod:`lightning_gan.game.toys`) F = (y, -x), J = dF/dw = [[0, 1], [-1, 0]], J^T F = [[0, -1], [1, 0]] (y, -x)
= (x, y) = grad (1/2 ||F||^2), since ||F||^2 = x^2 + y^2. Simultaneous GD with step eta then maps

    x' = (1 - eta gamma) x - eta y,    y' = eta x + (1 - eta gamma) y,

a scaled rotation [[a, -eta], [eta, a]] with a = 1 - eta gamma, so x'^2 + y'^2 = (a^2 + eta^2)(x^2 + y^2)
exactly at every step; without consensus the factor is 1 + eta^2 > 1 (divergence).
"""

from __future__ import annotations

import pytest
import torch

from ddp_harness import run_distributed
from gan_fixtures import (CountAllReduces, assert_matches_one_rank, assert_same_state, fit_cli_errors, make_data,
                          make_module, make_trainer, resumed_and_uninterrupted, state_of)
from lightning_gan.game.field import trainable_parameters
from lightning_gan.game.gan import GANGame
from lightning_gan.game.losses import get_loss
from lightning_gan.game.step import GameStep
from lightning_gan.game.toys import Bilinear1D, BilinearGame, DiracGAN, Point, ToyGame
from lightning_gan.optim import ExtraSGD
from lightning_gan.schemes import Extragradient, Simultaneous

DT = torch.float64


def _no_reduce(tensors) -> None:
    """One rank: the mean over ranks is the identity."""


def _sgd_step(game: ToyGame, eta: float, gamma: float | None, optimizer=torch.optim.SGD) -> GameStep:
    return GameStep(game, [optimizer(p.parameters(), lr=eta) for p in game.players], reduce=_no_reduce,
                    consensus=gamma)


def _flat(game: ToyGame) -> torch.Tensor:
    return game.flat_point().clone()


# -- exact toys ------------------------------------------------------------------------------------------------

def test_bilinear_consensus_multiplies_the_squared_norm_by_the_closed_form_factor():
    eta, gamma, steps = 0.1, 1.0, 200
    factor = (1 - eta * gamma) ** 2 + eta ** 2  # 0.82
    game = Bilinear1D(0.7, -1.3)
    step, scheme = _sgd_step(game, eta, gamma), Simultaneous()
    sq = float(_flat(game).pow(2).sum())
    for _ in range(steps):
        scheme.step(step, [None])
        new = float(_flat(game).pow(2).sum())
        assert abs(new / sq - factor) <= 1e-12
        sq = new
    assert sq < 1e-15 * 2.18  # 0.82^200 x (0.49 + 1.69)
    plain = Bilinear1D(0.7, -1.3)
    plain_step = _sgd_step(plain, eta, None)
    for _ in range(steps):
        scheme.step(plain_step, [None])
    assert float(_flat(plain).pow(2).sum()) == pytest.approx(2.18 * (1 + eta ** 2) ** steps, rel=1e-10)
    assert float(_flat(plain).pow(2).sum()) > 7 * 2.18  # 1.01^200 = 7.3


def test_extragradient_with_consensus_transforms_the_field_at_both_points():
    """EG on the linear field B w, B = J + gamma J^T J = [[gamma, 1], [-1, gamma]]: w <- (I - eta B + eta^2 B^2) w."""
    eta, gamma = 0.2, 0.5
    B = torch.tensor([[gamma, 1.0], [-1.0, gamma]], dtype=DT)
    M = torch.eye(2, dtype=DT) - eta * B + eta ** 2 * B @ B
    game = Bilinear1D(1.0, 0.5)
    step, scheme = _sgd_step(game, eta, gamma, optimizer=ExtraSGD), Extragradient()
    w = _flat(game)
    for _ in range(30):
        scheme.step(step, [None, None])
        w = M @ w
        torch.testing.assert_close(_flat(game), w, rtol=0, atol=1e-12)


class QuadraticGame(ToyGame):
    """A general (not zero-sum) quadratic game: L0 = x^T P x / 2 + x^T A y + a.x, L1 = y^T Q y / 2 - x^T C y + b.y."""

    def __init__(self, n: int, m: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        super().__init__(Point(torch.randn(n, generator=gen, dtype=DT), "x"),
                         Point(torch.randn(m, generator=gen, dtype=DT), "y"))
        for name, shape in (("P", (n, n)), ("A", (n, m)), ("a", (n,)), ("Q", (m, m)), ("C", (n, m)), ("b", (m,))):
            self.register_buffer(name, torch.randn(*shape, generator=gen, dtype=DT))

    def losses_at(self, x, y):
        return (x @ self.P @ x / 2 + x @ self.A @ y + self.a @ x,
                y @ self.Q @ y / 2 - x @ self.C @ y + self.b @ y)

    def losses(self, sample=None):
        return self.losses_at(self.players[0].x, self.players[1].y)


def _jacrev_consensus(game: QuadraticGame, gamma: float) -> torch.Tensor:
    """F + gamma J^T F with J from torch.func.jacrev of the flat field."""
    n = game.players[0].x.numel()

    def field(w):
        x, y = w[:n], w[n:]
        gx = torch.func.grad(lambda x_: game.losses_at(x_, y)[0])(x)
        gy = torch.func.grad(lambda y_: game.losses_at(x, y_)[1])(y)
        return torch.cat([gx, gy])

    w = _flat(game)
    F, J = field(w), torch.func.jacrev(field)(w)
    return F + gamma * J.T @ F


def test_transformed_field_equals_f_plus_gamma_jt_f_from_jacrev_on_a_random_quadratic_game():
    game, gamma = QuadraticGame(3, 4, seed=5), 0.7
    step = _sgd_step(game, 0.1, gamma)
    step.evaluate(None)
    measured = torch.cat([p.grad.reshape(-1) for p in game.parameters()])
    torch.testing.assert_close(measured, _jacrev_consensus(game, gamma), rtol=0, atol=1e-10)


def test_simultaneous_consensus_on_a_random_matrix_game_follows_i_minus_eta_a_plus_gamma_ata():
    """x^T A y with A 3 x 3: linear field K w, K = [[0, A], [-A^T, 0]]; iterates are (I - eta (K + gamma K^T K))^k w0."""
    gen = torch.Generator().manual_seed(3)
    A = torch.randn(3, 3, generator=gen, dtype=DT)
    game = BilinearGame(A, torch.randn(3, generator=gen, dtype=DT), torch.randn(3, generator=gen, dtype=DT))
    eta, gamma = 0.1, 1.0
    K = torch.zeros(6, 6, dtype=DT)
    K[:3, 3:], K[3:, :3] = A, -A.T
    M = torch.eye(6, dtype=DT) - eta * (K + gamma * K.T @ K)
    plain_radius = torch.linalg.eigvals(torch.eye(6, dtype=DT) - eta * K).abs().max()
    radius = torch.linalg.eigvals(M).abs().max()
    assert plain_radius > 1 > radius
    step, scheme, w = _sgd_step(game, eta, gamma), Simultaneous(), _flat(game)
    for _ in range(100):
        scheme.step(step, [None])
        w = M @ w
        torch.testing.assert_close(_flat(game), w, rtol=0, atol=1e-10)


def test_dirac_gan_converges_with_consensus_at_the_linearised_rate():
    """Dirac-GAN (c = 0, minimax): J(0) = [[0, -1/2], [1/2, 0]], J^T J = I/4, so near 0 the transformed field is
    (gamma/4 I + J) w and ||w||^2 shrinks by (1 - eta gamma/4)^2 + eta^2/4 per step (plain: 1 + eta^2/4 > 1;
    Mescheder et al. 2018 show simultaneous GD does not converge on it)."""
    eta, gamma = 0.1, 1.0
    factor = (1 - eta * gamma / 4) ** 2 + eta ** 2 / 4  # 0.953125
    game = DiracGAN(0.3, 0.2)
    step, scheme = _sgd_step(game, eta, gamma), Simultaneous()
    for _ in range(400):
        sq = float(_flat(game).pow(2).sum())
        scheme.step(step, [None])
    assert float(_flat(game).pow(2).sum()) < 1e-8
    assert float(_flat(game).pow(2).sum()) / sq == pytest.approx(factor, rel=1e-7)
    plain = DiracGAN(0.3, 0.2)
    plain_step = _sgd_step(plain, eta, None)
    for _ in range(400):
        scheme.step(plain_step, [None])
    assert float(_flat(plain).pow(2).sum()) > 0.13


def test_two_collectives_per_evaluation_on_a_toy():
    calls, game = [], Bilinear1D()
    step = GameStep(game, [torch.optim.SGD(p.parameters(), lr=0.1) for p in game.players],
                    reduce=lambda tensors: calls.append(len(tensors)), consensus=1.0)
    step.evaluate(None)
    step.evaluate(None, players=(1,))
    assert calls == [2, 2, 2, 1]  # F of both players, then J^T F of the evaluated ones


# -- a GAN -----------------------------------------------------------------------------------------------------

def _gan_and_sample(seed: int = 0, micro: int = 1):
    module = make_module(init_seed=seed)
    gen = torch.Generator().manual_seed(seed + 7)
    sample = [(torch.randn(8, 2, generator=gen), torch.randn(8, 4, generator=gen)) for _ in range(micro)]
    return module.generator, module.discriminator, sample


def _independent_consensus(G, D, sample, gamma):
    """F + gamma * autograd.grad(1/2 ||F||^2), F the mean of the micro-batches' fields, written out by hand."""
    loss = get_loss("non_saturating")
    g_params, d_params = trainable_parameters(G), trainable_parameters(D)
    fields = []
    for real, z in sample:
        fake = G(z)
        scores = D(torch.cat([real, fake])).reshape(-1)
        d_real, d_fake = scores[:len(real)], scores[len(real):]
        gd = torch.autograd.grad(loss.discriminator_loss(d_real, d_fake), d_params, create_graph=True)
        gg = torch.autograd.grad(loss.generator_loss(d_fake), g_params, create_graph=True)
        fields.append(list(gg) + list(gd))
    F = [sum(parts) / len(sample) for parts in zip(*fields)]
    half_sq = sum(f.pow(2).sum() for f in F) / 2
    reg = torch.autograd.grad(half_sq, g_params + d_params)
    return [f.detach() + gamma * r for f, r in zip(F, reg)]


@pytest.mark.parametrize("micro", [1, 2])
def test_gan_transformed_field_equals_f_plus_gamma_grad_half_squared_norm(micro):
    G, D, sample = _gan_and_sample(micro=micro)
    gamma = 10.0
    expected = _independent_consensus(G, D, sample, gamma)
    game = GANGame(G, D, get_loss("non_saturating"))
    step = GameStep(game, [torch.optim.SGD(G.parameters()), torch.optim.SGD(D.parameters())], reduce=_no_reduce,
                    consensus=gamma)
    step.evaluate(sample)
    measured = [p.grad for p in trainable_parameters(G) + trainable_parameters(D)]
    for m, e in zip(measured, expected):
        torch.testing.assert_close(m, e, rtol=1e-6, atol=1e-6)
    step.evaluate(sample, players=(1,))  # alternating: D's part of the same transformed field
    for m, e in zip([p.grad for p in trainable_parameters(D)], expected[len(trainable_parameters(G)):]):
        torch.testing.assert_close(m, e, rtol=1e-6, atol=1e-6)


def test_consensus_zero_is_the_plain_path_bit_for_bit():
    runs = []
    for consensus in (None, 0.0):
        module = make_module("extragradient", consensus=consensus)
        make_trainer(5).fit(module, make_data())
        runs.append(state_of(module))
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key


@pytest.mark.parametrize("scheme", ["alternating", "optimistic"])
def test_every_scheme_trains_with_consensus_and_r1(scheme):
    module = make_module(scheme, consensus=1.0, r1_gamma=0.1)  # R1's double backward becomes a triple one
    make_trainer(4).fit(module, make_data())
    assert all(torch.isfinite(p).all() for p in module.parameters())


# -- config errors ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme,gamma,message", [
    ("simultaneous", -1.0, r"^Invalid consensus: -1.0; expected a finite number >= 0"),
    ("simultaneous", float("nan"), r"^Invalid consensus: nan"),
    ("svre", 10.0, r"^Invalid consensus: 10.0 with scheme 'svre'"),
])
def test_bad_consensus_fails_with_one_line_naming_the_field(scheme, gamma, message):
    with pytest.raises(ValueError, match=message) as error:
        make_module(scheme, consensus=gamma)
    assert "\n" not in str(error.value)


def test_consensus_with_sync_batchnorm_is_refused():
    with pytest.raises(ValueError, match="^Invalid consensus: .*sync_batchnorm: false$"):
        make_module("simultaneous", consensus=1.0, sync_batchnorm=True)


def test_bad_consensus_through_the_cli_exits_2(tmp_path, capsys):
    errors, _ = fit_cli_errors(capsys, "configs/quickstart_consensus.yaml", tmp_path, "--model.consensus=-1")
    assert len(errors) == 1 and "consensus" in errors[0]


# -- resume ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["simultaneous", "extragradient"])
def test_resume_with_consensus_equals_never_stopping(scheme, tmp_path):
    assert_same_state(*resumed_and_uninterrupted(
        lambda init_seed: make_module(scheme, init_seed=init_seed, consensus=1.0, ema_decay=0.9), 10, tmp_path))


# -- two gloo ranks --------------------------------------------------------------------------------------------

DDP_SCHEMES = {"simultaneous": 1, "extragradient": 2}  # evaluations per iteration
DDP_ITERATIONS = 10


def _consensus_on_two_ranks(rank):
    counter, results = CountAllReduces(), {}
    for scheme in DDP_SCHEMES:
        counter.reset()
        module = make_module(scheme, init_seed=rank, consensus=1.0, ema_decay=0.9)
        make_trainer(DDP_ITERATIONS, devices=2, strategy="game_ddp", callbacks=[counter]).fit(
            module, make_data(batch_size=8))
        results[scheme] = {"state": state_of(module), "all_reduces": list(counter.all_reduces)}
    return results


@pytest.mark.slow
def test_two_ranks_bit_identical_equal_one_rank_with_2b_and_two_all_reduces_per_evaluation():
    rank0, rank1 = run_distributed(_consensus_on_two_ranks, 2, timeout=600)
    for scheme, evaluations in DDP_SCHEMES.items():
        for run in (rank0, rank1):
            assert run[scheme]["all_reduces"] == [2 * evaluations] * DDP_ITERATIONS, scheme
        for key in rank0[scheme]["state"]:
            assert torch.equal(rank0[scheme]["state"][key], rank1[scheme]["state"][key]), (scheme, key)
        module = make_module(scheme, init_seed=0, consensus=1.0, ema_decay=0.9)
        make_trainer(DDP_ITERATIONS).fit(module, make_data(batch_size=16))
        assert_matches_one_rank(rank0[scheme]["state"], state_of(module), scheme)
