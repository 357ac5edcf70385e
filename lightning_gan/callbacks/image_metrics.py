"""ImageMetrics: FID / KID / IS of the live and averaged generators during training, synced over ranks.

Built on torchmetrics (:func:`lightning_gan.metrics.build_image_metrics`): the feature network is the
digit classifier of the data set (MNIST, Fashion-MNIST, 8x8 digits) or Inception from a local weights
file, checked when training starts, before any iteration is spent. Every evaluation uses the same
``num_samples`` latents, drawn from one seeded stream for the whole run and split over the ranks, so
rank r of W generates exactly rows r, r + W, ... (no padded duplicates) and a 2-rank score equals the
1-rank score on the same samples. The real side is ``datamodule.sample_real(num_samples, real_split)``,
split the same way; its statistics are computed at the first evaluation and kept
(``reset_real_features=False``). ``compute()`` runs on every rank: FID all-reduces float64 sums, KID and IS
gather their features.

The real split is the training set by default, as for ``lightning-gan evaluate``, so that both score a checkpoint
against the same images: it is what GAN papers report (the TTUR reference statistics of CIFAR-10 and StyleGAN2-ADA's
``fid50k_full`` use the training images), it exists for every data module (toy mixtures and image folders have no
held-out split), and it never changes with ``num_samples``. ``real_split="test"`` asks for the held-out split.

FID on a digit classifier's features (MNIST, Fashion-MNIST, 8x8 digits) is the Frechet distance between Gaussians
fitted to the classifier's penultimate ReLU features (128 for MNIST and Fashion-MNIST, 64 for 8x8 digits), not to
Inception's 2048: its values compare runs scored with the same classifier and N, never published Inception FIDs.
Its floor, real against real with the shipped MNIST classifier, is 0.97 for 10,000 training against the 10,000 test
images (0.77 between two draws of 10,000 training images with different seeds; about 4.1 at N = 2,000, FID being
biased upwards at small N); untrained or collapsed generators score in the hundreds to thousands.

``sum25`` (only with :class:`~lightning_gan.data.Sum25DataModule`, whose 5-channel tuples FID/KID/IS do not take):
the sum-to-25 task's values (:mod:`lightning_gan.metrics.sum25`: share of generated tuples whose digits, read by
the shipped MNIST classifier or ``weights``, sum to 25, confidently or not, and which are training / held-out
combinations), logged as ``val/<value>_<g>``, e.g. ``val/sum25_ema``, ``val/heldout_combos_live``; no real
samples are needed. ``stacked`` (only with :class:`~lightning_gan.data.StackedMNISTDataModule`): modes covered out of
1,000 and KL to the uniform of the digit triples read (:mod:`lightning_gan.metrics.stacked_mnist`), logged as
``val/stacked_modes_<g>``, ``val/stacked_kl_<g>``, ``val/stacked_confident_<g>``, ``val/stacked_modes_confident_<g>``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, get_args

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torchmetrics import Metric
from typing_extensions import override

from lightning_gan.callbacks.signals import stopped_by_signal
from lightning_gan.data.stacked_mnist import StackedMNISTDataModule
from lightning_gan.data.sum25 import Sum25DataModule
from lightning_gan.metrics.image_metrics import build_image_metrics, default_extractor
from lightning_gan.metrics.stacked_mnist import StackedMNISTMetric
from lightning_gan.metrics.sum25 import Sum25Metric
from lightning_gan.module import GeneratorChoice

__all__ = ["ImageMetrics"]

GENERATOR_CHOICES: tuple[str, ...] = get_args(GeneratorChoice)
METRIC_CHOICES = ("fid", "kid", "is", "sum25", "stacked")
REAL_SPLITS = ("train", "test")


class ImageMetrics(Callback):
    """Every ``every_n_steps`` game iterations and at the last one, logs ``val/<metric>_<generator>``.

    Keys: ``val/fid_<g>``, ``val/kid_<g>`` (mean over subsets), ``val/kid_std_<g>``, ``val/is_<g>``,
    ``val/is_std_<g>`` for each generator ``g`` kept by the run, ``val/evaluations`` (the module's F-evaluations
    so far) and ``val/metrics_seconds``. The values of each evaluation are also kept in ``history``, with the step.

    Args:
        every_n_steps: Iterations between evaluations, >= 0; 0 switches the callback off.
        num_samples: Generated and real images per evaluation, over all ranks (FID needs thousands to be
            comparable across papers; a few hundred show trends).
        metrics: Any of ``fid``, ``kid``, ``is``; or ``sum25`` for :class:`~lightning_gan.data.Sum25DataModule`, or
            ``stacked`` for :class:`~lightning_gan.data.StackedMNISTDataModule`.
        generators: Any of ``live``, ``uniform``, ``ema``; averages the run does not keep are skipped.
        extractor: ``auto`` (the digit classifier matching the data module, else Inception), ``inception``,
            ``mnist``, ``fashion-mnist`` or ``digits``.
        weights: Inception weights file (else ``$LIGHTNING_GAN_INCEPTION_WEIGHTS``, then torch hub's cache),
            or a digit classifier file (else the shipped one).
        kid_subset_size: KID subset size, <= ``num_samples``.
        batch_size: Images per generator forward and feature pass.
        seed: Seed of the fixed latents and of KID's subsets (the real images are ``datamodule.sample_real``'s,
            seeded by the data module). ``lightning-gan evaluate --seed`` draws the same latents with ``seed + 1``.
        real_split: ``train`` (default, as ``lightning-gan evaluate``) or ``test`` (the held-out split).

    Raises:
        ValueError: a value out of range, an unknown metric, generator, extractor or split.
        InceptionWeightsNotFoundError: Inception is asked for and no local weights file exists (at fit start).
    """

    def __init__(self, every_n_steps: int = 0, num_samples: int = 10_000, metrics: Sequence[str] = ("fid",),
                 generators: Sequence[str] = ("live", "ema"), extractor: str = "auto", weights: str | None = None,
                 kid_subset_size: int = 1000, batch_size: int = 500, seed: int = 2718,
                 real_split: str = "train") -> None:
        if real_split not in REAL_SPLITS:
            raise ValueError(f"Invalid real_split: {real_split!r}; expected 'train' or 'test' (the held-out split)")
        if isinstance(every_n_steps, bool) or every_n_steps < 0:
            raise ValueError(f"Invalid every_n_steps: {every_n_steps}; expected an integer >= 0 (0: off)")
        if num_samples < 2:
            raise ValueError(f"Invalid num_samples: {num_samples}; expected an integer >= 2")
        unknown = [m for m in metrics if m not in METRIC_CHOICES]
        if unknown or not metrics:
            raise ValueError(f"Invalid metrics: {list(metrics)}; expected a non-empty subset of {list(METRIC_CHOICES)}")
        unknown = [g for g in generators if g not in GENERATOR_CHOICES]
        if unknown or not generators:
            raise ValueError(f"Invalid generators: {list(generators)}; expected a non-empty subset of "
                             f"{list(GENERATOR_CHOICES)}")
        if "kid" in metrics and not 2 <= kid_subset_size <= num_samples:
            raise ValueError(f"Invalid kid_subset_size: {kid_subset_size}; expected 2 <= kid_subset_size <= "
                             f"num_samples ({num_samples})")
        if batch_size < 1:
            raise ValueError(f"Invalid batch_size: {batch_size}; expected an integer >= 1")
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.metrics = list(dict.fromkeys(metrics))
        self.generators = list(dict.fromkeys(generators))
        self.extractor = extractor
        self.weights = weights
        self.kid_subset_size = kid_subset_size
        self.batch_size = batch_size
        self.seed = seed
        self.real_split = real_split
        self.history: list[dict[str, float]] = []
        self.resolved_extractor: str | None = None  # ``extractor`` with ``auto`` resolved, at fit start
        self._metrics: dict[str, Metric] | None = None
        self._real_done = False
        self._last_step: int | None = None

    @property
    def enabled(self) -> bool:
        return self.every_n_steps > 0

    def prepare(self, datamodule: Any) -> None:
        """Build the feature networks and check their weights: a missing file fails here, before training.

        The CLI calls it right after building the run (so errors are one line); ``fit`` calls it otherwise.
        """
        if not self.enabled or self._metrics is not None:
            return
        extractor = default_extractor(datamodule) if self.extractor == "auto" else self.extractor
        image_metrics = [m for m in self.metrics if m not in ("sum25", "stacked")]
        if "sum25" in self.metrics or isinstance(datamodule, Sum25DataModule):
            if not isinstance(datamodule, Sum25DataModule) or image_metrics:
                raise ValueError(f"Invalid metrics: {self.metrics} for {type(datamodule).__name__}; sum25 scores "
                                 f"Sum25DataModule's (5, 28, 28) tuples, and is the only metric for them")
            extractor = "mnist"
        if "stacked" in self.metrics or isinstance(datamodule, StackedMNISTDataModule):
            if not isinstance(datamodule, StackedMNISTDataModule) or image_metrics:
                raise ValueError(f"Invalid metrics: {self.metrics} for {type(datamodule).__name__}; stacked scores "
                                 f"StackedMNISTDataModule's (3, 28, 28) digit triples, and is the only metric for them")
            extractor = "mnist"
        metrics = build_image_metrics(image_metrics, extractor, self.weights, kid_subset_size=self.kid_subset_size,
                                      reset_real_features=False) if image_metrics else {}
        if "sum25" in self.metrics:
            metrics["sum25"] = Sum25Metric(datamodule.train_combinations, datamodule.heldout_combinations,
                                           self.weights, batch_size=self.batch_size)
        if "stacked" in self.metrics:
            metrics["stacked"] = StackedMNISTMetric(self.weights, batch_size=self.batch_size)
        self._metrics = metrics
        self.resolved_extractor = extractor

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enabled:
            return
        self.prepare(trainer.datamodule)
        assert self._metrics is not None
        for metric in self._metrics.values():
            metric.to(pl_module.device)
        self._real_done = False  # real statistics are recomputed once per fit (e.g. after a resume)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.enabled and (step % self.every_n_steps == 0 or step == trainer.max_steps):
            values = self.evaluate(trainer, pl_module)
            # Written now, whatever trainer.log_every_n_steps says: a costly score must never be dropped.
            _write(trainer, values)
            pl_module.log_dict(values, on_step=True, on_epoch=False, logger=False)  # for monitors and Tune

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if stopped_by_signal(trainer):  # the state is saved; exit within the scheduler's grace period
            return
        if self.enabled and self._last_step != trainer.global_step:  # e.g. a run stopped by a budget or time
            _write(trainer, self.evaluate(trainer, pl_module))  # self.log is closed at this point

    # -- one evaluation ------------------------------------------------------------------------------

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """All metrics of all kept generators now (every rank must call it); returns the logged values."""
        assert self._metrics is not None, "on_fit_start builds the metrics"
        start = time.perf_counter()
        world, rank = trainer.world_size, trainer.global_rank
        if not self._real_done and ("fid" in self._metrics or "kid" in self._metrics):
            real = self._real_images(trainer.datamodule, world, rank)
            for name in ("fid", "kid"):
                if name in self._metrics:
                    for chunk in real.split(self.batch_size):
                        self._metrics[name].update(chunk.to(pl_module.device), real=True)
            self._real_done = True
        values: dict[str, float] = {}
        for which in self.generators:
            try:
                pl_module.generator_for(which)  # type: ignore[operator]
            except ValueError:
                continue  # this run keeps no such average
            sample = pl_module.sample  # type: ignore[operator]
            fake = sample(self.num_samples, which, self.seed + 1, batch_size=self.batch_size, rank=rank,
                          world_size=world).clamp_(-1.0, 1.0)
            for chunk in fake.split(self.batch_size):
                for name, metric in self._metrics.items():
                    if name in ("is", "sum25", "stacked"):
                        metric.update(chunk)
                    else:
                        metric.update(chunk, real=False)
            values.update(self._compute(which))
        values["val/evaluations"] = float(getattr(pl_module, "evaluations", 0))  # the x-axis of method comparisons
        values["val/metrics_seconds"] = time.perf_counter() - start
        self._last_step = trainer.global_step
        self.history.append({"step": float(trainer.global_step), **values})
        return values

    def _compute(self, which: str) -> dict[str, float]:
        """compute() on every rank (it syncs), then reset the fake side (real statistics are kept)."""
        assert self._metrics is not None
        out: dict[str, float] = {}
        for name, metric in self._metrics.items():
            with torch.random.fork_rng(devices=[]):  # KID's random subsets: reproducible, and training's RNG untouched
                torch.manual_seed(self.seed + 2)
                result = metric.compute()
            if name == "fid":
                out[f"val/fid_{which}"] = float(result)
            elif name in ("sum25", "stacked"):
                out.update({f"val/{key}_{which}": value for key, value in result.items()})
            else:
                mean, std = result
                out[f"val/{name}_{which}"], out[f"val/{name}_std_{which}"] = float(mean), float(std)
            metric.reset()
        return out

    def _real_images(self, datamodule: Any, world: int, rank: int) -> Tensor:
        """This rank's rows of ``datamodule.sample_real`` of ``real_split`` (never another split behind the user's back)."""
        datamodule.setup("fit")
        available = len(datamodule.split_dataset(self.real_split))
        if available < self.num_samples:
            raise ValueError(f"Invalid num_samples: {self.num_samples}; the data module has only {available} "
                             f"images to compare with in its {self.real_split} split")
        return datamodule.sample_real(self.num_samples, split=self.real_split)[rank::world]


def _write(trainer: pl.Trainer, values: dict[str, float]) -> None:
    """To every logger at ``global_step`` (the loggers write on rank 0 only)."""
    for logger in trainer.loggers:
        logger.log_metrics(values, step=trainer.global_step)
