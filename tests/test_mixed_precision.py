"""Mixed precision: bf16-mixed for every scheme, and float16's loss scale shared by both players, whose skipped
iterations are undone as a whole (see :mod:`lightning_gan.precision`).

float16 runs on the CPU here through Lightning's plugin (``MixedPrecision("16-mixed", "cpu")``: torch's CPU autocast
supports float16); ``Trainer(precision="16-mixed")`` itself would switch a CPU run to bf16.
"""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins import MixedPrecision
from torch import nn

from ddp_harness import run_distributed
from gan_fixtures import (assert_same_state, fit_cli_errors, make_data, make_module, make_trainer,
                          resumed_and_uninterrupted, state_of)
from lightning_gan.game.field import gan_field
from lightning_gan.game.losses import get_loss
from lightning_gan.models import MLPDiscriminator, MLPGenerator
from lightning_gan.module import GANModule
from lightning_gan.optim import ExtraAdam
from lightning_gan.precision import GameLossScale, IterationUndo
from lightning_gan.variance_reduction import SVREConfig

SCHEMES = ["simultaneous", "alternating", "extragradient", "past_extragradient", "optimistic", "svre"]
#: calls of the live game's field per iteration (make_module's alternating has n_dis 2; SVRE evaluates twice)
FIELD_CALLS = {"simultaneous": 1, "alternating": 3, "extragradient": 2, "past_extragradient": 1, "optimistic": 1,
               "svre": 2}


def _module(scheme: str, **kwargs) -> GANModule:
    if scheme == "svre":
        kwargs.setdefault("svre", SVREConfig(snapshot_every=4))
    return make_module(scheme, **kwargs)


def _fp16() -> MixedPrecision:
    return MixedPrecision("16-mixed", "cpu")


def _moved(state: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> float:
    return max(float((state[k].double() - start[k].double()).abs().max()) for k in start if "averages" not in k
               and k.startswith(("generator.", "discriminator.")))


def _gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a
               if k.startswith(("generator.", "discriminator.")))


# -- bf16-mixed and 16-mixed: every scheme trains, close to float32 ------------------------------------------------

@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_trains_20_iterations_in_bf16_and_fp16_with_finite_losses_close_to_fp32(scheme):
    start = {k: v.clone() for k, v in _module(scheme).state_dict().items()}
    runs = {}
    for name, kwargs in (("32", {}), ("bf16", {"precision": "bf16-mixed"}), ("16", {"plugins": [_fp16()]})):
        module = _module(scheme)
        make_trainer(20, **kwargs).fit(module, make_data())
        stats = module._game.game.stats
        assert math.isfinite(float(stats.generator_loss)) and math.isfinite(float(stats.discriminator_loss))
        runs[name] = state_of(module)
    assert runs["16"] and module.loss_scale is not None and module.loss_scale.skipped == 0
    moved = _moved(runs["32"], start)
    assert moved > 5e-3  # the players moved: the comparison below means something
    # Measured on this toy (MLPs, lr 1e-3 / 2e-3, 20 iterations): bf16 within ~15% of the distance moved, fp16 ~2%.
    assert _gap(runs["bf16"], runs["32"]) < 0.3 * moved, scheme
    assert _gap(runs["16"], runs["32"]) < 0.05 * moved, scheme


@pytest.mark.parametrize("loss, kwargs", [("non_saturating", {"r1_gamma": 1.0}), ("non_saturating", {"r2_gamma": 1.0}),
                                          ("wgan_gp", {"gp_weight": 10.0})])
