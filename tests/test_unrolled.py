"""Unrolled GANs (Metz et al., ICLR 2017): G's field through k differentiable steps of D's optimizer.

Toys give exact answers. On ``min_x max_y x*y`` (player 0 = G minimises x*y, player 1 = D minimises -x*y, see
:mod:`lightning_gan.game.toys`) with D's optimizer plain SGD of step eta, one unrolled D step is
``y_{j+1} = y_j - eta d(-x y_j)/dy_j = y_j + eta x``, so ``y_k(x) = y + k eta x`` and G's unrolled gradient is

    d/dx [x y_k(x)] = y_k + x k eta = y + 2 k eta x,

while D's part stays the plain -x. Simultaneous GD (both players step eta) is then the linear map

    x' = (1 - 2 k eta^2) x - eta y,    y' = eta x + y,      M = [[1 - 2 k eta^2, -eta], [eta, 1]],

with det M = 1 - (2k - 1) eta^2 and trace 2 - 2 k eta^2: for k eta < 1 the eigenvalues are complex, of modulus
sqrt(1 - (2k - 1) eta^2) < 1 for every k >= 1 (eta = 0.1, k = 5: 0.9539), while plain simultaneous GD (k = 0)
has modulus sqrt(1 + eta^2) > 1. Unrolling adds the damping term 2 k eta x to G's field: G sees the loss
x (y + k eta x) = x y + k eta x^2, convex in x. Alternating (n_dis = 1: D steps first, G unrolls from the new y):

    y' = y + eta x,    x' = x - eta (y' + 2 k eta x) = (1 - (2k + 1) eta^2) x - eta y,

det = 1 - 2 k eta^2 < 1 where plain alternating (det 1) cycles.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ddp_harness import run_distributed
from gan_fixtures import (CountAllReduces, assert_matches_one_rank, assert_same_state, fit_cli_errors, make_data,
                          make_module, make_trainer, resumed_and_uninterrupted, state_of)
from lightning_gan.game.field import gan_field, trainable_parameters
from lightning_gan.game.gan import GANGame
from lightning_gan.game.losses import get_loss
from lightning_gan.game.step import GameStep
from lightning_gan.game.toys import Bilinear1D, ToyGame
from lightning_gan.game.unrolled import FunctionalRule, unroll
from lightning_gan.optim import SGD, Adam
from lightning_gan.schemes import Alternating, Simultaneous

DT = torch.float64


def _no_reduce(tensors) -> None:
    """One rank: the mean over ranks is the identity."""


def _sgd_step(game: ToyGame, eta: float, k: int, **kwargs) -> GameStep:
    return GameStep(game, [torch.optim.SGD(p.parameters(), lr=eta) for p in game.players], reduce=_no_reduce,
                    unroll_steps=k, **kwargs)


# -- exact toys ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["simultaneous", "alternating"])
def test_bilinear_unrolled_iterates_follow_the_closed_form_map_and_are_damped(scheme):
    eta, k = 0.1, 5
    if scheme == "simultaneous":
        M = torch.tensor([[1 - 2 * k * eta ** 2, -eta], [eta, 1.0]], dtype=DT)
        plain = torch.tensor([[1.0, -eta], [eta, 1.0]], dtype=DT)
        driver, samples = Simultaneous(), [None]
    else:
        M = torch.tensor([[1 - (2 * k + 1) * eta ** 2, -eta], [eta, 1.0]], dtype=DT)
        plain = torch.tensor([[1 - eta ** 2, -eta], [eta, 1.0]], dtype=DT)
        driver, samples = Alternating(1), [None, None]
    radius = float(torch.linalg.eigvals(M).abs().max())
    plain_radius = float(torch.linalg.eigvals(plain).abs().max())
    expected = (1 - (2 * k - 1) * eta ** 2) ** 0.5 if scheme == "simultaneous" else (1 - 2 * k * eta ** 2) ** 0.5
    assert radius == pytest.approx(expected, abs=1e-12)  # 0.9539 / 0.9487
    assert radius < 1 <= plain_radius + 1e-12  # plain: sqrt(1 + eta^2) = 1.005 / exactly 1 (a cycle)
    game = Bilinear1D(0.7, -1.3)
    step, w = _sgd_step(game, eta, k), game.flat_point()
    for _ in range(200):
        driver.step(step, samples)
        w = M @ w
        torch.testing.assert_close(game.flat_point(), w, rtol=0, atol=1e-10)
    assert float(game.flat_point().norm()) < 1e-3 * 1.48  # radius^200 ~ 8e-5 (sim), 2.6e-5 (alt)


def test_toy_collectives_k_unrolled_plus_one_per_evaluation_of_g():
    calls, unrolled, k = [], [], 3
    game = Bilinear1D()

    def unroll_reduce(flat):
        unrolled.append(flat.numel())
        return flat

    step = GameStep(game, [torch.optim.SGD(p.parameters(), lr=0.1) for p in game.players],
                    reduce=lambda tensors: calls.append(len(tensors)), unroll_steps=k, unroll_reduce=unroll_reduce)
    step.evaluate(None)
    assert (calls, unrolled) == ([2], [1] * k)  # one fused field reduce, one flat D gradient per unrolled step
    step.evaluate(None, players=(1,))  # D alone: the plain path
    assert (calls, unrolled) == ([2, 1], [1] * k)
    step.evaluate(None, players=(0,))
    assert (calls, unrolled) == ([2, 1, 1], [1] * 2 * k)


# -- the functional rule equals the optimizer ------------------------------------------------------------------

def _tiny_gan(seed: int = 0, micro: int = 1, dtype=DT, batchnorm: bool = False):
    torch.manual_seed(seed)
    G = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).to(dtype)
    layers = [nn.Linear(2, 8)] + ([nn.BatchNorm1d(8)] if batchnorm else []) + [nn.SiLU(), nn.Linear(8, 1)]
    D = nn.Sequential(*layers).to(dtype)
    gen = torch.Generator().manual_seed(seed + 7)
    sample = [(torch.randn(6, 2, generator=gen, dtype=dtype), torch.randn(6, 3, generator=gen, dtype=dtype))
              for _ in range(micro)]
    return G, D, sample


OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: SGD(p, lr=0.05, momentum=0.5, weight_decay=0.01),
    "sgd_negative_nesterov": lambda p: SGD(p, lr=0.05, momentum=-0.3, nesterov=True),
    "adam": lambda p: Adam(p, lr=0.01, betas=(0.5, 0.9), weight_decay=0.01),
    "adam_negative": lambda p: Adam(p, lr=0.01, betas=(-0.5, 0.99), eps=1e-3),
    "torch_sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.1),
    "torch_adam": lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.5, 0.9)),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("warm", [0, 3])
def test_k_functional_steps_equal_k_real_optimizer_steps(name, warm):
    """From the optimizer's existing state (after ``warm`` real steps), with R1 in L_D, on one fixed sample."""
    G, D, sample = _tiny_gan()
    game = GANGame(G, D, get_loss("non_saturating", r1_gamma=0.5))
    params = trainable_parameters(D)
    optimizer = OPTIMIZERS[name](params)

    def real_step():
        grads = torch.autograd.grad(game.unroll_objective(sample).discriminator_loss(None), params)
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()

    for _ in range(warm):
        real_step()
    state = copy.deepcopy(optimizer.state_dict())
    k = 4
    phi_k, first = unroll(game.unroll_objective(sample), params, optimizer, k)
    assert state.keys() == optimizer.state_dict().keys()  # the optimizer is not touched
    for (i, a), b in zip(state["state"].items(), optimizer.state_dict()["state"].values()):
        for key in a:
            assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), (i, key)
    plain = gan_field(G, D, game.loss, *sample[0], players=(1,)).discriminator_grads
    for f, p in zip(first, plain):
        torch.testing.assert_close(f, p, rtol=0, atol=1e-14)
    for _ in range(k):
        real_step()
    for unrolled, real in zip(phi_k, params):
        torch.testing.assert_close(unrolled, real.detach(), rtol=0, atol=1e-12)


