"""A GAN as a two-player game: players (G, D), and F averaged over the micro-batches of a sample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from lightning_gan.game.field import (FieldValue, _check_fake, _generator_loss, _penalty, _split_outputs, full_precision,
                                     gan_field)
from lightning_gan.game.losses import GANLoss
from lightning_gan.precision import GameLossScale

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


class GANGame:
    """Players ``(generator, discriminator)``; ``field(sample)`` is F averaged over the sample's micro-batches.

    Args:
        generator: player 0.
        discriminator: player 1.
        loss: the players' objectives.
        penalty_rng: the generator of the gradient penalty's interpolation weights.
        loss_scale: float16's shared loss scale (:class:`~lightning_gan.precision.GameLossScale`, read at every
            evaluation), or None.
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, loss: GANLoss,
                 penalty_rng: torch.Generator | None = None, loss_scale: GameLossScale | None = None) -> None:
        self.players = (generator, discriminator)
        self.loss = loss
        self.penalty_rng = penalty_rng
        self.loss_scale = loss_scale
        self.stats = FieldStats()

    def field(self, sample: Sequence[MicroBatch], players: Sequence[int] = (0, 1)) -> list[list[Tensor]]:
        """F on this rank: the mean over the micro-batches ``(real, z)`` of ``sample`` (no communication).

        Only ``players``' gradients are computed; the others' lists are empty.
        """
        return self._mean_field(sample, players, create_graph=False)

    def graph_field(self, sample: Sequence[MicroBatch]) -> list[list[Tensor]]:
        """Both players' F on this rank, differentiable in the parameters (for J^T v, see consensus)."""
        return self._mean_field(sample, (0, 1), create_graph=True)

    def unroll_objective(self, sample: Sequence[MicroBatch]) -> GANObjective:
        """L_D and L_G on ``sample`` as functions of D's parameters, for unrolled GANs (G runs once, now)."""
        return GANObjective(self, sample)

    def _mean_field(self, sample: Sequence[MicroBatch], players: Sequence[int],
                    create_graph: bool) -> list[list[Tensor]]:
        generator, discriminator = self.players
        sums: list[list[Tensor]] | None = None
        stats: list[FieldValue] = []
        scale = 1.0 if self.loss_scale is None else self.loss_scale.scale
        for real, z in sample:
            value = gan_field(generator, discriminator, self.loss, real, z, generator_rng=self.penalty_rng,
                              players=players, create_graph=create_graph, loss_scale=scale)
            stats.append(value)
            if sums is None:
                sums = [list(value.generator_grads), list(value.discriminator_grads)]
            else:
                for total, grads in zip(sums, (value.generator_grads, value.discriminator_grads)):
                    if total and create_graph:  # out of place: the sums stay differentiable
                        total[:] = [t + g for t, g in zip(total, grads)]
                    elif total:
                        torch._foreach_add_(total, grads)
        assert sums is not None, "a sample holds at least one micro-batch"
        if len(sample) > 1:
            for grads in sums:
                if grads and create_graph:
                    grads[:] = [g / float(len(sample)) for g in grads]
                elif grads:
                    torch._foreach_div_(grads, float(len(sample)))
        self._record(stats)
        return sums

    def _record(self, values: list[FieldValue]) -> None:
        """Keep the mean losses of this evaluation; a one-player evaluation keeps the other player's last ones."""
        def mean(name: str) -> Tensor | None:
            items = [getattr(v, name) for v in values]
            if items[0] is None:
                return None
            return items[0] if len(items) == 1 else torch.stack(items).mean()  # one micro-batch: no stack and mean

        for name in ("generator_loss", "discriminator_loss", "d_real", "d_fake"):
            value = mean(name)
            if value is not None:
                setattr(self.stats, name, value)