def test_penalties_double_backward_under_autocast_match_fp32(loss, kwargs):
    torch.manual_seed(0)
    generator, discriminator = MLPGenerator(latent_dim=4, hidden_dim=32, num_layers=2), MLPDiscriminator(
        hidden_dim=32, num_layers=2)
    game_loss = get_loss(loss, **kwargs)
    real, z = torch.randn(64, 2), torch.randn(64, 4)

    def field(dtype=None, scale=1.0):
        rng = torch.Generator().manual_seed(5)
        if dtype is None:
            value = gan_field(generator, discriminator, game_loss, real, z, generator_rng=rng, loss_scale=scale)
        else:
            with torch.autocast("cpu", dtype=dtype):
                value = gan_field(generator, discriminator, game_loss, real, z, generator_rng=rng, loss_scale=scale)
        assert value.penalty is not None and float(value.penalty) > 0
        return torch.cat([g.reshape(-1) for g in value.grads])

    exact = field()
    # a power-of-two loss scale is exact in float32: the same bits, penalty included
    assert torch.equal(field(scale=2.0 ** 12), exact)
    for dtype, tolerance in ((torch.bfloat16, 0.05), (torch.float16, 0.01)):
        approx = field(dtype, scale=2.0 ** 10 if dtype == torch.float16 else 1.0)
        assert float((approx - exact).norm() / exact.norm()) < tolerance, dtype


def _bf16_on_two_ranks(rank):
    module = _module("extragradient", init_seed=rank)
    make_trainer(6, devices=2, strategy="game_ddp", precision="bf16-mixed").fit(module, make_data(batch_size=8))
    return state_of(module)


@pytest.mark.slow
def test_two_gloo_ranks_are_bit_identical_under_bf16():
    rank0, rank1 = run_distributed(_bf16_on_two_ranks, 2, timeout=300)
    assert_same_state(rank0, rank1)


# -- float16: an overflow skips the whole iteration, for both players ---------------------------------------------

class InjectInf(Callback):
    """At iteration ``iteration``, put an inf into ``player``'s local field at the ``call``-th call of the live game's
    field in that iteration (on ``rank`` only, when given); records the state after every iteration."""

    def __init__(self, iteration: int, call: int, player: int, rank: int | None = None, snapshot: bool = False):
        self.iteration, self.call, self.player, self.rank, self.snapshot = iteration, call, player, rank, snapshot
        self.states: list[dict[str, torch.Tensor]] = []
        self.scales: list[float] = []

    def on_train_batch_start(self, trainer, module, *args) -> None:
        game = module.game.game
        if self.snapshot:  # SVRE's snapshot pass: the snapshot game's field
            game = module.svre.bind(game).snapshot
        if getattr(game.field, "injecting", False):
            return
        original, calls = game.field, {"n": 0, "step": -1}

        def field(sample, players=(0, 1)):
            local = original(sample, players)
            step = trainer.global_step + 1
            if step != calls["step"]:
                calls.update(n=0, step=step)
            calls["n"] += 1
            hit = step == self.iteration and calls["n"] == self.call and self.player in players
            if hit and (self.rank is None or trainer.global_rank == self.rank):
                local[self.player][0] = local[self.player][0] + float("inf")
            return local

        field.injecting = True
        game.field = field

    def on_train_batch_end(self, trainer, module, *args) -> None:
        self.states.append(state_of(module))
        self.scales.append(module.loss_scale.scale)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("player", [0, 1])
def test_an_inf_in_one_players_field_skips_the_iteration_for_both_players_and_halves_the_scale(scheme, player):
    if scheme == "alternating" and player == 1:
        call = 2  # D's second step: its first has moved D already
    else:
        call = FIELD_CALLS[scheme]  # the last evaluation: every earlier move of the iteration must be undone
    inject = InjectInf(iteration=3, call=call, player=player)
    module = _module(scheme)
    make_trainer(5, plugins=[_fp16()], callbacks=[inject]).fit(module, make_data())
    before, at, after = inject.states[1], inject.states[2], inject.states[3]
    assert_same_state(before, at)  # parameters, averages, every optimizer state: as before iteration 3
    assert _gap(after, at) > 0  # and training goes on
    assert inject.scales == [2.0 ** 16, 2.0 ** 16, 2.0 ** 15, 2.0 ** 15, 2.0 ** 15]
    assert module.loss_scale.skipped == 1 and module.trainer.global_step == 5


