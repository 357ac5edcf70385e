"""tune/: the search space file, the config it writes, the callbacks a trial runs with, and real searches: 4 ASHA
trials on the 8-mode ring (one failing once and retried from its checkpoint) whose best config then trains with
``lightning-gan fit`` as it is, PBT, and a trial of 2 Ray Train workers (``--workers-per-trial 2``)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from tune.report import ConfigOptimizerScalars
from tune.results import best_row
from tune.search import concurrent_trials, main, parse_args, parse_resources
from tune.space import Param, SearchSpace, apply_params, load_space, plain
from tune.trainable import TrialSetup, trial_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "toy_ring_tiny.yaml"
DEFAULT_SPACE = REPO / "tune" / "spaces" / "default.yaml"


def _base() -> dict:
    with open(TINY) as f:
        return yaml.safe_load(f)


# -- space and config ---------------------------------------------------------------------------------------------


def test_default_space_searches_ratio_lr_and_momentum_including_negative():
    space = load_space(DEFAULT_SPACE)
    assert (space.metric, space.mode) == ("toy/live/mmd2", "min")
    assert {name: p.distribution for name, p in space.params.items()} == {
        "lr_g": "loguniform", "lr_ratio": "loguniform", "momentum": "uniform"}
    assert space.params["momentum"].low < 0 < space.params["momentum"].high
    assert set(space.mutations()) == {"lr_g", "lr_ratio", "momentum"}


def test_sampled_values_become_plain_config_fields():
    params = {"lr_g": np.float64(1e-3), "lr_ratio": np.float64(4.0), "momentum": np.float32(-0.5),
              "scheme": np.str_("optimistic"), "model.r1_gamma": np.float64(0.2)}
    config = apply_params(_base(), params)
    g, d = config["model"]["g_optimizer"], config["model"]["d_optimizer"]
    assert g["lr"] == 1e-3 and d["lr"] == pytest.approx(4e-3)
    assert g["momentum"] == d["momentum"] == -0.5 and type(g["momentum"]) is float  # torch wants float betas
    assert config["model"]["scheme"] == "optimistic" and type(config["model"]["scheme"]) is str
    assert config["model"]["r1_gamma"] == 0.2 and config["model"]["g_optimizer"]["beta2"] == 0.9
    yaml.safe_dump(config)  # no numpy objects left


def test_ratio_without_lr_g_scales_the_configs_generator_lr():
    config = apply_params(_base(), {"lr_ratio": 2.0})
    assert config["model"]["d_optimizer"]["lr"] == pytest.approx(2e-3)


def test_clip_keeps_pbt_perturbations_inside_the_bounds():
    space = load_space(DEFAULT_SPACE)
    clipped = space.clip({"momentum": -0.9 * 1.2, "lr_g": np.float64(5e-3)})
    assert clipped == {"momentum": -0.9, "lr_g": 5e-3}


@pytest.mark.parametrize(("spec", "named"), [
    ({"params": {"lr_gen": 1e-3}}, "'lr_gen'"),
    ({"params": {"lr_g": {"distribution": "gaussian", "low": 0, "high": 1}}}, "lr_g"),
    ({"params": {"lr_g": {"distribution": "loguniform", "low": 0.0, "high": 1}}}, "loguniform needs low > 0"),
    ({"params": {"momentum": {"distribution": "uniform", "low": 0.9, "high": -0.9}}}, "low=0.9"),
    ({"params": {"scheme": {"distribution": "choice", "values": []}}}, "scheme"),
    ({"params": {"lr_g": 1e-3}, "mode": "lowest"}, "'lowest'"),
    ({"params": {}}, "non-empty `params`"),
])
def test_bad_space_fails_naming_the_entry(spec, named, tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="Invalid") as error:
        load_space(path)
    assert named in str(error.value)


def test_apply_params_refuses_a_path_through_a_value():
    with pytest.raises(ValueError, match="model.loss is 'non_saturating'"):
        apply_params(_base(), {"model.loss.kind": "x"})


def test_resources_and_arguments():
    assert parse_resources("cpu=2,gpu=0.5") == {"cpu": 2.0, "gpu": 0.5}
    assert parse_resources('{"cpu": 1}') == {"cpu": 1.0}
    args = parse_args(["--config", str(TINY)])
    assert (args.num_samples, args.scheduler, args.resources_per_trial) == (32, "asha", {"cpu": 1.0})
    assert args.workers_per_trial == 1
    with pytest.raises(SystemExit):
        parse_args(["--config", str(TINY), "--scheduler", "hyperband"])


def test_a_space_that_breaks_the_config_fails_before_any_trial(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"metric": "toy/live/mmd2", "mode": "min",
                                     "params": {"model.g_optimizer.lrr": {"distribution": "uniform", "low": 0.1,
                                                                         "high": 0.2}}}))
    assert main(["--config", str(TINY), "--space", str(space), "--storage-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a valid training config: Group 'model' does not accept option 'g_optimizer.lrr'" in err, err
    assert not list(tmp_path.glob("*/search_args.json"))  # nothing started


@pytest.mark.parametrize(("params"), [
    {"model.consensus": 1.0}, {"model.unroll_steps": 5}, {"model.lookahead.k": 5, "model.lookahead.alpha": 0.5},
    {"model.loss": "rpgan", "model.r2_gamma": 0.1}, {"schedule_d": "inverse_sqrt", "model.d_optimizer.t0": 100.0},
], ids=["consensus", "unrolled", "lookahead", "rpgan", "schedule"])
def test_the_other_methods_knobs_are_searchable_as_dotted_paths(params):
    """What a space samples for each second-wave method makes a config the CLI accepts (the search checks the
    space's typical values the same way before any trial)."""
    from tune.search import check_config

    space = SearchSpace({name: Param.parse(name, {"distribution": "choice", "values": [value]})
                         for name, value in params.items()}, "toy/live/mmd2", "min")
    check_config(apply_params(_base(), space.typical()), "a space over " + ", ".join(params))


def test_a_toy_metric_on_images_fails_before_any_trial(tmp_path, capsys):
    assert main(["--config", str(REPO / "configs" / "mnist_extragradient.yaml"), "--storage-path", str(tmp_path)]) == 2
    assert "is a toy metric" in capsys.readouterr().err


def test_best_row_prefers_trials_that_ran_to_the_end():
    rows = [{"trial": "a", "outcome": "stopped early", "m": 0.01},
            {"trial": "b", "outcome": "completed", "m": 0.5},
            {"trial": "c", "outcome": "completed", "m": 0.2},
            {"trial": "d", "outcome": "completed", "m": math.inf},
            {"trial": "e", "outcome": "error", "m": None}]
    assert best_row(rows, "m", "min")["trial"] == "c"
    assert best_row(rows, "m", "max")["trial"] == "b"
    assert best_row(rows[4:], "m", "min") is None


def test_optimizer_scalars_come_from_the_config_after_a_restore():
    """ray#36660: load_state_dict brings back the checkpoint's lr and betas; the callback writes the config's."""
    params = [torch.nn.Parameter(torch.zeros(1))]
    adam, sgd = torch.optim.Adam(params, lr=0.1, betas=(0.9, 0.99)), torch.optim.SGD(params, lr=0.1, momentum=0.9)
    config = SimpleNamespace(lr=1e-3, momentum=-0.5, beta2=0.9, eps=1e-6, weight_decay=0.0)
    module = SimpleNamespace(g_optimizer_config=config, d_optimizer_config=config)
    ConfigOptimizerScalars().on_train_start(SimpleNamespace(optimizers=[adam, sgd]), module)
    assert adam.param_groups[0]["lr"] == 1e-3 and adam.param_groups[0]["betas"] == (-0.5, 0.9)
    assert sgd.param_groups[0]["momentum"] == -0.5 and type(adam.param_groups[0]["eps"]) is float


# -- a real search ------------------------------------------------------------------------------------------------


class FailOnce(Callback):
    """Test helper, loaded by the trials through the config: logs each start step; raises once at ``at_step``."""

    def __init__(self, marker: str, at_step: int) -> None:
        self.marker, self.at_step = Path(marker), at_step

    def on_train_start(self, trainer, pl_module) -> None:
        with open(f"{self.marker}.starts", "a") as f:
            f.write(f"{trainer.default_root_dir} {trainer.global_step}\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step and not self.marker.exists():
            self.marker.touch()
            raise RuntimeError(f"injected failure at step {self.at_step}")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_asha_search_stops_trials_early_retries_a_failure_and_writes_a_best_config_that_trains(tmp_path):
    marker = tmp_path / "failed"
    config = _base()
    config["trainer"]["max_steps"] = 600  # longer than the search's budget (--max-steps 300): best.yaml keeps 300
    config["trainer"]["callbacks"] = [{"class_path": "test_tune.FailOnce",
                                       "init_args": {"marker": str(marker), "at_step": 40}}]
    base = tmp_path / "ring.yaml"
    base.write_text(yaml.safe_dump(config, sort_keys=False))
    # The trials import this module (FailOnce) by name; sequential trials make ASHA's decisions reproducible.
    env = {**_without_rendezvous(os.environ),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "tune.search", "--config", str(base), "--num-samples", "4", "--max-steps", "300",
               "--storage-path", str(tmp_path / "tune"), "--name", "ring", "--seed", "0", "--max-concurrent", "1",
               "--num-cpus", "2", "--max-failures", "1"]
    start = time.monotonic()
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    print(f"search: {time.monotonic() - start:.0f} s wall")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]

    experiment = tmp_path / "tune" / "ring"
    with open(experiment / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    print(result.stdout[result.stdout.find("trial "):])
    assert len(rows) == 4 and all(row["outcome"] in ("completed", "stopped early") for row in rows), rows
    stopped = [row for row in rows if row["outcome"] == "stopped early"]
    assert stopped and all(int(row["step"]) < 300 for row in stopped), rows  # ASHA stopped some trials
    assert all(int(row["step"]) == 300 for row in rows if row["outcome"] == "completed")
    assert all(-0.9 <= float(row["momentum"]) <= 0.9 for row in rows)
    # The failed trial came back from its last checkpoint (reported every 15 iterations), not from step 0.
    starts = [int(line.split()[1]) for line in Path(f"{marker}.starts").read_text().splitlines()]
    assert marker.exists() and sorted(starts) == [0, 0, 0, 0, 30], starts

    best = experiment / "best.yaml"
    best_config = yaml.safe_load(best.read_text())
    g, d = best_config["model"]["g_optimizer"], best_config["model"]["d_optimizer"]
    winner = min((row for row in rows if row["outcome"] == "completed"), key=lambda row: float(row["toy/live/mmd2"]))
    assert g["lr"] == pytest.approx(float(winner["lr_g"]))
    assert d["lr"] == pytest.approx(float(winner["lr_g"]) * float(winner["lr_ratio"]))
    assert g["momentum"] == d["momentum"] == pytest.approx(float(winner["momentum"]))
    assert best_config["trainer"]["max_steps"] == 300  # the search's budget, not the base config's 600
    header = [line for line in best.read_text().splitlines() if line.startswith("#")]
    assert any("Budget: 300 iterations per trial" in line and "600" in line for line in header), header
    assert any(line.startswith("# Metric: toy/live/mmd2 (min) = ") and winner["trial"] in line for line in header)

    start = time.monotonic()
    fit = subprocess.run([sys.executable, "-m", "lightning_gan", "fit", "--config", str(best),
                          "--trainer.max_steps", "5"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    print(f"best config fit: {time.monotonic() - start:.0f} s wall")
    assert fit.returncode == 0, fit.stderr[-3000:]
    checkpoint = experiment / "best" / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=False)["global_step"] == 5

    # The header's command continues the winning trial from its own last checkpoint.
    continue_line = next(line for line in header if "--ckpt_path" in line)
    command = continue_line.lstrip("# ").split()[1:]  # drop the program name
    command[command.index("N")] = "320"
    fit = subprocess.run([sys.executable, "-m", "lightning_gan", *command], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert fit.returncode == 0, fit.stderr[-3000:]
    trial_checkpoint = torch.load(command[command.index("--ckpt_path") + 1], weights_only=False)
    continued = torch.load(checkpoint, weights_only=False)
    assert trial_checkpoint["global_step"] == 300 and continued["global_step"] == 320


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pbt_trains_with_the_mutated_values_after_each_exploit(tmp_path):
    """ray#36660 and LightningCLI's checkpoint hyper-parameters: after restoring a donor's checkpoint, a trial must
    train with its own (mutated) step sizes, not the donor's. Synchronous PBT makes the exploit certain."""
    command = [sys.executable, "-m", "tune.search", "--config", str(TINY), "--num-samples", "2", "--max-steps", "120",
               "--scheduler", "pbt", "--synch", "--perturbation-interval", "40", "--report-every", "20",
               "--storage-path", str(tmp_path), "--name", "pbt", "--seed", "0", "--num-cpus", "2"]
    start = time.monotonic()
    result = subprocess.run(command, cwd=tmp_path, env=_without_rendezvous(os.environ), capture_output=True, text=True,
                            timeout=600)
    print(f"PBT search: {time.monotonic() - start:.0f} s wall")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    experiment = tmp_path / "pbt"
    exploits = (experiment / "pbt_global.txt").read_text().splitlines()
    assert exploits, "no exploit happened"
    with open(experiment / "trials.csv") as f:
        assert all(row["outcome"] == "completed" for row in csv.DictReader(f))
    rows = [json.loads(line) for path in experiment.glob("run_trial_*/result.json") for line in open(path)]
    for row in rows:  # what the optimizers used (logged by the module) is what the trial's config says
        lr_g, lr_d = row["config"]["lr_g"], row["config"]["lr_g"] * row["config"]["lr_ratio"]
        assert row["train/lr_generator"] == pytest.approx(lr_g, rel=1e-6), row
        assert row["train/lr_discriminator"] == pytest.approx(lr_d, rel=1e-6), row
    assert len({round(row["config"]["lr_g"], 12) for row in rows}) > 2  # mutated values were trained with


class RankLog(Callback):
    """Test helper, loaded by the Ray Train workers through the config: at train end each rank appends its Lightning
    rank and world size, its process group's rank and size, its step, its data shard (the training sampler's rank
    and number of replicas) and a checksum of its parameters."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module) -> None:
        import torch.distributed as dist

        sampler = trainer.train_dataloader.sampler
        checksum = sum(float(p.detach().double().sum()) for p in pl_module.parameters())
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_rank} {trainer.world_size} {dist.get_rank()} {dist.get_world_size()} "
                    f"{trainer.global_step} {sampler.rank} {sampler.num_replicas} {checksum!r}\n")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_trial_of_two_ray_train_workers_trains_as_one_process_group_and_reports(tmp_path):
    """--workers-per-trial 2: the trial runs Ray Train's TorchTrainer with 2 CPU workers (gloo), ranks 0 and 1 of one
    process group that end with the same parameters; rank 0's reports reach Tune, the checkpoints Ray Train's storage,
    and the search writes its best config."""
    ranks = tmp_path / "ranks.txt"
    config = _base()
    config["trainer"]["callbacks"] = [{"class_path": "test_tune.RankLog", "init_args": {"path": str(ranks)}}]
    base = tmp_path / "ring.yaml"
    base.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**_without_rendezvous(os.environ),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "tune.search", "--config", str(base), "--num-samples", "1", "--max-steps", "60",
               "--report-every", "20", "--workers-per-trial", "2", "--storage-path", str(tmp_path / "searches"),
               "--name", "ring", "--seed", "0", "--num-cpus", "2"]
    start = time.monotonic()
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=500)
    print(f"2-worker search: {time.monotonic() - start:.0f} s wall")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]

    lines = sorted(ranks.read_text().splitlines())
    # Lightning rank / world size, process group rank / size, step, data shard / shards: one group of 2, two shards.
    assert [line.split()[:7] for line in lines] == [["0", "2", "0", "2", "60", "0", "2"],
                                                    ["1", "2", "1", "2", "60", "1", "2"]], lines
    assert lines[0].split()[7] == lines[1].split()[7], lines  # the ranks' parameters agree: gradients were all-reduced

    experiment = tmp_path / "searches" / "ring"  # not tmp_path / "tune": in the workers' cwd it would shadow tune/
    with open(experiment / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["outcome"] == "completed" and rows[0]["step"] == "60", rows
    assert math.isfinite(float(rows[0]["toy/live/mmd2"]))
    reports = [json.loads(line) for path in experiment.glob("WorkersTrial_*/result.json") for line in open(path)]
    assert [r["step"] for r in reports] == [20, 40, 60], reports  # rank 0's reports, forwarded to Tune
    saved = Path(reports[-1]["checkpoint_path"]) / "model.ckpt"  # in Ray Train's storage, inside the trial's run
    assert saved.is_relative_to(experiment / "runs" / rows[0]["trial"] / "train")
    assert torch.load(saved, weights_only=False)["global_step"] == 60
    run = experiment / "runs" / rows[0]["trial"]  # rank 0 alone writes the run: one version, last.ckpt at the end
    assert [p.name for p in run.glob("version_*")] == ["version_0"]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 60
    best = yaml.safe_load((experiment / "best.yaml").read_text())
    assert best["model"]["g_optimizer"]["lr"] == pytest.approx(float(rows[0]["lr_g"]))


def test_multi_worker_trial_config_runs_game_ddp_without_requeue():
    setup = TrialSetup(base=_base(), space=load_space(DEFAULT_SPACE), metric="toy/live/mmd2", mode="min",
                       max_steps=60, report_every=20, checkpoint_every=20, runs_dir="/runs", cwd="/", mixture=True,
                       workers=2)
    config = trial_config(setup, {"lr_g": 1e-3}, "/runs/t")
    assert (config["trainer"]["strategy"], config["trainer"]["devices"]) == ("game_ddp", 1)  # one device per worker
    assert config["requeue"]["enabled"] is False  # a trial must never requeue the search's SLURM job
    setup.workers = 1
    assert trial_config(setup, {}, "/runs/t")["trainer"]["strategy"] == "auto"


def test_multi_worker_trials_at_once_fit_all_their_workers(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 9.0, "GPU": 2.0, "memory": 1e10})
    assert concurrent_trials({"cpu": 2.0}, 2) == 2
    assert concurrent_trials({"cpu": 1.0, "gpu": 1.0}, 2) == 1
    assert concurrent_trials({"cpu": 4.0}, 4) == 1  # never 0: the trial then waits for an autoscaler
    assert concurrent_trials({"cpu": 1.0}, 1) is None  # one-process trials: Tune's own limit


def test_pbt_refuses_multi_worker_trials(tmp_path, capsys):
    assert main(["--config", str(TINY), "--scheduler", "pbt", "--workers-per-trial", "2",
                 "--storage-path", str(tmp_path)]) == 2
    assert "Invalid --scheduler pbt with --workers-per-trial 2" in capsys.readouterr().err
    assert not list(tmp_path.glob("*/search_args.json"))


def test_plain_turns_numpy_into_python():
    assert type(plain(np.float32(0.5))) is float and type(plain(np.int64(3))) is int
    assert plain(np.str_("a")) == "a" and plain(True) is True and plain(None) is None


def test_space_object_validates_names():
    with pytest.raises(ValueError, match="'beta'"):
        SearchSpace({"beta": None})


def _without_rendezvous(environ) -> dict[str, str]:
    """The environment minus a rendezvous that an earlier in-process run left behind.

    Lightning writes MASTER_PORT (and friends) into os.environ when it sets up a process group; a
    child inheriting them would bind that old port, which may be taken by now (EADDRINUSE).
    """
    stale = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"}
    return {k: v for k, v in environ.items() if k not in stale}
