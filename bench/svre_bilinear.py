"""SVRE on the stochastic bilinear game of the SVRE paper (Chavdarova et al., NeurIPS 2019), through the GAN code path.

    python bench/svre_bilinear.py --figure4 --runs 5 --out bench/out --png docs/svre_bilinear.png   # Figure 4
    python bench/svre_bilinear.py --passes 600 --lrs 0.3 0.05 0.1 0.2 0.4 --out bench/out   # step-size sweep

``--figure4`` reproduces Figure 4 of the paper: the game, the methods and the x-axis of its notebook
(``bilinear_game_Fig4/bilinear_Fig4.ipynb`` in github Chavdarova/SVRE). The game: numpy seed 3, d = n = 100,
M_i = e_i e_i^T, a_i, b_i, x_0, y_0 ~ N(0, I/d), the mean objective; distance ||x - x*|| + ||y - y*||; step 0.3.
Every method runs on the pieces that train GANs: ``GameStep`` + the ``svre`` (or ``alternating``) scheme +
``SVRGEstimator`` + the optimizers of :mod:`lightning_gan.optim` + ``PlayerAverages`` (updated after each
iteration, as ``GANModule`` does) + the trainer's restart (``SnapshotTrigger.restarts`` and
``PlayerAverages.restart``, what ``svre.restart_probability`` runs). The curves:

- SVRE p=1/10, p=1/2: at each snapshot event (probability 1/n per iteration) restart with probability p from the
  uniform averages, which then restart from that point; the live point is plotted.
- AVG-SVRE: no restart; the uniform average is plotted.
- AVG-AltSGD: alternating SGD (one sample per iteration for both players), restarts with probability 0.1 at
  events of probability 1/n (no snapshot); the uniform average is plotted.
- SVRE-A p=1/10: ``ExtraAdam`` with beta1 = 0, beta2 = 0.9 on the SVRE direction, restarts as SVRE p=1/10.
- SVRE, no restart: the live point of plain SVRE (computed by the notebook but not plotted; dashed here).
- Not run: the notebook's SVRE-VRAd (direction d |m| / sqrt(v)), a rule the optimizer layer does not have.

Passes: the notebook's axis counts the samples drawn (2 per SVRE iteration, 1 per AltSGD iteration) over n. The
full accounting counts every per-sample field evaluation: 4 per SVRE iteration (live and snapshot terms at both
half-steps), 2 per AltSGD iteration (one per player), n per snapshot (as ``GANModule.evaluations`` counts them).

The sweep (without ``--figure4``) compares SVRE, stochastic extragradient and full-batch extragradient without
restarts over step sizes, on a torch-seeded draw of the game with x_0, y_0 ~ N(0, I), in the full accounting.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lightning_gan.averaging import PlayerAverages
from lightning_gan.game.step import GameStep
from lightning_gan.game.toys import StochasticBilinear
from lightning_gan.optim import SGD, ExtraAdam, ExtraSGD
from lightning_gan.optim.svre import SnapshotTrigger, SVRGEstimator
from lightning_gan.schemes import SVRE, Alternating, Extragradient


def _local(tensors) -> None:
    """One process: the all-reduce is the identity."""


# -- Figure 4 ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One curve of Figure 4.

    Args:
        scheme: ``svre`` or ``alternating`` (AltSGD).
        restart: probability of a restart at each snapshot event (0: never).
        rule: ``sgd``, or ``adam`` (beta1 = 0, beta2 = 0.9: the notebook's SVRE-A).
        curve: plot the ``live`` point or its ``uniform`` average.
    """

    scheme: str
    restart: float = 0.0
    rule: str = "sgd"
    curve: str = "live"


