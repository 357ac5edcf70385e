"""The trainer on one process: every scheme runs, counts iterations, validates its config, resumes exactly."""

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from gan_fixtures import SCHEMES, make_data, make_module, make_trainer, state_of
from lightning_gan.optim import ExtraAdam, ExtraSGD, OptimisticAdam, PastExtraSGD
from lightning_gan.optim.factory import OptimizerConfig

EVALUATIONS_PER_STEP = {"simultaneous": 1, "alternating": 3, "extragradient": 2, "past_extragradient": 1,
                        "optimistic": 1}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_one_global_step_is_one_game_iteration(scheme):
    module = make_module(scheme)
    trainer = make_trainer(max_steps=7)
    trainer.fit(module, make_data())
    assert trainer.global_step == 7
    assert module.evaluations == 7 * EVALUATIONS_PER_STEP[scheme]
    draws = {"alternating": 3, "extragradient": 2}.get(scheme, 1)
    assert module.images_seen == 7 * 16 * draws
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_scheme_picks_the_optimizer_family():
    assert [type(o) for o in make_module("extragradient").configure_optimizers()] == [ExtraAdam, ExtraSGD]
    assert type(make_module("past_extragradient").configure_optimizers()[1]) is PastExtraSGD
    assert type(make_module("optimistic").configure_optimizers()[0]) is OptimisticAdam


def test_players_move_and_averages_follow():
    module = make_module("extragradient", ema_decay=0.5)
    before = [p.detach().clone() for p in module.generator.parameters()]
    make_trainer(max_steps=3).fit(module, make_data())
    after = list(module.generator.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    assert module.generator_averages.uniform.n_averaged.item() == 3
    ema = list(module.generator_for("ema").parameters())
    assert any(not torch.equal(a, b) for a, b in zip(ema, after))


def test_uniform_average_is_the_mean_of_the_iterates():
    from lightning.pytorch.callbacks import Callback

    class Record(Callback):
        def __init__(self):
            self.iterates = []

        def on_train_batch_end(self, trainer, pl_module, *args):
            self.iterates.append([p.detach().clone() for p in pl_module.generator.parameters()])

    module, record = make_module("simultaneous"), Record()
    make_trainer(max_steps=5, callbacks=[record]).fit(module, make_data())
    for k, average in enumerate(module.generator_for("uniform").parameters()):
        mean = torch.stack([iterate[k] for iterate in record.iterates]).mean(0)
        torch.testing.assert_close(average, mean, rtol=1e-5, atol=1e-6)


def test_split_batch_ties_each_micro_batch_to_its_latents():
    module = make_module("extragradient", accumulation=2)
    trainer = make_trainer(max_steps=1)
    module.trainer = trainer  # world size 1, rank 0
    real = torch.arange(16.0).reshape(8, 2)
    samples = module.split_batch(real)
    assert len(samples) == 2 and all(len(s) == 2 for s in samples)
    assert torch.equal(torch.cat([r for s in samples for r, _ in s]), real)
    assert all(z.shape == (2, 4) for s in samples for _, z in s)
    with pytest.raises(ValueError, match="cannot be split into 2 draws x 2 micro-batches"):
        module.split_batch(torch.zeros(6, 2))


@pytest.mark.parametrize("field,kwargs,message", [
    ("g_optimizer.lr", dict(g_optimizer=OptimizerConfig(lr=-1.0)), r"g_optimizer: Invalid lr: -1.0"),
    ("d_optimizer.momentum", dict(d_optimizer=OptimizerConfig(momentum=1.0)), r"d_optimizer: Invalid beta1: 1.0"),
    ("scheme", dict(scheme="adam"), r"Invalid scheme: 'adam'; expected one of simultaneous, alternating"),
    ("n_dis", dict(scheme="alternating", n_dis=0), r"Invalid n_dis: 0; expected an integer >= 1"),
    ("accumulation", dict(accumulation=0), r"Invalid accumulation: 0"),
    ("weight_clip", dict(weight_clip=-0.01), r"Invalid weight_clip: -0.01"),
    ("ema_decay", dict(ema_decay=1.5), r"Invalid ema_decay: 1.5"),
])
def test_bad_config_fails_before_training_naming_the_field(field, kwargs, message):
    scheme = kwargs.pop("scheme", "simultaneous")
    with pytest.raises(ValueError, match=message):
        make_module(scheme, **kwargs)


def test_lightning_ddp_strategy_is_refused_with_the_fix():
    from lightning.pytorch.strategies import DDPStrategy

    module = make_module()
    trainer = make_trainer(max_steps=1)
    module.trainer = trainer
    trainer.strategy.__class__ = DDPStrategy  # what a user gets with strategy="ddp"
    with pytest.raises(ValueError, match="use strategy='game_ddp'"):
        module.setup("fit")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_resume_mid_epoch_equals_never_stopping(scheme, tmp_path):
    """Train 2N iterations saving at N; resume a fresh module from N to 2N: bit-identical on CPU."""
    n = 10  # 512 samples / (16 x draws) iterations per epoch: the runs cross epoch boundaries mid-way
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=n, save_top_k=-1, save_last=False)
    uninterrupted = make_module(scheme, ema_decay=0.9, average_discriminator=True)
    make_trainer(max_steps=2 * n, callbacks=[checkpoint], enable_checkpointing=True).fit(uninterrupted, make_data())
    saved = sorted(tmp_path.glob(f"*step={n}.ckpt"))
    assert len(saved) == 1, sorted(tmp_path.iterdir())

    resumed = make_module(scheme, init_seed=123, ema_decay=0.9, average_discriminator=True)
    trainer = make_trainer(max_steps=2 * n)
    trainer.fit(resumed, make_data(), ckpt_path=saved[0])
    assert trainer.global_step == 2 * n
    expected, actual = state_of(uninterrupted), state_of(resumed)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert resumed.evaluations == uninterrupted.evaluations
