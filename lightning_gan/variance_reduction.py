"""SVRE in the trainer: snapshot players, the snapshot pass, its trigger, and the estimator's logs.

The math lives in :mod:`lightning_gan.optim.svre`; this module owns what a training run needs
around it: the snapshot players as submodules (so checkpoints carry them), the decision to take a
snapshot (a generator seeded identically on every rank), the full pass over this rank's shard for
mu, the optional restart from the averaged players, the variance probe and the values logged. The
training module calls :meth:`SVREState.maybe_snapshot` before and :meth:`SVREState.log_values` after
each iteration.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

from lightning_gan import distributed
from lightning_gan.game.finite import DivergenceError
from lightning_gan.game.gan import GANGame
from lightning_gan.optim.svre import SnapshotTrigger, SVRGEstimator


@dataclass
class SVREConfig:
    """Settings of the ``svre`` scheme.

    Args:
        snapshot_probability: probability of a new snapshot per iteration; null means 1/n with n the
            iterations per data pass (the paper's choice). Exclusive with ``snapshot_every``.
        snapshot_every: take a snapshot every this many iterations instead (a fixed epoch length).
        restart_probability: at a snapshot, with this probability, restart the live players from their
            uniform averages and the averages from that point (``n_averaged = 1``), before the snapshot is
            taken, as in the paper's code (p = 1/10 in its bilinear figure; without the reset of the average,
            restarts pull back towards the early iterates). Needs ``uniform_average`` and ``average_discriminator``.
        variance_every: every this many iterations, log the variance of the SVRE estimate and of the
            plain stochastic field over ``variance_batches`` mini-batches (0: never).
        variance_batches: mini-batches of the variance probe, >= 2.
    """

    snapshot_probability: float | None = None
    snapshot_every: int | None = None
    restart_probability: float = 0.0
    variance_every: int = 0
    variance_batches: int = 8

    def validate(self) -> None:
        if self.snapshot_probability is not None and self.snapshot_every is not None:
            raise ValueError("Invalid svre: set snapshot_probability or snapshot_every, not both")
        if self.snapshot_probability is not None and not 0 < self.snapshot_probability <= 1:
            raise ValueError(f"Invalid svre.snapshot_probability: {self.snapshot_probability!r}; expected 0 < p <= 1")
        if self.snapshot_every is not None and self.snapshot_every < 1:
            raise ValueError(f"Invalid svre.snapshot_every: {self.snapshot_every!r}; expected an integer >= 1")
        if not 0 <= self.restart_probability <= 1:
            raise ValueError(f"Invalid svre.restart_probability: {self.restart_probability!r}; expected 0 <= p <= 1")
        if self.variance_every < 0:
            raise ValueError(f"Invalid svre.variance_every: {self.variance_every!r}; expected an integer >= 0")
        if self.variance_batches < 2:
            raise ValueError(f"Invalid svre.variance_batches: {self.variance_batches!r}; expected an integer >= 2")


class SVREState(nn.Module):
    """The snapshot players of a GAN run and everything needed to refresh them.

    Args:
        generator: the live generator (copied for the snapshot).
        discriminator: the live discriminator (copied for the snapshot).
        config: the scheme's settings.
        seed: seed of the snapshot trigger (identical on every rank).
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, config: SVREConfig, seed: int) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.snapshot_generator = copy.deepcopy(generator)
        self.snapshot_discriminator = copy.deepcopy(discriminator)
        self.seed = seed
        self.trigger: SnapshotTrigger | None = None  # built once the pass length is known
        self._trigger_state: dict | None = None
        self.estimator: SVRGEstimator | None = None
        self._estimator_state: dict | None = None

    def bind(self, game: GANGame) -> SVRGEstimator:
        """The estimator around ``game``, whose snapshot game uses the snapshot players."""
        if self.estimator is None or self.estimator.game is not game:
            snapshot = GANGame(self.snapshot_generator, self.snapshot_discriminator, game.loss,
                               penalty_rng=game.penalty_rng, loss_scale=game.loss_scale)
            self.estimator = SVRGEstimator(game, snapshot)
            if self._estimator_state is not None:
                self.estimator.load_state_dict(self._estimator_state)
                self._estimator_state = None
                device = next(self.snapshot_generator.parameters()).device
                if self.estimator.mu is not None:  # checkpoints load on the CPU
                    self.estimator.mu = [[t.to(device) for t in player] for player in self.estimator.mu]
        return self.estimator

    def should_snapshot(self, iteration: int, iterations_per_pass: int) -> bool:
        if self.trigger is None:
            probability = self.config.snapshot_probability
            if probability is None and self.config.snapshot_every is None:
                probability = 1.0 / max(1, iterations_per_pass)
            self.trigger = SnapshotTrigger(probability=probability, every=self.config.snapshot_every, seed=self.seed)
            if self._trigger_state is not None:
                self.trigger.load_state_dict(self._trigger_state)
                self._trigger_state = None
        return self.trigger(iteration)

    def wants_restart(self) -> bool:
        assert self.trigger is not None
        return self.trigger.restarts(self.config.restart_probability)

    # -- driven by the training module (duck-typed: GANModule) ------------------------------------

    def maybe_snapshot(self, module: Any) -> int:
        """Before an iteration: if the trigger fires, restart (maybe: players and uniform averages), redraw the
        latents, take the snapshot (of the restarted point).

        Returns the field evaluations the snapshot pass is worth at the global batch (0 without a snapshot),
        so that budgets compare across schemes.
        """
        trainer = module.trainer
        if not self.should_snapshot(trainer.global_step, trainer.num_training_batches):
            return 0
        if self.wants_restart():
            module.restart_from_averages()
        latents = module.snapshot_latents()
        latents.redraw()
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "full_pass_dataloader"):
            raise ValueError("Invalid data: scheme 'svre' needs a GameDataModule (it computes mu with "
                             "full_pass_dataloader()); got " + type(datamodule).__name__)
        device = module.device

        def to_sample(batch: Any) -> list[tuple[Tensor, Tensor]]:
            x, indices = batch[0], batch[1]
            return [(x.to(device), latents.lookup(indices, device))]

        loader = datamodule.full_pass_dataloader(datamodule.batch_size * module.accumulation)
        self.take_snapshot(full_pass(iter(loader), to_sample))
        scale = self.estimator.game.loss_scale if self.estimator is not None else None
        while scale is not None and not self.estimator.mu_is_finite():  # float16 overflow: retake at half the scale
            if scale.exhausted:
                raise DivergenceError(f"Diverged at the SVRE snapshot of iteration {trainer.global_step + 1}: mu is "
                                      f"not finite at loss scale {scale.scale:g}; lower the step sizes or resume "
                                      "from the last checkpoint")
            scale.backoff()
            scale.retaken_snapshots += 1
            self.take_snapshot(full_pass(iter(loader), to_sample))
        module.snapshot_passes += 1
        global_batch = trainer.world_size * datamodule.batch_size * module.accumulation
        return math.ceil(len(loader.dataset) / global_batch)

    def log_values(self, module: Any, logging_now: bool) -> dict[str, Any]:
        """What to log after an iteration: snapshot count and ||mu|| on logging steps, the variance probe
        every ``variance_every`` iterations (logged whenever measured: it is costly)."""
        values: dict[str, Any] = {}
        if logging_now:
            values = {"svre/snapshot_passes": float(module.snapshot_passes), "svre/mu_norm": self.mu_norm()}
        every = self.config.variance_every
        if every and module.trainer.global_step % every == 0:
            values.update(self.variance_probe(self._probes(module)))
        return values

    def _probes(self, module: Any) -> list[Any]:
        """The first ``variance_batches`` mini-batches of this rank's shard, with the snapshot latents."""
        datamodule = module.trainer.datamodule
        latents = module.snapshot_latents()
        probes = []
        for batch in datamodule.full_pass_dataloader(datamodule.batch_size):
            probes.append([(batch[0].to(module.device), latents.lookup(batch[1], module.device))])
            if len(probes) == self.config.variance_batches:
                break
        return probes

    def take_snapshot(self, full_pass: Iterable[tuple[Any, int]]) -> None:
        assert self.estimator is not None
        self.estimator.take_snapshot(full_pass)
        # Snapshot buffers (BatchNorm statistics) moved during the pass on each rank's shard: rank 0's win.
        for player in (self.snapshot_generator, self.snapshot_discriminator):
            if any(True for _ in player.buffers()):
                distributed.sync_buffers_(player)

    @torch.no_grad()
    def _player_buffers(self, players: Iterable[nn.Module]) -> list[Tensor]:
        return [b for p in players for b in p.buffers()]

    def variance_probe(self, probes: list[Any]) -> dict[str, Tensor]:
        """Variance of the plain field and of the SVRE estimate over ``probes`` samples, on this rank.

        Training state is left as it was: buffers and the penalty stream are restored afterwards.
        """
        estimator = self.estimator
        assert estimator is not None and estimator.mu is not None
        game, snapshot = estimator.game, estimator.snapshot
        buffers = self._player_buffers([*game.players, *snapshot.players])
        saved_buffers = [b.clone() for b in buffers]
        rng = game.penalty_rng
        saved_rng = rng.get_state() if rng is not None else None
        plain, reduced = [], []
        for sample in probes:
            live = game.field(sample)
            at_snapshot = snapshot.field(sample)
            plain.append(torch.cat([g.reshape(-1) for player in live for g in player]))
            estimate = [[l - s + m for l, s, m in zip(lp, sp, mp)]
                        for lp, sp, mp in zip(live, at_snapshot, estimator.mu)]
            reduced.append(torch.cat([g.reshape(-1) for player in estimate for g in player]))
        with torch.no_grad():
            for b, saved in zip(buffers, saved_buffers):
                b.copy_(saved)
        if rng is not None:
            rng.set_state(saved_rng)
        return {"svre/variance_plain": _variance(plain), "svre/variance_svre": _variance(reduced)}

    def mu_norm(self) -> Tensor:
        assert self.estimator is not None
        return self.estimator.mu_norm()

    # -- checkpoints (the snapshot players are submodules; the rest goes here) ---------------------

    def extra_state(self) -> dict:
        return {
            "estimator": self.estimator.state_dict() if self.estimator is not None else self._estimator_state,
            "trigger": self.trigger.state_dict() if self.trigger is not None else self._trigger_state,
        }

    def load_extra_state(self, state: dict) -> None:
        self._estimator_state, self._trigger_state = state["estimator"], state["trigger"]
        self.estimator, self.trigger = None, None


def _variance(vectors: list[Tensor]) -> Tensor:
    stacked = torch.stack(vectors)
    return (stacked - stacked.mean(0)).pow(2).sum(1).mean()


def full_pass(batches: Iterator, to_sample: Callable[[Any], Any]) -> Iterator[tuple[Any, int]]:
    """``(sample, count)`` pairs of a full pass, for :meth:`SVRGEstimator.take_snapshot`."""
    for batch in batches:
        sample = to_sample(batch)
        yield sample, batch[0].shape[0]


__all__ = ["SVREConfig", "SVREState", "full_pass"]
