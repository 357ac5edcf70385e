"""The game optimizers keep the torch.optim contract and compute what their docstrings say."""

import io
import math

import pytest
import torch

from lightning_gan import optim as game_optim
from lightning_gan.optim import (
    SGD,
    Adam,
    ExtraAdam,
    ExtraSGD,
    OptimisticAdam,
    OptimisticSGD,
    PastExtraAdam,
    PastExtraSGD,
)

EXTRA = [ExtraSGD, ExtraAdam, PastExtraSGD, PastExtraAdam]
PLAIN = [SGD, Adam, OptimisticSGD, OptimisticAdam]
ALL = PLAIN + EXTRA
SGD_FAMILY = {SGD, ExtraSGD, PastExtraSGD, OptimisticSGD}


def make_params(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(4, 3, generator=g, dtype=dtype)),
            torch.nn.Parameter(torch.randn(5, generator=g, dtype=dtype))]


def gradients(params, t):
    """A deterministic, point-dependent pseudo-gradient: sin of the parameters plus a drift."""
    return [torch.sin(p.detach() * (1 + 0.1 * t)) + 0.01 * t for p in params]


def set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()


def kwargs_for(cls, negative=False):
    beta = -0.5 if negative else 0.5
    if cls in SGD_FAMILY:
        return dict(lr=0.05, momentum=beta, weight_decay=0.01)
    return dict(lr=0.05, betas=(beta, 0.9), weight_decay=0.01)


def iterate(opt, params, t):
    """One game iteration of the optimizer's scheme with the toy gradient."""
    if isinstance(opt, game_optim.Extragradient):
        if not isinstance(opt, game_optim.PastExtragradient):
            set_grads(params, gradients(params, t))
        opt.extrapolation()
        set_grads(params, gradients(params, t + 0.5))
        opt.step()
    else:
        set_grads(params, gradients(params, t))
        opt.step()


# --- same numbers as torch.optim for beta >= 0 --------------------------------------------------

@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("config", [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.01),
    dict(lr=0.1, momentum=0.9, nesterov=True),
])
def test_sgd_matches_torch_sgd(config, foreach):
    # float64, so that the comparison checks the math and not float32 rounding order.
    ours, theirs = make_params(dtype=torch.float64), make_params(dtype=torch.float64)
    opt_ours, opt_theirs = SGD(ours, foreach=foreach, **config), torch.optim.SGD(theirs, **config)
    for t in range(20):
        set_grads(ours, gradients(ours, t))
        set_grads(theirs, gradients(theirs, t))
        opt_ours.step()
        opt_theirs.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("config", [
    dict(lr=0.01),
    dict(lr=0.01, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.1),
    dict(lr=0.01, betas=(0.0, 0.99)),
])
def test_adam_matches_torch_adam(config, foreach):
    ours, theirs = make_params(dtype=torch.float64), make_params(dtype=torch.float64)
    opt_ours, opt_theirs = Adam(ours, foreach=foreach, **config), torch.optim.Adam(theirs, **config)
    for t in range(20):
        set_grads(ours, gradients(ours, t))
        set_grads(theirs, gradients(theirs, t))
        opt_ours.step()
        opt_theirs.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert opt_ours.state[ours[0]]["step"].item() == 20


@pytest.mark.parametrize("cls", ALL)
def test_foreach_and_loop_paths_agree(cls):
    a, b = make_params(), make_params()
    opt_a, opt_b = cls(a, foreach=False, **kwargs_for(cls, True)), cls(b, foreach=True, **kwargs_for(cls, True))
    for t in range(10):
        iterate(opt_a, a, t)
        iterate(opt_b, b, t)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


# --- negative momentum ---------------------------------------------------------------------------

@pytest.mark.parametrize("foreach", [False, True])
def test_sgd_negative_momentum_is_the_heavy_ball(foreach):
    """p_{t+1} = p_t - lr g_t + beta (p_t - p_{t-1}), with beta = -0.5."""
    lr, beta = 0.1, -0.5
    params = make_params()
    opt = SGD(params, lr=lr, momentum=beta, foreach=foreach)
    previous = [p.detach().clone() for p in params]
    for t in range(15):
        current = [p.detach().clone() for p in params]
        grads = gradients(params, t)
        set_grads(params, grads)
        opt.step()
        for p, c, prev, g in zip(params, current, previous, grads):
            expected = c - lr * g + (beta * (c - prev) if t > 0 else 0)
            torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-6)
        previous = current


def test_adam_negative_beta1_follows_the_formula():
    lr, beta1, beta2, eps = 0.01, -0.5, 0.9, 1e-8
    (p,) = params = [torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))]
    opt = Adam(params, lr=lr, betas=(beta1, beta2), eps=eps)
    m = torch.zeros(2, dtype=torch.float64)
    v = torch.zeros(2, dtype=torch.float64)
    expected = p.detach().clone()
    for t in range(1, 11):
        g = torch.sin(expected) + t
        p.grad = g.clone()
        opt.step()
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        expected = expected - lr / (1 - beta1**t) * m / (v.sqrt() / math.sqrt(1 - beta2**t) + eps)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-12)


