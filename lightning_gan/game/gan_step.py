"""A GAN as a game that the schemes can drive: evaluate F on a sample, all-reduce it once, write ``.grad``.

Lightning-free: :class:`lightning_gan.module.GANModule` owns one of these, and tests can drive it
directly. One *sample* of a scheme is a list of micro-batches ``(real, z)``; the field is averaged
over them locally and then all-reduced across ranks in ONE collective (both players fused), so the
global batch is ``ranks x micro-batch x accumulation``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_gan import distributed
from lightning_gan.game.field import flat_norm, gan_field, trainable_parameters
from lightning_gan.game.losses import GANLoss, clip_weights_
from lightning_gan.schemes import BOTH, GENERATOR

MicroBatch = tuple[Tensor, Tensor]  # (real, z)


class LatentSampler:
    """z ~ N(0, I), drawn for the *global* batch from a generator seeded identically on every rank.

    Each rank keeps rows ``rank::world``: the rows that the distributed sampler pairs with its real
    samples. So a run on W ranks with micro-batch B sees the same (real, z) pairs as a run on one rank
    with batch W*B, and resuming restores the stream from the generator state.
    """

    def __init__(self, latent_dim: int, seed: int = 0) -> None:
        self.latent_dim = latent_dim
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, count: int, *, world_size: int = 1, rank: int = 0, device: torch.device | str = "cpu") -> Tensor:
        z = torch.randn(count * world_size, self.latent_dim, generator=self.generator)
        return z[rank::world_size].to(device)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


@dataclass
class FieldStats:
    """Detached scalars of the last evaluation, for logging (no host sync until someone reads them)."""

    generator_loss: Tensor | None = None
    discriminator_loss: Tensor | None = None
    d_real: Tensor | None = None
    d_fake: Tensor | None = None
    grad_norms: dict[int, Tensor] = field(default_factory=dict)


class GANGameStep:
    """The :class:`~lightning_gan.schemes.GameStep` of a GAN.

    Args:
        generator: player 0.
        discriminator: player 1.
        loss: the players' objectives.
        optimizers: ``[generator_optimizer, discriminator_optimizer]``.
        weight_clip: WGAN weight clipping of D, applied as a projection after every parameter move.
        reduce: the all-reduce (mean over ranks, in place) applied once per evaluation.
        penalty_rng: the generator of the gradient penalty's interpolation weights.
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        loss: GANLoss,
        optimizers: Sequence[Optimizer],
        *,
        weight_clip: float | None = None,
        reduce: Callable[[Sequence[Tensor]], None] = distributed.all_reduce_mean_,
        penalty_rng: torch.Generator | None = None,
    ) -> None:
        self.generator = generator
        self.discriminator = discriminator
        self.loss = loss
        self.optimizers = list(optimizers)
        self.weight_clip = weight_clip
        self.reduce = reduce
        self.penalty_rng = penalty_rng
        self.params = (trainable_parameters(generator), trainable_parameters(discriminator))
        self.stats = FieldStats()
        self.evaluations = 0

    def local_field(self, sample: Sequence[MicroBatch]) -> tuple[list[Tensor], list[Tensor]]:
        """F averaged over the micro-batches of ``sample`` on this rank (no communication)."""
        sums: tuple[list[Tensor], list[Tensor]] | None = None
        losses = []
        for real, z in sample:
            value = gan_field(self.generator, self.discriminator, self.loss, real, z, generator_rng=self.penalty_rng)
            losses.append((value.generator_loss, value.discriminator_loss, value.d_real, value.d_fake))
            if sums is None:
                sums = (list(value.generator_grads), list(value.discriminator_grads))
            else:
                torch._foreach_add_(sums[0], value.generator_grads)
                torch._foreach_add_(sums[1], value.discriminator_grads)
        assert sums is not None, "a sample holds at least one micro-batch"
        if len(sample) > 1:
            for grads in sums:
                if grads:
                    torch._foreach_div_(grads, float(len(sample)))
        mean_losses = torch.stack([torch.stack(row) for row in losses]).mean(0)
        self.stats.generator_loss, self.stats.discriminator_loss, self.stats.d_real, self.stats.d_fake = mean_losses
        return sums

    def evaluate(self, sample: Sequence[MicroBatch], players: Sequence[int] = BOTH) -> None:
        """Evaluate F on ``sample``, all-reduce the players' parts in one collective, write them to ``.grad``."""
        local = self.local_field(sample)
        grads = [local[player] for player in players]
        self.reduce([g for player_grads in grads for g in player_grads])
        for player, player_grads in zip(players, grads):
            for p, g in zip(self.params[player], player_grads):
                p.grad = g
            self.stats.grad_norms[player] = flat_norm(player_grads)
        self.evaluations += 1

    def project(self) -> None:
        """WGAN weight clipping: the projection onto D's constraint set after every move."""
        if self.weight_clip is not None:
            clip_weights_(self.discriminator, self.weight_clip)

    def players(self) -> tuple[nn.Module, nn.Module]:
        return self.generator, self.discriminator


__all__ = ["LatentSampler", "GANGameStep", "FieldStats", "MicroBatch", "GENERATOR"]
