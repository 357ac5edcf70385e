"""``lightning-gan evaluate``: scores every generator a checkpoint keeps, writes them to JSON, reuses cached real
features, and refuses bad input (including missing Inception weights, before any data) with one line and exit 2."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from gan_fixtures import fit_in_process

from lightning_gan import evaluate
from lightning_gan.callbacks.run_config import CONFIG_KEY
from lightning_gan.cli import main
from lightning_gan.data import DigitsDataModule, GameDataModule, GaussianMixtureDataModule
from lightning_gan.metrics import ENV_INCEPTION_WEIGHTS, INCEPTION_FILENAME, FidelityDigitExtractor, resolve_extractor
from lightning_gan.module import GANModule

pytestmark = [
    pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning"),  # torchdata 0.11 on torch 2.14
    pytest.mark.filterwarnings("ignore:(?s).*skip_none parameter was deprecated"),  # Lightning's SaveConfigCallback
    pytest.mark.filterwarnings("ignore:Metric `.*` will save all extracted features:UserWarning"),
]

REPO = Path(__file__).resolve().parents[1]
TOY_RING = REPO / "tests" / "configs" / "toy_ring_tiny.yaml"
# 8x8 digits with MLP players: a real image run in a few seconds, scored by the shipped digits classifier.
DIGITS_TINY = """
seed_everything: 0
trainer: {max_steps: 10, log_every_n_steps: 5, enable_progress_bar: false, enable_model_summary: false}
model:
  generator:
    class_path: lightning_gan.models.MLPGenerator
    init_args: {latent_dim: 16, hidden_dim: 64, num_layers: 2, image_shape: [1, 8, 8]}
  discriminator:
    class_path: lightning_gan.models.MLPDiscriminator
    init_args: {input_dim: 64, hidden_dim: 64, num_layers: 2}
  scheme: simultaneous
  uniform_average: true
  ema_decay: 0.9
data:
  class_path: lightning_gan.data.DigitsDataModule
  init_args: {batch_size: 32}