class SkipWithoutInf(GANModule):
    """The oracle: at iteration ``skip_at`` consume the iteration's batch and latents (and SVRE's snapshot, if due),
    back the scale off, and move nothing - a run that never had iteration k's update."""

    skip_at = 0

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step + 1 != self.skip_at:
            return super().training_step(batch, batch_idx)
        if self.svre is not None:
            self.evaluations += self.svre.maybe_snapshot(self)
        self.split_batch(batch[0], batch[1])
        self.loss_scale.update(overflow=True)
        self._count_iteration()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_after_a_skip_the_run_equals_one_that_never_had_that_iterations_update(scheme):
    inject = InjectInf(iteration=3, call=FIELD_CALLS[scheme], player=0)
    skipped = _module(scheme)
    make_trainer(7, plugins=[_fp16()], callbacks=[inject]).fit(skipped, make_data())
    oracle = _module(scheme)
    oracle.__class__ = SkipWithoutInf
    oracle.skip_at = 3
    make_trainer(7, plugins=[_fp16()]).fit(oracle, make_data())
    assert skipped.loss_scale.state_dict() == oracle.loss_scale.state_dict()
    assert_same_state(state_of(oracle), state_of(skipped))


@pytest.mark.parametrize("scheme", ["extragradient", "svre"])
def test_resume_across_a_skip_is_bit_identical(scheme, tmp_path):
    def make(init_seed):
        return _module(scheme, init_seed=init_seed)

    import gan_fixtures

    original = gan_fixtures.make_trainer

    def trainer_with_fp16_and_an_inf(max_steps, **kwargs):
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), InjectInf(iteration=2, call=2, player=1)]
        return original(max_steps, plugins=[_fp16()], **kwargs)

    gan_fixtures.make_trainer = trainer_with_fp16_and_an_inf
    try:
        uninterrupted, resumed = resumed_and_uninterrupted(make, 3, tmp_path)
    finally:
        gan_fixtures.make_trainer = original
    saved = torch.load(sorted(tmp_path.glob("*step=3.ckpt"))[0], weights_only=True)
    assert saved["lightning_gan"]["loss_scale"]["scale"] == 2.0 ** 15  # the skip is in the checkpoint
    assert saved["lightning_gan"]["loss_scale"]["skipped"] == 1
    assert_same_state(uninterrupted, resumed)


def test_an_svre_snapshot_pass_that_overflows_is_retaken_at_half_the_scale_with_the_same_mu():
    clean = _module("svre")
    make_trainer(2, plugins=[_fp16()]).fit(clean, make_data())
    inject = InjectInf(iteration=1, call=3, player=0, snapshot=True)
    retaken = _module("svre")
    make_trainer(2, plugins=[_fp16()], callbacks=[inject]).fit(retaken, make_data())
    assert retaken.loss_scale.retaken_snapshots == 1 and retaken.loss_scale.skipped == 0
    assert retaken.loss_scale.scale == clean.loss_scale.scale / 2
    assert retaken.svre.estimator.mu_is_finite()
    # a power-of-two scale changes no finite float16 result here: the same mu and the same players
    for mu, mu_clean in zip(retaken.svre.estimator.mu, clean.svre.estimator.mu):
        for a, b in zip(mu, mu_clean):
            assert torch.equal(a, b)
    assert_same_state(state_of(clean), state_of(retaken))


def _fp16_inf_on_rank_1(rank):
    inject = InjectInf(iteration=2, call=2, player=0, rank=1)
    module = _module("extragradient", init_seed=rank)
    make_trainer(4, devices=2, strategy="game_ddp", plugins=[_fp16()], callbacks=[inject]).fit(
        module, make_data(batch_size=8))
    return {"state": state_of(module), "skipped": module.loss_scale.skipped, "scales": inject.scales,
            "unchanged": all(torch.equal(inject.states[0][k], inject.states[1][k]) for k in inject.states[0])}


