"""Search hyper-parameters of any lightning-gan training config with Ray Tune; write the best config as YAML.

    python -m tune.search --config configs/quickstart.yaml --num-samples 32
    python -m tune.search --config configs/quickstart.yaml --num-samples 16 --scheduler pbt --max-steps 2000
    python -m tune.search --config configs/mnist_extragradient.yaml --metric train/loss_generator --mode min \\
        --resources-per-trial cpu=4,gpu=1
    python -m tune.search --config configs/quickstart.yaml --workers-per-trial 4 --resources-per-trial cpu=2,gpu=1
    lightning-gan fit --config runs/tune/<name>/best.yaml            # the winner's values at the search's budget

By default it samples the step-size ratio lr_D / lr_G and lr_G (log-uniform) and both players' momentum (uniform
in [-0.9, 0.9]) from tune/spaces/default.yaml, stops poor trials early with ASHA, and ranks trials by the space's
metric (toy MMD on 2-D mixtures). Results go to <storage-path>/<name>/: ``trials.csv`` (also printed),
``best.yaml`` (the base config with the best values and the search's iterations per trial, accepted by
``lightning-gan fit --config`` as it is; its header records the budget and metric and how to continue the winning
trial from its checkpoint), and
``runs/<trial id>/`` (each trial's config, logs and checkpoints). Each trial reports (and checkpoints) every
``--report-every`` iterations; a failed trial is retried from its last checkpoint up to ``--max-failures`` times;
an interrupted search continues with ``--resume --name <name>`` (and its own --storage-path), with the
arguments it started with. On a cluster, connect to a running Ray cluster
with ``--address auto`` (slurm/tune.sbatch does).

A trial is one training process by default. With ``--workers-per-trial N`` it is Ray Train's ``TorchTrainer`` with
N workers (one ``game_ddp`` process group, global batch N x ``data.batch_size``), each reserving
``--resources-per-trial``; the trial's own driver reserves no CPU, and trials at once default to what the cluster's
CPUs and GPUs allow (see tune/workers.py). Such searches use ASHA: PBT needs Tune checkpoints, which these trials
leave to Ray Train.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from tune.results import best_row, print_table, trial_rows, write_best, write_csv
from tune.space import SearchSpace, apply_params, get_path, load_space

__all__ = ["main", "parse_args", "parse_resources", "search"]

DEFAULT_SPACE = Path(__file__).resolve().parent / "spaces" / "default.yaml"
ARGS_FILE = "search_args.json"  # the arguments of a search, read back by --resume
PROG = "python -m tune.search"


def parse_resources(text: str) -> dict[str, float]:
    """``cpu=2,gpu=1`` or JSON ``{"cpu": 2, "gpu": 1}`` -> ``{"cpu": 2.0, "gpu": 1.0}``."""
    try:
        value = json.loads(text) if text.strip().startswith("{") else \
            {k.strip(): v for k, v in (item.split("=", 1) for item in text.split(",") if item.strip())}
        resources = {str(k): float(v) for k, v in value.items()}
    except (ValueError, AttributeError) as error:
        raise argparse.ArgumentTypeError(f"invalid resources {text!r}: expected cpu=N,gpu=M or JSON ({error})")
    if not resources or any(v < 0 for v in resources.values()):
        raise argparse.ArgumentTypeError(f"invalid resources {text!r}: expected non-negative amounts, e.g. cpu=1")
    return resources


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected an integer >= 1")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="the training config to search around (YAML); required unless --resume")
    parser.add_argument("--space", default=str(DEFAULT_SPACE), help="search space YAML (default: %(default)s)")
    parser.add_argument("--num-samples", type=positive_int, default=32, help="trials (x grid size); default 32")
    parser.add_argument("--scheduler", choices=("asha", "pbt"), default="asha")
    parser.add_argument("--metric", help="reported key that ranks trials (default: the space's)")
    parser.add_argument("--mode", choices=("min", "max"), help="default: the space's")
    parser.add_argument("--max-steps", type=positive_int, help="iterations per trial (default: the config's)")
    parser.add_argument("--report-every", type=positive_int, help="iterations between reports (default: max/20)")
    parser.add_argument("--grace-period", type=positive_int, help="ASHA: iterations before a trial may be stopped "
                        "(default: max/16)")
    parser.add_argument("--reduction-factor", type=float, default=4.0, help="ASHA: keep the best 1/rf at each rung")
    parser.add_argument("--perturbation-interval", type=positive_int,
                        help="PBT: iterations between exploit/explore steps (default: max/8)")
    parser.add_argument("--synch", action="store_true", help="PBT: wait for the whole population at each "
                        "perturbation (reproducible decisions; needs all trials running at once)")
    parser.add_argument("--resources-per-trial", type=parse_resources, default={"cpu": 1.0},
                        help="e.g. cpu=2,gpu=1 (default cpu=1): of the trial's process, or of each worker with "
                        "--workers-per-trial")
    parser.add_argument("--workers-per-trial", type=positive_int, default=1,
                        help="training processes per trial (default 1); N > 1 runs Ray Train's TorchTrainer with N "
                        "workers in each trial (ASHA only)")
    parser.add_argument("--max-concurrent", type=positive_int, help="trials at once (default: as resources allow)")
    parser.add_argument("--max-failures", type=int, default=2, help="retries of a failed trial, from its checkpoint "
                        "(with --workers-per-trial also Ray Train's restarts of failed workers within a trial)")
    parser.add_argument("--storage-path", default="runs/tune", help="results folder (shared by all nodes)")
    parser.add_argument("--name", help="experiment name (default: <config>-<scheduler>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted experiment --name")
    parser.add_argument("--best-config", help="where to write the best config (default: <experiment>/best.yaml)")
    parser.add_argument("--seed", type=int, help="seed of the sampler (random search)")
    parser.add_argument("--address", help="Ray cluster address (e.g. auto); default: $RAY_ADDRESS or a local Ray")
    parser.add_argument("--num-cpus", type=positive_int, help="CPUs of a local Ray (default: all)")
    args = parser.parse_args(argv)
    if args.resume and not args.name:
        parser.error("--resume needs --name (the experiment to continue)")
    if not args.resume and not args.config:
        parser.error("the following arguments are required: --config")
    return args


def load_config(path: str) -> dict[str, Any]:
    with open(path) as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict):
        raise ValueError(f"Invalid config {path}: expected a YAML mapping")
    return config


def check_config(config: dict[str, Any], what: str) -> None:
    """Parse ``config`` with the lightning-gan CLI (``--print_config``: nothing is built or run); raise its error."""
    from lightning_gan.cli import main as cli_main

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config, f, sort_keys=False)
    err, argv = io.StringIO(), sys.argv
    sys.argv = sys.argv[:1]  # this command's own arguments are not the CLI's
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            cli_main(["fit", "--config", f.name, "--print_config"])
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            errors = [line for line in err.getvalue().splitlines() if line.startswith("lightning-gan: error:")]
            message = errors[-1].removeprefix("lightning-gan: error: ") if errors else err.getvalue().strip()
            raise ValueError(f"{what} is not a valid training config: {message}") from None
    finally:
        sys.argv = argv
        os.unlink(f.name)


def is_mixture_config(config: dict[str, Any]) -> bool:
    return str(get_path(config, "data.class_path", "")).endswith("GaussianMixtureDataModule")


def search(args: argparse.Namespace) -> dict[str, Any]:
    """Run the search; returns ``{"experiment": path, "rows": [...], "best": row or None}``."""
    import ray
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from tune.trainable import TrialSetup, run_trial

    storage = Path(args.storage_path).resolve()
    if args.resume:
        args = resumed_args(args, storage / args.name)
    base = load_config(args.config)
    space = load_space(args.space)
    metric, mode = args.metric or space.metric, args.mode or space.mode
    if not metric or not mode:
        raise ValueError(f"Invalid search: no metric/mode; set them in {args.space} or pass --metric and --mode")
    mixture = is_mixture_config(base)
    if metric.startswith("toy/") and not mixture:
        raise ValueError(f"Invalid metric: {metric!r} is a toy metric, but {args.config} does not train on a 2-D "
                         "mixture; pass --metric with a key the module logs")
    max_steps = args.max_steps or get_path(base, "trainer.max_steps")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"Invalid max steps: {max_steps!r}; set trainer.max_steps in {args.config} or --max-steps")
    report_every = args.report_every or max(1, max_steps // 20)
    workers = args.workers_per_trial
    if workers > 1 and args.scheduler == "pbt":
        raise ValueError(f"Invalid --scheduler pbt with --workers-per-trial {workers}: PBT clones trials through Tune "
                         "checkpoints, and a multi-worker trial keeps its checkpoints in Ray Train's storage; use "
                         "--scheduler asha, or one worker per trial")
    # Fail here, with the CLI's message, rather than in every trial.
    check_config(apply_params(base, space.typical()), f"{args.config} with the values of {args.space}")

    name = args.name or f"{Path(args.config).stem}-{args.scheduler}-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment = storage / name
    scheduler, checkpoint_every, keep = make_scheduler(args, space, max_steps, report_every)
    if not args.resume:
        if (experiment / ARGS_FILE).exists():
            raise ValueError(f"Invalid --name: {name!r} already holds a search in {storage}; continue it with "
                             "--resume, or pick another --name")
        save_args(args, experiment, name, storage)
    setup = TrialSetup(base=base, space=space, metric=metric, mode=mode, max_steps=max_steps,
                       report_every=report_every, checkpoint_every=checkpoint_every, runs_dir=str(experiment / "runs"),
                       cwd=getattr(args, "cwd", None) or os.getcwd(), mixture=mixture, workers=workers,
                       resources_per_worker=args.resources_per_trial, max_failures=args.max_failures,
                       checkpoints_kept=keep)

    # Tune warns when checkpoints come faster than its state snapshots; frequent small checkpoints are the point here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # A Ray cluster given by --address or $RAY_ADDRESS (it decides its own CPUs); else a new local one, even where
    # `ray start` left a (possibly dead) "current cluster" behind, which ray.init() would otherwise join.
    address = args.address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, num_cpus=args.num_cpus if address == "local" else None, include_dashboard=False,
             configure_logging=True, logging_level="warning",
             runtime_env={"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0"}})
    try:
        if workers > 1:
            from tune.workers import DRIVER_RESOURCES, WorkersTrial

            trainable = tune.with_resources(tune.with_parameters(WorkersTrial, setup=setup), DRIVER_RESOURCES)
        else:
            trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), args.resources_per_trial)
        max_concurrent = args.max_concurrent or concurrent_trials(args.resources_per_trial, workers)
        if args.resume:
            if not tune.Tuner.can_restore(str(experiment)):
                raise ValueError(f"Invalid --resume: no experiment to continue in {experiment}")
            tuner = tune.Tuner.restore(str(experiment), trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=space.param_space(),
                tune_config=tune.TuneConfig(
                    metric=metric, mode=mode, scheduler=scheduler, num_samples=args.num_samples,
                    # Tune ignores max_concurrent_trials next to a seeded generator: the generator limits instead.
                    max_concurrent_trials=max_concurrent if args.seed is None else None,
                    search_alg=None if args.seed is None else
                    BasicVariantGenerator(random_state=args.seed, max_concurrent=max_concurrent or 0)),
                run_config=tune.RunConfig(
                    name=name, storage_path=str(storage), verbose=1,
                    failure_config=tune.FailureConfig(max_failures=args.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=keep)),
            )
        results = tuner.fit()
    finally:
        ray.shutdown()

    # Ctrl-C (or a job's end) returns a partial grid: some trials neither terminated nor failed.
    expected = args.num_samples * math.prod(len(p.values) for p in space.params.values() if p.distribution == "grid")
    finished = results.num_terminated + results.num_errors
    interrupted = finished < len(results) or len(results) < expected
    rows = trial_rows(results, space, metric, max_steps, interrupted)
    write_csv(rows, experiment / "trials.csv")
    print_table(rows, metric)
    best = None if interrupted else best_row(rows, metric, mode)
    out = {"experiment": experiment, "rows": rows, "best": best, "metric": metric, "mode": mode}
    if interrupted:
        done = sum(row["outcome"] != "unfinished" for row in rows)
        print(f"{PROG}: interrupted with {done} of {max(expected, len(results))} trials done; no best config written. "
              f"Continue with: {PROG} --storage-path {storage} --name {name} --resume",
              file=sys.stderr)
        return out
    if best is None:
        print(f"{PROG}: no trial reported {metric}; no best config written", file=sys.stderr)
        return out
    best_path = Path(args.best_config) if args.best_config else experiment / "best.yaml"
    write_best(base, space, best, best_path, experiment / "best", args, metric, mode, max_steps=max_steps,
               runs_dir=experiment / "runs")
    out["best_config"] = best_path
    print(f"best trial {best['trial']}: {metric}={best[metric]:.6g} -> {best_path}\n"
          f"  lightning-gan fit --config {best_path}    # {max_steps} iterations, as the trials\n"
          f"  (continue the trial itself: the commands in the file's header)")
    return out


def concurrent_trials(resources_per_worker: dict[str, float], workers: int) -> int | None:
    """Trials at once for multi-worker trials: as many as the Ray cluster's resources hold all the workers of (at
    least 1); None (no limit) for one-process trials, which Tune limits by their own resources. A trial's driver
    reserves no CPU, so without this limit Tune would start drivers whose workers cannot all be placed."""
    import ray

    if workers == 1:
        return None
    total = ray.cluster_resources()
    names = {"cpu": "CPU", "gpu": "GPU"}
    fits = [int(total.get(names.get(key, key), 0.0) // (amount * workers))
            for key, amount in resources_per_worker.items() if amount > 0]
    return max(1, min(fits, default=1))


def make_scheduler(args: argparse.Namespace, space: SearchSpace, max_steps: int,
                   report_every: int) -> tuple[Any, int, int]:
    """(Tune scheduler, iterations between trial checkpoints, checkpoints kept per trial)."""
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

    if args.scheduler == "asha":
        grace = args.grace_period or max(report_every, max_steps // 16)
        scheduler = ASHAScheduler(time_attr="step", max_t=max_steps, grace_period=min(grace, max_steps),
                                  reduction_factor=args.reduction_factor)
        return scheduler, report_every, 2  # a failed trial retries from its last report
    # PBT mutates optimizer scalars only; ConfigOptimizerScalars re-applies them after each restore. It clones a
    # donor's latest checkpoint, which must still exist when the clone starts: fewer checkpoints, kept longer.
    interval = args.perturbation_interval or max(report_every, max_steps // 8)
    checkpoint_every = report_every * math.ceil(interval / report_every)
    scheduler = PopulationBasedTraining(time_attr="step", perturbation_interval=checkpoint_every,
                                        hyperparam_mutations=space.mutations(), custom_explore_fn=space.clip,
                                        synch=args.synch)
    return scheduler, checkpoint_every, 4


def save_args(args: argparse.Namespace, experiment: Path, name: str, storage: Path) -> None:
    """Write the search's arguments, with absolute paths (a resumed search may start from another folder)."""
    paths = {key: str(Path(vars(args)[key]).resolve()) for key in ("config", "space", "best_config")
             if vars(args)[key]}
    saved = {**vars(args), "name": name, "cwd": os.getcwd(), "storage_path": str(storage), **paths}
    experiment.mkdir(parents=True, exist_ok=True)
    (experiment / ARGS_FILE).write_text(json.dumps(saved, indent=1))


def resumed_args(args: argparse.Namespace, experiment: Path) -> argparse.Namespace:
    """The interrupted search's own arguments (saved at its start), so that trials continue as they began; only how
    to reach Ray and the retries may change."""
    saved = experiment / ARGS_FILE
    if not saved.is_file():
        raise ValueError(f"Invalid --resume: no search to continue in {experiment} (no {ARGS_FILE})")
    values = json.loads(saved.read_text())
    values.setdefault("workers_per_trial", 1)  # saved before the option existed
    values.update(resume=True, address=args.address, num_cpus=args.num_cpus, max_failures=args.max_failures)
    return argparse.Namespace(**values)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = search(args)
    except ValueError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    return 0 if out["best"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
