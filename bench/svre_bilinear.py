"""SVRE vs stochastic extragradient on the stochastic bilinear game of the SVRE paper, through the GAN code path.

    python bench/svre_bilinear.py --passes 600 --out bench/out

The game (d = n = 100, M_i = e_i e_i^T, a_i, b_i ~ N(0, I/d)) is driven by the same pieces that train
GANs: ``GameStep`` + the extragradient scheme + ``SVRGEstimator`` (snapshot with probability 1/n per
iteration, mu over all n samples) + ``ExtraSGD``. Data passes count every per-sample gradient: 4 per
SVRE iteration (live and snapshot terms at both half-steps), 2 per SEG iteration, n per snapshot.
Full-batch extragradient is run too, as the reference for what the step size allows.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from lightning_gan.game.step import GameStep
from lightning_gan.game.toys import StochasticBilinear
from lightning_gan.optim import ExtraSGD
from lightning_gan.optim.svre import SnapshotTrigger, SVRGEstimator
from lightning_gan.schemes import Extragradient



def run(method: str, passes: int, lr: float, batch: int, seed: int) -> list[tuple[float, float]]:
    """(data passes, distance to the solution) along one run."""
    game = StochasticBilinear(d=100, n=100, seed=seed)
    n = game.num_samples
    optimizers = [ExtraSGD(player.parameters(), lr=lr) for player in game.players]
    estimator = SVRGEstimator(game, copy.deepcopy(game), reduce_sum=lambda t: None) if method == "svre" else None
    step = GameStep(game, optimizers, estimator=estimator, reduce=lambda t: None)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", type=int, default=600)
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {
        "SVRE (batch 1)": run("svre", args.passes, args.lr, 1, args.seed),
        "stochastic extragradient (batch 1)": run("seg", args.passes, args.lr, 1, args.seed),
        "full-batch extragradient": run("full_eg", args.passes, args.lr, 100, args.seed),
    }
    summary = {name: {"start": h[0][1], "final": h[-1][1], "passes": h[-1][0]} for name, h in runs.items()}
    for name, s in summary.items():
        print(f"{name:40s} distance {s['start']:.3g} -> {s['final']:.3g} after {s['passes']:.0f} passes")
    (args.out / "svre_bilinear.json").write_text(json.dumps({"lr": args.lr, "runs": summary}, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, history in runs.items():
        ax.semilogy([p for p, _ in history], [d for _, d in history], label=name)
    ax.set_xlabel("data passes (per-sample gradients / n)")
    ax.set_ylabel("distance to the solution")
    ax.set_title(f"stochastic bilinear, d = n = 100, step {args.lr}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "svre_bilinear.png", dpi=120)
    print(args.out / "svre_bilinear.png")


if __name__ == "__main__":
    main()
