"""AdaGAN on the grid of 25: modes covered by the mixture of T = 1, 3, 5, 10 components of a small generator.

Each seed is one AdaGAN run (``configs/adagan_grid_small.yaml``: the protocol's grid data cut to 20,000 samples, an
MLP generator with 2 hidden layers of 32 units against a 3 x 128 discriminator, alternating with 5 D steps per G step,
which alone collapses to a few modes; 1000 iterations per component, one thread) grown to T components
with the same command and a larger ``--adagan.components`` (a finished run continues with the next components, so the
T = 3 mixture of a seed is the first three components of its T = 10 run, with uniform weights 1/3). After each T the
mixture is scored as the VEEGAN / PacGAN protocol scores a generator: ``lightning-gan evaluate --metrics modes
--num-samples 2500 --generator live`` (modes with at least one sample within 3 std, and the share of such samples).
Each command runs as its own process, so the wall times include start-up (~5 s per command).

    python bench/adagan_grid.py --seeds 0 1 2 3 --jobs 2 --out bench/out/adagan_grid  # ~11 min on 2 cores
    python bench/adagan_grid.py --seeds 0 1 2 3 --jobs 2 --reweighting none --out bench/out/adagan_grid_control
    python bench/adagan_grid.py --seeds 0 --components 1 2 --steps 50 --out /tmp/ag   # smoke test, ~40 s

``--reweighting none`` is the control: the same components (seeds + t) on the uniform data, i.e. a plain mixture of
independently trained GANs, which tells what AdaGAN's reweighting adds to ensembling.

Writes ``adagan_grid.json`` (every run, command and wall time) and ``adagan_grid.md`` (the table) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "adagan_grid_small.yaml"
LINE = re.compile(r"live: modes (\d+)/(\d+)\s+high quality ([\d.]+)%")


def _run(command: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "a") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, check=False).returncode
    if code != 0:
        raise SystemExit(f"command failed with exit code {code} (see {log}): {' '.join(command)}")
    return time.perf_counter() - start


def one_seed(seed: int, components: list[int], steps: int | None, out: Path, reweighting: str) -> list[dict]:
    root = out / "runs" / f"seed{seed}"
    log = out / f"seed{seed}.log"
    rows, trained = [], 0.0
    for t in components:
        train = [sys.executable, "-m", "lightning_gan", "adagan", "--config", str(CONFIG.relative_to(REPO)),
                 "--adagan.components", str(t), "--adagan.reweighting", reweighting, "--seed_everything", str(seed),
                 "--trainer.default_root_dir", str(root)]
        if steps is not None:
            train += ["--trainer.max_steps", str(steps)]
        trained += _run(train, log)
        report = root / f"mixture_T{t}.eval.json"
        evaluate = [sys.executable, "-m", "lightning_gan", "evaluate", "--ckpt", str(root / "mixture.ckpt"),
                    "--metrics", "modes", "--num-samples", "2500", "--generator", "live", "--device", "cpu",
                    "--out", str(report)]
        _run(evaluate, log)
        values = json.loads(report.read_text())["results"]["live"]
        state = json.loads((root / "adagan.json").read_text())
        rows.append({"seed": seed, "components": t, "modes": int(values["modes_covered"]),
                     "num_modes": int(values["num_modes"]), "high_quality": values["high_quality"],
                     "train_wall_s": round(trained, 1), "mixture_weights": state["mixture_weights"],
                     "data_weights": state["data_weights"], "command": "lightning-gan " + " ".join(train[3:])})
        print(f"seed {seed} T={t}: modes {rows[-1]['modes']}/25, high quality {100 * values['high_quality']:.1f}%, "
              f"training wall {trained:.0f} s (cumulative)", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--components", type=int, nargs="+", default=[1, 3, 5, 10])
    p.add_argument("--steps", type=int, help="iterations per component (default: the config's 1000)")
    p.add_argument("--jobs", type=int, default=1, help="seeds run side by side")
    p.add_argument("--reweighting", choices=("theory_star", "none"), default="theory_star",
                   help="none: the control, a plain mixture of independently trained GANs (no data weights)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "adagan_grid")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        per_seed = list(pool.map(lambda s: one_seed(s, sorted(args.components), args.steps, args.out,
                                                          args.reweighting), args.seeds))
    rows = [row for seed_rows in per_seed for row in seed_rows]
    wall = time.perf_counter() - start
    (args.out / "adagan_grid.json").write_text(json.dumps({"config": str(CONFIG.relative_to(REPO)),
                                                           "reweighting": args.reweighting,
                                                           "steps_per_component": args.steps or 1000,
                                                           "wall_s": round(wall, 1), "rows": rows}, indent=2) + "\n")
    lines = ["| T | " + " | ".join(f"seed {s}: modes, high quality" for s in args.seeds) + " |",
             "|---|" + "---|" * len(args.seeds)]
    for t in sorted(args.components):
        cells = [next(f"{r['modes']}/25, {100 * r['high_quality']:.1f}% ({r['train_wall_s']:.0f} s)" for r in rows
                      if r["seed"] == s and r["components"] == t) for s in args.seeds]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines.append(f"\n(training wall time to reach T, cumulative, in parentheses; whole benchmark {wall:.0f} s with "
                 f"--jobs {args.jobs})")
    (args.out / "adagan_grid.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
