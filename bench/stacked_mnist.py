"""Stacked MNIST (1,000 modes): modes covered and KL(model || uniform) per method family, at equal F-evaluations.

    python bench/stacked_mnist.py --out DIR                     # the full protocol: a GPU job (see below)
    python bench/stacked_mnist.py --budget cpu --out DIR        # one CPU-sized run per method, ~17 min on 2 cores

The protocol (Metz et al., "Unrolled GANs", ICLR 2017; VEEGAN, Srivastava et al. 2017; PacGAN, Lin et al. 2018;
reference code github fjxmlzn/PacGAN, ``stacked_MNIST_experiments/VEEGAN_experiment/config.py`` and ``model.py``):
128,000 stacked images, DCGAN players, Adam lr 2e-4 beta1 0.5, batch 64, 50 epochs (100,000 D steps), 10 runs;
scored on 26,000 samples by the number of distinct digit triples read (out of 1,000) and KL(model || uniform). Every
run here is the project's own training, ``lightning-gan fit --config configs/stacked_mnist_dcgan.yaml`` (GPU budget)
or ``configs/stacked_mnist_cpu.yaml`` (CPU budget), with the method's scheme, then ``lightning-gan evaluate
--num-samples 26000`` of its live and EMA generators (which also scores 26,000 real stacks: the classifier's ceiling).

Methods (``--methods``), all with the config's Adam settings; the budget is a number of F-evaluations (one field
evaluation on a batch; see the README), the same for every method, so iterations = budget / cost per iteration:

- ``simultaneous`` (SimAdam, 1 F-evaluation per iteration), ``alternating`` (AltAdam, one D then one G step: 2),
  ``extragradient`` (ExtraAdam: 2), ``optimistic`` (OptimisticAdam: 1), ``past_extragradient`` (PastExtraAdam: 1);
- ``svre`` is not in the defaults of either budget: on top of 4 F-evaluations per iteration it takes a pass over
  the 128,000 images at every snapshot, too costly for a CPU, and its settings for DCGAN players are not tuned here.

Budgets (``--budget``):

- ``gpu`` (default; a GPU job, not run on a CPU): 200,000 F-evaluations per run (100,000 alternating iterations,
  the reference's 100,000 D steps), 128,000 images, base width 64, batch 64, 10 runs per method (seeds 0..9), the
  data on the device; five methods x 10 runs = 50 trainings of 100,000-200,000 iterations each.
- ``cpu``: 2,000 F-evaluations per run (1,000 alternating iterations), 25,600 images, base width 32, batch 64, one
  run per method (seed 0), four methods (simultaneous, alternating, extragradient, optimistic), two at a time, one
  thread each. Measured: 17.4 min on a 2-core VM shared with other jobs (load average 6-9): fits 5.3-7.4 min, each
  evaluate 1.3-3.2 min. At this budget the samples are digit-like strokes, few legible: the classifier's argmax
  reads them as many triples (910-990 "modes") but only 1-6% of them confidently; it checks the pipeline and compares
  methods at equal cost on a small budget, it does not reproduce the papers' figures.

Writes ``<out>/results.json`` (every run: command, seconds, values of the real stacks and of each generator) and
``<out>/table.md`` (per method: modes /1000 and KL, mean ± std over runs, live and EMA; and, for EMA, the share of
samples whose three channels are all read with max softmax >= 0.9 and the modes among those: a generator of blurry
strokes gets many "modes" from the classifier's argmax, few confidently read ones).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = "../shared/data/mnist"  # as the configs: relative to the repository root

#: method -> (scheme overrides, F-evaluations per iteration)
METHODS: dict[str, tuple[list[str], int]] = {
    "simultaneous": (["--model.scheme=simultaneous"], 1),
    "alternating": (["--model.scheme=alternating", "--model.n_dis=1"], 2),
    "extragradient": (["--model.scheme=extragradient"], 2),
    "optimistic": (["--model.scheme=optimistic"], 1),
    "past_extragradient": (["--model.scheme=past_extragradient"], 1),
    "svre": (["--model.scheme=svre"], 4),
}
BUDGETS = {
    "gpu": {"config": "configs/stacked_mnist_dcgan.yaml", "evaluations": 200_000, "runs": 10, "jobs": 1,
            "methods": ["simultaneous", "alternating", "extragradient", "optimistic", "past_extragradient"],
            "device": "cuda", "extra": ["--trainer.accelerator=gpu", "--data.init_args.on_device=true"]},
    "cpu": {"config": "configs/stacked_mnist_cpu.yaml", "evaluations": 2_000, "runs": 1, "jobs": 2,
            "methods": ["simultaneous", "alternating", "extragradient", "optimistic"],
            "device": "cpu", "extra": ["--trainer.accelerator=cpu", "--torch_num_threads=1",
                                       "--metrics.every_n_steps=0", "--samples.every_n_steps=0"]},
}
NUM_EVAL_SAMPLES = 26_000  # config.py num_test_sample


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (runs, results.json, table.md)")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="gpu", help="gpu: the full protocol; cpu: one small "
                   "run per method")
    p.add_argument("--methods", help=f"comma list of {', '.join(METHODS)} (default: the budget's)")
    p.add_argument("--runs", type=int, help="runs (seeds 0..runs-1) per method (default: gpu 10, cpu 1)")
    p.add_argument("--evaluations", type=int, help="F-evaluations per run (default: gpu 200000, cpu 2000)")
    p.add_argument("--jobs", type=int, help="trainings at a time (default: gpu 1, cpu 2)")
    p.add_argument("--num-samples", type=int, default=NUM_EVAL_SAMPLES, help="generated samples scored per generator")
    p.add_argument("--root", default=DEFAULT_ROOT, help="MNIST folder (a relative one is taken relative to the "
                   "repository root by the data module, from any working directory)")
    p.add_argument("--skip-existing", action="store_true", help="reuse runs whose eval.json exists")
    args = p.parse_args(argv)
    budget = BUDGETS[args.budget]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else budget["methods"]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        p.error(f"Invalid methods: {unknown or args.methods}; expected a comma list of {', '.join(METHODS)}")
    for name in ("runs", "evaluations", "jobs"):
        value = getattr(args, name)
        if value is None:
            setattr(args, name, budget[name])
        elif value < 1:
            p.error(f"Invalid --{name}: {value}; expected an integer >= 1")
    if args.num_samples < 2:
        p.error(f"Invalid --num-samples: {args.num_samples}; expected an integer >= 2")
    return args


def iterations(method: str, evaluations: int) -> int:
    return max(1, evaluations // METHODS[method][1])


def run_one(args: argparse.Namespace, method: str, seed: int) -> dict:
    """``lightning-gan fit`` then ``lightning-gan evaluate`` of one (method, seed); returns the run's record."""
    budget = BUDGETS[args.budget]
    run_dir = args.out / "runs" / f"{method}_seed{seed}"
    eval_json = run_dir / "eval.json"
    k = iterations(method, args.evaluations)
    env = dict(os.environ)
    if budget["device"] == "cpu":
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    fit = [sys.executable, "-m", "lightning_gan", "fit", "--config", str(REPO / budget["config"]),
           f"--trainer.default_root_dir={run_dir}", f"--trainer.max_steps={k}", "--trainer.devices=1",
           "--trainer.enable_progress_bar=false", f"--trainer.log_every_n_steps={max(1, min(100, k))}",
           f"--seed_everything={seed}", f"--data.init_args.seed={seed}",
           f"--data.init_args.root={args.root}", f"--checkpoint.every_n_train_steps={k}",
           *METHODS[method][0], *budget["extra"]]
    evaluate = [sys.executable, "-m", "lightning_gan", "evaluate", "--ckpt", str(run_dir / "checkpoints" / "last.ckpt"),
                "--num-samples", str(args.num_samples), "--generator", "live,ema", "--device", budget["device"],
                "--seed", str(seed), "--out", str(eval_json)]
    record = {"method": method, "seed": seed, "iterations": k, "evaluations": k * METHODS[method][1],
              "fit_command": " ".join(fit[2:]), "evaluate_command": " ".join(evaluate[2:])}
    if not (args.skip_existing and eval_json.is_file()):
        run_dir.mkdir(parents=True, exist_ok=True)
        for name, command in (("fit", fit), ("evaluate", evaluate)):
            start = time.perf_counter()
            log = run_dir / f"{name}.log"
            with open(log, "w") as f:
                proc = subprocess.run(command, check=False, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)
            record[f"{name}_seconds"] = time.perf_counter() - start
            if proc.returncode != 0:
                record["error"] = f"{name} failed (exit {proc.returncode}); see {log}"
                print(f"{method} seed {seed}: {record['error']}", flush=True)
                return record
    report = json.loads(eval_json.read_text())
    record.update(real=report["stacked"]["real"], live=report["results"]["live"], ema=report["results"]["ema"],
                  step=report["global_step"])
    print(f"{method} seed {seed}: {k} iterations; live modes {record['live']['stacked_modes']:.0f} kl "
          f"{record['live']['stacked_kl']:.3f}, ema modes {record['ema']['stacked_modes']:.0f} kl "
          f"{record['ema']['stacked_kl']:.3f} (fit {record.get('fit_seconds', float('nan')):.0f} s)", flush=True)
    return record


