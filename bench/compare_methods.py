"""Game optimizers compared on MNIST at an equal budget of vector-field evaluations, scored by FID.

    python bench/compare_methods.py --root ../shared/data/mnist --budget 2000 --seeds 0 1 --jobs 2

Each method trains a small DCGAN (28x28, non-saturating loss) with `lightning-gan fit` until it has spent
``--budget`` F-evaluations at batch 64 (``EvaluationBudget``: simultaneous and the single-call methods spend 1
per iteration, extragradient 2, alternating with n_dis = 5 spends 6, SVRE 4 plus a pass over the training set
per snapshot). ``ImageMetrics`` scores the live, uniform-average and EMA generators along the way: FID with
the features of the project's MNIST classifier (``lightning_gan/metrics/weights/classifier_mnist.pt``),
``--num-samples`` generated images against as many held-out test images. The methods share everything else:
players, initialisation seed, data order, Adam (lr 2e-4 for both players, betas (0.5, 0.9)), averages
(uniform from the first iteration; EMA decay 0.995).

A method is a scheme plus optional extra GANModule arguments and per-player changes to the shared Adam
(:class:`Method`): the LA-* rows add Lookahead-minmax (k 5, alpha 0.5, the reference code's values), and other
options are one row each, e.g. ``Method("RpGAN SimAdam", "simultaneous", model={"loss": "rpgan", ...})`` or
``Method("TTUR SimAdam", "simultaneous", d_optimizer={"lr": 4e-4}, g_optimizer={"schedule": "linear", ...})``.
The LA-* rows run when named with ``--methods``; they are scored at multiples of k, where the live weights are
the slow ones.

SVRE here is SVRE-A (Adam on the SVRE direction) with a latent bank of 2 x the training set; its snapshot
pass covers the whole training set, so all methods train on the first ``--train-samples`` MNIST images (a
pass costs train_samples / 64 evaluations). Runs go to ``--out/runs/<method>_seed<k>``; the script writes
``results.json``, ``table.md`` (final FID, mean and spread over seeds) and ``fid_vs_evaluations.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
GENERATORS = ("live", "uniform", "ema")

@dataclass(frozen=True)
class Method:
    """One compared method: a scheme, extra GANModule arguments, and keys merged over each player's shared Adam."""

    label: str
    scheme: str
    model: dict = field(default_factory=dict)  # e.g. {"n_dis": 5}, {"lookahead": {...}}, {"loss": "rpgan"}
    g_optimizer: dict = field(default_factory=dict)  # e.g. {"lr": 1e-4}, {"schedule": "cosine", ...}
    d_optimizer: dict = field(default_factory=dict)

    def model_overrides(self, base: dict) -> dict:
        """The ``model:`` keys this method changes in ``base`` (the shared model section)."""
        return {"scheme": self.scheme, **self.model,
                "g_optimizer": {**base["g_optimizer"], **self.g_optimizer},
                "d_optimizer": {**base["d_optimizer"], **self.d_optimizer}}

    @property
    def lookahead_k(self) -> int | None:
        return (self.model.get("lookahead") or {}).get("k")


#: Lookahead-minmax as in the reference code (Chavdarova/LAGAN-Lookahead_Minimax, lagan/exe.sh).
LOOKAHEAD = {"lookahead": {"k": 5, "alpha": 0.5}}

