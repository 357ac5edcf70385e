"""Step overhead: GANModule's time per game iteration / a minimal hand-written loop of the same algorithm.

What Lightning's loop and the module's bookkeeping cost per game iteration. One process, same models (deep copies of one initialisation), same batches (already in memory),
same z stream, same optimizer classes (``lightning_gan.optim``: identical update math), same thread count.

What is timed, per (model, scheme), in one ``trainer.fit`` per repetition, with a baseline iteration run next to
each module iteration (from a callback: module, baseline, module, baseline, ...; every other repetition the
baseline goes first), so that machine noise hits both sides alike:

* ``baseline``: one iteration of :class:`HandLoop`. Each F evaluation is one G forward, one D forward on
  ``cat(real, fake)``, then one ``torch.autograd.grad`` per player (L_D to phi, L_G to theta), the same work as
  :func:`lightning_gan.game.field.gan_field`. Alternating is the textbook loop (D steps on ``G(z)`` under
  ``no_grad``, then a G step on ``D(G(z))``, as in Goodfellow et al. 2014, Algorithm 1): player-wise evaluations.
* ``module (fit)``: the time between the ``on_train_batch_start`` of iteration ``warmup`` and that of iteration
  ``warmup + iterations`` of ``trainer.fit`` on an in-memory loader of the same pre-built batches, minus the
  interleaved baseline iterations, divided by ``iterations``: everything Lightning and we do per iteration (batch
  fetch, hooks, training_step), except the one-off start-up.
* ``training_step``: the module's own ``training_step`` (the bound method Lightning calls, wrapped with a timer)
  in the same fit, so ``fit - training_step`` is Lightning's loop.

The ratio is taken per repetition (paired), then the median and the min-max spread over repetitions are reported.
``--averaging off`` (default) disables the module's uniform/EMA averages and the baseline keeps none; ``on`` keeps
the module's defaults (uniform + EMA 0.999 of G, buffers included) and the baseline does the same with foreach lerps.

    python bench/step_overhead.py --model dcgan28 --iterations 50 --repeats 5 --out bench/results/dcgan28.md

The module runs with its fault guards, as the command does: the finite check of every evaluation
(``check_finite``) and the signal agreement (:class:`~lightning_gan.callbacks.SignalCheckpoint`, one all-reduce of
one integer per iteration on several ranks, nothing on one). ``--compare FEATURE`` times the module with and without
one feature in the same repetition (each fit paired with its own baseline iterations) and reports the feature's cost
as the ratio of the two ratios: ``guards``, ``lookahead`` (Lookahead-minmax, k 5, alpha 0.5) or ``schedule``
(inverse-square-root decay with warm-up for both players), ``channels_last`` (dcgan28 only) or ``compile`` (both
players ``torch.compile``d; the warm-up iterations absorb the compilation) or ``bf16`` (``trainer.precision bf16-mixed``:
the module's iteration under bfloat16 autocast; the hand loop stays float32, so the cost is the module's own). ``--compare guards`` also times the agreement's all-reduce
on 2 gloo processes against the all-reduce of the model's gradients, the collective every evaluation makes anyway.

``--compare consensus`` (gamma 10: F + gamma J^T F, a double backward per evaluation) and ``--compare unrolled``
(G's field through k = 5 differentiable Adam steps of D) pair the module with the feature with a hand loop with the
same feature, :class:`ConsensusHandLoop` (F from ``autograd.grad(..., create_graph=True)``, J^T F =
``autograd.grad(F, params, grad_outputs=F.detach())``, F + gamma J^T F to ``.grad``) or :class:`UnrolledHandLoop`
(k steps of D's Adam written out from D's Adam state, ``torch.func.functional_call`` on D, D's own step plain), and
the module without it with the plain hand loop, in the same repetition. The main table is then the library's
overhead for that method (module with / hand loop with, ``max param diff`` with the feature on both sides: it checks
the hand loop: 0 today, every scheme on mlp, simultaneous and alternating1 on dcgan28); the second table gives the
feature's own cost in each (module with / without, hand loop with / without) and the plain ratio of the same
repetitions:

    python bench/step_overhead.py --model mlp --schemes simultaneous alternating1 --compare unrolled --threads 1
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_gan import distributed
from lightning_gan.callbacks import SignalCheckpoint
from lightning_gan.lookahead import LookaheadConfig
from lightning_gan.models import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator
from lightning_gan.module import GANModule
from lightning_gan.optim import Adam, ExtraAdam, OptimisticAdam, PastExtraAdam
from lightning_gan.optim.factory import OptimizerConfig

# name -> (GANModule scheme, n_dis, lightning_gan.optim class of the hand loop)
SCHEMES: dict[str, tuple[str, int, type]] = {
    "simultaneous": ("simultaneous", 1, Adam),
    "alternating1": ("alternating", 1, Adam),
    "alternating5": ("alternating", 5, Adam),
    "extragradient": ("extragradient", 1, ExtraAdam),
    "past_extragradient": ("past_extragradient", 1, PastExtraAdam),
    "optimistic": ("optimistic", 1, OptimisticAdam),
}
MODELS = ("dcgan28", "mlp")
LR_G, LR_D, BETAS = 2e-4, 2e-4, (0.5, 0.999)


def make_players(model: str, seed: int = 0) -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
    """The two players and the shape of one real sample."""
    torch.manual_seed(seed)
    if model == "dcgan28":
        return DCGANGenerator(latent_dim=128, channels=1, image_size=28), DCGANDiscriminator(1, 28), (1, 28, 28)
    if model == "mlp":
        return MLPGenerator(latent_dim=2, output_dim=2), MLPDiscriminator(input_dim=2), (2,)
    raise ValueError(f"Invalid model: {model!r}; expected one of {MODELS}")


def make_batches(shape: tuple[int, ...], rows: int, count: int = 8, seed: int = 1) -> list[Tensor]:
    """``count`` distinct loader batches of ``rows`` samples in [-1, 1] (``rows`` = draws per iteration x batch)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(rows, *shape, generator=gen).mul_(2).sub_(1) for _ in range(count)]