FIGURE4 = {
    "AVG-AltSGD": Method("alternating", restart=0.1, curve="uniform"),
    "AVG-SVRE": Method("svre", curve="uniform"),
    "SVRE p=1/2": Method("svre", restart=0.5),
    "SVRE p=1/10": Method("svre", restart=0.1),
    "SVRE-A p=1/10": Method("svre", restart=0.1, rule="adam"),
}
PLAIN_SVRE = Method("svre")  # the live point without restarts: computed by the notebook, not plotted
CURVES = {**FIGURE4, "SVRE, no restart": PLAIN_SVRE}
#: Final distances of the paper's Figure 4 (mean of 5 runs at 600 passes), read off the figure the notebook saves.
PAPER_FINAL = {"AVG-AltSGD": 16.0, "AVG-SVRE": 2.2, "SVRE p=1/2": 0.33, "SVRE p=1/10": 2.6e-5,
               "SVRE-A p=1/10": 2e3, "SVRE-VRAd p=1/10": 5e-6}
#: The notebook's colours (indices into Tableau 20).
COLOURS = {"AVG-AltSGD": 1, "AVG-SVRE": 2, "SVRE p=1/2": 5, "SVRE p=1/10": 4, "SVRE-A p=1/10": 7,
           "SVRE, no restart": 14}
TABLEAU20 = [(31, 119, 180), (174, 199, 232), (255, 127, 14), (255, 187, 120), (44, 160, 44), (152, 223, 138),
             (214, 39, 40), (255, 152, 150), (148, 103, 189), (197, 176, 213), (140, 86, 75), (196, 156, 148),
             (227, 119, 194), (247, 182, 210), (127, 127, 127), (199, 199, 199)]


def notebook_game(d: int = 100) -> StochasticBilinear:
    """The notebook's draw: ``np.random.seed(3)``, x_0, y_0, then a_i, b_i for each i, all N(0, I/d)."""
    rng = np.random.RandomState(3)
    x0, y0 = rng.randn(d) / math.sqrt(d), rng.randn(d) / math.sqrt(d)
    a, b = np.zeros((d, d)), np.zeros((d, d))
    for i in range(d):
        a[i], b[i] = rng.randn(d) / math.sqrt(d), rng.randn(d) / math.sqrt(d)
    game = StochasticBilinear(d=d, n=d, x0=torch.from_numpy(x0), y0=torch.from_numpy(y0))
    game.a.copy_(torch.from_numpy(a))
    game.b.copy_(torch.from_numpy(b))
    return game


def notebook_distance(players, solution) -> float:
    """||x - x*|| + ||y - y*||, the notebook's distance to the optimum."""
    return sum(float((next(p.parameters()).detach() - s).norm()) for p, s in zip(players, solution))


def _optimizer(method: Method, params, lr: float) -> torch.optim.Optimizer:
    if method.scheme == "alternating":
        return SGD(params, lr=lr)
    if method.rule == "adam":
        return ExtraAdam(params, lr=lr, betas=(0.0, 0.9), eps=1e-16)  # the notebook's epsilon_0
    return ExtraSGD(params, lr=lr)


def run_method(method: Method, passes: float, seed: int, lr: float = 0.3, record_every: int = 10) -> dict:
    """One run; returns the curve: notebook passes, full-accounting passes, distance (live point or average)."""
    game = notebook_game()
    n, players = game.num_samples, list(game.players)
    solution = [target[0] for target in game.equilibrium]
    scheme = SVRE() if method.scheme == "svre" else Alternating(n_dis=1)
    step = GameStep(game, [_optimizer(method, p.parameters(), lr) for p in players], reduce=_local,
                    estimator=SVRGEstimator(game, copy.deepcopy(game), reduce_sum=_local)
                    if scheme.variance_reduced else None)
    averages = [PlayerAverages(p, uniform=True, ema_decay=None) for p in players]
    watched = players if method.curve == "live" else [a.get("uniform") for a in averages]
    trigger = SnapshotTrigger(probability=1.0 / n, seed=seed)
    rng = torch.Generator().manual_seed(10_000 + seed)
    draws = 2 if scheme.variance_reduced else 1  # AltSGD: both players on one sample, as in the notebook
    iterations = math.ceil(passes * n / draws)
    evaluations, restarts = 0, 0
    curve = {"passes": [0.0], "full_passes": [0.0], "distance": [notebook_distance(watched, solution)]}
    for t in range(iterations):
        if trigger(t):
            if trigger.restarts(method.restart):
                for player, average in zip(players, averages):
                    average.restart(player)
                restarts += 1
            if step.estimator is not None:
                step.estimator.take_snapshot([(None, n)])
                evaluations += n
        sample = [game.sample(1, rng) for _ in range(draws)]
        scheme.step(step, sample if draws == 2 else sample * 2)
        for player, average in zip(players, averages):
            average.update(player)
        evaluations += scheme.evaluations_per_step
        if (t + 1) % record_every == 0 or t + 1 == iterations:
            distance = notebook_distance(watched, solution)
            curve["passes"].append((t + 1) * draws / n)
            curve["full_passes"].append(evaluations / n)
            curve["distance"].append(distance if math.isfinite(distance) else float("inf"))
    curve["restarts"] = restarts
    return curve


