"""Mode-coverage benchmark: the VEEGAN / PacGAN protocol on the ring of 8 and the grid of 25 Gaussians.

Every row is ``configs/protocol_<ring|grid>.yaml`` (the PacGAN reference code's data, players, batch, Adam and
400,000 iterations; see the files' headers and ``lightning_gan.data.mixtures.MODE_PROTOCOL``) plus CLI overrides
that change the training method only. Each (method, mixture, seed) is ``lightning-gan fit`` (``adagan`` for the
AdaGAN rows) then ``lightning-gan evaluate`` of the final generator (live) on the protocol's 2500 samples: modes
captured (>= 1 sample within 3 std of a mode, that mode being the nearest) and the share of such high-quality
samples. The table gives mean ± standard error over seeds (as PacGAN's Table 1, 10 trials), the per-seed modes and
PacGAN's Table 1 as reference rows; the picture shows 2500 samples of each method's seed-0 generator on the grid.

Budgets (``--budget``); in both, every method gets the same number of generator updates (iterations):
  full  the protocol: 400,000 iterations, 100,000 samples, the reference players (a GPU / cluster job):
            python bench/mode_coverage.py --budget full --jobs 8 --out bench/out/mode_coverage_full
  cpu   a stated reduction that runs every method x {ring, grid} x 10 seeds in under 30 minutes on 2 cores
        (~20 min predicted from a calibration of CPU seconds per run): 800 iterations, players at a quarter of the
        width (G 4 x 100 with BatchNorm, D 3 maxout layers of 50 units x 5 pieces), 10,000 training samples (so
        that SVRE, whose snapshot is a full data pass taken with probability 1/n per iteration, n = iterations per
        pass, snapshots every ~100 iterations: ~ one extra F-evaluation per iteration, as in the protocol). Far
        from converged (the protocol trains 500 times longer): a comparison of early training, not a reproduction.
            python bench/mode_coverage.py --budget cpu --jobs 2 --out bench/out/mode_coverage
AdaGAN with T components: the T components share the run's generator updates (each gets iterations // T), so every
row of the table costs the same number of generator updates.

Runs go to worker processes (``--jobs``, one thread each) that import the library once and run ``fit`` /
``evaluate`` / ``sample`` in-process (``lightning_gan.cli.main``), saving ~5 s of imports per command.

    python bench/mode_coverage.py --quick --out /tmp/mc        # smoke test: 2 methods, seed 0, 20 iterations
    python bench/mode_coverage.py --list                       # method slugs (for --methods / --exclude)

Writes ``mode_coverage.md`` (table), ``mode_coverage.json`` (settings, summary, every run, wall time) and
``mode_coverage_<kind>.png`` (the picture) to ``--out``; the runs (logs, checkpoints) to ``--out/runs``.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import math
import os
import queue
import re
import resource
import statistics
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning_gan.data.mixtures import MODE_PROTOCOL

KINDS = ("ring", "grid")
NUM_MODES = {"ring": 8, "grid": 25}
PROTOCOL_ITERATIONS = 400_000  # configs/protocol_*.yaml trainer.max_steps ("num_epoch": 400)
CPU_ITERATIONS = 800  # calibrated: ~20 min predicted for all rows x {ring, grid} x 10 seeds, 2 workers


@dataclass(frozen=True)
class Budget:
    """How a run is sized: iterations (= generator updates) per run and overrides shared by every method."""

    name: str
    iterations: int
    overrides: tuple[str, ...] = ()
    device: str | None = None  # evaluate/sample device; None: their default (cuda when available)


BUDGETS = {
    "full": Budget("full", PROTOCOL_ITERATIONS),
    "cpu": Budget("cpu", CPU_ITERATIONS, (
        "--trainer.accelerator=cpu",
        "--model.generator.init_args.hidden_dim=100",      # reference 400
        "--model.discriminator.init_args.hidden_dim=50",   # reference 200 (5 maxout pieces kept)
        "--data.init_args.num_samples=10000",              # reference 100,000
    ), device="cpu"),
}


@dataclass(frozen=True)
class Method:
    """A benchmark row: CLI overrides applied on top of ``configs/protocol_<kind>.yaml``; ``adagan_components``
    set: the row runs ``lightning-gan adagan`` with that many components instead of ``fit``."""

    name: str
    overrides: tuple[str, ...] = ()
    adagan_components: int | None = None


_ALTERNATING = ("--model.scheme", "alternating", "--model.n_dis", "1")
METHODS: tuple[Method, ...] = (
    Method("Simultaneous Adam (the protocol: PacGAN's GAN row)"),
    Method("Alternating Adam", _ALTERNATING),
    Method("Extragradient Adam", ("--model.scheme", "extragradient")),
    Method("Past extragradient Adam", ("--model.scheme", "past_extragradient")),
    Method("Optimistic Adam", ("--model.scheme", "optimistic")),
    Method("Alternating, negative momentum (Adam beta1 -0.5 on D)",
           (*_ALTERNATING, "--model.d_optimizer.momentum", "-0.5")),
    Method("SVRE (variance-reduced extragradient), Adam", ("--model.scheme", "svre")),
    Method("Simultaneous Adam + consensus (gamma 10)", ("--model.consensus", "10.0")),
    Method("Simultaneous Adam + unrolled D (k 5)", ("--model.unroll_steps", "5")),
    Method("Simultaneous Adam + Lookahead-minmax (k 5, alpha 0.5)",
           ("--model.lookahead.k", "5", "--model.lookahead.alpha", "0.5")),
    # r1_gamma = r2_gamma as in configs/quickstart_rpgan.yaml (R3GAN's RpGAN + R1 + R2)
    Method("RpGAN + R1 + R2 (gamma 0.1), alternating Adam",
           ("--model.loss", "rpgan", "--model.r1_gamma", "0.1", "--model.r2_gamma", "0.1", *_ALTERNATING)),
    *(Method(f"AdaGAN, T = {t} (simultaneous Adam components)", adagan_components=t) for t in (1, 3, 5, 10)),
)
QUICK_METHODS = METHODS[:2]

#: PacGAN Table 1 (github fjxmlzn/PacGAN, synthetic_data_experiments/results/Table1.png): (mean, standard error) of
#: modes and of the high-quality share in %, 10 trials, 400,000 iterations, the reference players.
PACGAN_TABLE1 = {
    "GAN": {"ring": ((6.3, 0.5), (98.2, 0.2)), "grid": ((17.3, 0.8), (94.8, 0.7))},
    "PacGAN2": {"ring": ((7.9, 0.1), (95.6, 2.0)), "grid": ((23.8, 0.7), (91.3, 0.8))},
    "PacGAN3": {"ring": ((7.8, 0.1), (97.7, 0.3)), "grid": ((24.6, 0.4), (94.2, 0.4))},
    "PacGAN4": {"ring": ((7.8, 0.1), (95.9, 1.4)), "grid": ((24.8, 0.2), (93.6, 0.6))},
}


@dataclass
class Outcome:
    method: str
    kind: str
    seed: int
    modes_covered: float
    num_modes: float
    high_quality: float
    fit_seconds: float  # wall seconds of the training command (fit, or adagan with all its components)
    overrides: list[str] = field(default_factory=list)  # the training command's arguments after its subcommand
    evaluate_seconds: float = float("nan")
    cpu_seconds: float = float("nan")  # CPU time of train + evaluate (+ sample): the cost without the machine's load
    error: str | None = None
    samples: str | None = None  # npz of the picture's samples (seed 0 of --picture-kind), when drawn


def slug(name: str) -> str:
    return re.sub(r"\W+", "_", name).strip("_").lower()


def adagan_steps(method: Method, iterations: int) -> int:
    """Iterations of each AdaGAN component: the run's generator updates split over the T components."""
    return max(1, iterations // method.adagan_components)


def commands(method: Method, kind: str, seed: int, root: Path, budget: Budget, iterations: int,
             draw_samples: bool) -> tuple[list[str], list[str], list[str] | None]:
    """The ``lightning-gan`` argument lists of one run: train, evaluate, and (for the picture) sample."""
    config = str(REPO / "configs" / f"protocol_{kind}.yaml")
    common = ["--config", config, "--seed_everything", str(seed), "--trainer.default_root_dir", str(root / "run"),
              "--trainer.strategy=auto", "--trainer.enable_progress_bar=false", *budget.overrides]
    if method.adagan_components is None:
        train = ["fit", *common, "--trainer.max_steps", str(iterations), *method.overrides]
        ckpt = root / "run" / "checkpoints" / "last.ckpt"
    else:
        train = ["adagan", *common, "--adagan.components", str(method.adagan_components),
                 "--trainer.max_steps", str(adagan_steps(method, iterations)), *method.overrides]
        ckpt = root / "run" / "mixture.ckpt"
    device = ["--device", budget.device] if budget.device else []
    evaluate = ["evaluate", "--ckpt", str(ckpt), "--metrics", "modes", "--num-samples",
                str(MODE_PROTOCOL["num_eval_samples"]), "--generator", "live", "--seed", str(seed),
                "--out", str(root / "eval.json"), *device]
    sample = None
    if draw_samples:
        sample = ["sample", "--ckpt", str(ckpt), "--generator", "live", "--num-samples",
                  str(MODE_PROTOCOL["num_eval_samples"]), "--seed", str(seed), "--format", "npz",
                  "--out", str(root / "samples"), *device]
    return train, evaluate, sample


# -- the worker process -------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _output_to(log: Path):
    """File descriptors 1 and 2 (and sys.stdout / sys.stderr) go to ``log`` for the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        try:
            yield out
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _lightning_gan(argv: list[str]):
    """One ``lightning-gan`` command in this process; returns what evaluate / sample return (None for fit)."""
    import torch
    import torch.distributed as dist

    threads, saved_argv = torch.get_num_threads(), sys.argv
    sys.argv = ["lightning-gan"]
    try:
        if argv[0] == "evaluate":
            from lightning_gan.evaluate import main as evaluate
            return evaluate(argv[1:])
        if argv[0] == "sample":
            from lightning_gan.sample import main as sample
            return sample(argv[1:])
        from lightning_gan.cli import main
        return main(argv)
    finally:
        sys.argv = saved_argv
        torch.set_num_threads(threads)
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _cpu_seconds() -> float:
    """CPU time of this process so far (user + system): a run's cost independent of the machine's other load."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_task(task: dict) -> dict:
    """Runs one (method, kind, seed): its commands in order, output to ``root/run.log``; never raises."""
    root = Path(task["root"])
    root.mkdir(parents=True, exist_ok=True)
    result = {"seconds": [], "cpu_seconds": [], "error": None, "report": None, "samples": None}
    with _output_to(root / "run.log") as log:
        for argv in task["commands"]:
            log.write(f"\n$ lightning-gan {' '.join(argv)}\n")
            log.flush()
            start, cpu_start = time.monotonic(), _cpu_seconds()
            try:
                value = _lightning_gan(argv)
            except (Exception, SystemExit) as error:  # noqa: BLE001 (a failed run, e.g. a divergence, is a table cell)
                traceback.print_exc()
                result["error"] = f"{argv[0]}: {type(error).__name__}: {error}"[:500]
                break
            finally:
                result["seconds"].append(time.monotonic() - start)
                result["cpu_seconds"].append(_cpu_seconds() - cpu_start)
            if argv[0] == "evaluate":
                result["report"] = value["results"]["live"]
            elif argv[0] == "sample":
                result["samples"] = str(value)
    return result


def worker_loop() -> None:
    """``--worker``: read one JSON task per line on stdin, answer one JSON line each (on the original stdout)."""
    import torch

    torch.set_num_threads(1)
    parent = os.getppid()

    def watch_parent() -> None:  # a worker outlives no killed benchmark (a run can take hours)
        while os.getppid() == parent:
            time.sleep(2)
        os._exit(1)

    threading.Thread(target=watch_parent, daemon=True).start()
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    for line in sys.stdin:
        answers.write(json.dumps(run_task(json.loads(line))) + "\n")


class _Worker:
    """A ``--worker`` process; restarted when it dies."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None

    def run(self, task: dict) -> dict:
        if self.process is None or self.process.poll() is not None:
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker"], cwd=REPO,
                                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.process.stdin.write(json.dumps(task) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            self.process = None
            return {"seconds": [], "cpu_seconds": [], "error": "the worker process died (see run.log)", "report": None,
                    "samples": None}
        return json.loads(line)

    def close(self) -> None:
        if self.process is not None:
            self.process.stdin.close()
            self.process.wait()


def run_all(tasks: list[tuple[Method, str, int, dict]], jobs: int, progress: bool = True) -> list[Outcome]:
    """Runs the tasks on ``jobs`` worker processes; outcomes in task order."""
    pending: queue.Queue = queue.Queue()
    for index, task in enumerate(tasks):
        pending.put((index, task))
    results: list[Outcome | None] = [None] * len(tasks)
    done = [0]
    lock = threading.Lock()

    def serve() -> None:
        worker = _Worker()
        try:
            while True:
                try:
                    index, (method, kind, seed, task) = pending.get_nowait()
                except queue.Empty:
                    return
                answer = worker.run(task)
                report = answer["report"] or {}
                seconds = answer["seconds"] + [float("nan")] * 2
                results[index] = Outcome(method.name, kind, seed, report.get("modes_covered", float("nan")),
                                         report.get("num_modes", NUM_MODES[kind]),
                                         report.get("high_quality", float("nan")), seconds[0],
                                         task["commands"][0][1:], seconds[1],
                                         sum(answer["cpu_seconds"]) or float("nan"),
                                         answer["error"], answer["samples"])
                with lock:
                    done[0] += 1
                    if progress:
                        o = results[index]
                        state = f"ERROR {o.error}" if o.error else f"modes {o.modes_covered:.0f}/{o.num_modes:.0f}"
                        print(f"[{done[0]}/{len(tasks)}] {slug(method.name)} {kind} seed {seed}: {state} "
                              f"(train {o.fit_seconds:.1f} s, cpu {o.cpu_seconds:.1f} s)", flush=True)
        finally:
            worker.close()

    threads = [threading.Thread(target=serve) for _ in range(max(1, min(jobs, len(tasks))))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results  # type: ignore[return-value]


# -- table, picture -----------------------------------------------------------------------------------------------

def _mean_se(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return mean, se


def summarize(outcomes: list[Outcome], methods: tuple[Method, ...], kinds: tuple[str, ...],
              reference: bool = True) -> tuple[str, list]:
    """Markdown table (mean ± standard error over seeds, per-seed modes; failed runs counted apart; PacGAN's Table 1
    as reference rows) and the JSON summary rows."""
    header = "| method |" + "".join(f" {k}: modes (max {NUM_MODES[k]}) | {k}: high quality |" for k in kinds)
    lines = [header, "|---|" + "---|---|" * len(kinds)]
    rows = []
    for method in methods:
        cells = []
        for kind in kinds:
            mine = sorted((o for o in outcomes if o.method == method.name and o.kind == kind), key=lambda o: o.seed)
            ok = [o for o in mine if o.error is None]
            failed = len(mine) - len(ok)
            if not ok:
                cells += [f"{failed} failed" if failed else "-", "-"]
                continue
            modes, quality = _mean_se([o.modes_covered for o in ok]), _mean_se([o.high_quality for o in ok])
            per_seed = "/".join(f"{o.modes_covered:.0f}" for o in ok)
            cells += [f"{modes[0]:.1f} ± {modes[1]:.1f} ({per_seed})" + (f", {failed} failed" if failed else ""),
                      f"{100 * quality[0]:.1f} ± {100 * quality[1]:.1f} %"]
            rows.append({"method": method.name, "kind": kind, "seeds": [o.seed for o in ok],
                         "failed_seeds": [o.seed for o in mine if o.error is not None],
                         "modes_mean": modes[0], "modes_se": modes[1],
                         "high_quality_mean": quality[0], "high_quality_se": quality[1]})
        lines.append(f"| {method.name} | " + " | ".join(cells) + " |")
    if reference:
        for name, values in PACGAN_TABLE1.items():
            cells = []
            for kind in kinds:
                (m, m_se), (q, q_se) = values[kind]
                cells += [f"{m:.1f} ± {m_se:.1f}", f"{q:.1f} ± {q_se:.1f} %"]
            lines.append(f"| *PacGAN Table 1: {name} (400k iterations, reference players)* | " + " | ".join(cells)
                         + " |")
    note = (f"\nN = {MODE_PROTOCOL['num_eval_samples']} samples of the live generator per run; high quality: within "
            f"{MODE_PROTOCOL['num_std']:g} std of the nearest mode; a mode is captured with >= "
            f"{MODE_PROTOCOL['min_samples']} high-quality sample; mean ± standard error over seeds (nan for one "
            f"seed), per-seed modes in brackets.\n")
    return "\n".join(lines) + "\n" + note, rows


def draw_picture(outcomes: list[Outcome], methods: tuple[Method, ...], kind: str, seed: int, path: Path) -> Path:
    """One scatter panel per method: the samples of its ``seed`` generator on ``kind``, true modes marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from lightning_gan.data.mixtures import mixture_modes

    spec = MODE_PROTOCOL[kind]
    modes = mixture_modes(kind, radius=spec.get("radius", 2.0), grid_step=spec.get("grid_step", 2.0)).numpy()
    lim = float(np.abs(modes).max()) * 1.5 + 0.5
    columns = min(5, len(methods))
    rows = math.ceil(len(methods) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.6 * rows), squeeze=False,
                             layout="constrained")
    try:
        for ax in axes.flat[len(methods):]:
            ax.axis("off")
        for ax, method in zip(axes.flat, methods):
            mine = [o for o in outcomes if o.method == method.name and o.kind == kind and o.seed == seed]
            title = "\n".join(textwrap.wrap(method.name, 34)[:2])
            if mine and mine[0].samples and Path(mine[0].samples).exists():
                points = np.load(mine[0].samples)["samples"]
                ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.4, linewidths=0, zorder=3)  # over the modes
                title += f"\nmodes {mine[0].modes_covered:.0f}/{NUM_MODES[kind]}, hq {100 * mine[0].high_quality:.0f} %"
            else:
                error = mine[0].error if mine and mine[0].error else "no samples"
                ax.text(0, 0, error[:60], ha="center", va="center", fontsize=7, wrap=True)
                title += "\n(no run)"
            ax.scatter(modes[:, 0], modes[:, 1], s=25, marker="x", c="red", linewidths=1)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=8)
        fig.suptitle(f"{kind}: {MODE_PROTOCOL['num_eval_samples']} samples of each method's seed-{seed} generator "
                     f"(live); red x: the {NUM_MODES[kind]} modes", fontsize=10)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