def _mean_std(values: list[float], digits: int) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(args: argparse.Namespace, records: list[dict]) -> str:
    lines = [("| method | F-eval. / it. | iterations | runs | modes /1000 (live) | KL (live) | modes /1000 (EMA) | "
              "KL (EMA) | confident (EMA) | modes confident (EMA) | fit min / run |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method in args.methods:
        done = [r for r in records if r["method"] == method and "live" in r]
        fits = [r["fit_seconds"] / 60 for r in done if "fit_seconds" in r]
        cell = {f"{w}_{k}": [r[w][f"stacked_{k}"] for r in done] for w in ("live", "ema")
                for k in ("modes", "kl", "confident", "modes_confident")}
        lines.append(f"| {method} | {METHODS[method][1]} | {iterations(method, args.evaluations)} | {len(done)} | "
                     f"{_mean_std(cell['live_modes'], 1)} | {_mean_std(cell['live_kl'], 3)} | "
                     f"{_mean_std(cell['ema_modes'], 1)} | {_mean_std(cell['ema_kl'], 3)} | "
                     f"{_mean_std([100 * v for v in cell['ema_confident']], 1)}% | "
                     f"{_mean_std(cell['ema_modes_confident'], 1)} | {_mean_std(fits, 1)} |")
    reals = list({r["seed"]: r["real"] for r in records if "real" in r}.values())  # one per seed (data table)
    if reals:
        lines.append("")
        lines.append(f"Real stacks read by the same classifier (N={args.num_samples}): modes "
                     f"{_mean_std([r['stacked_modes'] for r in reals], 1)}/1000, KL "
                     f"{_mean_std([r['stacked_kl'] for r in reals], 4)}, confident "
                     f"{_mean_std([100 * r['stacked_confident'] for r in reals], 1)}%. A single mode: KL = log(1000) "
                     f"= {math.log(1000):.3f}.")
    budget = BUDGETS[args.budget]
    lines.append(f"Budget `{args.budget}`: {args.evaluations:,} F-evaluations per run ({budget['config']}; batch 64), "
                 f"{args.runs} run(s) per method, N = {args.num_samples:,} samples scored per generator.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    jobs = [(m, s) for s in range(args.runs) for m in args.methods]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        records = list(pool.map(lambda job: run_one(args, *job), jobs))
    markdown = table(args, records)
    report = {
        "command": "python bench/stacked_mnist.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "budget": args.budget, "evaluations": args.evaluations, "runs": args.runs, "jobs": args.jobs,
        "methods": args.methods, "num_samples": args.num_samples, "total_seconds": time.perf_counter() - start,
        "load_average": os.getloadavg(), "records": records, "table": markdown,
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "table.md").write_text(markdown + "\n")
    print(markdown)
    print(f"total {report['total_seconds'] / 60:.1f} min; wrote {args.out / 'results.json'} and "
          f"{args.out / 'table.md'}", flush=True)
    failed = [r for r in records if "error" in r]
    if failed:
        sys.exit(f"{len(failed)} run(s) failed: " + "; ".join(r["error"] for r in failed))
    return report


if __name__ == "__main__":
    main()
