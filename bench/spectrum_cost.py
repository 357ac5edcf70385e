"""Wall time of one spectrum estimate (top-k eigenvalues of the game Jacobian) on DCGAN-sized players, CPU.

Players as in ``configs/mnist_simultaneous.yaml`` (DCGAN 28x28, base width 64, latent 128, WGAN-GP weight 10, no
BatchNorm in D), one evaluation batch of 64 random images in [-1, 1] (the cost does not depend on the data). Prints
one line per setting: the wall time, the number of Jacobian-vector products, and the time of one (for comparison:
one F evaluation, a forward and the two backward passes of a training iteration).

    python bench/spectrum_cost.py                        # k = 6, by modulus and by imaginary part
    python bench/spectrum_cost.py --k 6 --no-rotation --threads 2 --batch-size 64
    python bench/spectrum_cost.py --model quickstart --batch-size 256 --k 20 --hessians
    python bench/spectrum_cost.py --quick                # tiny players: a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lightning_gan.diagnostics import isolated_estimate
from lightning_gan.game.gan import GANGame
from lightning_gan.game.losses import get_loss
from lightning_gan.models import (
    DCGANDiscriminator,
    DCGANGenerator,
    MLPDiscriminator,
    MLPGenerator,
)


def make_players(model: str) -> tuple[torch.nn.Module, torch.nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if model == "tiny":
        return MLPGenerator(latent_dim=4, hidden_dim=16, num_layers=2), MLPDiscriminator(hidden_dim=16, num_layers=2), (2,)
    if model == "quickstart":  # configs/quickstart.yaml's players
        return (MLPGenerator(latent_dim=2, output_dim=2, hidden_dim=128, num_layers=3),
                MLPDiscriminator(input_dim=2, hidden_dim=128, num_layers=3), (2,))
    return (DCGANGenerator(latent_dim=128, channels=1, image_size=28, base_width=64),
            DCGANDiscriminator(channels=1, image_size=28, base_width=64, batch_norm=False), (1, 28, 28))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-rotation", action="store_true", help="only the top-k by modulus (one ARPACK run)")
    parser.add_argument("--hessians", action="store_true", help="also both players' Hessians")
    parser.add_argument("--tol", type=float, default=None)
    parser.add_argument("--model", choices=["dcgan", "quickstart", "tiny"], default="dcgan",
                        help="dcgan: configs/mnist_simultaneous.yaml's players and loss (WGAN-GP 10); quickstart: "
                             "configs/quickstart.yaml's (non-saturating, R1 0.1); tiny: small MLPs")
    parser.add_argument("--quick", action="store_true", help="the same as --model tiny: a smoke run")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = "tiny" if args.quick else args.model
    generator, discriminator, shape = make_players(model)
    loss = {"tiny": get_loss("non_saturating"), "quickstart": get_loss("non_saturating", r1_gamma=0.1),
            "dcgan": get_loss("wgan_gp", gp_weight=10.0)}[model]
    gen = torch.Generator().manual_seed(1)
    real = torch.rand((args.batch_size, *shape), generator=gen) * 2 - 1
    z = torch.randn(args.batch_size, generator.latent_dim, generator=gen)
    sample = [(real, z)]
    n = sum(p.numel() for m in (generator, discriminator) for p in m.parameters())

    game = GANGame(generator, discriminator, loss, penalty_rng=torch.Generator().manual_seed(0))
    game.field(sample)  # warm-up
    start = time.perf_counter()
    for _ in range(3):
        game.field(sample)
    field_s = (time.perf_counter() - start) / 3

    start = time.perf_counter()
    spectrum = isolated_estimate((generator, discriminator), loss, sample, k=args.k, rotation=not args.no_rotation,
                                 hessians=args.hessians, tol=args.tol)
    wall = time.perf_counter() - start
    row = {"model": model, "parameters": n, "k": args.k, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
           "rotation": not args.no_rotation, "hessians": args.hessians, "wall_s": round(wall, 2),
           "matvecs": spectrum.matvecs, "s_per_matvec": round(wall / max(spectrum.matvecs, 1), 4),
           "field_eval_s": round(field_s, 4), "matvecs_per_run": spectrum.extra["matvecs"],
           "converged": spectrum.converged,
           "eig_max_abs": spectrum.summary()["eig_max_abs"]}
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    main()