# ---------------------------------------------------------------------------------------------------------------
# The baseline: what a researcher writes by hand


class HandLoop:
    """Minimal correct loop of one scheme: non-saturating loss, Adam-family optimizers of ``lightning_gan.optim``."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, scheme: str, *, batch_size: int,
                 seed: int = 0, averaging: bool = False) -> None:
        _, self.n_dis, opt_cls = SCHEMES[scheme]
        self.kind = SCHEMES[scheme][0]
        self.G, self.D, self.batch_size = generator, discriminator, batch_size
        self.g_params, self.d_params = list(generator.parameters()), list(discriminator.parameters())
        self.opt_g = opt_cls(self.g_params, lr=LR_G, betas=BETAS)
        self.opt_d = opt_cls(self.d_params, lr=LR_D, betas=BETAS)
        self.z_gen = torch.Generator().manual_seed(seed)
        self.averages: list[tuple[list[Tensor], float | None]] = []
        if averaging:  # uniform + EMA(0.999) of G, parameters and float buffers (as PlayerAverages(use_buffers=True))
            tensors = [*generator.parameters(), *generator.buffers()]
            self.avg_src = [t.detach() for t in tensors if t.is_floating_point()]
            self.averages = [([t.clone() for t in self.avg_src], None), ([t.clone() for t in self.avg_src], 0.999)]
            self.n_averaged = 0

    def z(self) -> Tensor:
        return torch.randn(self.batch_size, self.G.latent_dim, generator=self.z_gen)

    def both_grads(self, real: Tensor) -> None:
        """F at the current point: both players' gradients, nothing moves."""
        fake = self.G(self.z())
        scores = self.D(torch.cat([real, fake]))
        d_real, d_fake = scores[: real.shape[0]], scores[real.shape[0]:]
        loss_d = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        loss_g = F.softplus(-d_fake).mean()
        for p, g in zip(self.d_params, torch.autograd.grad(loss_d, self.d_params, retain_graph=True)):
            p.grad = g
        for p, g in zip(self.g_params, torch.autograd.grad(loss_g, self.g_params)):
            p.grad = g

    def d_grad(self, real: Tensor) -> None:
        """D's gradient alone (an alternating D step): G runs without a graph."""
        with torch.no_grad():
            fake = self.G(self.z())
        scores = self.D(torch.cat([real, fake]))
        n = real.shape[0]
        loss_d = F.softplus(-scores[:n]).mean() + F.softplus(scores[n:]).mean()
        for p, g in zip(self.d_params, torch.autograd.grad(loss_d, self.d_params)):
            p.grad = g

    def g_grad(self, real: Tensor) -> None:
        """G's gradient alone (an alternating G step): D scores samples independently, so the fakes alone."""
        loss_g = F.softplus(-self.D(self.G(self.z()))).mean()
        for p, g in zip(self.g_params, torch.autograd.grad(loss_g, self.g_params)):
            p.grad = g

    def step(self, batch: Tensor) -> None:
        """One game iteration on a loader batch of ``draws x batch_size`` samples."""
        reals = batch.split(self.batch_size)
        optimizers = (self.opt_g, self.opt_d)
        if self.kind in ("simultaneous", "optimistic"):
            self.both_grads(reals[0])
            for opt in optimizers:
                opt.step()
        elif self.kind == "extragradient":
            self.both_grads(reals[0])
            for opt in optimizers:
                opt.extrapolation()
            self.both_grads(reals[1])
            for opt in optimizers:
                opt.step()
        elif self.kind == "past_extragradient":
            for opt in optimizers:
                opt.extrapolation()
            self.both_grads(reals[0])
            for opt in optimizers:
                opt.step()
        else:  # alternating: n_dis D steps on fresh samples, then G at the new D
            for k in range(self.n_dis):
                self.d_grad(reals[k])
                self.opt_d.step()
            self.g_grad(reals[self.n_dis])
            self.opt_g.step()
        if self.averages:
            with torch.no_grad():
                self.n_averaged += 1
                for average, decay in self.averages:
                    torch._foreach_lerp_(average, self.avg_src, 1.0 / self.n_averaged if decay is None else 1 - decay)