# --- extragradient, past extragradient, optimistic: the update rules ------------------------------

def test_extra_sgd_is_the_extragradient_step():
    """w' = w - lr g(w); w+ = w - lr g(w'), on f(w) = sum(w^3)/3 (g = w^2)."""
    lr = 0.1
    (p,) = [torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))]
    opt = ExtraSGD([p], lr=lr)
    w = p.detach().clone()
    p.grad = w**2
    opt.extrapolation()
    w_half = w - lr * w**2
    torch.testing.assert_close(p.detach(), w_half, rtol=0, atol=0)
    assert opt.is_extrapolated()
    p.grad = p.detach() ** 2
    opt.step()
    torch.testing.assert_close(p.detach(), w - lr * w_half**2, rtol=1e-15, atol=1e-15)
    assert not opt.is_extrapolated()
    assert "saved_param" not in opt.state[p]


def test_extra_adam_moments_take_both_gradients():
    params = make_params()
    opt = ExtraAdam(params, lr=0.01)
    for t in range(3):
        iterate(opt, params, t)
    assert opt.state[params[0]]["step"].item() == 6


def test_past_extra_sgd_reuses_the_previous_gradient():
    """w'_t = w_t - lr g(w'_{t-1}); w_{t+1} = w_t - lr g(w'_t); the first extrapolation stays put."""
    lr = 0.1
    (p,) = [torch.nn.Parameter(torch.tensor([0.5, -1.0], dtype=torch.float64))]
    opt = PastExtraSGD([p], lr=lr)
    w, previous_grad = p.detach().clone(), None
    for _ in range(5):
        opt.extrapolation()
        w_half = w if previous_grad is None else w - lr * previous_grad
        torch.testing.assert_close(p.detach(), w_half, rtol=1e-15, atol=1e-15)
        grad = torch.cos(w_half)
        p.grad = grad.clone()
        opt.step()
        w, previous_grad = w - lr * grad, grad
        torch.testing.assert_close(p.detach(), w, rtol=1e-15, atol=1e-15)


def test_optimistic_sgd_is_the_optimistic_step():
    """w_{t+1} = w_t - 2 lr g_t + lr g_{t-1}."""
    lr = 0.1
    (p,) = [torch.nn.Parameter(torch.tensor([0.5, -1.0], dtype=torch.float64))]
    opt = OptimisticSGD([p], lr=lr)
    w, previous = p.detach().clone(), torch.zeros(2, dtype=torch.float64)
    for _ in range(5):
        grad = torch.cos(w)
        p.grad = grad.clone()
        opt.step()
        w = w - 2 * lr * grad + lr * previous
        previous = grad
        torch.testing.assert_close(p.detach(), w, rtol=1e-15, atol=1e-15)


def test_optimistic_adam_is_the_optimistic_step():
    """p <- p - 2 lr m_t/(sqrt(v_t)+eps) + lr m_{t-1}/(sqrt(v_{t-1})+eps), bias-corrected."""
    lr, (b1, b2), eps = 0.01, (0.5, 0.9), 1e-8
    (p,) = [torch.nn.Parameter(torch.tensor([0.5, -1.0], dtype=torch.float64))]
    opt = OptimisticAdam([p], lr=lr, betas=(b1, b2), eps=eps)
    w = p.detach().clone()
    m = v = torch.zeros(2, dtype=torch.float64)
    previous = torch.zeros(2, dtype=torch.float64)
    for t in range(1, 6):
        grad = torch.cos(w)
        p.grad = grad.clone()
        opt.step()
        m, v = b1 * m + (1 - b1) * grad, b2 * v + (1 - b2) * grad**2
        update = lr / (1 - b1**t) * m / (v.sqrt() / math.sqrt(1 - b2**t) + eps)
        w = w - 2 * update + previous
        previous = update
        torch.testing.assert_close(p.detach(), w, rtol=1e-12, atol=1e-12)


def test_extra_step_returns_parameters_without_gradient_to_the_saved_point():
    moving, frozen = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = ExtraSGD([moving, frozen], lr=0.1)
    set_grads([moving, frozen], [torch.ones(2), torch.ones(2)])
    opt.extrapolation()
    moving.grad, frozen.grad = torch.ones(2), None
    opt.step()
    torch.testing.assert_close(moving.detach(), torch.full((2,), 0.9))
    torch.testing.assert_close(frozen.detach(), torch.ones(2))


def test_step_hooks_fire_once_per_iteration_not_at_extrapolation():
    params = make_params()
    opt = ExtraAdam(params, lr=0.01)
    calls = []
    opt.register_step_post_hook(lambda *_: calls.append(1))
    for t in range(4):
        iterate(opt, params, t)
    assert len(calls) == 4