samples: {every_n_steps: 0, generators: []}
checkpoint: {every_n_train_steps: 10}
"""


def _fit(root: Path, config: Path) -> Path:
    """A tiny ``fit`` in this process (10 iterations); returns its last.ckpt."""
    return fit_in_process(root, config, "--trainer.max_steps=10", "--checkpoint.every_n_train_steps=10")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits_run")
    config = root.parent / f"{root.name}.yaml"
    config.write_text(DIGITS_TINY)
    return _fit(root, config)


@pytest.fixture(scope="module")
def ring_run(tmp_path_factory) -> Path:
    return _fit(tmp_path_factory.mktemp("ring_run"), TOY_RING)


@pytest.fixture(autouse=True)
def _offline(offline_and_clean):
    """Every test here runs offline and clean (conftest's ``offline_and_clean``)."""


def run_evaluate(ckpt: Path, *args: str) -> dict:
    main(["evaluate", "--ckpt", str(ckpt), *args])
    return json.loads(Path(ckpt).with_name(f"{Path(ckpt).stem}.eval.json").read_text())


def expect_error(capsys, *args: str) -> str:
    """Runs ``lightning-gan evaluate ARGS``, expects exit 2 and exactly one error line; returns that line."""
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", *args])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("lightning-gan: error:")]
    assert len(errors) == 1, captured.err
    assert "Traceback" not in captured.err and not captured.out
    return errors[0]


# -- results ----------------------------------------------------------------------------------------------

LINE = re.compile(r"^(live|uniform|ema): fid \d+\.\d\d  kid -?[\d.e+-]+ ± [\d.e+-]+  is \d+\.\d\d ± \d+\.\d\d  "
                  r"\(N=200, extractor digits, step 10\)$")


def test_every_kept_generator_gets_a_line_and_finite_values_in_the_json(digits_run, capsys):
    report = run_evaluate(digits_run, "--num-samples", "200", "--seed", "3")

    lines = capsys.readouterr()
    assert [m.group(1) for m in map(LINE.match, lines.out.splitlines()) if m] == ["live", "uniform", "ema"], lines.out
    assert f"config stored in {digits_run.resolve()}" in lines.err  # says which config it uses
    assert report["checkpoint"] == str(digits_run.resolve()) and report["global_step"] == 10
    assert report["evaluations"] == 10 and report["images_seen"] == 10 * 32  # simultaneous: 1 F-evaluation / step
    assert (report["extractor"], report["num_samples"], report["seed"], report["real_split"]) == ("digits", 200, 3,
                                                                                                  "train")
    assert report["weights"] == str(resolve_extractor("digits").weights) and re.fullmatch(r"[0-9a-f]{12}",
                                                                                          report["weights_hash"])
    assert report["kid_subset_size"] == 200  # min(1000, N)
    for values in report["results"].values():
        assert set(values) == {"fid", "kid_mean", "kid_std", "is_mean", "is_std"}
        assert all(math.isfinite(v) for v in values.values()) and values["fid"] > 0 and values["is_mean"] >= 1


def test_real_samples_come_from_the_held_out_split_when_asked(digits_run, capsys, tmp_path):
    out = tmp_path / "elsewhere" / "results.json"
    main(["evaluate", "--ckpt", str(digits_run), "--num-samples", "100", "--metrics", "fid", "--generator", "ema",
          "--real-split", "test", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["real_split"] == "test" and list(report["results"]) == ["ema"]
    assert "-test-n100-" in report["real_cache_name"]
    datamodule = DigitsDataModule()
    torch.testing.assert_close(datamodule.sample_real(5, split="test"), datamodule.val_set.data[
        torch.randperm(len(datamodule.val_set), generator=torch.Generator().manual_seed(0))[:5]])


def test_a_second_evaluation_reuses_the_cached_real_features(digits_run, capsys, tmp_path, monkeypatch):
    seen: list[int] = []
    forward = FidelityDigitExtractor.forward
    monkeypatch.setattr(FidelityDigitExtractor, "forward", lambda self, x: seen.append(len(x)) or forward(self, x))
    cache = tmp_path / "cache"
    args = ("--num-samples", "150", "--generator", "ema", "--cache-dir", str(cache))

    first = run_evaluate(digits_run, *args)
    assert sum(seen) == 150 + 150  # generated and real images
    entries = sorted(p.name for p in cache.iterdir())
    assert entries and all(name.startswith(first["real_cache_name"]) for name in entries)
    assert first["real_cache_name"].startswith("lightning-gan-DigitsDataModule-train-n150-seed0-")

    seen.clear()
    second = run_evaluate(digits_run, *args)
    assert sum(seen) == 150  # only the generated images went through the extractor
    assert second["results"] == first["results"]


def test_real_data_scored_against_itself_is_at_distance_zero():
    digits = DigitsDataModule()
    real = digits.sample_real(300)
    scores = evaluate.Scorer(("fid", "is"), resolve_extractor("digits"), is_splits=2)(real, real)
    assert abs(scores["fid"]) < 1e-3
    assert scores["is_mean"] > 8  # the classifier is sure of real digits, and they cover the 10 classes

    ring = GaussianMixtureDataModule(num_samples=2000, num_val_samples=0)
    points = ring.sample_real(1000)
    toy = evaluate.Scorer(evaluate.TOY_METRICS, modes=ring.modes, std=ring.std)(points, points)
    assert toy["modes_covered"] == 8 and toy["high_quality"] > 0.97
    assert abs(toy["mmd2"]) < 1e-2 and abs(toy["energy"]) < 1e-2  # -O(1/N): x_i = y_i pairs count as cross pairs


def test_batched_sampling_draws_exactly_what_module_sample_draws(digits_run):
    module, _ = evaluate.load_run(digits_run, evaluate.find_config(digits_run))
    evaluate.load_weights(module, digits_run, evaluate.find_config(digits_run))
    torch.testing.assert_close(module.sample(70, which="ema", seed=5, batch_size=32),
                               module.sample(70, which="ema", seed=5))


def test_python_dash_m_evaluates_a_toy_run_with_the_mixture_metrics(ring_run):
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "MASTER_ADDR")}
    result = subprocess.run([sys.executable, "-m", "lightning_gan", "evaluate", "--ckpt", str(ring_run),
                             "--num-samples", "500"], capture_output=True, text=True, cwd=REPO, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["live", "ema"]  # the tiny ring run keeps no uniform average
    toy_line = re.compile(r"modes \d/8  high quality \d+\.\d%  mmd2 -?\d\.\d{4}  energy -?\d\.\d{4}  "
                          r"\(N=500, step 10\)$")
    assert all(toy_line.search(line) for line in lines), lines
    report = json.loads(ring_run.with_name("last.eval.json").read_text())
    assert report["extractor"] is None and report["data"] == "GaussianMixtureDataModule"
    assert all(math.isfinite(v) for values in report["results"].values() for v in values.values())


# -- bad input ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("run", "args", "named"), [
    (None, ["--ckpt", "/nonexistent/last.ckpt"], "Checkpoint /nonexistent/last.ckpt not found"),
    ("digits", ["--metrics", "fid,precision"], "Invalid metrics: ['precision']"),
    ("digits", ["--metrics", "modes"], "Invalid metrics for image data: ['modes']"),
    ("ring", ["--metrics", "fid"], "Invalid metrics for GaussianMixtureDataModule (2-D points): ['fid']"),
    ("ring", ["--generator", "ema,uniform"], "Invalid generator: ['uniform']; this run keeps live, ema"),
    ("digits", ["--generator", "best"], "Invalid generator: ['best']"),
    ("digits", ["--num-samples", "50", "--kid-subset-size", "100"], "Invalid --kid-subset-size: 100"),
    ("ring", ["--real-split", "test"], "Invalid split: 'test'; GaussianMixtureDataModule holds no held-out samples"),
    ("digits", ["--model.scheme=sideways"], "Invalid scheme: 'sideways'"),
    ("digits", ["--trainer.max_steps=5"], "unrecognized arguments: --trainer.max_steps=5"),
    ("digits", ["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
], ids=["missing-ckpt", "unknown-metric", "toy-metric-on-images", "image-metric-on-points", "average-not-kept",
        "unknown-generator", "kid-subset-over-n", "no-held-out-split", "bad-override", "not-an-override", "device"])
def test_bad_input_fails_with_one_line_and_exit_2(run, args, named, digits_run, ring_run, capsys, tmp_path):
    ckpt = {"digits": digits_run, "ring": ring_run, None: None}[run]
    out = tmp_path / "results.json"
    error = expect_error(capsys, *(["--ckpt", str(ckpt)] if ckpt else []), "--out", str(out), *args)
    assert named in error, error
    assert not out.exists()


def test_a_config_that_does_not_match_the_checkpoint_is_refused_and_the_newest_version_is_picked(digits_run,
                                                                                                  tmp_path, capsys):
    """A checkpoint that stores no config (written before configs were stored) falls back on the run folder."""
    run = tmp_path / "run"
    shutil.copytree(digits_run.parents[1] / "version_0", run / "version_0")
    (run / "checkpoints").mkdir()
    ckpt = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(digits_run, weights_only=True)
    del checkpoint[CONFIG_KEY]
    torch.save(checkpoint, ckpt)
    config = yaml.safe_load((run / "version_0" / "config.yaml").read_text())
    config["model"]["generator"]["init_args"]["hidden_dim"] = 32
    (run / "version_10").mkdir()
    (run / "version_10" / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "version_9").mkdir()  # a version without config (e.g. logs only) does not count

    error = expect_error(capsys, "--ckpt", str(ckpt), "--num-samples", "50")
    newest = run / "version_10" / "config.yaml"
    assert f"Checkpoint {run / 'checkpoints' / 'last.ckpt'} does not match config {newest}" in error
    assert "size mismatch for generator.net.0.weight" in error and "--config" in error

    assert f"Config {tmp_path / 'none.yaml'} not found" in expect_error(capsys, "--ckpt", str(ckpt), "--config",
                                                                      str(tmp_path / "none.yaml"))
    report = run_evaluate(Path(ckpt), "--num-samples", "50", "--metrics", "fid", "--config",
                          str(run / "version_0" / "config.yaml"))
    assert report["config"] == str(run / "version_0" / "config.yaml")


@pytest.fixture
def too_late(monkeypatch):
    """Makes loading weights, loading data and sampling fail the test: errors must come before all of them."""
    def refuse(*args, **kwargs):
        raise AssertionError("the error should have come before loading weights or data, or sampling")
    for target, name in ((evaluate, "load_weights"), (GANModule, "sample"), (GameDataModule, "setup")):
        monkeypatch.setattr(target, name, refuse)


def test_missing_or_fake_inception_weights_fail_at_once_naming_the_file(digits_run, tmp_path, capsys, too_late):
    missing = tmp_path / "nowhere" / INCEPTION_FILENAME
    error = expect_error(capsys, "--ckpt", str(digits_run), "--extractor", "inception", "--weights", str(missing))
    assert f"Inception weights not found: the path given, {missing}, is not a file" in error

    fake = tmp_path / "fake_inception.pth"
    fake.write_bytes(b"not a state dict")
    error = expect_error(capsys, "--ckpt", str(digits_run), "--extractor", "inception", "--weights", str(fake))
    assert f"Invalid Inception weights file {fake}: it cannot be read as a PyTorch state dict" in error

    # Data without a digit classifier defaults to Inception: looked for in torch hub's (empty) cache, at once.
    config = yaml.safe_load((digits_run.parents[1] / "version_0" / "config.yaml").read_text())
    config["data"] = {"class_path": "lightning_gan.data.ImageFolderDataModule",
                      "init_args": {"root": str(tmp_path / "images"), "image_size": 8, "channels": 1}}
    (tmp_path / "folder.yaml").write_text(yaml.safe_dump(config))
    error = expect_error(capsys, "--ckpt", str(digits_run), "--config", str(tmp_path / "folder.yaml"))
    cache = tmp_path / "torch_home" / "hub" / "checkpoints" / INCEPTION_FILENAME
    assert f"no path given, {ENV_INCEPTION_WEIGHTS} is unset, {cache} does not exist" in error