class ConsensusHandLoop(HandLoop):
    """The hand loop with consensus optimization (Mescheder et al. 2017; ``ConsensusOptimizer`` of github
    LMescheder/TheNumericsOfGANs): each evaluation writes F + gamma J^T F to ``.grad``, with F from
    ``torch.autograd.grad(..., create_graph=True)`` of both players' losses and J^T F = the gradient of 1/2 ||F||^2
    (``autograd.grad(F, params, grad_outputs=F.detach())``). The scheme's optimizer calls are unchanged. A one-player
    (alternating) evaluation computes the whole F and keeps that player's part, as the module does."""

    def __init__(self, *args, gamma: float = 10.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gamma = gamma

    def consensus_grads(self, real: Tensor, params: list[Tensor]) -> None:
        """``.grad`` of ``params`` (one player's or both players') = their part of F + gamma J^T F."""
        fake = self.G(self.z())
        scores = self.D(torch.cat([real, fake]))
        d_real, d_fake = scores[: real.shape[0]], scores[real.shape[0]:]
        loss_d = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        loss_g = F.softplus(-d_fake).mean()
        field = [*torch.autograd.grad(loss_g, self.g_params, retain_graph=True, create_graph=True),
                 *torch.autograd.grad(loss_d, self.d_params, create_graph=True)]
        detached = [f.detach() for f in field]
        pairs = [(f, c) for f, c in zip(field, detached) if f.requires_grad]
        jtf = torch.autograd.grad([f for f, _ in pairs], params, grad_outputs=[c for _, c in pairs],
                                  allow_unused=True)
        own = dict(zip(map(id, self.g_params + self.d_params), detached))
        for p, j in zip(params, jtf):
            p.grad = own[id(p)] if j is None else own[id(p)].add(j, alpha=self.gamma)

    def both_grads(self, real: Tensor) -> None:
        self.consensus_grads(real, self.g_params + self.d_params)

    def d_grad(self, real: Tensor) -> None:
        self.consensus_grads(real, self.d_params)

    def g_grad(self, real: Tensor) -> None:
        self.consensus_grads(real, self.g_params)


def _safe_sqrt(v: Tensor) -> Tensor:
    """sqrt(v), v >= 0, with derivative 0 instead of inf (inf x 0 = NaN in the backward pass) where v == 0."""
    positive = v > 0
    return torch.where(positive, torch.where(positive, v, torch.ones_like(v)).sqrt(), torch.zeros_like(v))


class UnrolledHandLoop(HandLoop):
    """The hand loop with an unrolled D (Metz et al. 2017; github poolio/unrolled_gan): D takes its normal step on its
    gradient at (theta, phi); G's gradient is that of L_G(theta, phi_k(theta)) through ``k`` differentiable steps of
    D's Adam from D's current Adam state (m, v, step), on the same batch, written out by hand (eps outside the square
    root, as ``torch.optim.Adam``), with ``torch.func.functional_call`` on D with the unrolled parameters.
    D's first unrolled gradient (at phi) is D's field. An alternating D step is plain; the G step unrolls (on the
    G step's own batch, real and fake scored together)."""

    def __init__(self, *args, k: int = 5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.k = k
        self.d_names = [name for name, _ in self.D.named_parameters()]

    def unrolled_grads(self, real: Tensor) -> list[Tensor]:
        """Writes G's unrolled gradient to ``.grad``; returns D's plain gradient at phi (detached)."""
        fake = self.G(self.z())
        n = real.shape[0]

        def loss_d(scores: Tensor) -> Tensor:
            return F.softplus(-scores[:n]).mean() + F.softplus(scores[n:]).mean()

        # one cat per D forward, as the module's objective: the fakes' cotangents then add up in the same order
        def scores_at(phi: list[Tensor]) -> Tensor:  # D at substituted parameters (buffers copied: none here)
            tensors = {name: b.clone() for name, b in self.D.named_buffers()} | dict(zip(self.d_names, phi))
            return torch.func.functional_call(self.D, tensors, (torch.cat([real, fake]),))

        group = self.opt_d.param_groups[0]
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        states = [self.opt_d.state.get(p, {}) for p in self.d_params]
        m = [s["exp_avg"].detach() if "step" in s else torch.zeros_like(p) for s, p in zip(states, self.d_params)]
        v = [s["exp_avg_sq"].detach() if "step" in s else torch.zeros_like(p) for s, p in zip(states, self.d_params)]
        step = float(states[0]["step"]) if "step" in states[0] else 0.0  # one step count: all stepped together
        phi, d_field = list(self.d_params), None
        for j in range(self.k):
            scores = self.D(torch.cat([real, fake])) if j == 0 else scores_at(phi)
            grads = torch.autograd.grad(loss_d(scores), phi, create_graph=True)
            if j == 0:
                d_field = [g.detach() for g in grads]
            step += 1
            bias_correction1, bias_correction2_sqrt = 1 - beta1 ** step, (1 - beta2 ** step) ** 0.5
            m = [mi.lerp(g, 1 - beta1) for mi, g in zip(m, grads)]
            v = [vi.mul(beta2).addcmul(g, g, value=1 - beta2) for vi, g in zip(v, grads)]
            phi = [p.sub(mi.div((_safe_sqrt(vi) / bias_correction2_sqrt).add(eps)).mul(lr / bias_correction1))
                   for p, mi, vi in zip(phi, m, v)]
        loss_g = F.softplus(-scores_at(phi)[n:]).mean()
        for p, g in zip(self.g_params, torch.autograd.grad(loss_g, self.g_params)):
            p.grad = g
        return d_field

    def both_grads(self, real: Tensor) -> None:
        for p, g in zip(self.d_params, self.unrolled_grads(real)):
            p.grad = g

    def g_grad(self, real: Tensor) -> None:
        self.unrolled_grads(real)


HAND_LOOPS: dict[str, type[HandLoop]] = {"consensus": ConsensusHandLoop, "unrolled": UnrolledHandLoop}


# ---------------------------------------------------------------------------------------------------------------
# The module, timed inside trainer.fit, with one baseline iteration interleaved after (or before) each of its own


class PairedTimer(pl.Callback):
    """Times every iteration of the fit and runs (and times) one baseline iteration next to each.

    ``starts``: time of every ``on_train_batch_start``; ``steps``: duration of every ``training_step`` call (the
    bound method Lightning calls, wrapped); ``base``: (start time, duration) of every baseline iteration, run in
    ``on_train_batch_start`` before the start time is taken (``before=True``) or in ``on_train_batch_end``.
    """

    def __init__(self, baseline: HandLoop | None = None, batches: list[Tensor] | None = None,
                 before: bool = False) -> None:
        self.baseline, self.batches, self.before = baseline, batches, before
        self.starts: list[float] = []
        self.steps: list[float] = []
        self.base: list[tuple[float, float]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        inner = pl_module.training_step

        def timed_training_step(*args, **kwargs):
            t0 = time.perf_counter()
            out = inner(*args, **kwargs)
            self.steps.append(time.perf_counter() - t0)
            return out

        pl_module.training_step = timed_training_step  # Lightning calls getattr(module, "training_step")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        del pl_module.training_step

    def _baseline(self, batch_idx: int) -> None:
        if self.baseline is not None:
            t0 = time.perf_counter()
            with torch.enable_grad():
                self.baseline.step(self.batches[batch_idx % len(self.batches)])
            self.base.append((t0, time.perf_counter() - t0))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.before:
            self._baseline(batch_idx)
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.before:
            self._baseline(batch_idx)

    def per_iteration(self, warmup: int, iterations: int) -> tuple[float, float, float]:
        """Seconds per iteration over iterations ``warmup .. warmup + iterations - 1``: (baseline, fit, step)."""
        t0, t1 = self.starts[warmup], self.starts[warmup + iterations]
        base = [d for t, d in self.base if t0 <= t < t1]
        assert len(base) == (iterations if self.baseline is not None else 0), (len(base), iterations)
        fit = (t1 - t0 - sum(base)) / iterations
        step = sum(self.steps[warmup: warmup + iterations]) / iterations
        return sum(base) / iterations, fit, step


COMPARED = ("none", "guards", "lookahead", "schedule", "consensus", "unrolled", "channels_last", "compile", "bf16")


def make_module(generator: nn.Module, discriminator: nn.Module, scheme: str, averaging: bool,
                guards: bool = True, lookahead: bool = False, schedule: bool = False, consensus: bool = False,
                unrolled: bool = False, channels_last: bool = False, compile_: bool = False) -> GANModule:
    kind, n_dis, _ = SCHEMES[scheme]
    extra = {} if averaging else {"uniform_average": False, "ema_decay": None}
    timing = {"schedule": "inverse_sqrt", "warmup": 10, "t0": 100.0} if schedule else {}
    return GANModule(generator, discriminator, loss="non_saturating", scheme=kind, n_dis=n_dis,
                     g_optimizer=OptimizerConfig(rule="adam", lr=LR_G, momentum=BETAS[0], beta2=BETAS[1], **timing),
                     d_optimizer=OptimizerConfig(rule="adam", lr=LR_D, momentum=BETAS[0], beta2=BETAS[1], **timing),
                     seed=0, check_finite=guards, lookahead=LookaheadConfig(k=5, alpha=0.5) if lookahead else None,
                     consensus=10.0 if consensus else None, unroll_steps=5 if unrolled else 0,
                     channels_last=channels_last, compile=compile_, **extra)


def fit_module(module: GANModule, batches: list[Tensor], iterations: int, timer: PairedTimer | None = None,
               guards: bool = True, precision: str = "32-true") -> None:
    """``trainer.fit`` for exactly ``iterations`` game iterations (one epoch) over the in-memory batches."""
    loader = torch.utils.data.DataLoader([batches[i % len(batches)] for i in range(iterations)], batch_size=None)
    callbacks = ([] if timer is None else [timer]) + ([SignalCheckpoint()] if guards else [])
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=iterations, logger=False,
                         callbacks=callbacks, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, precision=precision)
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == iterations, (trainer.global_step, iterations)


def make_loop(generator: nn.Module, discriminator: nn.Module, scheme: str, *, batch_size: int,
              averaging: bool = False, feature: str | None = None) -> HandLoop:
    """The hand loop, with ``feature`` (``consensus`` or ``unrolled``, as :func:`make_module` sets them) or plain."""
    return HAND_LOOPS.get(feature, HandLoop)(generator, discriminator, scheme, batch_size=batch_size,
                                             averaging=averaging)


def max_param_difference(model: str, scheme: str, batch_size: int, steps: int = 3,
                         feature: str | None = None) -> float:
    """Max |module - baseline| over both players' parameters and buffers after ``steps`` iterations from one init,
    both with ``feature`` (``consensus``, ``unrolled``) or both plain."""
    g, d, shape = make_players(model)
    draws = _draws(scheme)
    batches = make_batches(shape, draws * batch_size, count=steps)
    module = make_module(copy.deepcopy(g), copy.deepcopy(d), scheme, averaging=False,
                         consensus=feature == "consensus", unrolled=feature == "unrolled")
    fit_module(module, batches, steps)
    loop = make_loop(g, d, scheme, batch_size=batch_size, feature=feature)
    for batch in batches:
        loop.step(batch)
    ours = [*module.generator.state_dict().values(), *module.discriminator.state_dict().values()]
    theirs = [*g.state_dict().values(), *d.state_dict().values()]
    return max(float((a.double() - b.double()).abs().max()) for a, b in zip(ours, theirs))


def _draws(scheme: str) -> int:
    kind, n_dis, _ = SCHEMES[scheme]
    return {"alternating": n_dis + 1, "extragradient": 2}.get(kind, 1)


# ---------------------------------------------------------------------------------------------------------------
# Driver


@dataclass
class Row:
    model: str
    scheme: str
    baseline_ms: float
    module_fit_ms: float
    module_step_ms: float
    ratio: float
    ratio_min: float
    ratio_max: float
    step_ratio: float
    max_param_diff: float
    repeats: int
    compared: str = "none"
    # guards, lookahead, schedule: (ratio with the compared feature) / (ratio without), median over repeats;
    # consensus, unrolled: module with / module without (fit times), median over repeats
    feature_cost: float | None = None
    feature_cost_min: float | None = None
    feature_cost_max: float | None = None
    # consensus, unrolled (the row's ratio is then module with / hand loop with): hand loop with / hand loop
    # without, and the plain ratio (module without / hand loop without) of the same repetitions
    hand_feature_cost: float | None = None
    hand_feature_cost_min: float | None = None
    hand_feature_cost_max: float | None = None
    plain_ratio: float | None = None


def _timed_fit(g0: nn.Module, d0: nn.Module, scheme: str, batches: list[Tensor], *, batch_size: int, warmup: int,
               iterations: int, averaging: bool, compared: str, on: bool, before: bool) -> tuple[float, float, float]:
    """One fit of the module (with the compared feature ``on`` or off) paired with baseline iterations: the hand
    loop with the same feature for consensus and unrolled, the plain hand loop otherwise."""
    loop = make_loop(copy.deepcopy(g0), copy.deepcopy(d0), scheme, batch_size=batch_size, averaging=averaging,
                     feature=compared if on and compared in HAND_LOOPS else None)
    guards = on or compared != "guards"
    module = make_module(copy.deepcopy(g0), copy.deepcopy(d0), scheme, averaging, guards=guards,
                         lookahead=on and compared == "lookahead", schedule=on and compared == "schedule",
                         consensus=on and compared == "consensus", unrolled=on and compared == "unrolled",
                         channels_last=on and compared == "channels_last", compile_=on and compared == "compile")
    timer = PairedTimer(loop, batches, before=before)
    gc.collect()
    precision = "bf16-mixed" if on and compared == "bf16" else "32-true"
    fit_module(module, batches, warmup + iterations + 1, timer, guards, precision)
    return timer.per_iteration(warmup, iterations)


def bench_one(model: str, scheme: str, *, batch_size: int, warmup: int, iterations: int, repeats: int,
              averaging: bool, compared: str = "none") -> Row:
    g0, d0, shape = make_players(model)
    batches = make_batches(shape, _draws(scheme) * batch_size)
    variants = [True] if compared == "none" else [True, False]
    timings: dict[bool, list[tuple[float, float, float]]] = {v: [] for v in variants}
    for r in range(repeats):
        for v in variants if r % 2 == 0 else variants[::-1]:
            timings[v].append(_timed_fit(g0, d0, scheme, batches, batch_size=batch_size, warmup=warmup,
                                         iterations=iterations, averaging=averaging, compared=compared, on=v,
                                         before=r % 2 == 1))  # A B A B ..., then B A B A ...
    with_hand_loop = compared in HAND_LOOPS  # the table: module with the feature / hand loop with the feature
    base, fit, step = (list(xs) for xs in zip(*timings[compared == "none" or with_hand_loop]))
    ratios = [f / b for f, b in zip(fit, base)]
    ms = lambda xs: 1e3 * statistics.median(xs)  # noqa: E731
    row = Row(model, scheme, ms(base), ms(fit), ms(step), statistics.median(ratios), min(ratios), max(ratios),
              statistics.median(s / b for s, b in zip(step, base)),
              max_param_difference(model, scheme, batch_size, feature=compared if with_hand_loop else None),
              repeats, compared)
    if with_hand_loop:
        spread = lambda xs: (statistics.median(xs), min(xs), max(xs))  # noqa: E731
        pairs = list(zip(timings[True], timings[False]))
        row.feature_cost, row.feature_cost_min, row.feature_cost_max = spread([on[1] / off[1] for on, off in pairs])
        row.hand_feature_cost, row.hand_feature_cost_min, row.hand_feature_cost_max = spread(
            [on[0] / off[0] for on, off in pairs])
        row.plain_ratio = statistics.median(off[1] / off[0] for _, off in pairs)
    elif compared != "none":
        costs = [(f_on / b_on) / (f_off / b_off)
                 for (b_on, f_on, _), (b_off, f_off, _) in zip(timings[True], timings[False])]
        row.feature_cost, row.feature_cost_min, row.feature_cost_max = (statistics.median(costs), min(costs),
                                                                        max(costs))
    return row


# ---------------------------------------------------------------------------------------------------------------
# The signal agreement on two ranks


def _agreement_child(rank: int, world_size: int, port: int, numel: int, rounds: int, queue) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    grads = [torch.randn(numel)]
    timings = {"gradients": [], "agreement": []}
    for _ in range(rounds):  # interleaved, so that noise hits both alike
        torch.distributed.barrier()
        t0 = time.perf_counter()
        distributed.all_reduce_mean_(grads)
        t1 = time.perf_counter()
        distributed.agree_max(0)
        timings["gradients"].append(t1 - t0)
        timings["agreement"].append(time.perf_counter() - t1)
    if rank == 0:
        queue.put({k: statistics.median(v) for k, v in timings.items()})
    torch.distributed.destroy_process_group()


def agreement_cost(model: str, rounds: int = 200) -> dict[str, float]:
    """Median seconds of one signal agreement and of one all-reduce of both players' gradients, 2 gloo ranks."""
    import socket

    import torch.multiprocessing as mp

    g, d, _ = make_players(model)
    numel = sum(p.numel() for p in [*g.parameters(), *d.parameters()])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_agreement_child, args=(r, 2, port, numel, rounds, queue)) for r in range(2)]
    for p in processes:
        p.start()
    result = queue.get(timeout=600)
    for p in processes:
        p.join()
    return {"parameters": numel, **result}


