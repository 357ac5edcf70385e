"""In-training mode metrics of the mixture so far, while an AdaGAN component trains (2-D mixture data).

A component's own samples say little about AdaGAN's progress: it is trained to cover what the previous components
miss. :class:`MixtureModes` logs, every ``every_n_steps`` iterations of component t, the mode metrics of
:func:`~lightning_gan.metrics.toy.mixture_metrics` (modes covered, share of high-quality samples) for the mixture the
step will produce: the previous components at weights (1 - beta_t) w and the component being trained (its live
generator) at beta_t, from ``num_samples`` fixed latents (the same at every log, on every rank: no collective).
Logged as ``adagan/mixture_modes`` and ``adagan/mixture_high_quality`` to the component's loggers (``metrics.csv``,
TensorBoard). Component 0 logs its own (the mixture is itself).
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from lightning_gan.adagan.mixture import mix
from lightning_gan.adagan.weights import mixture_weights_after
from lightning_gan.metrics.toy import mixture_metrics

__all__ = ["MixtureModes", "previous_mixture"]


def previous_mixture(path: Path) -> tuple[list[nn.Module], list[float]]:
    """The components and weights of a ``mixture.ckpt`` (rebuilt as ``evaluate`` rebuilds it)."""
    from lightning_gan.run_files import load_run, load_weights, read_checkpoint, run_config

    checkpoint = read_checkpoint(path)
    config = run_config(path, None, checkpoint)
    module, _ = load_run(path, config)
    load_weights(module, path, config, checkpoint)
    generator = module.generator
    return list(generator.components), [float(w) for w in generator.weights]


class MixtureModes(Callback):
    """Logs the mode metrics of (previous components, the current one at ``beta``) every ``every_n_steps``.

    Args:
        every_n_steps: iterations between logs (> 0).
        beta: the current component's mixture weight.
        previous: the previous components (empty for component 0) and their weights.
        num_samples: samples per log (the protocol's 2500).
        seed: seed of the fixed latents.
    """

    def __init__(self, every_n_steps: int, beta: float, previous: tuple[list[nn.Module], list[float]] = ([], []),
                 num_samples: int = 2500, seed: int = 0) -> None:
        if every_n_steps < 1:
            raise ValueError(f"Invalid adagan.monitor_every: {every_n_steps}; expected an integer >= 1, or 0 for off")
        self.every_n_steps = every_n_steps
        self.components, old = previous
        self.weights = torch.tensor(mixture_weights_after(old, beta) if old else [1.0], dtype=torch.float64)
        self.num_samples = num_samples
        self.seed = seed
        self.last: dict[str, float] | None = None  # the values of the last log

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if getattr(datamodule, "modes", None) is None:
            raise ValueError(f"Invalid adagan.monitor_every: {self.every_n_steps}; the mode metrics need 2-D mixture "
                             f"data (GaussianMixtureDataModule), not {type(datamodule).__name__}; set 0")

    @torch.no_grad()
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        step = trainer.global_step
        if step % self.every_n_steps != 0 and step != trainer.max_steps:
            return
        current = pl_module.generator
        latent_dim = current.latent_dim + (1 if self.components else 0)  # a mixture of one is its component
        z = torch.randn(self.num_samples, latent_dim, generator=torch.Generator().manual_seed(self.seed))
        components = [c.to(pl_module.device) for c in self.components] + [current]
        modes = [(m, m.training) for c in components for m in c.modules()]
        for c in components:
            c.eval()
        try:
            z = z.to(pl_module.device)
            samples = (mix(components, self.weights, z) if self.components else current(z)).float().cpu()
        finally:
            for m, training in modes:
                m.training = training
        datamodule = trainer.datamodule
        values = mixture_metrics(samples, datamodule.modes, datamodule.std)
        metrics = {"adagan/mixture_modes": float(values["modes_covered"]),
                   "adagan/mixture_high_quality": float(values["high_quality"])}
        self.last = metrics
        if trainer.is_global_zero:  # straight to the loggers: Lightning's own cadence (log_every_n_steps) would drop
            for logger in trainer.loggers:  # the values of steps between its flushes
                logger.log_metrics(metrics, step=step)
