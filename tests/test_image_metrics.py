"""In-training FID / KID / IS (ImageMetrics): the logged values are torchmetrics' values on the promised samples,
two ranks score what one rank scores, and the CLI wires it with one-line errors before training."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from ddp_harness import run_distributed
from gan_fixtures import make_trainer

from lightning_gan.callbacks import ImageMetrics
from lightning_gan.cli import main
from lightning_gan.data import DigitsDataModule, GaussianMixtureDataModule, MNISTDataModule
from lightning_gan.metrics import build_image_metrics, default_extractor
from lightning_gan.models import MLPDiscriminator, MLPGenerator
from lightning_gan.module import GANModule
from lightning_gan.optim.factory import OptimizerConfig

pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")

REPO = Path(__file__).resolve().parents[1]
DIGITS_TINY = REPO / "tests" / "configs" / "digits_tiny.yaml"
NUM_SAMPLES = 150  # <= the 180 held-out 8x8 digits, so the held-out split can be the real side


def _module() -> GANModule:
    torch.manual_seed(0)
    adam = OptimizerConfig(rule="adam", lr=1e-3, momentum=0.5, beta2=0.9)
    return GANModule(MLPGenerator(latent_dim=8, hidden_dim=32, num_layers=2, activation="silu", image_shape=[1, 8, 8]),
                     MLPDiscriminator(input_dim=64, hidden_dim=32, num_layers=2, activation="silu"),
                     scheme="extragradient", g_optimizer=adam, d_optimizer=adam, ema_decay=0.9)


def _callback(**kwargs) -> ImageMetrics:
    kwargs.setdefault("every_n_steps", 2)
    kwargs.setdefault("real_split", "test")  # the held-out split, asked for (the default is the training set)
    return ImageMetrics(num_samples=NUM_SAMPLES, metrics=["fid", "kid", "is"], generators=["live", "ema", "uniform"],
                        kid_subset_size=50, batch_size=64, **kwargs)


def _fit(steps: int, callback: ImageMetrics, batch_size: int = 16, **trainer_kwargs) -> GANModule:
    module = _module()
    trainer = make_trainer(steps, callbacks=[callback], **trainer_kwargs)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=batch_size))
    return module


def test_the_callback_logs_torchmetrics_values_on_the_held_out_images_and_fixed_latents():
    callback = _callback()
    module = _fit(4, callback)
    assert [row["step"] for row in callback.history] == [2.0, 4.0]  # every 2 iterations; step 4 is not scored twice
    assert callback.history[-1]["val/evaluations"] == 8.0  # extragradient: 2 F-evaluations per iteration
    assert callback.resolved_extractor == "digits"

    # The same numbers, computed independently from the promised samples.
    data = DigitsDataModule()
    data.setup("fit")
    held_out = torch.stack([data.val_set[i][0] for i in range(len(data.val_set))])
    real = data.sample_real(NUM_SAMPLES, split="test")
    assert all((held_out == image).all(dim=(1, 2, 3)).any() for image in real)  # held-out images, no training ones
    z = torch.randn(NUM_SAMPLES, 8, generator=torch.Generator().manual_seed(callback.seed + 1))
    last = callback.history[-1]
    for which in ("live", "ema", "uniform"):
        generator = module.generator_for(which).eval()
        with torch.no_grad():
            fake = generator(z)
        metrics = build_image_metrics(("fid", "kid", "is"), "digits", kid_subset_size=50)
        metrics["fid"].update(real, real=True)
        metrics["fid"].update(fake, real=False)
        metrics["kid"].update(real, real=True)
        metrics["kid"].update(fake, real=False)
        metrics["is"].update(fake)
        assert last[f"val/fid_{which}"] == pytest.approx(float(metrics["fid"].compute()), rel=1e-5)
        torch.manual_seed(callback.seed + 2)  # the callback seeds KID's subsets and IS's split permutation
        assert last[f"val/kid_{which}"] == pytest.approx(float(metrics["kid"].compute()[0]), rel=1e-5)
        torch.manual_seed(callback.seed + 2)
        assert last[f"val/is_{which}"] == pytest.approx(float(metrics["is"].compute()[0]), rel=1e-5)
    # Different generators give different scores: each one is really evaluated.
    assert last["val/fid_live"] != last["val/fid_ema"] != last["val/fid_uniform"]


def test_a_run_that_ends_between_evaluations_is_scored_at_its_last_step():
    callback = _callback(every_n_steps=4)
    _fit(3, callback, max_epochs=1, limit_train_batches=3)
    assert [row["step"] for row in callback.history] == [3.0]  # scored at train end (3 is not a multiple of 4)


def test_averages_the_run_does_not_keep_are_skipped():
    callback = ImageMetrics(every_n_steps=1, num_samples=NUM_SAMPLES, generators=["live", "uniform"])
    module = _module()
    module.generator_averages.uniform = None  # as with uniform_average: false
    make_trainer(1, callbacks=[callback]).fit(module, datamodule=DigitsDataModule(batch_size=16))
    assert set(callback.history[0]) == {"step", "val/evaluations", "val/fid_live", "val/metrics_seconds"}


def test_the_default_extractor_follows_the_data_module():
    assert default_extractor(MNISTDataModule(root="/nowhere")) == "mnist"
    assert default_extractor(MNISTDataModule(root="/nowhere", dataset="fashion-mnist")) == "fashion-mnist"
    assert default_extractor(DigitsDataModule()) == "digits"
    assert default_extractor(GaussianMixtureDataModule()) == "inception"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"every_n_steps": -1}, "Invalid every_n_steps: -1"),
    ({"num_samples": 1}, "Invalid num_samples: 1"),
    ({"metrics": ["fid", "lpips"]}, "Invalid metrics: ['fid', 'lpips']"),
    ({"generators": ["best"]}, "Invalid generators: ['best']"),
    ({"metrics": ["kid"], "num_samples": 100, "kid_subset_size": 1000}, "Invalid kid_subset_size: 1000"),
])
def test_bad_settings_are_refused_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ImageMetrics(**kwargs)


def test_more_samples_than_images_is_refused_naming_both():
    callback = ImageMetrics(every_n_steps=1, num_samples=5000)
    with pytest.raises(ValueError, match="Invalid num_samples: 5000; the data module has only 1617 images"):
        _fit(1, callback)


# -- two ranks -----------------------------------------------------------------------------------------------------

def _two_rank_child(rank: int) -> list[dict[str, float]]:
    torch.set_num_threads(1)
    callback = _callback()
    _fit(2, callback, devices=2, strategy="game_ddp", batch_size=8)
    return [{k: v for k, v in row.items() if k != "val/metrics_seconds"} for row in callback.history]


@pytest.mark.slow
def test_two_ranks_score_what_one_rank_scores():
    rank0, rank1 = run_distributed(_two_rank_child, 2)
    assert rank0 == rank1  # compute() syncs the states: every rank logs the same numbers
    one = _callback()
    _fit(2, one, batch_size=16)  # 1 rank x 16 = 2 ranks x 8: the same players up to float summation order
    assert [row["step"] for row in rank0] == [row["step"] for row in one.history] == [2.0]
    for key, value in one.history[0].items():
        if key.startswith("val/fid"):  # sums: independent of how the samples are split over ranks
            assert rank0[0][key] == pytest.approx(value, rel=1e-4), key
        elif key.startswith(("val/is_", "val/kid_")) and "_std" not in key:
            # The same features gathered in rank order, so KID's subsets and IS's splits hold other samples.
            assert rank0[0][key] == pytest.approx(value, rel=0.25), key


# -- the command line ------------------------------------------------------------------------------------------------



def test_the_cli_writes_the_metrics_every_n_steps_whatever_the_logging_interval(tmp_path, cli_process_state):
    main(["fit", "--config", str(DIGITS_TINY), f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=10",
          "--metrics.every_n_steps=5", "--trainer.log_every_n_steps=100"])
    with open(tmp_path / "version_0" / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("val/fid_ema")]
    assert [(row["step"], row["val/evaluations"]) for row in rows] == [("5", "10.0"), ("10", "20.0")]
    for row in rows:
        for key in ("val/fid_live", "val/fid_uniform", "val/fid_ema", "val/kid_ema", "val/is_ema"):
            assert math.isfinite(float(row[key])) and float(row[key]) != 0.0, key


def test_the_cli_refuses_missing_inception_weights_before_training(tmp_path, cli_process_state, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("LIGHTNING_GAN_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(DIGITS_TINY), f"--trainer.default_root_dir={tmp_path}",
              "--metrics.extractor=inception", f"--metrics.weights={tmp_path / 'pt_inception.pth'}"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("lightning-gan: error: ")
    assert str(tmp_path / "pt_inception.pth") in error[0]
    assert not (tmp_path / "checkpoints").exists()  # nothing trained


def test_the_cli_refuses_a_bad_metric_in_one_line(tmp_path, cli_process_state, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(DIGITS_TINY), f"--trainer.default_root_dir={tmp_path}",
              "--metrics.metrics=[fid,lpips]"])
    assert exit_.value.code == 2
    assert "Invalid metrics: ['fid', 'lpips']" in capsys.readouterr().err

