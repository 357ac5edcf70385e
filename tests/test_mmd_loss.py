"""MMD GAN loss (Binkowski et al., ICLR 2018): the estimator, the field, the schemes, resume, DDP, bad values.

The global-batch argument (why the usual mean all-reduce of the field gives the one-rank gradient on the gathered
batch) is in :class:`lightning_gan.game.losses.MMDLoss`; the DDP tests below check it on two gloo ranks.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ddp_harness import run_distributed
from gan_fixtures import (SCHEMES, CountAllReduces, assert_matches_one_rank, assert_same_state, fit_cli_errors,
                          make_data, make_trainer, resumed_and_uninterrupted, state_of)
from lightning_gan.game.field import gan_field, trainable_parameters
from lightning_gan.game.losses import get_loss, mixture_kernel, mmd2_unbiased
from lightning_gan.models import DCGANDiscriminator, MLPDiscriminator, MLPGenerator
from lightning_gan.module import GANModule
from lightning_gan.optim.factory import OptimizerConfig

DT = torch.float64
RQ_ALPHAS = (0.2, 0.5, 1.0, 2.0, 5.0)


def _k(x, y, kernel="rq", scales=RQ_ALPHAS):
    """One kernel value by the formula, in Python floats."""
    d2 = sum((a - b) ** 2 for a, b in zip(x.tolist(), y.tolist()))
    if kernel == "rq":
        return sum((1 + d2 / (2 * a)) ** (-a) for a in scales)
    return sum(math.exp(-d2 / (2 * s * s)) for s in scales)


def _mmd2_double_loop(x, y, kernel="rq", scales=RQ_ALPHAS):
    m, n = len(x), len(y)
    xx = sum(_k(x[i], x[j], kernel, scales) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(_k(y[i], y[j], kernel, scales) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(_k(x[i], y[j], kernel, scales) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


# -- the estimator ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel,scales", [("rq", None), ("rq", (0.5, 3.0)), ("gaussian", (0.7, 2.0))])
def test_unbiased_mmd2_equals_a_double_loop_in_float64(kernel, scales):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, generator=gen, dtype=DT)
    y = 0.5 + 1.5 * torch.randn(5, 3, generator=gen, dtype=DT)
    expected = _mmd2_double_loop(x, y, kernel, RQ_ALPHAS if scales is None else scales)
    assert float(mmd2_unbiased(x, y, kernel, scales)) == pytest.approx(expected, rel=1e-12, abs=1e-14)
    assert float(mmd2_unbiased(x, y, kernel, scales)) == pytest.approx(float(mmd2_unbiased(y, x, kernel, scales)),
                                                                       rel=1e-12)


def test_kernel_mixtures_match_the_reference_formula_on_hand_checked_values():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=DT)
    y = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=DT)
    rq = mixture_kernel(x, y)  # alphas 0.2, 0.5, 1, 2, 5; exp(-a log(1 + d2 / (2a))) as _mix_rq_kernel
    # d2 = 1: 3.5^-0.2 + 2^-0.5 + 1.5^-1 + 1.25^-2 + 1.1^-5 = 0.778370 + 0.707107 + 0.666667 + 0.64 + 0.620921
    assert float(rq[0, 0]) == pytest.approx(3.413065, abs=1e-6)
    assert float(rq[0, 1]) == pytest.approx(5.0, abs=1e-12)  # d2 = 0: each kernel is 1
    # d2 = 25: 63.5^-0.2 + 26^-0.5 + 13.5^-1 + 7.25^-2 + 3.5^-5
    assert float(rq[1, 1]) == pytest.approx(0.435959 + 0.196116 + 0.074074 + 0.019025 + 0.001904, abs=3e-6)
    gaussian = mixture_kernel(x, y, "gaussian", (2.0,))  # exp(-d2 / (2 sigma^2)) as _mix_rbf_kernel
    assert float(gaussian[0, 0]) == pytest.approx(math.exp(-1 / 8), rel=1e-12)
    assert float(gaussian[1, 1]) == pytest.approx(math.exp(-25 / 8), rel=1e-12)
    default = mixture_kernel(x, y, "gaussian")  # sigmas 2, 5, 10, 20, 40, 80 (the reference's default)
    assert float(default[0, 1]) == pytest.approx(6.0, abs=1e-12)


def test_unbiased_mmd2_is_zero_in_expectation_for_identical_distributions():
    gen = torch.Generator().manual_seed(1)
    draws, m = 4000, 8
    x = torch.randn(draws, m, 2, generator=gen, dtype=DT)
    y = torch.randn(draws, m, 2, generator=gen, dtype=DT)
    values = torch.stack([mmd2_unbiased(a, b) for a, b in zip(x, y)])
    mean, se = float(values.mean()), float(values.std() / draws ** 0.5)
    assert abs(mean) < 4 * se, (mean, se)
    # the biased (V-statistic) estimator is not: its diagonal adds (k(0) - E k) (1/m + 1/n) > 0, many SEs away
    biased = torch.stack([mixture_kernel(a, a).mean() + mixture_kernel(b, b).mean() - 2 * mixture_kernel(a, b).mean()
                          for a, b in zip(x[:500], y[:500])])
    assert float(biased.mean()) > 20 * se
    shifted = torch.stack([mmd2_unbiased(a, b + 1.0) for a, b in zip(x[:500], y[:500])])
    assert float(shifted.mean()) > 20 * se


# -- the field -------------------------------------------------------------------------------------------------

def _tiny(seed=0, features=3, n=5):
    torch.manual_seed(seed)
    G = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2)).to(DT)
    D = nn.Sequential(nn.Linear(2, 8), nn.SiLU(), nn.Linear(8, features)).to(DT)
    gen = torch.Generator().manual_seed(seed + 7)
    return G, D, torch.randn(n, 2, generator=gen, dtype=DT), torch.randn(n, 2, generator=gen, dtype=DT)


def _hand_written_losses(G, D, real, z, gp_weight, alpha):
    """L_D and L_G written out: double-loop MMD^2_u of D's features and the witness penalty at xhat."""
    fake = G(z)
    h_real, h_fake = D(real), D(fake)

    def k(a, b):
        d2 = (a - b).pow(2).sum()
        return sum((1 + d2 / (2 * s)) ** (-s) for s in RQ_ALPHAS)

    m = len(real)
    xx = sum(k(h_real[i], h_real[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(h_fake[i], h_fake[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(h_real[i], h_fake[j]) for i in range(m) for j in range(m)) / (m * m)
    mmd2 = xx + yy - 2 * xy
    penalty = 0.0
    for i in range(m):
        xhat = (real[i] + alpha[i] * (fake[i].detach() - real[i])).detach().requires_grad_(True)
        h = D(xhat.unsqueeze(0))[0]
        witness = sum(k(h, h_real[j]) for j in range(m)) / m - sum(k(h, h_fake[j]) for j in range(m)) / m
        (grad,) = torch.autograd.grad(witness, xhat, create_graph=True)
        penalty = penalty + ((grad.pow(2).sum() + 1e-5).sqrt() - 1) ** 2
    return -mmd2 + gp_weight * penalty / m, mmd2


@pytest.mark.parametrize("gp_weight", [0.0, 1.0])
def test_field_equals_autograd_of_a_hand_written_global_loss(gp_weight):
    G, D, real, z = _tiny()
    loss = get_loss("mmd", gp_weight=gp_weight)
    value = gan_field(G, D, loss, real, z, generator_rng=torch.Generator().manual_seed(3))
    alpha = torch.rand(len(real), generator=torch.Generator().manual_seed(3), dtype=DT)
    loss_d, loss_g = _hand_written_losses(G, D, real, z, gp_weight, alpha)
    d_expected = torch.autograd.grad(loss_d, trainable_parameters(D), retain_graph=True)
    g_expected = torch.autograd.grad(loss_g, trainable_parameters(G))
    for got, want in zip(value.discriminator_grads + value.generator_grads, list(d_expected) + list(g_expected)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert float(value.generator_loss) == pytest.approx(float(loss_g), rel=1e-12)
    assert float(value.discriminator_loss) == pytest.approx(float(loss_d), rel=1e-12)
    # one player at a time (alternating): the same halves
    d_only = gan_field(G, D, loss, real, z, generator_rng=torch.Generator().manual_seed(3), players=(1,))
    g_only = gan_field(G, D, loss, real, z, players=(0,))
    for got, want in zip(d_only.discriminator_grads + g_only.generator_grads, list(d_expected) + list(g_expected)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_fast_zero_sum_is_refused_for_mmd():
    G, D, real, z = _tiny()
    with pytest.raises(ValueError, match=r"^Invalid fast_zero_sum=True for MMDLoss"):
        gan_field(G, D, get_loss("mmd"), real, z, fast_zero_sum=True)


# -- GANModule: schemes, resume, bad values ---------------------------------------------------------------------

def _module(scheme="simultaneous", *, init_seed=0, features=8, **kwargs) -> GANModule:
    torch.manual_seed(init_seed)
    kwargs.setdefault("g_optimizer", OptimizerConfig(rule="adam", lr=1e-3, momentum=0.5, beta2=0.9))
    kwargs.setdefault("d_optimizer", OptimizerConfig(rule="sgd", lr=2e-3, momentum=-0.3))
    if scheme == "alternating":
        kwargs.setdefault("n_dis", 2)
    return GANModule(MLPGenerator(latent_dim=4, hidden_dim=32, num_layers=2, activation="silu"),
                     MLPDiscriminator(hidden_dim=32, num_layers=2, activation="silu", features=features),
                     loss="mmd", scheme=scheme, **kwargs)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_trains_with_mmd(scheme):
    module = _module(scheme, mmd_kernel="gaussian" if scheme == "optimistic" else "rq")
    make_trainer(3).fit(module, make_data())
    assert all(torch.isfinite(p).all() for p in module.parameters())
    stats = module.game.game.stats
    assert torch.isfinite(stats.generator_loss) and torch.isfinite(stats.discriminator_loss)
    assert module.game.evaluations > 0


@pytest.mark.parametrize("kwargs", [{"consensus": 1.0}, {"unroll_steps": 2}])
def test_consensus_and_unrolled_compose_with_mmd(kwargs):
    module = _module("simultaneous", **kwargs)
    make_trainer(3).fit(module, make_data())
    assert all(torch.isfinite(p).all() for p in module.parameters())
    stats = module.game.game.stats
    assert torch.isfinite(stats.generator_loss) and torch.isfinite(stats.discriminator_loss)


def test_dcgan_discriminator_emits_features():
    D = DCGANDiscriminator(channels=1, image_size=28, base_width=8, features=16)
    assert D(torch.zeros(3, 1, 28, 28)).shape == (3, 16)
    assert DCGANDiscriminator(channels=1, image_size=28, base_width=8)(torch.zeros(3, 1, 28, 28)).shape == (3,)


@pytest.mark.parametrize("scheme", ["simultaneous", "alternating"])
def test_resume_with_mmd_equals_never_stopping(scheme, tmp_path):
    assert_same_state(*resumed_and_uninterrupted(
        lambda init_seed: _module(scheme, init_seed=init_seed, ema_decay=0.9), 4, tmp_path))


@pytest.mark.parametrize("kwargs,message", [
    ({"mmd_kernel": "laplace"}, r"^Invalid mmd_kernel: 'laplace'; expected one of rq, gaussian$"),
    ({"mmd_scales": [1.0, 0.0]}, r"^Invalid mmd_scales: \[1.0, 0.0\]; expected a non-empty list of numbers > 0"),
    ({"mmd_scales": [-2.0]}, r"^Invalid mmd_scales: \[-2.0\]"),
    ({"mmd_scales": []}, r"^Invalid mmd_scales: \[\]"),
    ({"mmd_scales": [float("nan")]}, r"^Invalid mmd_scales: \[nan\]"),
    ({"mmd_gp_weight": -1.0}, r"^Invalid mmd_gp_weight: -1.0; expected >= 0"),
    ({"accumulation": 2}, r"^Invalid accumulation: 2 with loss mmd"),
    ({"scheme": "svre"}, r"^Invalid scheme: 'svre' with loss mmd"),
    ({"r1_gamma": 0.1}, r"^Invalid r1_gamma: 0.1 with loss mmd"),
])
def test_bad_mmd_values_fail_with_one_line_naming_the_field(kwargs, message):
    kwargs = dict(kwargs)
    scheme = kwargs.pop("scheme", "simultaneous")
    with pytest.raises(ValueError, match=message) as error:
        _module(scheme, **kwargs)
    assert "\n" not in str(error.value)


def test_a_one_score_discriminator_is_refused_with_one_line():
    with pytest.raises(ValueError, match=r"^Invalid discriminator output shape: \(2,\) on 2 samples for loss mmd; "
                                         r"expected features \(N, d\)") as error:
        _module(features=1)
    assert "\n" not in str(error.value)
    G, D, real, z = _tiny(features=1)  # (N, 1): one feature, accepted; squeezed to (N,): refused
    with pytest.raises(ValueError, match=r"^Invalid discriminator output shape: \(10,\) for loss mmd"):
        gan_field(G, nn.Sequential(D, nn.Flatten(0)), get_loss("mmd"), real, z)


@pytest.mark.parametrize("args,field", [
    (["--model.mmd_kernel=laplace"], "mmd_kernel"),
    (["--model.mmd_scales=[0.5, -1.0]"], "mmd_scales"),
    (["--model.accumulation=2"], "accumulation"),
    (["--model.scheme=svre", "--model.n_dis=1"], "Invalid scheme: 'svre' with loss mmd"),
    (["--model.discriminator.init_args.features=1"], "discriminator output shape"),
])
def test_bad_mmd_values_through_the_cli_exit_2(args, field, tmp_path, capsys):
    errors, _ = fit_cli_errors(capsys, "configs/quickstart_mmd.yaml", tmp_path, "--trainer.accelerator=cpu", *args)
    assert len(errors) == 1 and field in errors[0], errors


# -- two gloo ranks --------------------------------------------------------------------------------------------

def _global_batch(n=8):
    gen = torch.Generator().manual_seed(11)
    return torch.randn(n, 2, generator=gen, dtype=DT), torch.randn(n, 2, generator=gen, dtype=DT)


def _field_on_two_ranks(rank):
    """The DDP estimator: rank r's rows r::2, one field evaluation, the mean all-reduce of the field."""
    import torch.distributed as dist

    from lightning_gan import distributed

    dist.init_process_group("gloo")
    try:
        G, D, _, _ = _tiny()
        real, z = _global_batch()
        value = gan_field(G, D, get_loss("mmd"), real[rank::2], z[rank::2],
                          generator_rng=torch.Generator().manual_seed(3))
        grads = [g.clone() for g in value.grads]
        distributed.all_reduce_mean_(grads)
        return {"grads": grads, "loss_g": value.generator_loss, "loss_d": value.discriminator_loss}
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_estimator_equals_the_one_process_one_on_the_gathered_batch():
    rank0, rank1 = run_distributed(_field_on_two_ranks, 2, timeout=300)
    G, D, _, _ = _tiny()
    real, z = _global_batch()
    value = gan_field(G, D, get_loss("mmd"), real, z, generator_rng=torch.Generator().manual_seed(3))
    assert float(rank0["loss_g"]) == pytest.approx(float(value.generator_loss), rel=1e-12)  # the global MMD^2_u
    assert torch.equal(rank0["loss_g"], rank1["loss_g"])
    # L_D holds each rank's own penalty mean; their mean is the one-process penalty
    assert float((rank0["loss_d"] + rank1["loss_d"]) / 2) == pytest.approx(float(value.discriminator_loss), rel=1e-12)
    for a, b, want in zip(rank0["grads"], rank1["grads"], value.grads):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, want, rtol=1e-10, atol=1e-12)


# (all_reduces, all_gathers) per iteration. A plain evaluation: 1 all_gather (the D forward on cat(real, fake)),
# 1 all_reduce per backward pass through it (one per player) + the fused field. Alternating has n_dis = 2 (two D
# evaluations, one of G: 2 all_reduces each). Consensus (simultaneous): 3 as plain but with graphs, + the reduce of F,
# + 3 in the J^T F backward (the gather, and the all-reduce of each player's backward) + the reduce of J^T F = 7.
# Unrolled k = 2 (simultaneous): per unrolled step 1 gather, 1 backward all_reduce, 1 unroll reduce; L_G at phi_k
# 1 gather; G's backward: 1 at phi_k's gather + 3 per step; the field: 5k + 2 = 12 all_reduces, k + 1 = 3 gathers.
DDP_SCHEMES = {"simultaneous": (3, 1), "alternating": (2 * 2 + 2, 3), "extragradient": (6, 2),
               "consensus": (7, 1), "unrolled": (12, 3)}
DDP_OPTIONS = {"consensus": {"consensus": 1.0}, "unrolled": {"unroll_steps": 2}}
DDP_ITERATIONS = 6


def _mmd_on_two_ranks(rank):
    counter, results = CountAllReduces(), {}
    gathers = []
    original = torch.distributed.all_gather

    def counting(*args, **kwargs):
        gathers.append(1)
        return original(*args, **kwargs)

    torch.distributed.all_gather = counting
    for scheme in DDP_SCHEMES:
        counter.reset()
        gathers.clear()
        module = _module(scheme if scheme in SCHEMES else "simultaneous", init_seed=rank, ema_decay=0.9,
                         **DDP_OPTIONS.get(scheme, {}))
        make_trainer(DDP_ITERATIONS, devices=2, strategy="game_ddp", callbacks=[counter]).fit(
            module, make_data(batch_size=8))
        results[scheme] = {"state": state_of(module), "all_reduces": list(counter.all_reduces),
                           "all_gathers": len(gathers)}
    return results


@pytest.mark.slow
def test_two_ranks_bit_identical_equal_one_rank_with_2b_and_count_the_collectives():
    rank0, rank1 = run_distributed(_mmd_on_two_ranks, 2, timeout=600)
    for scheme, (all_reduces, all_gathers) in DDP_SCHEMES.items():
        for run in (rank0, rank1):
            assert run[scheme]["all_reduces"] == [all_reduces] * DDP_ITERATIONS, scheme
            assert run[scheme]["all_gathers"] == all_gathers * DDP_ITERATIONS, scheme
        for key in rank0[scheme]["state"]:
            assert torch.equal(rank0[scheme]["state"][key], rank1[scheme]["state"][key]), (scheme, key)
        module = _module(scheme if scheme in SCHEMES else "simultaneous", init_seed=0, ema_decay=0.9,
                         **DDP_OPTIONS.get(scheme, {}))
        make_trainer(DDP_ITERATIONS).fit(module, make_data(batch_size=16))
        assert_matches_one_rank(rank0[scheme]["state"], state_of(module), scheme)
