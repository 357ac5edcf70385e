"""MixtureScore: toy metrics of the generator on a 2-D Gaussian mixture, logged every few iterations.

It gives a search a metric that means "the generator matches the data" (MMD, energy distance, modes covered),
where the losses of a GAN say little. Every rank computes the same numbers from the same fixed latents (the
players are identical across ranks), so no collective is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_gan.metrics.toy import mixture_metrics

__all__ = ["MixtureScore", "is_mixture"]


def is_mixture(datamodule: Any) -> bool:
    """Whether the data module is a mixture with known modes (``modes`` and ``std`` attributes)."""
    return hasattr(datamodule, "modes") and hasattr(datamodule, "std")


class MixtureScore(Callback):
    """Every ``every_n_steps`` iterations (and at the end) log ``toy/<generator>/<name>`` for each generator kept.

    Names: ``mmd2`` (unbiased squared MMD, Gaussian kernel with the median heuristic on the real samples),
    ``energy`` (energy distance), ``modes_covered`` and ``high_quality`` (fraction of samples within 3 std of a mode).

    Args:
        every_n_steps: iterations between scores, >= 1.
        num_samples: generated and real samples per score, >= 2.
        generators: any of ``live``, ``ema``, ``uniform``; those the module does not keep are skipped.
        seed: seed of the fixed latents.

    Raises:
        ValueError: a value out of range; at fit start, data without ``modes`` and ``std`` (not a mixture).
    """

    def __init__(self, every_n_steps: int = 50, num_samples: int = 1000,
                 generators: Sequence[str] = ("live", "ema", "uniform"), seed: int = 4321) -> None:
        if every_n_steps < 1:
            raise ValueError(f"Invalid every_n_steps: {every_n_steps}; expected an integer >= 1")
        if num_samples < 2:
            raise ValueError(f"Invalid num_samples: {num_samples}; expected an integer >= 2")
        self.every_n_steps, self.num_samples, self.seed = every_n_steps, num_samples, seed
        self.generators = list(generators)
        self.last: dict[str, float] = {}
        self._scored_step: int | None = None
        self._reference: torch.Tensor | None = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        if not is_mixture(datamodule):
            raise ValueError(f"Invalid data for MixtureScore: {type(datamodule).__name__} has no `modes` and `std`; "
                             "toy metrics need a 2-D mixture (lightning_gan.data.GaussianMixtureDataModule)")
        real = datamodule.train_set  # items (x, index); the first samples are a random draw of the mixture
        self._reference = torch.stack([real[i][0] for i in range(min(self.num_samples, len(real)))]).float()

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self.score(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._scored_step != trainer.global_step:
            self.score(trainer, pl_module, log=False)  # logging is closed at train end; reporters read `last`

    def score(self, trainer: pl.Trainer, pl_module: pl.LightningModule, log: bool = True) -> dict[str, float]:
        """Compute (and log) the scores now; also kept in ``self.last``."""
        assert self._reference is not None, "on_train_start sets the reference"
        datamodule = trainer.datamodule
        values: dict[str, float] = {}
        for which in self.generators:
            try:
                pl_module.generator_for(which)
            except ValueError:
                continue  # an average this run does not keep
            samples = pl_module.sample(self.num_samples, which=which, seed=self.seed).detach().float().cpu()
            scores = mixture_metrics(samples, datamodule.modes, datamodule.std, self._reference)
            values.update({f"toy/{which}/{name}": value for name, value in scores.items() if name != "num_modes"})
        self.last, self._scored_step = values, trainer.global_step
        if log:
            pl_module.log_dict(values, on_step=True, on_epoch=False)
        return values