def test_other_rules_are_refused_with_one_line():
    game = Bilinear1D()
    optimizers = [torch.optim.SGD(game.players[0].parameters(), lr=0.1),
                  torch.optim.RMSprop(game.players[1].parameters(), lr=0.1)]
    with pytest.raises(ValueError, match=r"^Invalid unroll_steps: 2 with the discriminator optimizer RMSprop") as error:
        GameStep(game, optimizers, reduce=_no_reduce, unroll_steps=2)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=r"^Invalid unroll_steps"):
        FunctionalRule(torch.optim.AdamW(game.players[1].parameters()), list(game.players[1].parameters()))


# -- the GAN field against a brute-force reference -------------------------------------------------------------

def _brute_force_g_field(G, D, sample, optimizer, k):
    """d/dtheta of the mean L_G at D's parameters after k hand-written optimizer steps, by nested torch.func.grad
    (D's gradient inside, G's outside), with the optimizer's state read from its state_dict."""
    loss = get_loss("non_saturating")
    g_names = [n for n, _ in G.named_parameters()]
    d_names = [n for n, _ in D.named_parameters()]
    d_params = [p.detach() for _, p in D.named_parameters()]
    group = optimizer.param_groups[0]
    states = [optimizer.state.get(p, {}) for p in D.parameters()]

    def scores(theta, phi, real, z):
        fake = torch.func.functional_call(G, dict(zip(g_names, theta)), (z,))
        s = torch.func.functional_call(D, dict(zip(d_names, phi)), (torch.cat([real, fake]),)).reshape(-1)
        return s[:len(real)], s[len(real):]

    def loss_d(phi, theta):
        return sum(loss.discriminator_loss(*scores(theta, phi, r, z)) for r, z in sample) / len(sample)

    def loss_g(theta):
        phi = list(d_params)
        if isinstance(optimizer, Adam):
            m = [s.get("exp_avg", torch.zeros_like(p)) for s, p in zip(states, phi)]
            v = [s.get("exp_avg_sq", torch.zeros_like(p)) for s, p in zip(states, phi)]
            t0 = float(states[0].get("step", 0.0))
        else:
            buf = [s.get("momentum_buffer") for s in states]
        for j in range(k):
            g = torch.func.grad(loss_d)(phi, theta)
            if isinstance(optimizer, Adam):
                b1, b2 = group["betas"]
                t = t0 + j + 1
                m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
                v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
                phi = [p - group["lr"] / (1 - b1 ** t) * mi / (vi.sqrt() / (1 - b2 ** t) ** 0.5 + group["eps"])
                       for p, mi, vi in zip(phi, m, v)]
            else:
                mu = group["momentum"]
                buf = [gi if b is None else mu * b + gi for b, gi in zip(buf, g)]
                phi = [p - group["lr"] * b for p, b in zip(phi, buf)]
        _, d_fake = zip(*[scores(theta, phi, r, z) for r, z in sample])
        return sum(loss.generator_loss(f) for f in d_fake) / len(sample)

    return torch.func.grad(loss_g)([p.detach() for p in G.parameters()])