def _run_job(job: tuple[str, int, float]) -> tuple[str, int, dict, float]:
    name, seed, passes = job
    torch.set_num_threads(1)
    start = time.perf_counter()
    curve = run_method(CURVES[name], passes, seed)
    return name, seed, curve, time.perf_counter() - start


def figure4(runs: int, passes: float, jobs: int, out: Path, png: Path | None) -> dict:
    """Every curve of Figure 4 (and plain SVRE) over ``runs`` seeds; prints the table, writes the JSON and the
    figure."""
    work = [(name, seed, passes) for name in CURVES for seed in range(runs)]
    start = time.perf_counter()
    if jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            done = pool.map(_run_job, work)
    else:
        done = [_run_job(job) for job in work]
    wall = time.perf_counter() - start
    curves: dict[str, list[dict]] = {name: [] for name in CURVES}
    for name, _, curve, _ in sorted(done, key=lambda r: (r[0], r[1])):
        curves[name].append(curve)
    rows = summary(curves)
    print(f"Figure 4, {runs} runs of {passes:g} notebook passes, wall time {wall:.0f} s "
          f"(CPU time {sum(r[3] for r in done):.0f} s, {jobs} process(es))")
    print(table(rows))
    out.mkdir(parents=True, exist_ok=True)
    result = {"runs": runs, "passes": passes, "wall_s": wall, "summary": rows, "curves": curves}
    (out / "svre_bilinear_figure4.json").write_text(json.dumps(result))
    plot_figure4(curves, png or out / "svre_bilinear.png", passes)
    return result