@pytest.mark.slow
def test_an_inf_on_one_rank_skips_the_iteration_on_both_ranks():
    rank0, rank1 = run_distributed(_fp16_inf_on_rank_1, 2, timeout=300)
    for run in (rank0, rank1):
        assert run["skipped"] == 1 and run["unchanged"]
        assert run["scales"] == [2.0 ** 16, 2.0 ** 15, 2.0 ** 15, 2.0 ** 15]
    assert_same_state(rank0["state"], rank1["state"])


def test_a_field_that_stays_non_finite_is_a_divergence_once_the_scale_is_spent():
    from lightning_gan.game.finite import DivergenceError

    module = _module("simultaneous")
    make_trainer(1, plugins=[_fp16()]).fit(module, make_data())
    with torch.no_grad():
        next(module.discriminator.parameters()).fill_(float("nan"))
    module.loss_scale.scale = 2.0 ** -15
    with pytest.raises(DivergenceError, match="loss scale"):
        make_trainer(40, plugins=[_fp16()]).fit(module, make_data())


# -- the pieces -------------------------------------------------------------------------------------------------

def test_loss_scale_backs_off_grows_after_the_interval_and_round_trips():
    scale = GameLossScale(init_scale=8.0, growth_interval=3)
    for overflow in (False, False, True, False, False):
        scale.update(overflow)
    assert (scale.scale, scale.good_iterations, scale.skipped) == (4.0, 2, 1)
    scale.update(False)
    assert (scale.scale, scale.good_iterations) == (8.0, 0)
    copy = GameLossScale()
    copy.load_state_dict(scale.state_dict())
    assert copy.state_dict() == scale.state_dict()


def test_iteration_undo_restores_parameters_buffers_and_optimizer_state_that_appeared_or_changed():
    torch.manual_seed(0)
    player = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    optimizer = ExtraAdam(player.parameters(), lr=0.1)
    undo = IterationUndo([player], [optimizer])

    def step_on(x):
        player(x).sum().backward()

    step_on(torch.randn(8, 3))
    optimizer.extrapolation()
    optimizer.step()  # a first iteration: Adam's moments exist
    before = {k: v.clone() for k, v in player.state_dict().items()}
    moments = {k: v.clone() for k, v in optimizer.state[player[0].weight].items()}
    for _ in range(2):  # captured twice: the second capture writes into the first one's copies
        undo.capture()
        step_on(torch.randn(8, 3))
        optimizer.extrapolation()  # adds a saved point and moves the moments and the parameters
        assert "saved_param" in optimizer.state[player[0].weight]
        undo.restore()
        assert all(torch.equal(before[k], v) for k, v in player.state_dict().items())
        state = optimizer.state[player[0].weight]
        assert state.keys() == moments.keys() and all(torch.equal(moments[k], state[k]) for k in moments)


@pytest.mark.parametrize("args, field", [(("--trainer.precision", "16-true"), "trainer.precision"),
                                         (("--trainer.precision", "bf16-true"), "trainer.precision")])
def test_half_true_precisions_are_refused_in_one_line(args, field, tmp_path, capsys):
    errors, _ = fit_cli_errors(capsys, "configs/quickstart.yaml", tmp_path, "--trainer.max_steps", "2", *args)
    assert len(errors) == 1 and field in errors[0] and "bf16-mixed" in errors[0]


@pytest.mark.parametrize("kwargs, name", [({"consensus": 1.0}, "consensus"), ({"unroll_steps": 2}, "unroll_steps")])
def test_fp16_with_a_differentiable_field_is_refused_naming_it(kwargs, name):
    module = make_module("simultaneous", **kwargs)
    with pytest.raises(ValueError, match=rf"Invalid trainer.precision: '16-mixed' with {name}"):
        make_trainer(2, plugins=[_fp16()]).fit(module, make_data())