@pytest.mark.parametrize("micro", [1, 2])
@pytest.mark.parametrize("rule", ["sgd", "adam"])
def test_gan_unrolled_field_equals_a_brute_force_nested_grad(micro, rule):
    G, D, sample = _tiny_gan(micro=micro)
    game = GANGame(G, D, get_loss("non_saturating"))
    d_opt = (SGD(D.parameters(), lr=0.05, momentum=0.5) if rule == "sgd"
             else Adam(D.parameters(), lr=0.01, betas=(0.5, 0.9)))
    plain = GameStep(game, [SGD(G.parameters(), lr=0.01), d_opt], reduce=_no_reduce)
    for _ in range(2):  # D's optimizer gets a state to start the unrolling from
        plain.evaluate(sample, players=(1,))
        d_opt.step()
    k = 3
    expected = _brute_force_g_field(G, D, sample, d_opt, k)
    plain_field = game.field(sample)
    step = GameStep(game, [SGD(G.parameters(), lr=0.01), d_opt], reduce=_no_reduce, unroll_steps=k)
    step.evaluate(sample)
    for p, e in zip(trainable_parameters(G), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-10, atol=1e-12)
    for p, e in zip(trainable_parameters(D), plain_field[1]):  # D's part is the plain field
        torch.testing.assert_close(p.grad, e, rtol=1e-12, atol=1e-14)
    assert max(float((p.grad - e).abs().max()) for p, e in zip(trainable_parameters(G), plain_field[0])) > 1e-4
    step.evaluate(sample, players=(0,))  # alternating's G evaluation: the same unrolled field
    for p, e in zip(trainable_parameters(G), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-10, atol=1e-12)


def test_unrolled_forwards_leave_d_batchnorm_statistics_to_the_real_forward():
    runs = []
    for k in (0, 3):
        G, D, sample = _tiny_gan(batchnorm=True)
        step = GameStep(GANGame(G, D, get_loss("non_saturating")),
                        [SGD(G.parameters(), lr=0.01), Adam(D.parameters(), lr=0.01)], reduce=_no_reduce,
                        unroll_steps=k)
        step.evaluate(sample)
        runs.append({name: b.clone() for name, b in D.named_buffers()})
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), name
    assert int(runs[1]["1.num_batches_tracked"]) == 1


