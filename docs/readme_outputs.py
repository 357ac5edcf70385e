"""Regenerate the outputs that README.md quotes, so that they cannot drift from what the code prints.

Each quoted output sits between two markers in README.md,

    <!-- readme-output: NAME -->
    ...
    <!-- /readme-output -->

and this script rewrites what is between them from fresh runs of the documented commands:

* ``quickstart``, ``quickstart-two-sample``: ``lightning-gan fit --config configs/quickstart.yaml`` then
  ``lightning-gan evaluate --two-sample`` of its last checkpoint (the lines it prints, and the wall times).
* ``mnist-two-sample``: 500 iterations of ``configs/mnist_cpu.yaml``, then FID and both two-sample tests.
* ``ring``: the ring quickstarts of every method, seeds 0, 1 and 2: modes covered and high-quality share (a sample
  within 3 standard deviations of a mode, the one threshold of ``lightning_gan.metrics.toy``) of the live and the
  EMA generator at the last iteration, from ``lightning-gan evaluate --metrics modes``.

    python docs/readme_outputs.py                    # all, rewrite README.md (ring: ~40 min on 2 cores)
    python docs/readme_outputs.py --only quickstart  # ~3 min
    python docs/readme_outputs.py --check            # exit 1 if README.md differs from a fresh run (times aside)

Runs go to a temporary folder (``--keep DIR`` to keep them). Each fit runs with the config's own thread count (1 in
the ring configs); the ring table reports CPU seconds per fit, which do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SEEDS = (0, 1, 2)
GENERATOR_LINE = re.compile(r"^(live|uniform|ema|real \(\w+\)): ")  # evaluate's result lines, one per generator
BLOCK = re.compile(r"(<!-- readme-output: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /readme-output -->)", re.S)


@dataclass(frozen=True)
class RingMethod:
    """One row of the ring table: a quickstart config and the overrides that make the method."""

    name: str
    config: str
    overrides: tuple[str, ...] = ()


RING_METHODS = (
    RingMethod("Extragradient Adam (the quickstart)", "configs/quickstart.yaml"),
    RingMethod("Simultaneous Adam", "configs/quickstart_consensus.yaml", ("--model.consensus", "null")),
    RingMethod("Simultaneous Adam + consensus (gamma 10)", "configs/quickstart_consensus.yaml"),
    RingMethod("Simultaneous Adam + unrolled D (k 5)", "configs/quickstart_unrolled.yaml",
               ("--model.unroll_steps", "5")),
    RingMethod("Simultaneous Adam + unrolled D (k 10)", "configs/quickstart_unrolled.yaml",
               ("--model.unroll_steps", "10")),
    RingMethod("Simultaneous Adam + Lookahead-minmax (k 5, alpha 0.5)", "configs/quickstart_lookahead.yaml"),
    RingMethod("TTUR (D 4x, inverse-sqrt; G linear decay)", "configs/quickstart_ttur.yaml"),
    RingMethod("RpGAN + R1 + R2, alternating Adam, cosine decay", "configs/quickstart_rpgan.yaml"),
)


def run(command: list[str], log: Path) -> tuple[float, float]:
    """Run a command from the repository root, its output to ``log``; (wall seconds, CPU seconds of the process).
    CPU time does not depend on what else the machine runs. Raises on a non-zero exit."""
    start = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}; see {log}")
    return time.monotonic() - start, usage.ru_utime + usage.ru_stime


def fit_and_evaluate(config: str, root: Path, overrides: tuple[str, ...] = (), seed: int = 0,
                     evaluate_args: tuple[str, ...] = ("--metrics", "modes")
                     ) -> tuple[dict, tuple[float, float], float, list[str]]:
    """``lightning-gan fit`` then ``evaluate`` of its last checkpoint: (results, fit (wall, CPU) seconds, evaluate
    wall seconds, the per-generator lines evaluate printed)."""
    root.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "lightning_gan"]
    fit_seconds = run([*cli, "fit", "--config", config, "--seed_everything", str(seed),
                       "--trainer.default_root_dir", str(root / "run"), *overrides], root / "fit.log")
    out = root / "eval.json"
    eval_seconds, _ = run([*cli, "evaluate", "--ckpt", str(root / "run" / "checkpoints" / "last.ckpt"),
                           *evaluate_args, "--out", str(out)], root / "evaluate.log")
    printed = [line for line in (root / "evaluate.log").read_text().splitlines() if GENERATOR_LINE.match(line)]
    return json.loads(out.read_text())["results"], fit_seconds, eval_seconds, printed


def quickstart_blocks(work: Path) -> dict[str, str]:
    """The quickstart's evaluation (top of the README) and its two-sample tests (Evaluation section), one run."""
    _, (fit_seconds, _), eval_seconds, printed = fit_and_evaluate(
        "configs/quickstart.yaml", work / "quickstart",
        evaluate_args=("--metrics", "modes,mmd,energy", "--two-sample"))
    modes = "\n".join(line for line in printed if re.match(r"^\w+: modes ", line))
    return {
        "quickstart": ("```bash\nlightning-gan fit --config configs/quickstart.yaml\n"
                       "lightning-gan evaluate --ckpt runs/quickstart/checkpoints/last.ckpt\n```\n"
                       f"```\n{modes}\n```\n"
                       f"(fit {fit_seconds:.0f} s wall on this machine, start-up included.)\n"),
        "quickstart-two-sample": ("```console\n$ lightning-gan evaluate --ckpt runs/quickstart/checkpoints/last.ckpt "
                                  "--two-sample\n" + "\n".join(printed) + "\n```\n"
                                  f"({eval_seconds:.0f} s wall on this machine, start-up included.)\n"),
    }


