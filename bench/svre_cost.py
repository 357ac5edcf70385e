"""What SVRE costs per iteration and in memory, next to extragradient, on the DCGAN 28x28 players.

    python bench/svre_cost.py --iterations 20 --batch-size 64 --threads 2

Times one game iteration of the ``extragradient`` and ``svre`` schemes (same players, batch and
optimizers; SVRE without its snapshot pass) in the same process, interleaved, and one snapshot pass
over N samples; counts the extra memory: snapshot players, mu and the latent bank.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from lightning_gan.game.gan import GANGame, LatentBank
from lightning_gan.game.losses import NonSaturatingLoss
from lightning_gan.game.step import GameStep
from lightning_gan.models import DCGANDiscriminator, DCGANGenerator
from lightning_gan.optim import ExtraAdam
from lightning_gan.optim.svre import SVRGEstimator
from lightning_gan.schemes import Extragradient


def megabytes(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--pass-samples", type=int, default=2048, help="samples of the timed snapshot pass")
    parser.add_argument("--dataset-size", type=int, default=60000, help="for the latent bank's memory")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator, discriminator = DCGANGenerator(), DCGANDiscriminator()
    game = GANGame(generator, discriminator, NonSaturatingLoss())
    snapshot = GANGame(copy.deepcopy(generator), copy.deepcopy(discriminator), game.loss)
    estimator = SVRGEstimator(game, snapshot, reduce_sum=lambda t: None)
    real = torch.rand(args.pass_samples, 1, 28, 28) * 2 - 1
    z = torch.randn(args.pass_samples, generator.latent_dim)
    start = time.perf_counter()
    estimator.take_snapshot(((([(real[i:i + args.batch_size], z[i:i + args.batch_size])]), args.batch_size)
                             for i in range(0, args.pass_samples, args.batch_size)))
    pass_seconds = (time.perf_counter() - start) * args.dataset_size / args.pass_samples

    def stepper(with_svre: bool) -> GameStep:
        optimizers = [ExtraAdam(p.parameters(), lr=1e-4, betas=(0.5, 0.9)) for p in game.players]
        return GameStep(game, optimizers, estimator=estimator if with_svre else None, reduce=lambda t: None)

    steps = {"extragradient": stepper(False), "svre": stepper(True)}
    scheme = Extragradient()
    sample = [[(real[:args.batch_size], z[:args.batch_size])], [(real[args.batch_size:2 * args.batch_size],
                                                                  z[args.batch_size:2 * args.batch_size])]]
    times: dict[str, list[float]] = {name: [] for name in steps}
    for name, step in steps.items():  # warm-up
        scheme.step(step, sample)
    for _ in range(args.iterations):
        for name, step in steps.items():
            start = time.perf_counter()
            scheme.step(step, sample)
            times[name].append(time.perf_counter() - start)
    eg, svre = statistics.median(times["extragradient"]), statistics.median(times["svre"])
    players = [p for player in game.players for p in player.parameters()]
    bank = LatentBank(args.dataset_size, generator.latent_dim, factor=2)
    print(f"threads={args.threads} batch={args.batch_size} DCGAN 28x28 (G+D parameters: {megabytes(players):.1f} MB)")
    print(f"extragradient: {eg * 1e3:.0f} ms/iteration (2 F-evaluations)")
    print(f"svre:          {svre * 1e3:.0f} ms/iteration (4 F-evaluations), ratio {svre / eg:.2f}")
    print(f"snapshot pass over {args.dataset_size} samples: {pass_seconds:.0f} s "
          f"(= {pass_seconds / eg:.0f} extragradient iterations; amortised over n = "
          f"{args.dataset_size // (2 * args.batch_size)} iterations per pass with p = 1/n)")
    print(f"memory: snapshot players {megabytes(players):.1f} MB + mu {megabytes(players):.1f} MB; "
          f"latent bank x2: {2 * args.dataset_size * generator.latent_dim * 4 / 2**20:.0f} MB (host memory)")
    del bank


if __name__ == "__main__":
    main()