# -- GANModule --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["simultaneous", "alternating"])
def test_unroll_steps_zero_is_the_plain_path_bit_for_bit(scheme):
    runs = []
    for kwargs in ({}, {"unroll_steps": 0}):
        module = make_module(scheme, **kwargs)
        make_trainer(5).fit(module, make_data())
        runs.append(state_of(module))
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key


@pytest.mark.parametrize("scheme", ["simultaneous", "alternating", "extragradient", "past_extragradient",
                                    "optimistic"])
def test_every_supported_scheme_trains_with_unroll_steps_2(scheme):
    module = make_module(scheme, unroll_steps=2, r1_gamma=0.1 if scheme == "alternating" else 0.0)
    make_trainer(3).fit(module, make_data())
    assert all(torch.isfinite(p).all() for p in module.parameters())
    stats = module.game.game.stats
    assert torch.isfinite(stats.generator_loss) and torch.isfinite(stats.discriminator_loss)


@pytest.mark.parametrize("kwargs,message", [
    ({"unroll_steps": -1}, r"^Invalid unroll_steps: -1; expected an integer >= 0"),
    ({"unroll_steps": 1.5}, r"^Invalid unroll_steps: 1.5; expected an integer >= 0"),
    ({"unroll_steps": True}, r"^Invalid unroll_steps: True"),
    ({"unroll_steps": 2, "scheme": "svre"}, r"^Invalid unroll_steps: 2 with scheme 'svre'"),
    ({"unroll_steps": 2, "consensus": 1.0}, r"^Invalid unroll_steps: 2 with consensus 1.0"),
    ({"unroll_steps": 2, "sync_batchnorm": True}, r"^Invalid unroll_steps: 2 with sync_batchnorm"),
])
def test_bad_unroll_steps_fail_with_one_line_naming_the_field(kwargs, message):
    kwargs = dict(kwargs)
    scheme = kwargs.pop("scheme", "simultaneous")
    with pytest.raises(ValueError, match=message) as error:
        make_module(scheme, **kwargs)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("args", [["--model.unroll_steps=-1"], ["--model.consensus=1.0"],
                                  ["--model.scheme=svre"]])
def test_bad_unroll_steps_through_the_cli_exits_2(args, tmp_path, capsys):
    errors, _ = fit_cli_errors(capsys, "configs/quickstart_unrolled.yaml", tmp_path, *args)
    assert len(errors) == 1 and "unroll_steps" in errors[0]


# -- resume ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["simultaneous", "alternating"])
def test_resume_with_unrolling_equals_never_stopping(scheme, tmp_path):
    assert_same_state(*resumed_and_uninterrupted(
        lambda init_seed: make_module(scheme, init_seed=init_seed, unroll_steps=3, ema_decay=0.9), 6, tmp_path))


# -- two gloo ranks --------------------------------------------------------------------------------------------

UNROLL = 2
# all-reduces per iteration: an evaluation of G costs 2k + 1 (k unrolled forward, k backward, the fused field),
# one of D alone 1; alternating (n_dis = 2) has two D evaluations and one of G
DDP_SCHEMES = {"simultaneous": 2 * UNROLL + 1, "alternating": 2 + 2 * UNROLL + 1}
DDP_ITERATIONS = 8


def _unrolled_on_two_ranks(rank):
    counter, results = CountAllReduces(), {}
    for scheme in DDP_SCHEMES:
        counter.reset()
        module = make_module(scheme, init_seed=rank, unroll_steps=UNROLL, ema_decay=0.9)
        make_trainer(DDP_ITERATIONS, devices=2, strategy="game_ddp", callbacks=[counter]).fit(
            module, make_data(batch_size=8))
        results[scheme] = {"state": state_of(module), "all_reduces": list(counter.all_reduces)}
    return results


@pytest.mark.slow
def test_two_ranks_bit_identical_equal_one_rank_with_2b_and_2k_plus_1_all_reduces_per_g_evaluation():
    rank0, rank1 = run_distributed(_unrolled_on_two_ranks, 2, timeout=600)
    for scheme, all_reduces in DDP_SCHEMES.items():
        for run in (rank0, rank1):
            assert run[scheme]["all_reduces"] == [all_reduces] * DDP_ITERATIONS, scheme
        for key in rank0[scheme]["state"]:
            assert torch.equal(rank0[scheme]["state"][key], rank1[scheme]["state"][key]), (scheme, key)
        module = make_module(scheme, init_seed=0, unroll_steps=UNROLL, ema_decay=0.9)
        make_trainer(DDP_ITERATIONS).fit(module, make_data(batch_size=16))
        assert_matches_one_rank(rank0[scheme]["state"], state_of(module), scheme)
