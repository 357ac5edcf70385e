"""Cost of consensus optimization per game iteration: GameStep with consensus / without, paired, one process.

Same players (deep copies of one initialisation, ``bench/step_overhead.py``'s ``make_players``), same batches and
latents, simultaneous Adam, one rank (the second all-reduce is a no-op here: its cost on several ranks is that of one
more all-reduce of the gradients). Iterations alternate (plain, consensus, plain, ...; the order flips every other
pair) so that machine noise hits both; the ratio is taken per pair of ``block`` iterations, then the median and the
min-max spread are reported.

    python bench/consensus_cost.py --model mlp dcgan28 --batch-size 64 --pairs 20
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_overhead import make_batches, make_players

from lightning_gan.game.gan import GANGame
from lightning_gan.game.losses import get_loss
from lightning_gan.game.step import GameStep
from lightning_gan.optim import Adam
from lightning_gan.schemes import Simultaneous


def make_step(generator, discriminator, consensus: float | None) -> GameStep:
    game = GANGame(generator, discriminator, get_loss("non_saturating"))
    optimizers = [Adam(p.parameters(), lr=2e-4, betas=(0.5, 0.999)) for p in (generator, discriminator)]
    return GameStep(game, optimizers, consensus=consensus)


def time_block(step: GameStep, samples: list, iterations: int) -> float:
    scheme = Simultaneous()
    start = time.perf_counter()
    for k in range(iterations):
        scheme.step(step, [samples[k % len(samples)]])
    return (time.perf_counter() - start) / iterations


def bench(model: str, *, batch_size: int, pairs: int, block: int, gamma: float) -> dict:
    g0, d0, shape = make_players(model)
    latent = g0.latent_dim
    gen = torch.Generator().manual_seed(2)
    samples = [[(real, torch.randn(batch_size, latent, generator=gen))]
               for real in make_batches(shape, batch_size, count=4)]
    steps = {name: make_step(copy.deepcopy(g0), copy.deepcopy(d0), c)
             for name, c in (("plain", None), ("consensus", gamma))}
    for step in steps.values():
        time_block(step, samples, 2)  # warm-up
    ratios, times = [], {"plain": [], "consensus": []}
    for pair in range(pairs):
        order = ("plain", "consensus") if pair % 2 == 0 else ("consensus", "plain")
        measured = {name: time_block(steps[name], samples, block) for name in order}
        for name, value in measured.items():
            times[name].append(value)
        ratios.append(measured["consensus"] / measured["plain"])
    return {"model": model, "batch_size": batch_size, "plain_ms": 1e3 * statistics.median(times["plain"]),
            "consensus_ms": 1e3 * statistics.median(times["consensus"]), "ratio": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios), "pairs": pairs, "block": block}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["mlp", "dcgan28"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--block", type=int, default=5)
    parser.add_argument("--gamma", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [bench(m, batch_size=args.batch_size, pairs=args.pairs, block=args.block, gamma=args.gamma)
            for m in args.model]
    print("| model | batch | plain ms/it | consensus ms/it | ratio (median) | min-max |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['batch_size']} | {r['plain_ms']:.2f} | {r['consensus_ms']:.2f} | "
              f"{r['ratio']:.2f} | {r['ratio_min']:.2f}-{r['ratio_max']:.2f} |")
    return rows


if __name__ == "__main__":
    main()