def summary(curves: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for name, runs in curves.items():
        finals = [c["distance"][-1] for c in runs]
        rows.append({"method": name, "median": statistics.median(finals), "mean": statistics.fmean(finals),
                     "min": min(finals), "max": max(finals), "passes": runs[0]["passes"][-1],
                     "full_passes": statistics.fmean(c["full_passes"][-1] for c in runs),
                     "restarts": statistics.fmean(c["restarts"] for c in runs), "paper": PAPER_FINAL.get(name)})
    rows.append({"method": "SVRE-VRAd p=1/10", "paper": PAPER_FINAL["SVRE-VRAd p=1/10"]})  # not run
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| method | ours: median (min-max) | ours: mean | paper (mean at 600) | notebook passes | full passes "
             "| restarts |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "median" not in r:
            lines.append(f"| {r['method']} | not run | | {r['paper']:.2g} | | | |")
            continue
        paper = "not plotted" if r["paper"] is None else f"{r['paper']:.2g}"
        lines.append(f"| {r['method']} | {r['median']:.2g} ({r['min']:.2g}-{r['max']:.2g}) | {r['mean']:.2g} | "
                     f"{paper} | {r['passes']:.0f} | {r['full_passes']:.0f} | {r['restarts']:.1f} |")
    return "\n".join(lines)


def plot_figure4(curves: dict[str, list[dict]], path: Path, passes: float) -> None:
    """The notebook's figure (mean +- std/2 over runs, its colours and limits), and the same curves against the
    full accounting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, key, label in ((axes[0], "passes", "Number of passes (the notebook's: samples drawn / n)"),
                           (axes[1], "full_passes", "Passes, full accounting (every per-sample field "
                                                    "evaluation, snapshots included)")):
        for name, runs in curves.items():
            colour = tuple(c / 255 for c in TABLEAU20[COLOURS[name]])
            x = np.mean([c[key] for c in runs], axis=0)
            with np.errstate(over="ignore", invalid="ignore"):
                d = np.array([c["distance"] for c in runs])
                mean, std = d.mean(0), d.std(0) / 2
            ax.semilogy(x, mean, label=name, color=colour, linestyle="--" if name not in FIGURE4 else "-")
            ax.fill_between(x, mean - std, mean + std, facecolor=colour, alpha=0.3)
        for side in ("top", "bottom", "right", "left"):
            ax.spines[side].set_visible(False)
        ax.set_ylim(5e-6, 3000)
        ax.set_xlim(0, passes if key == "passes" else None)
        ax.set_xlabel(label)
        ax.set_ylabel("Distance to the optimum")
        ax.grid()
    axes[0].legend(fancybox=True, framealpha=0.5)
    axes[0].set_title(f"bilinear game, d = n = 100, step 0.3, mean of {len(runs)} runs")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(path)


# -- the step-size sweep -----------------------------------------------------------------------------


def run(method: str, passes: int, lr: float, batch: int, seed: int) -> list[tuple[float, float]]:
    """(full-accounting passes, Euclidean distance to the solution) along one run; ``method`` is svre, seg or
    full_eg. No restarts."""
    game = StochasticBilinear(d=100, n=100, seed=seed)
    n = game.num_samples
    optimizers = [ExtraSGD(player.parameters(), lr=lr) for player in game.players]
    estimator = SVRGEstimator(game, copy.deepcopy(game), reduce_sum=_local) if method == "svre" else None
    step = GameStep(game, optimizers, estimator=estimator, reduce=_local)
    trigger = SnapshotTrigger(probability=1.0 / n, seed=seed + 1)
    rng = torch.Generator().manual_seed(seed + 2)
    scheme, evaluations, iteration = Extragradient(), 0, 0
    history = [(0.0, game.distance())]
    while evaluations < passes * n:
        if estimator is not None and trigger(iteration):
            estimator.take_snapshot([(None, n)])
            evaluations += n
        if method == "full_eg":
            samples, cost = [None, None], 2 * n
        else:
            samples = [game.sample(batch, rng), game.sample(batch, rng)]
            cost = (4 if estimator is not None else 2) * batch
        scheme.step(step, samples)
        evaluations += cost
        iteration += 1
        if iteration % 50 == 0:
            history.append((evaluations / n, game.distance()))
    history.append((evaluations / n, game.distance()))
    return history


def sweep(passes: int, lrs: list[float], seed: int, out: Path) -> None:
    methods = {"SVRE (batch 1)": ("svre", 1), "stochastic extragradient (batch 1)": ("seg", 1),
               "full-batch extragradient": ("full_eg", 100)}
    results: dict[str, dict[str, dict[str, float]]] = {}
    for lr in lrs:
        results[str(lr)] = {}
        for name, (method, batch) in methods.items():
            history = run(method, passes, lr, batch, seed)
            results[str(lr)][name] = {"start": history[0][1], "final": history[-1][1], "passes": history[-1][0],
                                      "min": min(d for _, d in history)}
            print(f"step {lr:<5g} {name:36s} distance {history[0][1]:.3g} -> {history[-1][1]:.3g} after "
                  f"{history[-1][0]:.0f} passes (smallest on the way {results[str(lr)][name]['min']:.3g})",
                  flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "svre_bilinear_sweep.json").write_text(json.dumps({"passes": passes, "seed": seed, "runs": results},
                                                             indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--figure4", action="store_true", help="reproduce the paper's Figure 4")
    parser.add_argument("--runs", type=int, default=5, help="runs per curve (--figure4)")
    parser.add_argument("--jobs", type=int, default=1, help="processes (--figure4), one thread each")
    parser.add_argument("--png", type=Path, default=None, help="figure path (--figure4; default OUT/svre_bilinear.png)")
    parser.add_argument("--passes", type=float, default=600, help="notebook passes (--figure4) or full passes")
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.3], help="step sizes of the sweep")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sweep")
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    args = parser.parse_args(argv)
    if args.figure4:
        figure4(args.runs, args.passes, args.jobs, args.out, args.png)
    else:
        sweep(int(args.passes), args.lrs, args.seed, args.out)


if __name__ == "__main__":
    main()