#: name -> method. Everything not listed here is shared (see base_config).
METHODS: dict[str, Method] = {
    "simadam": Method("SimAdam", "simultaneous"),
    "altadam5": Method("AltAdam (n_dis 5)", "alternating", {"n_dis": 5}),
    "extraadam": Method("ExtraAdam", "extragradient"),
    "pastextraadam": Method("PastExtraAdam", "past_extragradient"),
    "optimadam": Method("OptimisticAdam", "optimistic"),
    "svre": Method("SVRE-A", "svre", {"latent_bank_factor": 2,
                                      "svre": {"snapshot_probability": None, "restart_probability": 0.0}}),
    "la_simadam": Method("LA-SimAdam", "simultaneous", LOOKAHEAD),
    "la_altadam5": Method("LA-AltAdam (n_dis 5)", "alternating", {"n_dis": 5, **LOOKAHEAD}),
    "la_extraadam": Method("LA-ExtraAdam", "extragradient", LOOKAHEAD),
    # R3GAN's loss and optimizer settings (github brownvc/R3GAN, R3GAN/Trainer.py): alternating 1:1, betas (0, 0.99).
    "rpgan_altadam": Method("RpGAN + R1 + R2 AltAdam", "alternating",
                            {"n_dis": 1, "loss": "rpgan", "r1_gamma": 0.05, "r2_gamma": 0.05},
                            g_optimizer={"momentum": 0.0, "beta2": 0.99}, d_optimizer={"momentum": 0.0, "beta2": 0.99}),
    # Two time scales (Heusel et al., 2017): D at 4x G's step with inverse-sqrt decay, G decaying linearly.
    "ttur_simadam": Method("TTUR SimAdam", "simultaneous",
                           g_optimizer={"lr": 1.0e-4, "schedule": "linear", "decay_steps": 2000, "final_factor": 0.1},
                           d_optimizer={"lr": 4.0e-4, "schedule": "inverse_sqrt", "t0": 500.0}),
    # Consensus optimization, gamma 10 as in the reference (LMescheder/TheNumericsOfGANs,
    # experiments/comparison/conopt.py: --reg-param 10.); each evaluation also costs a double backward.
    "consensus_simadam": Method("ConOpt SimAdam (gamma 10)", "simultaneous", {"consensus": 10.0}),
    # Unrolled D, 5 steps as in the reference notebook (poolio/unrolled_gan, "Unrolled GAN demo.ipynb"). The budget
    # counts F-evaluations only: each evaluation here also costs 5 unrolled D gradients and a backward through them.
    "unrolled5_simadam": Method("Unrolled-5 SimAdam", "simultaneous", {"unroll_steps": 5}),
}
#: What runs without --methods: the six methods of the README's table (the LA-*, RpGAN, TTUR, consensus and unrolled
#: rows are picked by name).
DEFAULT_METHODS = ["simadam", "altadam5", "extraadam", "pastextraadam", "optimadam", "svre"]


def base_config(args: argparse.Namespace, seed: int, run_dir: Path) -> dict:
    adam = {"rule": "adam", "lr": 2.0e-4, "momentum": 0.5, "beta2": 0.9}
    return {
        "seed_everything": seed,
        "torch_num_threads": args.threads,
        "trainer": {
            "default_root_dir": str(run_dir),
            "max_steps": args.budget,  # a bound only: EvaluationBudget stops first
            "log_every_n_steps": 50,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": [{"class_path": "lightning_gan.callbacks.EvaluationBudget",
                           "init_args": {"max_evaluations": args.budget}}],
        },
        "model": {
            "generator": {"class_path": "lightning_gan.models.DCGANGenerator",
                          "init_args": {"latent_dim": 64, "channels": 1, "image_size": 28,
                                        "base_width": args.width}},
            "discriminator": {"class_path": "lightning_gan.models.DCGANDiscriminator",
                              "init_args": {"channels": 1, "image_size": 28, "base_width": args.width}},
            "loss": "non_saturating",
            "g_optimizer": dict(adam),
            "d_optimizer": dict(adam),
            "uniform_average": True,
            "ema_decay": 0.995,  # a half-life of ~140 iterations: these runs are short
            "seed": seed,
        },
        "data": {"class_path": "lightning_gan.data.MNISTDataModule",
                 "init_args": {"root": str(args.root), "batch_size": 64, "seed": seed,
                               "num_train_samples": args.train_samples}},
        "samples": {"every_n_steps": 0, "num_samples": 64, "generators": list(GENERATORS)},
        "metrics": {"every_n_steps": 1, "num_samples": args.num_samples, "metrics": ["fid"],
                    "generators": list(GENERATORS), "extractor": "mnist",
                    "real_split": "test"},  # held-out images, as the published table (ImageMetrics' default: train)
        "checkpoint": {"every_n_train_steps": 10 * args.budget},  # only the final last.ckpt
    }


