"""GANModule: one ``training_step`` is one full game iteration of the chosen scheme, on one or many ranks."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch import Tensor, nn

from lightning_gan import distributed
from lightning_gan.averaging import PlayerAverages
from lightning_gan.game.gan import GANGame, LatentSampler, MicroBatch
from lightning_gan.game.losses import GANLoss, clip_weights_, get_loss
from lightning_gan.game.step import GameStep
from lightning_gan.optim.factory import OptimizerConfig
from lightning_gan.schemes import DISCRIMINATOR, GENERATOR, SCHEMES, make_scheme

GeneratorChoice = Literal["live", "uniform", "ema"]


class GANModule(pl.LightningModule):
    """A GAN trained as a two-player game with manual optimization.

    The scheme decides where the vector field F is evaluated and how the players step (see
    :mod:`lightning_gan.schemes`); every evaluation is averaged over ``accumulation`` micro-batches
    and all-reduced across ranks once. Run it with ``strategy="game_ddp"`` on several devices:
    Lightning's own DDP wrapper is refused, since it cannot sync two players' manual gradients.
    ``trainer.global_step`` counts game iterations, so ``max_steps`` is in iterations.

    Args:
        generator: player 0, ``z -> x``, with a ``latent_dim`` attribute.
        discriminator: player 1, ``x -> score`` (one raw score per sample).
        loss: ``minimax``, ``non_saturating``, ``wgan``, ``wgan_gp``, ``hinge`` or a GANLoss instance.
        gp_weight: gradient-penalty weight of ``wgan_gp``.
        r1_gamma: R1 penalty weight on real data (0 disables), for any loss.
        scheme: ``simultaneous``, ``alternating``, ``extragradient``, ``past_extragradient`` or ``optimistic``.
        n_dis: discriminator steps per generator step (alternating only).
        g_optimizer: the generator's optimizer (rule, lr, momentum/beta1 (may be negative), beta2, ...).
        d_optimizer: the discriminator's optimizer; ``d_optimizer.lr / g_optimizer.lr`` is the step-size ratio.
        weight_clip: WGAN weight clipping of D after every parameter move (None: no clipping).
        accumulation: micro-batches per field evaluation; global batch = ranks x batch_size x accumulation.
        uniform_average: keep the uniform average of the generator.
        ema_decay: EMA decay of the generator per iteration (None: no EMA).
        average_discriminator: keep the same averages of the discriminator too.
        sync_batchnorm: convert BatchNorm layers to SyncBatchNorm on multi-rank runs. By default each rank
            normalises with its own batch statistics and rank 0's running statistics are broadcast after
            every iteration, so that the ranks stay identical.
        seed: seed of the latent and penalty random streams (identical on every rank).
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        loss: str | GANLoss = "non_saturating",
        gp_weight: float = 10.0,
        r1_gamma: float = 0.0,
        scheme: str = "simultaneous",
        n_dis: int = 1,
        g_optimizer: OptimizerConfig | None = None,
        d_optimizer: OptimizerConfig | None = None,
        weight_clip: float | None = None,
        accumulation: int = 1,
        uniform_average: bool = True,
        ema_decay: float | None = 0.999,
        average_discriminator: bool = False,
        sync_batchnorm: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.save_hyperparameters(ignore=["generator", "discriminator"])
        g_optimizer = g_optimizer or OptimizerConfig()
        d_optimizer = d_optimizer or OptimizerConfig()
        g_optimizer.validate("g_optimizer")
        d_optimizer.validate("d_optimizer")
        # Checkpoints hold plain values only, so that they load with torch.load(weights_only=True).
        self.hparams.update(g_optimizer=asdict(g_optimizer), d_optimizer=asdict(d_optimizer),
                            loss=loss if isinstance(loss, str) else repr(loss))
        self.g_optimizer_config, self.d_optimizer_config = g_optimizer, d_optimizer
        if scheme not in SCHEMES:
            raise ValueError(f"Invalid scheme: {scheme!r}; expected one of {', '.join(SCHEMES)}")
        self.scheme = make_scheme(scheme, n_dis)
        self.loss = _make_loss(loss, gp_weight=gp_weight, r1_gamma=r1_gamma)
        if weight_clip is not None and not weight_clip > 0:
            raise ValueError(f"Invalid weight_clip: {weight_clip!r}; expected a number > 0, or null for no clipping")
        if isinstance(accumulation, bool) or not isinstance(accumulation, int) or accumulation < 1:
            raise ValueError(f"Invalid accumulation: {accumulation!r}; expected an integer >= 1")
        latent_dim = getattr(generator, "latent_dim", None)
        if not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"Invalid generator: {type(generator).__name__} has no integer `latent_dim` attribute")
        self.generator = generator
        self.discriminator = discriminator
        self.weight_clip = weight_clip
        self.accumulation = accumulation
        self.sync_batchnorm = sync_batchnorm
        self.generator_averages = PlayerAverages(generator, uniform=uniform_average, ema_decay=ema_decay)
        self.discriminator_averages = (
            PlayerAverages(discriminator, uniform=uniform_average, ema_decay=ema_decay)
            if average_discriminator else None
        )
        self.latents = LatentSampler(latent_dim, seed)
        self.penalty_rng = torch.Generator().manual_seed(seed + 1)
        self.evaluations = 0  # F evaluations so far (all-reduces of the field)
        self.images_seen = 0  # real images consumed so far, over all ranks
        self._game: GameStep | None = None

    # -- set-up ------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy) and not isinstance(strategy, distributed.GameDDPStrategy):
            raise ValueError(
                f"Invalid trainer.strategy: {type(strategy).__name__}; GANModule syncs both players' gradients "
                "itself: use strategy='game_ddp' (lightning_gan.distributed.GameDDPStrategy)"
            )
        if not isinstance(strategy, (SingleDeviceStrategy, distributed.GameDDPStrategy)):
            raise ValueError(f"Invalid trainer.strategy: {type(strategy).__name__}; expected 'auto' "
                             "(one device) or 'game_ddp'")
        if self.sync_batchnorm and self.trainer.world_size > 1:
            self.generator = distributed.convert_sync_batchnorm(self.generator)
            self.discriminator = distributed.convert_sync_batchnorm(self.discriminator)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "draws_per_step"):
            datamodule.draws_per_step = self.scheme.draws_per_step * self.accumulation

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        family = self.scheme.optimizer_family
        return [
            self.g_optimizer_config.build(self.generator.parameters(), family),
            self.d_optimizer_config.build(self.discriminator.parameters(), family),
        ]

    @property
    def game(self) -> GameStep:
        """The game the scheme drives, bound to this run's players and optimizers."""
        optimizers = self.optimizers(use_pl_optimizer=False)
        if self._game is None or self._game.optimizers != list(optimizers):
            game = GANGame(self.generator, self.discriminator, self.loss, penalty_rng=self.penalty_rng)
            self._game = GameStep(game, optimizers, projection=self._project)
        return self._game

    def _project(self) -> None:
        """WGAN weight clipping: the projection onto D's constraint set after every parameter move."""
        if self.weight_clip is not None:
            clip_weights_(self.discriminator, self.weight_clip)

    # -- one game iteration ------------------------------------------------------------------------

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = batch[0] if isinstance(batch, (tuple, list)) else batch
        samples = self.split_batch(real)
        game = self.game
        self.scheme.step(game, samples)
        self._sync_buffers()
        self.generator_averages.update(self.generator)
        if self.discriminator_averages is not None:
            self.discriminator_averages.update(self.discriminator)
        self.evaluations += self.scheme.evaluations_per_step
        self.images_seen += real.shape[0] * self.trainer.world_size
        self._count_iteration()
        self._log_step(game)

    def split_batch(self, real: Tensor) -> list[list[MicroBatch]]:
        """Cut the rank's batch into the scheme's draws, each into ``accumulation`` micro-batches with their z."""
        draws, micro = self.scheme.draws_per_step, self.accumulation
        if real.shape[0] % (draws * micro) != 0:
            raise ValueError(
                f"Invalid batch: {real.shape[0]} samples cannot be split into {draws} draws x {micro} micro-batches "
                f"(scheme {self.scheme.name!r} with accumulation={micro}); use a GameDataModule, which sizes batches "
                "itself, or a batch size divisible by draws x accumulation"
            )
        per_draw = real.shape[0] // draws
        samples = []
        for chunk in real.split(per_draw):
            z = self.latents.draw(per_draw, world_size=self.trainer.world_size, rank=self.trainer.global_rank,
                                  device=real.device)
            samples.append(list(zip(chunk.split(per_draw // micro), z.split(per_draw // micro))))
        return samples

    def _sync_buffers(self) -> None:
        """Default BatchNorm policy: rank 0's running statistics win (as DDP's broadcast_buffers)."""
        if self.trainer.world_size > 1 and not self.sync_batchnorm:
            for player in (self.generator, self.discriminator):
                if any(True for _ in player.buffers()):
                    distributed.sync_buffers_(player)

    def _count_iteration(self) -> None:
        """Make one global step mean one game iteration (optimizers are stepped raw, Lightning counts nothing)."""
        progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        progress.increment_ready()
        progress.increment_completed()

    def _log_step(self, game: GameStep) -> None:
        stats = game.game.stats
        values = {
            "train/loss_generator": stats.generator_loss,
            "train/loss_discriminator": stats.discriminator_loss,
            "train/d_real": stats.d_real,
            "train/d_fake": stats.d_fake,
        }
        for player, name in ((GENERATOR, "generator"), (DISCRIMINATOR, "discriminator")):
            if player in game.grad_norms:
                values[f"train/grad_norm_{name}"] = game.grad_norms[player]
        for optimizer, name in zip(game.optimizers, ("generator", "discriminator")):
            values[f"train/lr_{name}"] = float(optimizer.param_groups[0]["lr"])
        values["train/evaluations"] = float(self.evaluations)
        values["train/images_seen"] = float(self.images_seen)
        self.log_dict(values, on_step=True, on_epoch=False)
        self.log_dict({"loss_g": stats.generator_loss, "loss_d": stats.discriminator_loss},
                      prog_bar=True, logger=False, on_step=True, on_epoch=False)

    # -- sampling ----------------------------------------------------------------------------------

    def generator_for(self, which: GeneratorChoice = "live") -> nn.Module:
        """The live generator or one of its averages."""
        if which == "live":
            return self.generator
        if which not in ("uniform", "ema"):
            raise ValueError(f"Invalid generator choice: {which!r}; expected 'live', 'uniform' or 'ema'")
        average = self.generator_averages.get(which)
        if average is None:
            raise ValueError(f"Invalid generator choice: {which!r}; this run keeps no {which} average "
                             f"(set {'uniform_average: true' if which == 'uniform' else 'ema_decay'})")
        return average

    @torch.no_grad()
    def sample(self, num_samples: int, which: GeneratorChoice = "live", seed: int = 1234) -> Tensor:
        """``num_samples`` samples from a fixed latent stream, in eval mode (BatchNorm uses running statistics)."""
        generator = self.generator_for(which)
        z = torch.randn(num_samples, self.latents.latent_dim, generator=torch.Generator().manual_seed(seed))
        was_training = generator.training
        generator.eval()
        try:
            return generator(z.to(self.device))
        finally:
            generator.train(was_training)

    # -- checkpoints -------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lightning_gan"] = {
            "latents": self.latents.state_dict(),
            "penalty_rng": self.penalty_rng.get_state(),
            "evaluations": self.evaluations,
            "images_seen": self.images_seen,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("lightning_gan")
        if state is None:
            raise ValueError("Invalid checkpoint: it has no 'lightning_gan' entry; it was not written by GANModule")
        self.latents.load_state_dict(state["latents"])
        self.penalty_rng.set_state(state["penalty_rng"])
        self.evaluations = state["evaluations"]
        self.images_seen = state["images_seen"]


def _make_loss(loss: str | GANLoss, *, gp_weight: float, r1_gamma: float) -> GANLoss:
    if isinstance(loss, GANLoss):
        return loss
    kwargs: dict[str, float] = {"r1_gamma": r1_gamma}
    if loss == "wgan_gp":
        kwargs["gp_weight"] = gp_weight
    return get_loss(loss, **kwargs)