def mnist_two_sample_block(work: Path) -> str:
    """A short run of mnist_cpu.yaml scored by FID and both two-sample tests."""
    steps = 500
    _, (fit_seconds, _), eval_seconds, printed = fit_and_evaluate(
        "configs/mnist_cpu.yaml", work / "mnist",
        overrides=("--trainer.max_steps", str(steps), "--metrics.every_n_steps", "0", "--samples.every_n_steps", "0"),
        evaluate_args=("--metrics", "fid", "--two-sample"))
    return (f"```console\n$ lightning-gan fit --config configs/mnist_cpu.yaml --trainer.max_steps {steps} "
            "--metrics.every_n_steps 0 --samples.every_n_steps 0\n"
            "$ lightning-gan evaluate --ckpt runs/mnist_cpu/checkpoints/last.ckpt --two-sample --metrics fid\n"
            + "\n".join(printed) + "\n```\n"
            f"(fit {fit_seconds:.0f} s, evaluate {eval_seconds:.0f} s wall on this machine, start-up included.)\n")


def ring_block(work: Path, jobs: int) -> str:
    tasks = [(m, seed) for m in RING_METHODS for seed in SEEDS]

    def one(task: tuple[RingMethod, int]) -> tuple[dict, float]:
        method, seed = task
        slug = re.sub(r"\W+", "_", method.name).strip("_").lower()
        results, (_, cpu_seconds), _, _ = fit_and_evaluate(method.config, work / "ring" / f"{slug}_s{seed}",
                                                           method.overrides, seed)
        return results, cpu_seconds

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        outcomes = dict(zip(tasks, pool.map(one, tasks)))
    lines = ["| method | config | live: modes (s0/s1/s2) | live: high quality | EMA: modes | EMA: high quality "
             "| fit, CPU s |", "|---|---|---|---|---|---|---|"]
    for method in RING_METHODS:
        rows = [outcomes[(method, seed)] for seed in SEEDS]

        def cells(generator: str) -> tuple[str, str]:
            modes = "/".join(f"{int(r[generator]['modes_covered'])}" for r, _ in rows)
            quality = "/".join(f"{100 * r[generator]['high_quality']:.0f}" for r, _ in rows) + "%"
            return modes, quality

        config = f"`{Path(method.config).name}`" + (f" `{' '.join(method.overrides)}`" if method.overrides else "")
        seconds = statistics.median(s for _, s in rows)
        lines.append(f"| {method.name} | {config} | {' | '.join(cells('live'))} | {' | '.join(cells('ema'))} "
                     f"| {seconds:.0f} |")
    return "\n".join(lines) + ("\n\n8 modes; N = 10,000 samples per generator; fit: CPU seconds of the `lightning-gan "
                               "fit` process (user + system, start-up included, 1 thread), median of the 3 seeds.\n")


def without_times(text: str) -> str:
    """The text with wall times masked (they vary from run to run): ``--check`` compares the rest."""
    text = re.sub(r"\b\d+ s\b", "<t> s", text)
    return re.sub(r"\| \d+ \|$", "| <t> |", text, flags=re.M)


def replace_blocks(text: str, blocks: dict[str, str]) -> str:
    found = {m.group("name") for m in BLOCK.finditer(text)}
    missing = set(blocks) - found
    if missing:
        raise SystemExit(f"readme_outputs: README.md has no block named {', '.join(sorted(missing))}")
    return BLOCK.sub(lambda m: m.group(1) + blocks[m.group("name")] + m.group(4) if m.group("name") in blocks
                     else m.group(0), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("quickstart", "ring", "mnist"), help="regenerate these blocks only")
    parser.add_argument("--check", action="store_true", help="compare with README.md instead of writing it")
    parser.add_argument("--jobs", type=int, default=2, help="ring fits at a time (default 2)")
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        blocks = {}
        if args.only in (None, "quickstart"):
            blocks.update(quickstart_blocks(work))
        if args.only in (None, "mnist"):
            blocks["mnist-two-sample"] = mnist_two_sample_block(work)
        if args.only in (None, "ring"):
            blocks["ring"] = ring_block(work, args.jobs)
    text = README.read_text()
    new = replace_blocks(text, blocks)
    if args.check:
        if without_times(new) != without_times(text):
            print("README.md differs from a fresh run:", file=sys.stderr)
            for name, body in blocks.items():
                print(f"--- {name}\n{body}", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    print("\n\n".join(f"{name}:\n{body}" for name, body in blocks.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