def markdown(rows: list[Row], header: str) -> str:
    lines = [header, "",
             "| scheme | model | baseline ms/iter | module ms/iter (fit) | ratio (min-max) | training_step ms/iter "
             "| step ratio | Lightning loop ms/iter | max param diff |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.scheme} | {r.model} | {r.baseline_ms:.3f} | {r.module_fit_ms:.3f} | "
                     f"{r.ratio:.3f} ({r.ratio_min:.3f}-{r.ratio_max:.3f}) | {r.module_step_ms:.3f} | "
                     f"{r.step_ratio:.3f} | {r.module_fit_ms - r.module_step_ms:.3f} | {r.max_param_diff:.1e} |")
    if rows and rows[0].compared in HAND_LOOPS:
        lines[0] += (f"; module and hand loop both with {rows[0].compared} "
                     f"({'gamma 10' if rows[0].compared == 'consensus' else 'k 5, Adam'})")
        lines += ["", f"Cost of {rows[0].compared} in each, same repetitions (module with / without: fit times; hand "
                  "loop with / without), and the plain ratio (module without / hand loop without):", "",
                  "| scheme | model | module with / without (min-max) | hand loop with / without (min-max) "
                  "| plain ratio |", "|---|---|---|---|---:|"]
        lines += [f"| {r.scheme} | {r.model} | {r.feature_cost:.3f} ({r.feature_cost_min:.3f}-"
                  f"{r.feature_cost_max:.3f}) | {r.hand_feature_cost:.3f} ({r.hand_feature_cost_min:.3f}-"
                  f"{r.hand_feature_cost_max:.3f}) | {r.plain_ratio:.3f} |" for r in rows]
    elif any(r.feature_cost is not None for r in rows):
        lines += ["", f"Cost of {rows[0].compared}: module-with / module-without, each as a ratio to its own paired "
                  "baseline iterations (the table above is the module without it):", "",
                  "| scheme | model | with / without (min-max) |", "|---|---|---|"]
        lines += [f"| {r.scheme} | {r.model} | {r.feature_cost:.3f} ({r.feature_cost_min:.3f}-"
                  f"{r.feature_cost_max:.3f}) |" for r in rows if r.feature_cost is not None]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=[*MODELS, "all"], default="all")
    parser.add_argument("--schemes", nargs="+", choices=list(SCHEMES), default=list(SCHEMES))
    parser.add_argument("--batch-size", type=int, default=64, help="real (and fake) samples per F evaluation")
    parser.add_argument("--iterations", type=int, default=50, help="timed iterations per repetition")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations before each timed block")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved module/baseline repetitions")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--averaging", choices=["off", "on"], default="off",
                        help="off: no averages on either side; on: module defaults (uniform + EMA of G) on both")
    parser.add_argument("--compare", choices=COMPARED, default="none",
                        help="time the module with and without this feature: guards (finite check and signal "
                             "agreement), lookahead (k 5, alpha 0.5), schedule (inverse sqrt with warm-up), "
                             "consensus (gamma 10) or unrolled (5 unrolled D steps); consensus and unrolled also "
                             "time a hand loop with the feature, and the table is then module / hand loop, both "
                             "with it; channels_last (dcgan28 only) or compile (torch.compile of both players; "
                             "the warm-up iterations absorb the compilation)")
    parser.add_argument("--out", type=Path, default=None, help="write the table (.md) or rows (.json) here")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    models = MODELS if args.model == "all" else (args.model,)
    if args.compare == "channels_last":
        if args.model == "mlp":
            parser.error("--compare channels_last needs --model dcgan28: the MLP players have no 4-D weights")
        models = ("dcgan28",)
    rows = []
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.ERROR)  # no "GPU available: ..." banner per fit
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="lightning")  # e.g. "does not have many workers"
            for model in models:
                for scheme in args.schemes:
                    row = bench_one(model, scheme, batch_size=args.batch_size, warmup=args.warmup,
                                    iterations=args.iterations, repeats=args.repeats,
                                    averaging=args.averaging == "on", compared=args.compare)
                    print(f"{model:8s} {scheme:18s} baseline {row.baseline_ms:8.3f} ms  module "
                          f"{row.module_fit_ms:8.3f} ms  ratio {row.ratio:.3f}", file=sys.stderr, flush=True)
                    rows.append(row)
    finally:
        lightning_log.setLevel(level)
    header = (f"Step overhead, torch {torch.__version__}, lightning {pl.__version__}, {torch.get_num_threads()} "
              f"thread(s), batch {args.batch_size}, {args.iterations} iterations x {args.repeats} repeats, "
              f"averaging {args.averaging}; medians over repeats")
    table = markdown(rows, header)
    if args.compare == "guards":
        for model in models:
            cost = agreement_cost(model)
            table += (f"\nSignal agreement on 2 gloo ranks, {model} ({cost['parameters']:,} parameters): "
                      f"{1e6 * cost['agreement']:.0f} us per iteration vs {1e6 * cost['gradients']:.0f} us for one "
                      f"all-reduce of both players' gradients (ratio {cost['agreement'] / cost['gradients']:.3f}); "
                      "one agreement per iteration, one gradient all-reduce per evaluation.\n")
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.suffix == ".json":
            args.out.write_text(json.dumps({"header": header, "command": sys.argv, "rows": [asdict(r) for r in rows]},
                                           indent=1))
        else:
            args.out.write_text(table)
    return rows


if __name__ == "__main__":
    main()