# -- command line -------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "mode_coverage",
                   help="folder for runs/, mode_coverage.md, mode_coverage.json and the picture")
    p.add_argument("--budget", choices=tuple(BUDGETS), default="full",
                   help=f"full: the protocol (400,000 iterations; GPU / cluster); cpu: {CPU_ITERATIONS} iterations, "
                        "quarter-width players, 10,000 samples (~20 min on 2 cores with --jobs 2)")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(range(10)), help="PacGAN: 10 trials")
    p.add_argument("--methods", nargs="+", metavar="SLUG", help="subset of the methods: slugs or globs ('adagan*')")
    p.add_argument("--exclude", nargs="+", metavar="SLUG", default=[], help="methods left out: slugs or globs")
    p.add_argument("--max-steps", type=int, help="iterations per run instead of the budget's")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (each one thread)")
    p.add_argument("--picture-kind", choices=KINDS, default="grid", help="mixture of the picture (default grid)")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 methods, seed 0, 20 iterations, cpu budget")
    p.add_argument("--list", action="store_true", help="print the method slugs and exit")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _select(patterns: list[str], what: str) -> set[str]:
    slugs = [slug(m.name) for m in METHODS]
    chosen = set()
    for pattern in patterns:
        matched = fnmatch.filter(slugs, pattern)
        if not matched:
            raise SystemExit(f"Invalid {what}: {pattern!r} matches no method; see --list")
        chosen.update(matched)
    return chosen


