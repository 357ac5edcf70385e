"""Lookahead-minmax: the closed-form rate on the bilinear game, composition with every scheme, resume and DDP.

Oracle (Chavdarova et al., ICLR 2021): with simultaneous GD (step eta) on a linear game F(w) = A w, k fast steps
multiply w by M^k, M = I - eta A, and a sync makes the slow iterate w <- ((1 - alpha) I + alpha M^k) w.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

from ddp_harness import run_distributed
from gan_fixtures import (CountAllReduces, assert_matches_one_rank, assert_same_state, fit_cli_errors, make_data,
                          make_module, make_trainer, resumed_and_uninterrupted, state_of)
from lightning_gan.game.step import GameStep
from lightning_gan.game.toys import Bilinear1D, BilinearGame, ToyGame
from lightning_gan.lookahead import LookaheadConfig, LookaheadMinmax
from lightning_gan.optim.factory import OptimizerConfig
from lightning_gan.schemes import make_scheme

SCHEMES = ["simultaneous", "alternating", "extragradient", "past_extragradient", "optimistic", "svre"]
LOOKAHEAD = LookaheadConfig(k=3, alpha=0.5)


# -- the oracle: bilinear game, simultaneous GD ------------------------------------------------------------------


def jacobian(game: ToyGame) -> torch.Tensor:
    """A with F(w) = A w + F(0), column by column (exact for the linear fields of the bilinear games)."""
    w0 = game.flat_point()

    def field(w: torch.Tensor) -> torch.Tensor:
        game.set_flat_point(w)
        return torch.cat([g.reshape(-1) for grads in game.field() for g in grads])

    base = field(torch.zeros_like(w0))
    A = torch.stack([field(e) - base for e in torch.eye(w0.numel(), dtype=w0.dtype)], dim=1)
    game.set_flat_point(w0)
    return A


def lookahead_operator(A: torch.Tensor, eta: float, k: int, alpha: float) -> torch.Tensor:
    eye = torch.eye(A.shape[0], dtype=A.dtype)
    return (1 - alpha) * eye + alpha * torch.linalg.matrix_power(eye - eta * A, k)


def slow_iterates(game: ToyGame, eta: float, k: int, alpha: float | None, cycles: int) -> list[torch.Tensor]:
    """The point after each cycle of k simultaneous-GD iterations (the slow iterate), through GameStep."""
    scheme = make_scheme("simultaneous")
    optimizers = [OptimizerConfig(rule="sgd", lr=eta, momentum=0.0).build(p.parameters(), scheme.optimizer_family)
                  for p in game.players]
    step = GameStep(game, optimizers, reduce=lambda tensors: None)
    lookahead = None if alpha is None else LookaheadMinmax(game.players, LookaheadConfig(k=k, alpha=alpha))
    points = [game.flat_point()]
    for t in range(1, k * cycles + 1):
        scheme.step(step, [None])
        synced = lookahead is not None and lookahead.step(game.players, t)
        assert synced == (lookahead is not None and t % k == 0)
        if t % k == 0:
            points.append(game.flat_point())
    return points


@pytest.mark.parametrize(("eta", "k", "alpha"), [(0.1, 5, 0.5), (0.3, 5, 0.5), (0.2, 10, 0.3), (0.5, 3, 0.9)])
def test_slow_iterates_contract_by_the_spectral_radius_of_the_lookahead_operator(eta, k, alpha):
    """x*y: eigenvalues of T all have one modulus, so every cycle multiplies ||w|| by exactly rho(T)."""
    game = Bilinear1D(1.0, 0.5)
    rho = float(torch.linalg.eigvals(lookahead_operator(jacobian(game), eta, k, alpha)).abs().max())
    norms = torch.stack([w.norm() for w in slow_iterates(game, eta, k, alpha, cycles=40)])
    measured = norms[1:] / norms[:-1]
    assert (measured - rho).abs().max() < 1e-10, (measured, rho)


def test_lookahead_converges_where_simultaneous_gd_diverges():
    eta, k, alpha = 0.1, 5, 0.5
    rho = float(torch.linalg.eigvals(lookahead_operator(jacobian(Bilinear1D()), eta, k, alpha)).abs().max())
    assert rho == pytest.approx(abs((1 - alpha) + alpha * (1 - 1j * eta) ** k), abs=1e-14)  # 0.98133 < 1
    plain = slow_iterates(Bilinear1D(1.0, 0.5), eta, k, None, cycles=100)
    slow = slow_iterates(Bilinear1D(1.0, 0.5), eta, k, alpha, cycles=100)
    assert float(plain[-1].norm() / plain[0].norm()) == pytest.approx((1 + eta**2) ** (k * 100 / 2), rel=1e-10)
    assert float(plain[-1].norm()) > 10 * float(plain[0].norm())  # (1 + eta^2)^(k/2) = 1.025 per cycle
    assert float(slow[-1].norm()) < 0.2 * float(slow[0].norm())  # rho^100 = 0.15


def test_slow_iterates_of_a_matrix_game_follow_the_lookahead_operator():
    """x^T B y with unequal singular values: the slow iterates are T^j w0, cycle by cycle, to 1e-10."""
    gen = torch.Generator().manual_seed(0)
    B = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    game = BilinearGame(B, torch.randn(4, generator=gen, dtype=torch.float64),
                        torch.randn(4, generator=gen, dtype=torch.float64))
    eta, k, alpha = 0.1, 5, 0.5
    T = lookahead_operator(jacobian(game), eta, k, alpha)
    assert float(torch.linalg.eigvals(T).abs().max()) < 1  # this game converges too
    points = slow_iterates(game, eta, k, alpha, cycles=30)
    for j, w in enumerate(points):
        expected = torch.linalg.matrix_power(T, j) @ points[0]
        assert float((w - expected).norm()) <= 1e-10 * float(points[0].norm()), j


# -- the config -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "alpha", "message"), [
    (0, 0.5, "Invalid lookahead.k: 0; expected an integer >= 1"),
    (-5, 0.5, "Invalid lookahead.k: -5; expected an integer >= 1"),
    (5, 0.0, "Invalid lookahead.alpha: 0.0; expected a number in (0, 1]"),
    (5, 1.5, "Invalid lookahead.alpha: 1.5; expected a number in (0, 1]"),
])
def test_bad_values_are_refused_naming_the_field(k, alpha, message):
    with pytest.raises(ValueError) as error:
        make_module(lookahead=LookaheadConfig(k=k, alpha=alpha))
    assert str(error.value) == message


QUICKSTART = os.path.join(os.path.dirname(__file__), "..", "configs", "quickstart_lookahead.yaml")


@pytest.mark.filterwarnings("ignore:(?s).*skip_none parameter was deprecated")
@pytest.mark.parametrize(("arg", "named"), [
    ("--model.lookahead.k=0", "Invalid lookahead.k: 0; expected an integer >= 1"),
    ("--model.lookahead.alpha=1.5", "Invalid lookahead.alpha: 1.5; expected a number in (0, 1]"),
])
def test_bad_values_through_the_cli_fail_in_one_line(arg, named, tmp_path, capsys):
    errors, err = fit_cli_errors(capsys, QUICKSTART, tmp_path, "--trainer.max_steps=5",
                                 "--trainer.enable_progress_bar=false", arg)
    assert len(errors) == 1 and named in errors[0], err
    assert "Traceback" not in err and not list(tmp_path.rglob("*.ckpt"))


# -- in the trainer ---------------------------------------------------------------------------------------------------


def _live(module) -> list[torch.Tensor]:
    return [p.detach().clone() for player in (module.generator, module.discriminator) for p in player.parameters()]


def _slow(module) -> list[torch.Tensor]:
    return [t.detach().clone() for slow in module.lookahead.slow for t in slow.tensors]


def test_live_weights_are_the_slow_ones_after_a_sync_and_move_on_after():
    """k = 3: after iteration 6 the live weights are the slow ones; after 7 they have moved on."""
    module = make_module(lookahead=LOOKAHEAD)
    initial = _live(module)
    make_trainer(6).fit(module, make_data())
    assert all(torch.equal(a, b) for a, b in zip(_live(module), _slow(module)))
    assert not any(torch.equal(a, b) for a, b in zip(_live(module), initial))
    module = make_module(lookahead=LOOKAHEAD)
    make_trainer(7).fit(module, make_data())
    assert not any(torch.equal(a, b) for a, b in zip(_live(module), _slow(module)))


def test_a_sync_moves_trainable_parameters_only():
    """As the reference's Lookahead.update: optimizer state and buffers (BatchNorm statistics) are left alone,
    frozen parameters too; both players sync at the same iteration."""
    torch.manual_seed(0)
    player, other = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)), nn.Linear(2, 2)
    other.bias.requires_grad_(False)
    lookahead = LookaheadMinmax([player, other], LookaheadConfig(k=2, alpha=0.25))
    optimizer = torch.optim.Adam(player.parameters())
    player(torch.randn(8, 3)).sum().backward()
    optimizer.step()  # the fast weights and the BatchNorm statistics move
    with torch.no_grad():
        other.weight.add_(1.0)
        other.bias.add_(1.0)
    slow = [t.clone() for weights in lookahead.slow for t in weights.tensors]
    fast = [p.detach().clone() for m in (player, other) for p in m.parameters() if p.requires_grad]
    buffers, frozen_bias = [b.clone() for b in player.buffers()], other.bias.detach().clone()
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    assert not lookahead.step([player, other], 1)
    assert lookahead.step([player, other], 2)
    moved = [p.detach() for m in (player, other) for p in m.parameters() if p.requires_grad]
    kept = [t for weights in lookahead.slow for t in weights.tensors]
    for new, before, f, after in zip(moved, slow, fast, kept, strict=True):
        torch.testing.assert_close(new, before + 0.25 * (f - before), rtol=1e-6, atol=1e-7)
        assert torch.equal(new, after)
    assert torch.equal(other.bias, frozen_bias)  # not trainable: not synced
    assert all(torch.equal(a, b) for a, b in zip(buffers, player.buffers()))
    state = optimizer.state_dict()["state"]
    for index, per_param in optimizer_state["state"].items():
        for key, value in per_param.items():
            assert torch.equal(value, state[index][key]), (index, key)


def test_alpha_one_is_plain_training_bit_for_bit():
    """slow + 1 (fast - slow) is fast exactly: Lookahead with alpha 1 changes nothing, averages included."""
    plain, looked = make_module("extragradient"), make_module("extragradient", lookahead=LookaheadConfig(4, 1.0))
    make_trainer(9).fit(plain, make_data())
    make_trainer(9).fit(looked, make_data())
    actual = state_of(looked)
    for key, value in state_of(plain).items():
        assert torch.equal(value, actual[key]), key


@pytest.mark.parametrize("scheme", SCHEMES)
def test_resume_mid_cycle_equals_never_stopping(scheme, tmp_path):
    """7 + 7 = 14 iterations with k = 3: the checkpoint at 7 is one iteration into a cycle; bit-identical."""
    expected, actual = resumed_and_uninterrupted(
        lambda init_seed: make_module(scheme, init_seed=init_seed, ema_decay=0.9, average_discriminator=True,
                                      lookahead=LOOKAHEAD), 7, tmp_path)
    assert any(key.startswith("lookahead.") for key in expected)
    assert_same_state(expected, actual)


# -- 2 gloo ranks -----------------------------------------------------------------------------------------------------

ITERATIONS = 20
ALL_REDUCES = {"simultaneous": 1, "alternating": 3, "extragradient": 2, "past_extragradient": 1, "optimistic": 1}


def _every_scheme_on_two_ranks(rank):
    results, counter = {}, CountAllReduces()
    for scheme in SCHEMES:
        counter.reset()
        module = make_module(scheme, init_seed=rank, ema_decay=0.9, lookahead=LOOKAHEAD)
        make_trainer(ITERATIONS, devices=2, strategy="game_ddp", callbacks=[counter]).fit(
            module, make_data(batch_size=8))
        results[scheme] = {"state": state_of(module), "all_reduces": counter.all_reduces,
                           "snapshots": counter.snapshots}
    return results


@pytest.mark.slow
def test_two_ranks_are_bit_identical_equal_one_rank_with_2b_and_add_no_collective():
    """Every scheme with Lookahead, 20 iterations (6 syncs), ranks from different initialisations."""
    two_ranks = run_distributed(_every_scheme_on_two_ranks, 2, timeout=600)
    for scheme in SCHEMES:
        rank0, rank1 = (run[scheme] for run in two_ranks)
        for key in rank0["state"]:
            assert torch.equal(rank0["state"][key], rank1["state"][key]), (scheme, key)
        expected = ([2 + s for s in rank0["snapshots"]] if scheme == "svre"
                    else [ALL_REDUCES[scheme]] * ITERATIONS)
        assert rank0["all_reduces"] == expected, scheme
        module = make_module(scheme, init_seed=0, ema_decay=0.9, lookahead=LOOKAHEAD)
        make_trainer(ITERATIONS).fit(module, make_data(batch_size=16))
        assert_matches_one_rank(rank0["state"], state_of(module), scheme)
