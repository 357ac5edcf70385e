"""Mode-coverage benchmark: the VEEGAN / PacGAN protocol on the ring of 8 and the grid of 25 Gaussians.

Every method is ``configs/protocol_<ring|grid>.yaml`` (the PacGAN reference code's data, players, batch, Adam and
400,000 iterations; see the files' headers and ``lightning_gan.data.mixtures.MODE_PROTOCOL``) plus CLI overrides
that change the training scheme only. Each (method, mixture, seed) is ``lightning-gan fit`` then ``lightning-gan
evaluate`` of the final checkpoint's live generator on the protocol's 2500 samples: modes captured (>= 1 sample
within 3 std of a mode, that mode being the nearest) and the share of such high-quality samples. The table gives
mean +- standard error over seeds (as PacGAN's Table 1, 10 trials) and the per-seed values; JSON holds everything.

    python bench/mode_coverage.py --out bench/out/mode_coverage            # full protocol: long, CPU days
    python bench/mode_coverage.py --quick --out /tmp/mc                    # smoke test: 2 methods, 1 seed, 20 steps

TODO (next increment): AdaGAN rows (Tolstikhin et al. 2017, boosting mixtures of generators); the reference
players' batch norm (G) and maxout (D, 5 pieces); PacGAN packing (D on m concatenated samples).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning_gan.data.mixtures import MODE_PROTOCOL  # noqa: E402

KINDS = ("ring", "grid")


@dataclass(frozen=True)
class Method:
    """A benchmark row: CLI overrides applied on top of ``configs/protocol_<kind>.yaml``."""

    name: str
    overrides: tuple[str, ...] = ()


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
    Method("RpGAN, alternating Adam", ("--model.loss", "rpgan", *_ALTERNATING)),
    # TODO next increment: AdaGAN (Tolstikhin et al. 2017) rows.
)
QUICK_METHODS = METHODS[:2]


@dataclass
class Outcome:
    method: str
    kind: str
    seed: int
    modes_covered: float
    num_modes: float
    high_quality: float
    fit_seconds: float
    overrides: list[str] = field(default_factory=list)


def _run(command: list[str], log: Path) -> float:
    """Run from the repository root with output to ``log``; wall seconds. Raises on a non-zero exit."""
    start = time.monotonic()
    with open(log, "w") as out:
        status = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
    if status != 0:
        raise RuntimeError(f"{' '.join(command)} exited {status}; see {log}")
    return time.monotonic() - start


def slug(name: str) -> str:
    return re.sub(r"\W+", "_", name).strip("_").lower()


def run_one(method: Method, kind: str, seed: int, work: Path, max_steps: int | None) -> Outcome:
    """fit ``configs/protocol_<kind>.yaml`` + overrides, then score its last checkpoint by the protocol."""
    root = work / kind / f"{slug(method.name)}_s{seed}"
    root.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "lightning_gan"]
    steps = () if max_steps is None else ("--trainer.max_steps", str(max_steps))
    overrides = [*method.overrides, *steps]
    fit_seconds = _run([*cli, "fit", "--config", str(REPO / "configs" / f"protocol_{kind}.yaml"),
                        "--seed_everything", str(seed), "--trainer.default_root_dir", str(root / "run"),
                        *overrides], root / "fit.log")
    out = root / "eval.json"
    _run([*cli, "evaluate", "--ckpt", str(root / "run" / "checkpoints" / "last.ckpt"), "--metrics", "modes",
          "--num-samples", str(MODE_PROTOCOL["num_eval_samples"]), "--generator", "live", "--device", "cpu",
          "--seed", str(seed), "--out", str(out)], root / "evaluate.log")
    live = json.loads(out.read_text())["results"]["live"]
    return Outcome(method.name, kind, seed, live["modes_covered"], live["num_modes"], live["high_quality"],
                   fit_seconds, overrides)


def _mean_se(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return mean, se


def summarize(outcomes: list[Outcome], methods: tuple[Method, ...], kinds: tuple[str, ...]) -> tuple[str, list]:
    """Markdown table (mean +- standard error over seeds, per-seed values) and the JSON summary rows."""
    header = "| method |" + "".join(f" {k}: modes (max {8 if k == 'ring' else 25}) | {k}: high quality |"
                                   for k in kinds)
    lines = [header, "|---|" + "---|---|" * len(kinds)]
    rows = []
    for method in methods:
        cells = []
        for kind in kinds:
            mine = sorted((o for o in outcomes if o.method == method.name and o.kind == kind), key=lambda o: o.seed)
            if not mine:
                cells += ["-", "-"]
                continue
            modes, quality = _mean_se([o.modes_covered for o in mine]), _mean_se([o.high_quality for o in mine])
            per_seed = "/".join(f"{o.modes_covered:.0f}" for o in mine)
            cells += [f"{modes[0]:.1f} ± {modes[1]:.1f} ({per_seed})",
                      f"{100 * quality[0]:.1f} ± {100 * quality[1]:.1f} %"]
            rows.append({"method": method.name, "kind": kind, "seeds": [o.seed for o in mine],
                         "modes_mean": modes[0], "modes_se": modes[1],
                         "high_quality_mean": quality[0], "high_quality_se": quality[1]})
        lines.append(f"| {method.name} | " + " | ".join(cells) + " |")
    note = (f"\nN = {MODE_PROTOCOL['num_eval_samples']} samples of the live generator per run; high quality: within "
            f"{MODE_PROTOCOL['num_std']:g} std of the nearest mode; a mode is captured with >= "
            f"{MODE_PROTOCOL['min_samples']} high-quality sample; mean ± standard error over seeds (nan for one seed).\n")
    return "\n".join(lines) + "\n" + note, rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "mode_coverage",
                   help="folder for runs/, mode_coverage.md and mode_coverage.json")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(range(10)), help="PacGAN: 10 trials")
    p.add_argument("--methods", nargs="+", metavar="SLUG", help="subset of the methods, by slug of the name")
    p.add_argument("--max-steps", type=int, help="override the protocol's 400,000 iterations (shorter runs)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each uses one thread)")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 methods, seed 0, 20 steps")
    p.add_argument("--list", action="store_true", help="print the method slugs and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    methods = METHODS
    if args.list:
        print("\n".join(f"{slug(m.name)}: {m.name} {' '.join(m.overrides)}" for m in METHODS))
        return {}
    if args.quick:
        methods, args.seeds = QUICK_METHODS, [0]
        args.max_steps = args.max_steps or 20
    if args.methods:
        known = {slug(m.name): m for m in METHODS}
        unknown = [s for s in args.methods if s not in known]
        if unknown:
            raise SystemExit(f"unknown methods {unknown}; see --list")
        methods = tuple(known[s] for s in args.methods)
    kinds = tuple(args.kinds)
    args.out.mkdir(parents=True, exist_ok=True)
    tasks = [(m, k, s) for m in methods for k in kinds for s in args.seeds]
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            outcomes = list(pool.map(lambda t: run_one(*t, args.out / "runs", args.max_steps), tasks))
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads
    table, rows = summarize(outcomes, methods, kinds)
    result = {"protocol": MODE_PROTOCOL, "max_steps": args.max_steps or 400_000, "seeds": args.seeds,
              "summary": rows, "runs": [asdict(o) for o in outcomes]}
    (args.out / "mode_coverage.md").write_text(table)
    (args.out / "mode_coverage.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table)
    return result


if __name__ == "__main__":
    main()
