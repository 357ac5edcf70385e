"""The ``lightning-gan`` command: every config parses, a tiny fit writes what it promises and resumes, and bad
values fail before training with one line naming the field."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gan_fixtures import state_of
from lightning_gan.cli import GANCLI, main
from lightning_gan.data import GameDataModule
from lightning_gan.distributed import GameDDPStrategy
from lightning_gan.module import GANModule

pytestmark = [
    pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning"),  # torchdata 0.11 on torch 2.14
    pytest.mark.filterwarnings("ignore:(?s).*skip_none parameter was deprecated"),  # Lightning's SaveConfigCallback
    pytest.mark.usefixtures("cli_process_state"),  # tests/conftest.py
]

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
QUICKSTART = REPO / "configs" / "quickstart.yaml"




def tiny_fit(root: Path, max_steps: int, *extra: str) -> list[str]:
    """``fit`` of the quickstart, cut down to seconds."""
    return ["fit", "--config", str(QUICKSTART), f"--trainer.default_root_dir={root}",
            f"--trainer.max_steps={max_steps}",
            "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
            "--data.init_args.num_samples=1024", "--data.init_args.batch_size=32",
            "--samples.every_n_steps=5", "--samples.num_samples=64", "--checkpoint.every_n_train_steps=5", *extra]


def test_print_config_shows_the_quickstart_with_the_cli_defaults(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(QUICKSTART), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = capsys.readouterr().out
    for line in ("strategy: game_ddp", "scheme: extragradient", "save_last: true", "torch_num_threads: 1",
                 "class_path: lightning_gan.data.GaussianMixtureDataModule"):
        assert line in printed


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses_and_instantiates(config, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_.value.code in (0, None), capsys.readouterr().err
    # run=False builds model, data module and trainer without loading data (CIFAR-10 is not here).
    cli = GANCLI(args=["--config", str(config), f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert isinstance(cli.model, GANModule)
    assert isinstance(cli.datamodule, GameDataModule)
    assert isinstance(cli.trainer.strategy, GameDDPStrategy)


def test_fit_writes_samples_metrics_and_last_checkpoint_then_resumes(tmp_path):
    first = GANCLI(args=tiny_fit(tmp_path, 5))
    assert first.trainer.global_step == 5
    run = tmp_path / "version_0"
    assert {"live_step5.png", "ema_step5.png"} <= {p.name for p in (run / "samples").iterdir()}
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and all(row["train/loss_generator"] for row in rows)
    assert list(run.glob("events.out.tfevents.*")) and (run / "config.yaml").is_file()
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 5

    resumed = GANCLI(args=tiny_fit(tmp_path, 10, "--ckpt_path=last"))

    assert resumed.trainer.global_step == 10
    assert resumed.model.evaluations == 10 * 2  # extragradient: 2 evaluations per iteration, 5 of them restored
    assert sorted(p.name for p in (tmp_path / "version_1" / "samples").iterdir()) == ["ema_step10.png",
                                                                                    "live_step10.png"]
    assert torch.load(last, weights_only=False)["global_step"] == 10


def test_last_checkpoint_holds_the_final_iteration_and_resumes_like_an_uninterrupted_run(tmp_path):
    """15 iterations with a checkpoint every 10 still leave last.ckpt at 15 (not 10); resumed to 30, the players,
    averages and optimizer states equal those of one uninterrupted 30-iteration run, bit for bit."""
    args = ("--checkpoint.every_n_train_steps=10", "--samples.every_n_steps=0")
    first = GANCLI(args=tiny_fit(tmp_path / "split", 15, *args))
    last = tmp_path / "split" / "checkpoints" / "last.ckpt"
    assert first.trainer.global_step == 15
    assert torch.load(last, weights_only=False)["global_step"] == 15

    resumed = GANCLI(args=tiny_fit(tmp_path / "split", 30, *args, "--ckpt_path=last"))
    straight = GANCLI(args=tiny_fit(tmp_path / "straight", 30, *args))

    assert resumed.trainer.global_step == straight.trainer.global_step == 30
    assert torch.load(last, weights_only=False)["global_step"] == 30
    expected, actual = state_of(straight.model), state_of(resumed.model)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert resumed.model.evaluations == straight.model.evaluations


MISSING = "/nonexistent/mnist"


@pytest.mark.parametrize(("args", "named"), [
    (["--model.g_optimizer.lr=-1"], "g_optimizer: Invalid lr: -1"),
    (["--model.scheme=sideways"], "Invalid scheme: 'sideways'"),
    (["--model.scheme=alternating", "--model.n_dis=0"], "Invalid n_dis: 0"),
    (["--model.n_dis=two"], 'Parser key "model.n_dis"'),
    (["--data=lightning_gan.data.MNISTDataModule", f"--data.init_args.root={MISSING}"], f"MNIST folder {MISSING}"),
    (["--samples.every_n_steps=-5"], "Invalid every_n_steps: -5"),
], ids=["negative-lr", "unknown-scheme", "n_dis-0", "n_dis-not-int", "missing-mnist", "negative-every_n_steps"])
def test_bad_value_fails_before_training_with_one_line_naming_it(args, named, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(tiny_fit(tmp_path, 5, *args))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("lightning-gan: error:")]
    assert len(errors) == 1 and named in errors[0], err
    assert "Traceback" not in err
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("metrics.csv"))


def test_python_dash_m_is_the_same_command():
    result = subprocess.run([sys.executable, "-m", "lightning_gan", "--help"], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: lightning-gan")
    assert "fit" in result.stdout


@pytest.mark.slow
def test_two_cpu_ranks_through_the_cli_write_one_run(tmp_path):
    """``--trainer.devices 2`` relaunches the command per rank (game_ddp, popen); rank 0 alone writes the run."""
    command = [sys.executable, "-m", "lightning_gan", *tiny_fit(tmp_path, 4), "--trainer.accelerator=cpu",
               "--trainer.devices=2"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in tmp_path.glob("version_*")] == ["version_0"]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    assert (tmp_path / "version_0" / "samples" / "live_step4.png").is_file()
