"""SVRE: the estimator's algebra on toys, and the svre scheme in the trainer (one process)."""

import copy
import csv
import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from gan_fixtures import make_data, make_module, make_trainer, state_of
from lightning_gan.game.toys import StochasticBilinear
from lightning_gan.optim.svre import SnapshotTrigger, SVRGEstimator
from lightning_gan.variance_reduction import SVREConfig


def estimator_at_snapshot(game):
    estimator = SVRGEstimator(game, copy.deepcopy(game), reduce_sum=lambda tensors: None)
    estimator.take_snapshot([(torch.tensor([i]), 1) for i in range(game.num_samples)])
    return estimator


def estimate(estimator, sample):
    corrected = estimator.correct(estimator.game.field(sample), sample)
    estimator.add_mean(corrected, (0, 1))
    return corrected


def test_mu_is_the_full_data_field_at_the_snapshot():
    game = StochasticBilinear(d=10, n=20, seed=0)
    estimator = estimator_at_snapshot(game)
    for mu, full in zip(estimator.mu, game.field(None)):
        torch.testing.assert_close(mu[0], full[0], rtol=1e-12, atol=1e-14)


def test_estimate_at_the_snapshot_is_exactly_mu_whatever_the_sample():
    game = StochasticBilinear(d=10, n=20, seed=0)
    estimator = estimator_at_snapshot(game)
    for i in (0, 7, 19):
        for d, mu in zip(estimate(estimator, torch.tensor([i])), estimator.mu):
            torch.testing.assert_close(d[0], mu[0], rtol=0, atol=1e-15)


def test_estimate_is_unbiased_away_from_the_snapshot():
    game = StochasticBilinear(d=10, n=20, seed=0)
    estimator = estimator_at_snapshot(game)
    with torch.no_grad():
        for player in game.players:
            for p in player.parameters():
                p.add_(torch.randn_like(p))
    mean = [torch.zeros(10, dtype=torch.float64), torch.zeros(10, dtype=torch.float64)]
    for i in range(20):
        for m, d in zip(mean, estimate(estimator, torch.tensor([i]))):
            m += d[0] / 20
    for m, full in zip(mean, game.field(None)):
        torch.testing.assert_close(m, full[0], rtol=1e-12, atol=1e-12)


def test_snapshot_trigger_is_reproducible_and_fires_at_the_first_iteration():
    a, b = SnapshotTrigger(probability=0.2, seed=5), SnapshotTrigger(probability=0.2, seed=5)
    fires_a = [a(t) for t in range(200)]
    assert fires_a == [b(t) for t in range(200)]
    assert fires_a[0] and 20 <= sum(fires_a) <= 60
    every = SnapshotTrigger(every=7)
    assert [t for t in range(30) if every(t)] == [0, 7, 14, 21, 28]
    with pytest.raises(ValueError, match="set exactly one"):
        SnapshotTrigger(probability=0.1, every=3)


@pytest.mark.parametrize("kwargs,message", [
    (dict(svre=SVREConfig(snapshot_probability=0.0)), r"Invalid svre.snapshot_probability: 0.0"),
    (dict(svre=SVREConfig(snapshot_every=0)), r"Invalid svre.snapshot_every: 0"),
    (dict(svre=SVREConfig(snapshot_every=3, snapshot_probability=0.5)), r"not both"),
    (dict(latent_bank_factor=0), r"Invalid latent_bank_factor: 0"),
])
def test_bad_svre_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_module("svre", **kwargs)


def test_svre_settings_with_another_scheme_are_refused():
    with pytest.raises(ValueError, match="apply to scheme 'svre' only"):
        make_module("extragradient", svre=SVREConfig())


def test_svre_trains_takes_snapshots_and_reduces_variance():
    module = make_module("svre", svre=SVREConfig(snapshot_every=5, variance_every=4))
    trainer = make_trainer(12)
    trainer.fit(module, make_data())
    assert trainer.global_step == 12
    assert module.snapshot_passes == 3  # iterations 0, 5, 10
    assert module.evaluations == 4 * 12 + 3 * 512 // 16  # 4 per iteration, a pass over 512 samples per snapshot
    metrics = trainer.callback_metrics
    assert metrics["svre/variance_svre"] < metrics["svre/variance_plain"]
    assert all(torch.isfinite(p).all() for p in module.parameters())


@pytest.mark.parametrize("kwargs", [
    dict(svre=SVREConfig(snapshot_every=7)),
    dict(svre=SVREConfig(snapshot_probability=0.15), latent_bank_factor=2),
])
def test_svre_resume_mid_epoch_equals_never_stopping(kwargs, tmp_path):
    n = 10
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=n, save_top_k=-1)
    uninterrupted = make_module("svre", **kwargs)
    make_trainer(2 * n, callbacks=[checkpoint], enable_checkpointing=True).fit(uninterrupted, make_data())
    (saved,) = tmp_path.glob(f"*step={n}.ckpt")
    resumed = make_module("svre", init_seed=99, **kwargs)
    make_trainer(2 * n).fit(resumed, make_data(), ckpt_path=saved)
    assert resumed.snapshot_passes == uninterrupted.snapshot_passes >= 2
    expected, actual = state_of(uninterrupted), state_of(resumed)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    for mu, mu_resumed in zip(uninterrupted.svre.estimator.mu, resumed.svre.estimator.mu):
        for a, b in zip(mu, mu_resumed):
            assert torch.equal(a, b)


SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.mark.slow
def test_mnist_svre_config_trains_with_finite_losses(tmp_path, monkeypatch):
    """configs/mnist_svre.yaml on a 1024-image slice of the local MNIST files, through the CLI (FID included)."""
    from lightning_gan.cli import main

    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[1] / "configs" / "mnist_svre.yaml"
    main(["fit", "--config", str(config), "--data.init_args.root", str(SHARED_MNIST),
          "--data.init_args.num_train_samples", "1024", "--trainer.max_steps", "12",
          "--trainer.log_every_n_steps", "2", "--trainer.enable_progress_bar", "false",
          "--model.svre.variance_every", "4", "--torch_num_threads", "1", "--metrics.num_samples", "500"])
    (metrics,) = tmp_path.glob("runs/mnist_svre/version_0/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    losses = [float(r[k]) for r in rows for k in ("train/loss_generator", "train/loss_discriminator") if r.get(k)]
    assert len(losses) >= 10 and all(math.isfinite(v) for v in losses)
    snapshots = [float(r["svre/snapshot_passes"]) for r in rows if r.get("svre/snapshot_passes")]
    assert snapshots and snapshots[-1] >= 1
    variance = [(float(r["svre/variance_svre"]), float(r["svre/variance_plain"])) for r in rows
                if r.get("svre/variance_svre")]
    assert variance and all(math.isfinite(a) and math.isfinite(b) for a, b in variance)
    fids = [float(r[f"val/fid_{g}"]) for r in rows for g in ("live", "uniform", "ema") if r.get(f"val/fid_{g}")]
    assert len(fids) == 3 and all(math.isfinite(v) and v > 0 for v in fids)  # scored once, at the last step