def adagan_available() -> bool:
    from lightning_gan.cli import SUBCOMMANDS

    return "adagan" in SUBCOMMANDS


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.worker:
        worker_loop()
        return {}
    if args.list:
        print("\n".join(f"{slug(m.name)}: {m.name} "
                        f"{'adagan --adagan.components ' + str(m.adagan_components) if m.adagan_components else 'fit'}"
                        f" {' '.join(m.overrides)}" for m in METHODS))
        return {}
    methods = METHODS
    if args.quick:
        methods, args.seeds, args.budget = QUICK_METHODS, [0], "cpu"
        args.max_steps = args.max_steps or 20
    if args.methods:
        chosen = _select(args.methods, "--methods")
        methods = tuple(m for m in METHODS if slug(m.name) in chosen)
    excluded = _select(args.exclude, "--exclude") if args.exclude else set()
    methods = tuple(m for m in methods if slug(m.name) not in excluded)
    if any(m.adagan_components for m in methods) and not adagan_available():
        raise SystemExit("The AdaGAN rows need `lightning-gan adagan`, which this checkout does not have yet; "
                         "leave them out with --exclude 'adagan*'")
    budget = BUDGETS[args.budget]
    iterations = args.max_steps or budget.iterations
    kinds = tuple(args.kinds)
    picture_kind = args.picture_kind if args.picture_kind in kinds else kinds[0]
    picture_seed = min(args.seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    tasks = []
    for method in methods:
        for kind in kinds:
            for seed in args.seeds:
                root = args.out / "runs" / kind / f"{slug(method.name)}_s{seed}"
                argvs = commands(method, kind, seed, root, budget, iterations,
                                 draw_samples=(kind, seed) == (picture_kind, picture_seed))
                tasks.append((method, kind, seed, {"root": str(root), "commands": [a for a in argvs if a]}))
    start = time.monotonic()
    outcomes = run_all(tasks, args.jobs)
    wall = time.monotonic() - start
    table, rows = summarize(outcomes, methods, kinds)
    picture = draw_picture(outcomes, methods, picture_kind, picture_seed,
                           args.out / f"mode_coverage_{picture_kind}.png")
    settings = (f"Budget `{budget.name}`: {iterations} iterations (= generator updates) per run"
                + (" (AdaGAN: split over its T components)" if any(m.adagan_components for m in methods) else "")
                + (f"; overrides of the protocol: {' '.join(budget.overrides)}" if budget.overrides else "")
                + f"; seeds {args.seeds}; {args.jobs} worker(s) on {os.cpu_count()} cores; "
                  f"wall time {wall / 60:.1f} min.\n\n")
    result = {"protocol": MODE_PROTOCOL, "budget": asdict(budget), "max_steps": iterations, "seeds": args.seeds,
              "kinds": list(kinds), "jobs": args.jobs, "cpu_count": os.cpu_count(), "wall_seconds": wall,
              "methods": [asdict(m) for m in methods], "picture": str(picture), "summary": rows,
              "reference_pacgan_table1": PACGAN_TABLE1, "runs": [asdict(o) for o in outcomes]}
    (args.out / "mode_coverage.md").write_text(settings + table)
    (args.out / "mode_coverage.json").write_text(json.dumps(result, indent=2) + "\n")
    print(settings + table)
    print(f"wrote {args.out / 'mode_coverage.md'}, {args.out / 'mode_coverage.json'}, {picture}")
    return result


if __name__ == "__main__":
    main()