def iterations_per_score(method: str, args: argparse.Namespace) -> int:
    """Iterations between FID scores, so that each method is scored about ``--points`` times over its budget."""
    from lightning_gan.schemes import make_scheme

    spec = METHODS[method]
    scheme = make_scheme(spec.scheme, spec.model.get("n_dis", 1))
    per_iteration = scheme.evaluations_per_step + (1 if scheme.variance_reduced else 0)  # + ~1 amortised pass
    every = max(1, args.budget // (per_iteration * args.points))
    k = spec.lookahead_k
    return every if k is None else max(k, every // k * k)  # at a sync the live weights are the slow ones


def run_one(method: str, seed: int, args: argparse.Namespace) -> dict:
    run_dir = args.out / "runs" / f"{method}_seed{seed}"
    config = base_config(args, seed, run_dir)
    config["model"].update(METHODS[method].model_overrides(config["model"]))
    config["metrics"]["every_n_steps"] = iterations_per_score(method, args)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "bench_config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    start = time.perf_counter()
    with open(run_dir / "fit.log", "w") as log:
        proc = subprocess.run([sys.executable, "-m", "lightning_gan", "fit", "--config", str(config_path)],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{method} seed {seed} failed (exit {proc.returncode}); see {run_dir / 'fit.log'}")
    curve = read_scores(run_dir)
    print(f"{method:14s} seed {seed}: {len(curve)} scores, final FID "
          + ", ".join(f"{g} {curve[-1][f'val/fid_{g}']:.2f}" for g in GENERATORS)
          + f" at {curve[-1]['val/evaluations']:.0f} evaluations ({seconds:.0f} s)", flush=True)
    return {"method": method, "seed": seed, "seconds": seconds, "curve": curve}


def read_scores(run_dir: Path) -> list[dict[str, float]]:
    """The rows of the run's metrics.csv that hold FID scores, as floats."""
    (metrics_csv,) = sorted(run_dir.glob("version_*/metrics.csv"))[-1:]
    with open(metrics_csv) as f:
        rows = [row for row in csv.DictReader(f) if row.get("val/fid_live")]
    return [{k: float(v) for k, v in row.items() if k.startswith("val/") and v} for row in rows]


def real_floor(args: argparse.Namespace) -> float:
    """FID of ``--num-samples`` training images against as many test images: the best a generator can score."""
    from lightning_gan.data import MNISTDataModule
    from lightning_gan.metrics import build_image_metrics

    data = MNISTDataModule(root=str(args.root), num_train_samples=args.train_samples)
    fid = build_image_metrics(("fid",), "mnist")["fid"]
    fid.update(data.sample_real(args.num_samples, split="test"), real=True)
    fid.update(data.sample_real(args.num_samples, split="train"), real=False)
    return float(fid.compute())


def summarise(results: list[dict], args: argparse.Namespace) -> str:
    """Markdown table: final FID per generator, mean (min-max) over seeds, plus time and evaluations."""
    lines = ["| method | FID live | FID uniform | FID EMA | F-evaluations | wall s / run |",
             "|---|---:|---:|---:|---:|---:|"]
    for method, spec in METHODS.items():
        runs = [r for r in results if r["method"] == method]
        if not runs:
            continue
        cells = []
        for g in GENERATORS:
            finals = [r["curve"][-1][f"val/fid_{g}"] for r in runs]
            spread = f" ({min(finals):.1f}-{max(finals):.1f})" if len(finals) > 1 else ""
            cells.append(f"{statistics.mean(finals):.1f}{spread}")
        evaluations = statistics.mean(r["curve"][-1]["val/evaluations"] for r in runs)
        seconds = statistics.mean(r["seconds"] for r in runs)
        lines.append(f"| {spec.label} | {' | '.join(cells)} | {evaluations:.0f} | {seconds:.0f} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    for ax, g in zip(axes, GENERATORS):
        for k, (method, spec) in enumerate(METHODS.items()):
            runs = [r for r in results if r["method"] == method]
            for i, r in enumerate(runs):
                x = [row["val/evaluations"] for row in r["curve"]]
                y = [row[f"val/fid_{g}"] for row in r["curve"]]
                ax.plot(x, y, color=f"C{k}", alpha=0.85, linestyle="-" if i == 0 else "--",
                        label=spec.label if i == 0 else None)
        ax.set_title(f"{g} generator")
        ax.set_xlabel("F-evaluations (batch 64)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("FID (MNIST classifier features)")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "mnist",
                        help="folder of the four MNIST IDX files")
    parser.add_argument("--budget", type=int, default=2000, help="F-evaluations per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS),
                        help=f"default: {' '.join(DEFAULT_METHODS)}")
    parser.add_argument("--width", type=int, default=32, help="DCGAN base width")
    parser.add_argument("--train-samples", type=int, default=10_000, help="training images (SVRE passes over all)")
    parser.add_argument("--num-samples", type=int, default=5000, help="images per FID score (each side)")
    parser.add_argument("--points", type=int, default=8, help="FID scores per run")
    parser.add_argument("--jobs", type=int, default=2, help="runs at the same time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "compare_methods")
    args = parser.parse_args()
    if not (args.root / "train-images-idx3-ubyte.gz").is_file():
        parser.error(f"--root {args.root}: no train-images-idx3-ubyte.gz there; pass the MNIST folder")
    args.root, args.out = args.root.resolve(), args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    jobs = [(m, s) for s in args.seeds for m in args.methods]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda job: run_one(*job, args), jobs))
    total = time.perf_counter() - start
    floor = real_floor(args)
    table = summarise(results, args) + (f"\n\nFloor: {args.num_samples} training images against as many test images "
                                        f"score FID {floor:.1f}.")
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "total_seconds": total, "real_floor_fid": floor,
                                                       "runs": results}, indent=1))
    plot(results, args.out / "fid_vs_evaluations.png")
    print(table)
    print(f"{len(jobs)} runs in {total / 60:.1f} min; {args.out / 'fid_vs_evaluations.png'}")


if __name__ == "__main__":
    main()
