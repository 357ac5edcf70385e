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
from lightning_gan.game.consensus import check_consensus
from lightning_gan.game.finite import DivergenceError, first_non_finite_parameter
from lightning_gan.game.gan import GANGame, LatentBank, LatentSampler, LatentTables, MicroBatch
from lightning_gan.game.losses import GANLoss, clip_weights_, get_loss
from lightning_gan.game.step import GameStep
from lightning_gan.game.unrolled import check_unroll_steps
from lightning_gan.lookahead import LookaheadConfig, LookaheadMinmax
from lightning_gan.optim.factory import OptimizerConfig
from lightning_gan.optim.schedules import resync_schedulers, step_schedulers
from lightning_gan.precision import GameLossScale, IterationUndo, check_precision
from lightning_gan.schemes import DISCRIMINATOR, GENERATOR, SCHEMES, make_scheme
from lightning_gan.variance_reduction import SVREConfig, SVREState

GeneratorChoice = Literal["live", "uniform", "ema"]


class GANModule(pl.LightningModule):
    """A GAN trained as a two-player game with manual optimization.

    The scheme decides where the vector field F is evaluated and how the players step (see
    :mod:`lightning_gan.schemes`); every evaluation is averaged over ``accumulation`` micro-batches
    and all-reduced across ranks once. Run it with ``strategy="game_ddp"`` on several devices:
    Lightning's own DDP wrapper is refused, since it cannot sync two players' manual gradients.
    ``trainer.global_step`` counts game iterations, so ``max_steps`` is in iterations. ``trainer.precision``:
    ``32-true``, ``bf16-mixed`` or ``16-mixed`` (one loss scale for both players; an overflowing iteration is undone
    as a whole, see :mod:`lightning_gan.precision`).

    Args:
        generator: player 0, ``z -> x``, with a ``latent_dim`` attribute.
        discriminator: player 1, ``x -> score`` (one raw score per sample; ``x -> [d]`` features for ``mmd``).
        loss: ``minimax``, ``non_saturating``, ``wgan``, ``wgan_gp``, ``hinge``, ``rpgan``, ``mmd`` or a GANLoss
            instance.
        gp_weight: gradient-penalty weight of ``wgan_gp``.
        mmd_kernel: kernel mixture of ``mmd`` on D's features: ``rq`` (rational quadratic) or ``gaussian``.
        mmd_scales: the mixture's alphas (``rq``) or bandwidths (``gaussian``), each > 0; null: rq {0.2, 0.5, 1, 2, 5}
            (Binkowski et al. 2018), gaussian {2, 5, 10, 20, 40, 80} (their code). ``mmd`` needs a discriminator with
            feature outputs (``features: 16``), accumulation 1 and a scheme other than svre (see
            :class:`~lightning_gan.game.losses.MMDLoss`).
        mmd_gp_weight: weight of ``mmd``'s gradient penalty on the witness function (1 in Binkowski et al.).
        r1_gamma: R1 penalty weight on real data (0 disables), for any loss.
        r2_gamma: R2 penalty weight on generated data (0 disables), for any loss; R3GAN uses r1_gamma = r2_gamma.
        scheme: ``simultaneous``, ``alternating``, ``extragradient``, ``past_extragradient``, ``optimistic``
            or ``svre`` (extragradient on the variance-reduced estimate).
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
        svre: settings of the ``svre`` scheme (snapshot trigger, restarts, variance probe).
        lookahead: Lookahead-minmax over the scheme (period ``k``, step ``alpha``; None: off); averages and the SVRE
            snapshot see the live (fast) weights, see :mod:`lightning_gan.lookahead`.
        latent_bank_factor: tie ``factor`` fixed latents to each training sample (redrawn at each SVRE
            snapshot) so that the generator's objective is a finite sum; null draws fresh latents.
        seed: seed of the latent and penalty random streams (identical on every rank).
        check_finite: stop with :class:`~lightning_gan.game.finite.DivergenceError` at the first iteration whose
            all-reduced field is not finite (NaN or inf), naming the player and the evaluation, and refuse to save
            non-finite parameters, so that the last checkpoint on disk stays the last finite state.
        consensus: gamma of consensus optimization, F + gamma J^T F at every evaluation (two all-reduces each), any
            scheme but svre; None or 0: off (see :mod:`lightning_gan.game.consensus`).
        unroll_steps: k of unrolled GANs (Metz et al., ICLR 2017): G's field is the gradient of its loss through k
            differentiable steps of D's optimizer (from its current state, on the same sample), D steps as usual;
            2k + 1 all-reduces per evaluation of G; any scheme but svre, not with consensus or sync_batchnorm; 0: off
            (see :mod:`lightning_gan.game.unrolled`).
        channels_last: store both players' 4-D (convolutional) weights, and the real images, in the channels-last
            memory format (``torch.channels_last``), the layout that cuDNN's NHWC kernels and tensor cores prefer;
            the results are the default path's within float tolerance. Converted in ``setup``; refused when neither
            player has a 4-D weight (an MLP would be unchanged).
        compile: ``torch.compile`` each player's forward (``nn.Module.compile``, in ``setup``: parameter and
            ``state_dict`` names, checkpoints and averages are unchanged; the field's ``autograd.grad`` runs the
            compiled backward). Refused, in one line naming ``compile``, when the run needs a double backward
            through the players (a gradient penalty: wgan_gp's ``gp_weight``, ``r1_gamma``, ``r2_gamma``, mmd's
            ``mmd_gp_weight``; ``consensus``; ``unroll_steps``; spectrum diagnostics): checked on torch 2.14, a
            double backward through a compiled module raises "torch.compile with aot_autograd does not currently
            support double backward", so the refusal comes before training instead of at the first step.
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        loss: str | GANLoss = "non_saturating",
        gp_weight: float = 10.0,
        mmd_kernel: str = "rq",
        mmd_scales: list[float] | None = None,
        mmd_gp_weight: float = 1.0,
        r1_gamma: float = 0.0,
        r2_gamma: float = 0.0,
        scheme: str = "simultaneous",
        n_dis: int = 1,
        g_optimizer: OptimizerConfig = OptimizerConfig(),
        d_optimizer: OptimizerConfig = OptimizerConfig(),
        weight_clip: float | None = None,
        accumulation: int = 1,
        uniform_average: bool = True,
        ema_decay: float | None = 0.999,
        average_discriminator: bool = False,
        sync_batchnorm: bool = False,
        svre: SVREConfig | None = None,
        lookahead: LookaheadConfig | None = None,
        latent_bank_factor: int | None = None,
        seed: int = 0,
        check_finite: bool = True,
        consensus: float | None = None,
        unroll_steps: int = 0,
        channels_last: bool = False,
        compile: bool = False,  # the config flag's name; stored as compile_players (nn.Module.compile stays)
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.save_hyperparameters(ignore=["generator", "discriminator"])
        g_optimizer.validate("g_optimizer")
        d_optimizer.validate("d_optimizer")
        # Checkpoints hold plain values only, so that they load with torch.load(weights_only=True).
        self.hparams.update(g_optimizer=asdict(g_optimizer), d_optimizer=asdict(d_optimizer),
                            loss=loss if isinstance(loss, str) else repr(loss),
                            svre=asdict(svre) if svre is not None else None)
        self.g_optimizer_config, self.d_optimizer_config = g_optimizer, d_optimizer
        if scheme not in SCHEMES:
            raise ValueError(f"Invalid scheme: {scheme!r}; expected one of {', '.join(SCHEMES)}")
        self.scheme = make_scheme(scheme, n_dis)
        self.loss = _make_loss(loss, gp_weight=gp_weight, r1_gamma=r1_gamma, r2_gamma=r2_gamma,
                               latent_bank_factor=latent_bank_factor,
                               mmd={"kernel": mmd_kernel, "scales": mmd_scales, "gp_weight": mmd_gp_weight})
        if weight_clip is not None and not weight_clip > 0:
            raise ValueError(f"Invalid weight_clip: {weight_clip!r}; expected a number > 0, or null for no clipping")
        if isinstance(accumulation, bool) or not isinstance(accumulation, int) or accumulation < 1:
            raise ValueError(f"Invalid accumulation: {accumulation!r}; expected an integer >= 1")
        if self.loss.feature_critic and accumulation > 1:
            raise ValueError(f"Invalid accumulation: {accumulation} with loss mmd; MMD^2_u is a U-statistic of the "
                             "whole batch, not a mean over micro-batches; expected 1 (raise the batch size instead)")
        if self.loss.feature_critic and self.scheme.variance_reduced:
            raise ValueError(f"Invalid scheme: {scheme!r} with loss mmd; SVRE's snapshot mean of per-batch fields is "
                             "not the gradient of MMD^2_u (a U-statistic over pairs, not a mean over samples); "
                             "expected another scheme")
        latent_dim = getattr(generator, "latent_dim", None)
        if not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"Invalid generator: {type(generator).__name__} has no integer `latent_dim` attribute")
        self.generator = generator
        self.discriminator = discriminator
        if self.loss.feature_critic:
            _check_feature_outputs(generator, discriminator, latent_dim)
        self.weight_clip = weight_clip
        self.accumulation = accumulation
        self.sync_batchnorm = sync_batchnorm
        self.generator_averages = PlayerAverages(generator, uniform=uniform_average, ema_decay=ema_decay)
        self.discriminator_averages = (
            PlayerAverages(discriminator, uniform=uniform_average, ema_decay=ema_decay)
            if average_discriminator else None
        )
        if svre is not None and not self.scheme.variance_reduced:
            raise ValueError(f"Invalid svre: settings given for scheme {scheme!r}; they apply to scheme 'svre' only")
        self.svre = (
            SVREState(generator, discriminator, svre or SVREConfig(), seed=seed + 2)
            if self.scheme.variance_reduced else None
        )
        self.lookahead = LookaheadMinmax((generator, discriminator), lookahead) if lookahead is not None else None
        self.hparams.update(lookahead=asdict(lookahead) if lookahead is not None else None)  # plain values
        self.latent_tables = LatentTables(latent_dim, latent_bank_factor, seed=seed + 3)
        self.latents = LatentSampler(latent_dim, seed)
        self.penalty_rng = torch.Generator().manual_seed(seed + 1)
        self.snapshot_passes = 0  # SVRE full passes over the data
        self.evaluations = 0  # F evaluations at the global batch so far, SVRE's snapshot passes included
        self.images_seen = 0  # real images consumed so far, over all ranks
        self.check_finite = check_finite
        self.consensus = check_consensus(consensus, variance_reduced=self.scheme.variance_reduced)
        if self.consensus and sync_batchnorm:  # SyncBatchNorm's backward has collectives of its own, no double one
            raise ValueError("Invalid consensus: it needs a double backward through the players, which sync_batchnorm's "
                             "SyncBatchNorm does not offer; set sync_batchnorm: false")
        self.unroll_steps = check_unroll_steps(unroll_steps, scheme=self.scheme.name, consensus=self.consensus,
                                               sync_batchnorm=sync_batchnorm)
        self.channels_last = _check_channels_last(channels_last, generator, discriminator)
        self.compile_players = _check_compile(compile, self.loss, consensus=self.consensus,
                                              unroll_steps=self.unroll_steps)
        self.loss_scale: GameLossScale | None = None  # float16 only (trainer.precision 16-mixed), made in setup
        self._loss_scale_state: dict | None = None  # from a checkpoint loaded before setup
        self._undo: IterationUndo | None = None
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
        self._setup_precision(str(self.trainer.precision))
        if self.sync_batchnorm and self.trainer.world_size > 1:
            self.generator = distributed.convert_sync_batchnorm(self.generator)
            self.discriminator = distributed.convert_sync_batchnorm(self.discriminator)
        for player in (self.generator, self.discriminator):
            if self.channels_last:  # only 4-D tensors change layout; idempotent
                player.to(memory_format=torch.channels_last)
            if self.compile_players and getattr(player, "_compiled_call_impl", None) is None:
                player.compile()  # the module's __call__ only: parameters and state_dict keys stay as they are
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "draws_per_step"):
            datamodule.draws_per_step = self.scheme.draws_per_step * self.accumulation
        if stage == "fit" and self.lookahead is not None:  # a checkpoint, restored after this, overwrites it
            self.lookahead.reset((self.generator, self.discriminator))

    def check_trainer_precision(self, precision: str) -> None:
        """bf16-mixed runs under Lightning's autocast as is; 16-mixed adds the game's loss scale (see
        :mod:`lightning_gan.precision`), which does not cover differentiable fields (consensus, unrolled)."""
        check_precision(precision)
        if precision == "16-mixed":
            for name, value in (("consensus", self.consensus), ("unroll_steps", self.unroll_steps)):
                if value:
                    raise ValueError(f"Invalid trainer.precision: '16-mixed' with {name} {value:g}; float16's loss "
                                     "scale does not cover its differentiable field; expected bf16-mixed or 32-true")

    def _setup_precision(self, precision: str) -> None:
        self.check_trainer_precision(precision)
        if precision != "16-mixed":
            self.loss_scale = None
            return
        if self.loss_scale is None:
            self.loss_scale = GameLossScale()
            if self._loss_scale_state is not None:
                self.loss_scale.load_state_dict(self._loss_scale_state)
        self._game = None

    def configure_optimizers(self) -> Any:
        """The players' optimizers and, when a player has a schedule, one LambdaLR per player: Lightning saves and
        restores them (checkpoint ``lr_schedulers``), ``training_step`` steps them once per game iteration."""
        family = self.scheme.optimizer_family
        optimizers = [
            self.g_optimizer_config.build(self.generator.parameters(), family),
            self.d_optimizer_config.build(self.discriminator.parameters(), family),
        ]
        configs = (self.g_optimizer_config, self.d_optimizer_config)
        if all(config.lr_schedule().trivial for config in configs):
            return optimizers  # no scheduler at all: the unscheduled run, bit for bit
        return optimizers, [config.scheduler(optimizer) for config, optimizer in zip(configs, optimizers)]

    def on_train_start(self) -> None:
        resync_schedulers(self.lr_schedulers())  # after callbacks that write raw lrs (Tune's ConfigOptimizerScalars)

    @property
    def game(self) -> GameStep:
        """The game the scheme drives, bound to this run's players and optimizers."""
        optimizers = self.optimizers(use_pl_optimizer=False)
        if self._game is None or self._game.optimizers != list(optimizers):
            game = GANGame(self.generator, self.discriminator, self.loss, penalty_rng=self.penalty_rng,
                           loss_scale=self.loss_scale)
            estimator = self.svre.bind(game) if self.svre is not None else None
            self._game = GameStep(game, optimizers, estimator=estimator, projection=self._project,
                                  check_finite=self.check_finite or self.loss_scale is not None,
                                  consensus=self.consensus, unroll_steps=self.unroll_steps)
            self._undo = IterationUndo((self.generator, self.discriminator), optimizers)
        return self._game

    def _project(self) -> None:
        """WGAN weight clipping: the projection onto D's constraint set after every parameter move."""
        if self.weight_clip is not None:
            clip_weights_(self.discriminator, self.weight_clip)

    # -- one game iteration ------------------------------------------------------------------------

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real, indices = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
        if self.channels_last and real.dim() == 4:
            real = real.contiguous(memory_format=torch.channels_last)
        game = self.game
        if self.svre is not None:
            self.evaluations += self.svre.maybe_snapshot(self)
        samples = self.split_batch(real, indices)
        if self.loss_scale is not None:
            self._undo.capture()
        self.scheme.step(game, samples)
        skipped = self._skip_or_raise_if_not_finite(game)
        if self.lookahead is not None and not skipped:
            self.lookahead.step((self.generator, self.discriminator), self.trainer.global_step + 1)
        if self.svre is not None:
            values = self.svre.log_values(self, logging_now=self._logging_now())
            if values:
                self.log_dict(values, on_step=True, on_epoch=False)
        self._sync_buffers()
        if not skipped:
            self.generator_averages.update(self.generator)
            if self.discriminator_averages is not None:
                self.discriminator_averages.update(self.discriminator)
        self.evaluations += self.scheme.evaluations_per_step
        self.images_seen += real.shape[0] * self.trainer.world_size
        self._count_iteration()
        self._log_step(game)
        step_schedulers(self.lr_schedulers())  # after the iteration's log: it shows the lr it used

    def split_batch(self, real: Tensor, indices: Tensor | None = None) -> list[list[MicroBatch]]:
        """Cut the rank's batch into the scheme's draws, each into ``accumulation`` micro-batches with their z.

        z comes from the latent bank (tied to ``indices``) when there is one, else from the global stream.
        """
        draws, micro = self.scheme.draws_per_step, self.accumulation
        if real.shape[0] % (draws * micro) != 0:
            raise ValueError(
                f"Invalid batch: {real.shape[0]} samples cannot be split into {draws} draws x {micro} micro-batches "
                f"(scheme {self.scheme.name!r} with accumulation={micro}); use a GameDataModule, which sizes batches "
                "itself, or a batch size divisible by draws x accumulation"
            )
        per_draw, per_micro = real.shape[0] // draws, real.shape[0] // (draws * micro)
        bank = self._bank()
        if bank is not None and indices is None:
            raise ValueError("Invalid batch: latent_bank_factor needs (x, index) batches, as GameDataModule yields")
        samples = []
        for k, chunk in enumerate(real.split(per_draw)):
            if bank is None:
                z = self.latents.draw(per_draw, world_size=self.trainer.world_size, rank=self.trainer.global_rank,
                                      device=real.device)
                z_micro = z.split(per_micro)
            else:
                chunk_indices = indices[k * per_draw:(k + 1) * per_draw]
                z_micro = [bank.lookup(i, real.device) for i in chunk_indices.split(per_micro)]
            samples.append(list(zip(chunk.split(per_micro), z_micro)))
        return samples

    # -- latents tied to samples, SVRE snapshots ------------------------------------------------------

    def _training_set_size(self) -> int:
        return len(self.trainer.train_dataloader.dataset)

    def _bank(self) -> LatentBank | None:
        """The latent bank (built at first use, when the training set size is known), or None."""
        if self.latent_tables.bank_factor is None:
            return None
        return self.latent_tables.bank(self._training_set_size())

    def snapshot_latents(self) -> LatentBank:
        """Latents of SVRE's snapshot passes and variance probes (the bank if there is one)."""
        return self.latent_tables.snapshot_latents(self._training_set_size())

    @torch.no_grad()
    def restart_from_averages(self) -> None:
        """Restart the live players from their uniform averages, and the averages from there (SVRE's restart,
        as in the paper's code; see :meth:`PlayerAverages.restart`)."""
        averages = (self.generator_averages, self.discriminator_averages)
        if any(a is None or a.get("uniform") is None for a in averages):
            raise ValueError("Invalid svre.restart_probability: restarts need uniform_average: true and "
                             "average_discriminator: true")
        for live, average in zip((self.generator, self.discriminator), averages):
            average.restart(live)

    def _skip_or_raise_if_not_finite(self, game: GameStep) -> bool:
        """One host sync per iteration; every rank reads the same all-reduced field, so all of them stop (or, under
        float16's loss scale, skip the iteration) together. Returns whether the iteration was skipped."""
        if game.finite_check is None or (bad := game.finite_check.verdict()) is None:
            if self.loss_scale is not None:
                self.loss_scale.update(overflow=False)
            return False
        if self.loss_scale is not None and not self.loss_scale.exhausted:
            self._undo.restore()
            self.loss_scale.update(overflow=True)
            return True
        stats = game.game.stats
        losses = ", ".join(f"{name} {float(value):.4g}" for name, value in (
            ("generator", stats.generator_loss), ("discriminator", stats.discriminator_loss)) if value is not None)
        raise DivergenceError(
            f"Diverged in iteration {self.trainer.global_step + 1} (scheme {self.scheme.name}): {bad.describe()}"
            + (f" (last losses on rank {self.trainer.global_rank}: {losses})" if losses else "")
            + (f" at loss scale {self.loss_scale.scale:g}" if self.loss_scale is not None else "")
            + "; lower the step sizes (g_optimizer.lr, d_optimizer.lr) or resume from the last checkpoint"
        )

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

    def _logging_now(self) -> bool:
        """Whether Lightning writes logs at this step: each self.log costs ~0.2 ms, so values are made only then."""
        return self.trainer._logger_connector.should_update_logs

    def _log_step(self, game: GameStep) -> None:
        if not self._logging_now():
            return
        stats = game.game.stats
        values = {
            "train/loss_generator": stats.generator_loss,
            "train/loss_discriminator": stats.discriminator_loss,
            "train/d_real": stats.d_real,
            "train/d_fake": stats.d_fake,
        }
        for player, name in ((GENERATOR, "generator"), (DISCRIMINATOR, "discriminator")):
            norm = game.grad_norm(player)
            if norm is not None:
                values[f"train/grad_norm_{name}"] = norm
        for optimizer, name in zip(game.optimizers, ("generator", "discriminator")):
            values[f"train/lr_{name}"] = float(optimizer.param_groups[0]["lr"])
        values["train/evaluations"] = float(self.evaluations)
        values["train/images_seen"] = float(self.images_seen)
        if self.loss_scale is not None:
            values["train/loss_scale"] = self.loss_scale.scale
            values["train/skipped_iterations"] = float(self.loss_scale.skipped)
        self.log_dict(values, on_step=True, on_epoch=False)
        self.log_dict({"loss_g": stats.generator_loss, "loss_d": stats.discriminator_loss},
                      prog_bar=True, logger=False, on_step=True, on_epoch=False)  # progress bar only

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
    def sample(self, num_samples: int, which: GeneratorChoice = "live", seed: int = 1234, *,
               batch_size: int | None = None, rank: int = 0, world_size: int = 1) -> Tensor:
        """``num_samples`` samples from a fixed latent stream, in eval mode (BatchNorm uses running statistics).

        Args:
            batch_size: Latents per generator forward (None: all at once); the samples do not depend on it.
            rank, world_size: Return only rows ``rank::world_size`` of the ``num_samples``, so that the ranks of a
                metric split one set of samples without padding or duplicates.
        """
        generator = self.generator_for(which)
        z = torch.randn(num_samples, self.latents.latent_dim, generator=torch.Generator().manual_seed(seed))
        z = z[rank::world_size]
        was_training = generator.training
        generator.eval()
        try:
            return torch.cat([generator(chunk.to(self.device)) for chunk in z.split(batch_size or max(1, len(z)))])
        finally:
            generator.train(was_training)

    # -- checkpoints -------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.check_finite:
            players = {"generator": self.generator, "discriminator": self.discriminator,
                       "generator_averages": self.generator_averages}
            if self.discriminator_averages is not None:
                players["discriminator_averages"] = self.discriminator_averages
            bad = first_non_finite_parameter(players)
            if bad is not None:
                step = self.trainer.global_step if self._trainer is not None else "?"
                raise DivergenceError(f"Diverged by step {step}: {bad} is not finite; not saving this state "
                                      "(the checkpoints on disk are from before)")
        tables = self.latent_tables.state_dict()
        if self._trainer is not None:
            _record_epoch_as_unfinished(self.trainer, checkpoint)
        checkpoint["lightning_gan"] = {
            "latents": self.latents.state_dict(),
            "penalty_rng": self.penalty_rng.get_state(),
            "evaluations": self.evaluations,
            "images_seen": self.images_seen,
            "snapshot_passes": self.snapshot_passes,
            "latent_bank": tables["bank"],
            "pass_latents": tables["pass"],
            "svre": self.svre.extra_state() if self.svre is not None else None,
            "loss_scale": self.loss_scale.state_dict() if self.loss_scale is not None else None,
            "world_size": self.trainer.world_size if self._trainer is not None else 1,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("lightning_gan")
        if state is None:
            raise ValueError("Invalid checkpoint: it has no 'lightning_gan' entry; it was not written by GANModule")
        self.latents.load_state_dict(state["latents"])
        self.penalty_rng.set_state(state["penalty_rng"])
        self.evaluations = state["evaluations"]
        self.images_seen = state["images_seen"]
        self.snapshot_passes = state.get("snapshot_passes", 0)
        self.latent_tables.load_state_dict({"bank": state.get("latent_bank"), "pass": state.get("pass_latents")})
        if self.svre is not None:
            self.svre.load_extra_state(state["svre"])
            self._game = None  # rebind the estimator to the restored state
        self._loss_scale_state = state.get("loss_scale")
        if self.loss_scale is not None and self._loss_scale_state is not None:
            self.loss_scale.load_state_dict(self._loss_scale_state)


def _record_epoch_as_unfinished(trainer: pl.Trainer, checkpoint: dict[str, Any]) -> None:
    """Save the epoch being trained as not yet finished, whatever hook saves, so that a resume counts it once.

    Lightning 2.6.6 resumes exactly only a checkpoint saved mid-epoch in ``on_train_batch_end``. Saved at the
    epoch's last batch, it counts that epoch twice (``FitLoop.reset`` finishes it, then ``advance`` runs an empty
    one); saved in ``on_train_end`` after an epoch cut short by ``max_steps`` or a stop, the partial epoch is
    already counted as finished; saved in ``on_train_end`` after a full epoch, ``FitLoop`` does not restart and
    ignores the loader state (the sampler replays pass 0). Recorded as "started, not processed" with every batch
    done (and ``is_last_batch`` cleared), all three resume as the uninterrupted run: the epoch loop finds its
    batches done, the fit loop closes the epoch once, the loader state is restored. Cost: an epoch that had
    ended runs its ``on_train_epoch_end`` hooks again on resume. Read with lightning 2.6.6's ``fit_loop.py`` and
    ``training_epoch_loop.py``.
    """
    fit = checkpoint.get("loops", {}).get("fit_loop")
    if not trainer.training or not fit or "epoch_progress" not in fit:
        return
    epochs, batches = fit["epoch_progress"], fit["epoch_loop.batch_progress"]
    started = epochs["current"]["started"]
    if started < 1 or epochs["current"]["ready"] != started:
        return  # before the first epoch, or between an epoch's ready and started
    counted = epochs["current"]["processed"] == started
    at_end = trainer.fit_loop.epoch_loop._num_ready_batches_reached()
    if not (counted or at_end):
        return  # mid-epoch, in on_train_batch_end: Lightning's own case
    for part in ("total", "current"):
        epochs[part]["processed"] = epochs[part]["completed"] = epochs[part]["started"] - 1
    if batches["current"]["completed"] != batches["current"]["processed"]:  # saved inside on_train_batch_end
        for part in ("total", "current"):
            batches[part]["completed"] = batches[part]["processed"]
        fit["epoch_loop.state_dict"]["_batches_that_stepped"] += 1  # Lightning adds it after this hook
    batches["is_last_batch"] = False
    checkpoint["epoch"] = epochs["current"]["completed"]


@torch.no_grad()
def _check_feature_outputs(generator: nn.Module, discriminator: nn.Module, latent_dim: int) -> None:
    """Refuse, before training, a discriminator that emits one score per sample where ``loss: mmd`` needs features:
    one eval-mode forward of G and D on two zero latents (no statistics move, no randomness drawn)."""
    modes = [(m, m.training) for m in (*generator.modules(), *discriminator.modules())]
    generator.eval(), discriminator.eval()
    try:
        first = next(generator.parameters(), None)
        z = torch.zeros(2, latent_dim) if first is None else first.new_zeros(2, latent_dim)
        outputs = discriminator(generator(z))
    finally:
        for m, training in modes:
            m.training = training
    if outputs.dim() != 2 or outputs.shape[0] != 2:
        raise ValueError(f"Invalid discriminator output shape: {tuple(outputs.shape)} on 2 samples for loss mmd; "
                         "expected features (N, d), e.g. the discriminator's `features: 16`")


def _check_channels_last(channels_last: bool, generator: nn.Module, discriminator: nn.Module) -> bool:
    if not isinstance(channels_last, bool):
        raise ValueError(f"Invalid channels_last: {channels_last!r}; expected true or false")
    if channels_last and not any(p.dim() == 4 for m in (generator, discriminator) for p in m.parameters()):
        raise ValueError("Invalid channels_last: true; neither player has a 4-D (convolutional) weight, so the memory "
                         "format would change nothing; set channels_last: false")
    return channels_last


def _check_compile(compile_: bool, loss: GANLoss, *, consensus: float | None, unroll_steps: int) -> bool:
    """Refuse ``compile`` where the run differentiates through the players' gradients (see GANModule's docstring)."""
    if not isinstance(compile_, bool):
        raise ValueError(f"Invalid compile: {compile_!r}; expected true or false")
    if not compile_:
        return False
    needs = []
    if getattr(loss, "gp_weight", 0) > 0:
        needs.append(f"{'mmd_gp_weight' if loss.feature_critic else 'gp_weight'} {loss.gp_weight:g} (gradient penalty)")
    for name in ("r1_gamma", "r2_gamma"):
        if getattr(loss, name, 0) > 0:
            needs.append(f"{name} {getattr(loss, name):g}")
    if consensus:
        needs.append(f"consensus {consensus:g}")
    if unroll_steps:
        needs.append(f"unroll_steps {unroll_steps}")
    if needs:
        raise ValueError(f"Invalid compile: true with {', '.join(needs)}; these need a double backward through the "
                         "players, which torch.compile's graphs do not support; set compile: false")
    return True


def _make_loss(loss: str | GANLoss, *, gp_weight: float, r1_gamma: float, r2_gamma: float,
               latent_bank_factor: int | None, mmd: dict[str, Any] | None = None) -> GANLoss:
    if not isinstance(loss, GANLoss):
        kwargs: dict[str, Any] = {"r1_gamma": r1_gamma, "r2_gamma": r2_gamma}
        if loss == "wgan_gp":
            kwargs["gp_weight"] = gp_weight
        if loss == "mmd":
            kwargs.update(mmd or {})
        loss = get_loss(loss, **kwargs)
    if loss.relativistic and latent_bank_factor not in (None, 1):  # refused now, not at the first step
        raise ValueError(f"Invalid latent_bank_factor: {latent_bank_factor!r} with loss {loss!r}; relativistic "
                         "pairing needs one fake per real sample: null or 1")
    return loss
