"""``lightning-gan sample`` writes the files it names; ``--help`` lists exactly the working subcommands; ``evaluate``
and ``sample`` rebuild a run from the config stored in its checkpoint, whatever other runs left in the folder."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from gan_fixtures import fit_in_process
from test_evaluate import DIGITS_TINY, TOY_RING

from lightning_gan.callbacks.run_config import CONFIG_KEY
from lightning_gan.cli import main

pytestmark = [
    pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning"),  # torchdata 0.11 on torch 2.14
    pytest.mark.filterwarnings("ignore:(?s).*skip_none parameter was deprecated"),  # Lightning's SaveConfigCallback
]

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
LINE = "lightning-gan sample: wrote "


def _fit(root: Path, config: Path, *args: str) -> Path:
    """A tiny ``fit`` in this process, without sample grids; returns its last.ckpt."""
    return fit_in_process(root, config, "--trainer.enable_progress_bar=false", "--samples.every_n_steps=0",
                          "--samples.generators=[]", *args)


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory) -> Path:
    return _fit(tmp_path_factory.mktemp("quickstart"), QUICKSTART, "--trainer.max_steps=20")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    config = root.parent / f"{root.name}.yaml"
    config.write_text(DIGITS_TINY)
    return _fit(root, config)


@pytest.fixture(autouse=True)
def console_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-gan"])  # as a console script sees it


def run_sample(capsys, ckpt: Path, *args: str) -> Path:
    """Runs ``lightning-gan sample``; checks it prints one line naming what it wrote, and returns that path."""
    main(["sample", "--ckpt", str(ckpt), *args])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith(LINE), out
    written = Path(out[0].removeprefix(LINE).split(" (")[0])
    assert written.exists(), out
    return written


def expect_error(capsys, *args: str) -> str:
    """Runs ``lightning-gan ARGS``, expects exit 2 and one error line only; returns it."""
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert not captured.out and "Traceback" not in captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lightning-gan: error: "), captured.err
    return lines[0]


# -- sample -------------------------------------------------------------------------------------------------

def test_grid_and_npz_of_2d_points_default_to_ema(quickstart_run, capsys, tmp_path):
    grid = run_sample(capsys, quickstart_run, "--num_samples", "50", "--out", str(tmp_path))
    assert grid == tmp_path / "ema_step20.png" and Image.open(grid).size == (400, 400)  # the scatter plot

    npz = run_sample(capsys, quickstart_run, "--num_samples", "50", "--format", "npz", "--generator", "live")
    assert npz == quickstart_run.resolve().with_name("last_samples") / "live_step20.npz"
    with np.load(npz) as arrays:
        assert set(arrays) == {"samples"} and arrays["samples"].shape == (50, 2)
        again = np.load(run_sample(capsys, quickstart_run, "--num_samples", "50", "--format", "npz", "--generator",
                                   "live", "--out", str(tmp_path)))["samples"]
        np.testing.assert_array_equal(arrays["samples"], again)  # the seed alone fixes the samples


def test_images_as_grid_as_one_png_each_and_as_npz(digits_run, capsys, tmp_path):
    grid = run_sample(capsys, digits_run, "--num_samples", "9", "--generator", "uniform", "--out", str(tmp_path))
    side = 3 * 8 + 4 * 2  # 3 x 3 mosaic, pad 2: 32 px, enlarged 15x to >= 480 px, under a 20 px title
    assert grid == tmp_path / "uniform_step10.png" and Image.open(grid).size == (15 * side, 15 * side + 20)

    folder = run_sample(capsys, digits_run, "--num_samples", "12", "--format", "png", "--out", str(tmp_path))
    assert folder == tmp_path / "ema_step10"
    assert sorted(p.name for p in folder.iterdir()) == [f"{i:02d}.png" for i in range(12)]
    assert Image.open(folder / "00.png").size == (8, 8)

    npz = run_sample(capsys, digits_run, "--num_samples", "12", "--format", "npz", "--seed", "3", "--out",
                     str(tmp_path))
    with np.load(npz) as arrays:
        assert arrays["samples"].shape == (12, 1, 8, 8) and arrays["samples"].dtype == np.float32
        assert arrays["images"].shape == (12, 8, 8, 1) and arrays["images"].dtype == np.uint8


@pytest.mark.parametrize(("args", "named"), [
    (["--format", "png"], "Invalid --format: 'png' for 2-D points"),
    (["--format", "jpeg"], "argument --format: invalid choice: 'jpeg'"),
    (["--generator", "best"], "argument --generator: invalid choice: 'best'"),
    (["--num_samples", "0"], "Invalid --num_samples: 0; expected an integer >= 1"),
    (["--model.scheme=sideways"], "Invalid scheme: 'sideways'"),
    (["--trainer.max_steps=5"], "unrecognized arguments: --trainer.max_steps=5"),
], ids=["png-of-points", "unknown-format", "unknown-generator", "no-samples", "bad-override", "not-an-override"])
def test_bad_input_fails_with_one_line_and_writes_nothing(args, named, quickstart_run, capsys, tmp_path):
    out = tmp_path / "out"
    error = expect_error(capsys, "sample", "--ckpt", str(quickstart_run), "--out", str(out), *args)
    assert named in error, error
    assert not out.exists()


def test_a_missing_checkpoint_or_an_average_the_run_does_not_keep_is_refused(quickstart_run, capsys, tmp_path):
    error = expect_error(capsys, "sample", "--ckpt", str(tmp_path / "none.ckpt"))
    assert f"Checkpoint {tmp_path / 'none.ckpt'} not found" in error
    error = expect_error(capsys, "sample", "--ckpt", str(quickstart_run), "--generator", "uniform",
                         "--model.uniform_average=false", "--out", str(tmp_path / "out"))
    assert "Invalid --generator: 'uniform'; this run keeps live, ema" in error
    assert not (tmp_path / "out").exists()


# -- the subcommands ----------------------------------------------------------------------------------------

def test_help_lists_fit_evaluate_and_sample_only(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "{fit}" in text and all(f"\n  {name} " in text for name in ("fit", "evaluate", "sample")), text
    assert not any(name in text for name in ("validate", "predict", "{fit,")), text


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict", "fitt"])
def test_other_subcommands_fail_in_one_line_naming_the_valid_ones(subcommand, capsys):
    error = expect_error(capsys, subcommand, "--config", str(QUICKSTART))
    assert f"Invalid subcommand: {subcommand!r}; expected one of fit, evaluate, sample" in error


# -- the run's own config -------------------------------------------------------------------------------------

def test_evaluate_and_sample_use_the_config_stored_in_the_checkpoint(tmp_path, capsys):
    """Two runs with different generators in one folder: the first run's checkpoint, copied aside, still loads,
    although the folder's newest config.yaml is the second run's; --config still overrides."""
    run = tmp_path / "run"
    first = shutil.copy(_fit(run, TOY_RING, "--trainer.max_steps=2"), tmp_path / "first.ckpt")
    _fit(run, TOY_RING, "--trainer.max_steps=2", "--model.generator.init_args.hidden_dim=32")
    assert torch.load(first, weights_only=True)[CONFIG_KEY].startswith("# lightning.pytorch==")
    shutil.copy(first, run / "checkpoints" / "first.ckpt")  # next to the second run's version_1/config.yaml
    capsys.readouterr()

    for ckpt in (Path(first), run / "checkpoints" / "first.ckpt"):
        assert run_sample(capsys, ckpt, "--num_samples", "10").is_file()
        main(["evaluate", "--ckpt", str(ckpt), "--num-samples", "20", "--metrics", "modes"])
        assert f"config stored in {ckpt}" in capsys.readouterr().err

    newest = run / "version_1" / "config.yaml"
    assert yaml.safe_load(newest.read_text())["model"]["generator"]["init_args"]["hidden_dim"] == 32
    error = expect_error(capsys, "sample", "--ckpt", str(first), "--config", str(newest))
    assert f"Checkpoint {first} does not match config {newest}" in error