class GANObjective:
    """A GAN's losses on one sample as functions of D's parameters (see :mod:`lightning_gan.game.unrolled`).

    G's forward on each micro-batch runs once, at construction, with a graph. ``params=None`` scores with the live
    D (its BatchNorm statistics move, as in the plain field) and records the evaluation's logged losses (L_G there
    is at the current phi); a parameter list is substituted with ``torch.func.functional_call`` and cloned buffers.
    Both losses are means over the micro-batches, so their gradients are the means of the micro-batch gradients.
    """

    def __init__(self, game: GANGame, sample: Sequence[MicroBatch]) -> None:
        generator, discriminator = game.players
        self.game, self.sample = game, list(sample)
        self.names = [name for name, p in discriminator.named_parameters() if p.requires_grad]
        self.fakes = []
        for real, z in self.sample:
            fake = generator(z)
            _check_fake(fake, real)
            self.fakes.append(fake)

    def _discriminator(self, params: Sequence[Tensor] | None) -> Any:
        discriminator = self.game.players[1]
        if params is None:
            return discriminator
        substituted = {name: b.clone() for name, b in discriminator.named_buffers()}
        substituted.update(zip(self.names, params))
        return lambda x: torch.func.functional_call(discriminator, substituted, (x,))

    def _scores(self, discriminator: Any, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
        scores = full_precision(discriminator(torch.cat([real, fake])))
        return _split_outputs(self.game.loss, scores, real.shape[0], real.shape[0] + fake.shape[0])

    def discriminator_loss(self, params: Sequence[Tensor] | None) -> Tensor:
        discriminator, loss = self._discriminator(params), self.game.loss
        total, stats = None, []
        for (real, _), fake in zip(self.sample, self.fakes):
            d_real, d_fake = self._scores(discriminator, real, fake)
            loss_d = loss.discriminator_loss(d_real, d_fake)
            penalty = _penalty(loss, discriminator, real, fake, d_real, d_fake, self.game.penalty_rng)
            if penalty is not None:
                loss_d = loss_d + penalty
            if params is None:
                loss_g = _generator_loss(loss, d_real, d_fake).detach()
                stats.append(FieldValue([], [], loss_g, loss_d.detach(), d_real.detach().mean(),
                                        d_fake.detach().mean(), None if penalty is None else penalty.detach()))
            total = loss_d if total is None else total + loss_d
        if stats:
            self.game._record(stats)
        assert total is not None, "a sample holds at least one micro-batch"
        return total / float(len(self.sample)) if len(self.sample) > 1 else total

    def generator_loss(self, params: Sequence[Tensor] | None) -> Tensor:
        discriminator, total = self._discriminator(params), None
        for (real, _), fake in zip(self.sample, self.fakes):
            d_real, d_fake = self._scores(discriminator, real, fake)
            loss_g = _generator_loss(self.game.loss, d_real, d_fake)
            total = loss_g if total is None else total + loss_g
        assert total is not None, "a sample holds at least one micro-batch"
        return total / float(len(self.sample)) if len(self.sample) > 1 else total


class LatentBank:
    """A fixed table of latents tied to training-sample indices: ``factor`` latents per sample.

    Variance reduction needs the generator's objective to be a finite sum (SVRE's MNIST code used a
    bank of 2 x the data set). Sample ``i`` comes with latents ``table[i + m * n]``, m < factor, so a
    batch of B real samples meets ``factor * B`` fakes. The table is redrawn at each snapshot (so
    mu and the stochastic terms always see the same finite sum) from a generator seeded identically on
    every rank; only that generator's state is checkpointed, not the table.

    Args:
        num_samples: size n of the training set.
        latent_dim: dimension of z.
        factor: latents per training sample, >= 1.
        seed: seed of the table's generator.
    """

    def __init__(self, num_samples: int, latent_dim: int, factor: int = 1, seed: int = 0) -> None:
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"Invalid latent_bank_factor: {factor!r}; expected an integer >= 1, or null for no bank")
        self.num_samples, self.latent_dim, self.factor = num_samples, latent_dim, factor
        self.generator = torch.Generator().manual_seed(seed)
        self._state_before_draw: Tensor | None = None
        self.table: Tensor | None = None

    def redraw(self) -> None:
        self._state_before_draw = self.generator.get_state()
        self.table = torch.randn(self.factor * self.num_samples, self.latent_dim, generator=self.generator)

    def lookup(self, indices: Tensor, device: torch.device | str = "cpu") -> Tensor:
        """The ``factor * len(indices)`` latents of these samples (all first latents, then all second ...)."""
        if self.table is None:
            raise RuntimeError("LatentBank.lookup before the first redraw()")
        indices = indices.to("cpu", torch.long)
        rows = torch.cat([indices + m * self.num_samples for m in range(self.factor)])
        return self.table[rows].to(device)

    def state_dict(self) -> dict:
        return {"state_before_draw": self._state_before_draw, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if state["state_before_draw"] is not None:
            self.generator.set_state(state["state_before_draw"])
            self.redraw()
        self.generator.set_state(state["generator"])


class LatentTables:
    """The latents tied to training samples: the bank (any scheme, when ``bank_factor`` is set) and, without a
    bank, one latent per sample for SVRE's snapshot passes. Both are built at first use, once the training set
    size is known, and resume from their generators' states.

    Args:
        latent_dim: dimension of z.
        bank_factor: latents per training sample in the bank, or None for no bank (fresh latents per batch).
        seed: the bank's table is seeded with ``seed``, the snapshot-pass table with ``seed + 1``.
    """

    def __init__(self, latent_dim: int, bank_factor: int | None, seed: int) -> None:
        if bank_factor is not None:
            LatentBank(1, 1, bank_factor)  # validates the factor now, before any training
        self.latent_dim, self.bank_factor, self.seed = latent_dim, bank_factor, seed
        self._bank: LatentBank | None = None
        self._pass: LatentBank | None = None
        self._state: dict = {"bank": None, "pass": None}  # loaded, not yet applied

    def bank(self, num_samples: int) -> LatentBank | None:
        """The bank, drawn at first use (or restored); None without ``bank_factor``."""
        if self.bank_factor is None:
            return None
        if self._bank is None:
            self._bank = LatentBank(num_samples, self.latent_dim, self.bank_factor, seed=self.seed)
            if self._state["bank"] is not None:
                self._bank.load_state_dict(self._state["bank"])
            else:
                self._bank.redraw()
        return self._bank

    def snapshot_latents(self, num_samples: int) -> LatentBank:
        """Latents of a snapshot pass: the bank if there is one, else a table of one per sample (redrawn by
        the caller at each snapshot)."""
        bank = self.bank(num_samples)
        if bank is not None:
            return bank
        if self._pass is None:
            self._pass = LatentBank(num_samples, self.latent_dim, 1, seed=self.seed + 1)
            if self._state["pass"] is not None:
                self._pass.load_state_dict(self._state["pass"])
        return self._pass

    def state_dict(self) -> dict:
        return {"bank": self._bank.state_dict() if self._bank is not None else self._state["bank"],
                "pass": self._pass.state_dict() if self._pass is not None else self._state["pass"]}

    def load_state_dict(self, state: dict) -> None:
        self._state = {"bank": state.get("bank"), "pass": state.get("pass")}
        self._bank, self._pass = None, None