def test_closure_is_evaluated_with_gradients_enabled():
    (p,) = params = [torch.nn.Parameter(torch.tensor([1.0, 2.0]))]
    opt = SGD(params, lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == pytest.approx(5.0)
    torch.testing.assert_close(p.detach(), torch.tensor([0.8, 1.6]))


def test_param_groups_have_their_own_step_sizes():
    a, b = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
    opt = ExtraSGD([{"params": [a], "lr": 0.1}, {"params": [b]}], lr=0.01)
    set_grads([a, b], [torch.ones(1), torch.ones(1)])
    opt.extrapolation()
    opt.step()
    assert a.item() == pytest.approx(0.9) and b.item() == pytest.approx(0.99)


# --- state_dict: an optimizer saved mid-iteration continues identically ---------------------------

def roundtrip(opt_cls, params, state_dict, kwargs):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    fresh = opt_cls(params, **kwargs)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("negative", [False, True])
def test_state_dict_round_trip_mid_iteration(cls, negative):
    kwargs = kwargs_for(cls, negative)
    reference = make_params()
    opt = cls(reference, **kwargs)
    for t in range(3):
        iterate(opt, reference, t)
    # Stop mid-iteration: after the extrapolation for the extragradient family.
    t = 3
    if cls in EXTRA:
        if cls in (ExtraSGD, ExtraAdam):
            set_grads(reference, gradients(reference, t))
        opt.extrapolation()
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in reference]
    resumed_opt = roundtrip(cls, resumed, opt.state_dict(), kwargs)
    if cls in EXTRA:
        assert resumed_opt.is_extrapolated()

    def finish(o, params):
        if cls in EXTRA:
            set_grads(params, gradients(params, t + 0.5))
        else:
            set_grads(params, gradients(params, t))
        o.step()
        for s in range(t + 1, t + 4):
            iterate(o, params, s)

    finish(opt, reference)
    finish(resumed_opt, resumed)
    for a, b in zip(reference, resumed):
        assert torch.equal(a, b)
    for p, q in zip(reference, resumed):
        for key, value in opt.state[p].items():
            assert torch.equal(value, resumed_opt.state[q][key]), key


# --- invalid arguments ---------------------------------------------------------------------------

@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("lr", [0.0, -1e-3, float("nan"), "fast"])
def test_invalid_learning_rate_is_named(cls, lr):
    with pytest.raises(ValueError, match=r"Invalid lr: .*expected a finite number > 0"):
        cls(make_params(), lr=lr)


@pytest.mark.parametrize("cls", sorted(SGD_FAMILY, key=lambda c: c.__name__))
@pytest.mark.parametrize("momentum", [1.0, -1.0, 1.5])
def test_momentum_outside_open_unit_interval_is_rejected(cls, momentum):
    with pytest.raises(ValueError, match=r"Invalid momentum: .*-1 < momentum < 1"):
        cls(make_params(), lr=0.1, momentum=momentum)


@pytest.mark.parametrize("cls", [Adam, ExtraAdam, PastExtraAdam, OptimisticAdam])
@pytest.mark.parametrize("betas,name", [((1.0, 0.9), "beta1"), ((-1.0, 0.9), "beta1"),
                                        ((0.5, 1.0), "beta2"), ((0.5, -0.1), "beta2")])
def test_betas_outside_their_range_are_rejected(cls, betas, name):
    with pytest.raises(ValueError, match=rf"Invalid {name}"):
        cls(make_params(), lr=0.1, betas=betas)


@pytest.mark.parametrize("cls", [Adam, ExtraAdam, PastExtraAdam, OptimisticAdam])
def test_non_positive_eps_is_rejected(cls):
    with pytest.raises(ValueError, match=r"Invalid eps: 0"):
        cls(make_params(), lr=0.1, eps=0)


def test_numpy_betas_are_cast_to_float():
    np = pytest.importorskip("numpy")
    opt = Adam(make_params(), lr=np.float64(0.1), betas=(np.float32(-0.25), np.float64(0.9)))
    assert all(type(b) is float for b in opt.param_groups[0]["betas"])
    assert type(opt.param_groups[0]["lr"]) is float


def test_nesterov_needs_momentum():
    with pytest.raises(ValueError, match="Invalid nesterov"):
        SGD(make_params(), lr=0.1, nesterov=True)


@pytest.mark.parametrize("cls", EXTRA)
def test_step_before_extrapolation_is_an_error(cls):
    params = make_params()
    opt = cls(params, lr=0.1)
    set_grads(params, gradients(params, 0))
    with pytest.raises(RuntimeError, match=r"step\(\) was called before extrapolation\(\)"):
        opt.step()


def test_torch_optim_rejects_what_we_accept():
    """The reason these classes exist: torch.optim refuses negative momentum."""
    with pytest.raises(ValueError):
        torch.optim.SGD(make_params(), lr=0.1, momentum=-0.5)
    with pytest.raises(ValueError):
        torch.optim.Adam(make_params(), lr=0.1, betas=(-0.5, 0.9))
    SGD(make_params(), lr=0.1, momentum=-0.5)
    Adam(make_params(), lr=0.1, betas=(-0.5, 0.9))
