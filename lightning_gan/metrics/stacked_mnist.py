"""Stacked MNIST metrics: read the three digits of each generated image with the shipped MNIST classifier, count modes.

    values = score_stacks(fake)              # fake: (N, 3, 28, 28) in [-1, 1]; the reference scores N = 26,000

As the reference, https://github.com/fjxmlzn/PacGAN, ``stacked_MNIST_experiments/VEEGAN_experiment/model.py``,
``log_metrics`` (lines 246-276): each of the three channels is classified separately (``dect0..2``, lines 252-254:
the argmax class of an MNIST CNN, ``evaluate.py``), the triple of read digits is the sample's mode; the number of
modes is the number of distinct triples read (``len(map.keys())``, line 271) and the KL divergence is
``sum_m p_m log(p_m / (1/1000))`` over the observed triples (lines 272-276 and ``JSD.KLD``, lines 20-23), p the
histogram of read triples: KL(model || uniform), in nats, 0 for a uniform histogram, log(1000) = 6.908 for a single
mode. Here the classifier is the shipped MNIST one (:mod:`lightning_gan.metrics.classifier`, 99.18% accuracy on
MNIST's test images) instead of the reference's Keras CNN (``train_mnist.py``, reported 99.25%).

Values (``STACKED_KEYS``):

- ``stacked_modes``: distinct triples read, out of 1,000 (the reference's "mode coverage");
- ``stacked_kl``: KL(p || uniform over the 1,000 triples), nats (the reference's "KL");
- ``stacked_confident``: share of samples whose three digits are all read with max softmax >= ``threshold`` (a
  blurry or non-digit channel read as some class counts as a mode above, not here);
- ``stacked_modes_confident``: distinct triples among the confidently read samples.

The counts kept are one per triple (1,000 int64, twice): everything above follows from them, and in training they are
summed over ranks in one all-reduce (:class:`StackedMNISTMetric`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_gan.data.stacked_mnist import NUM_CHANNELS, NUM_MODES, triple_codes
from lightning_gan.metrics.features import DigitFeatureExtractor
from lightning_gan.metrics.sum25 import DEFAULT_THRESHOLD, digit_extractor

__all__ = ["DEFAULT_THRESHOLD", "STACKED_KEYS", "StackedMNISTMetric", "StackedMNISTScorer", "classify_stacks",
           "format_stacked", "kl_to_uniform", "mode_counts", "score_stacks", "stacked_values"]

STACKED_KEYS = ("stacked_modes", "stacked_kl", "stacked_confident", "stacked_modes_confident")


def _check_stacks(images: Tensor) -> None:
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1:] != (NUM_CHANNELS, 28, 28):
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"Invalid stacked MNIST samples: {shape}; expected (N, {NUM_CHANNELS}, 28, 28), three 28x28 "
                         f"digits stacked as channels (StackedMNISTDataModule's layout)")


def _check_threshold(threshold: float) -> None:
    if not 0 < threshold <= 1:
        raise ValueError(f"Invalid threshold: {threshold}; expected 0 < threshold <= 1")


@torch.no_grad()
def classify_stacks(extractor: DigitFeatureExtractor, images: Tensor,
                    batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """(digits, confidence), int64 and float (N, 3): the argmax class and max softmax of each of the three channels."""
    _check_stacks(images)
    if batch_size < 1:
        raise ValueError(f"Invalid batch_size: {batch_size}; expected an integer >= 1")
    device = next(iter(extractor.net.parameters())).device
    digits, confidence = [], []
    for chunk in images.split(max(1, batch_size // NUM_CHANNELS)):
        logits = extractor(chunk.reshape(-1, 1, 28, 28).to(device)).float()
        top, label = logits.softmax(-1).max(-1)
        digits.append(label.reshape(-1, NUM_CHANNELS).cpu())
        confidence.append(top.reshape(-1, NUM_CHANNELS).cpu())
    return torch.cat(digits), torch.cat(confidence)


def mode_counts(digits: Tensor, confidence: Tensor, threshold: float = DEFAULT_THRESHOLD) -> tuple[Tensor, Tensor]:
    """(all, confident): int64 (1000,) counts of each read triple, of all samples and of those whose three digits all
    have max softmax >= ``threshold``."""
    _check_threshold(threshold)
    codes = triple_codes(digits)
    sure = (confidence >= threshold).all(-1)
    return torch.bincount(codes, minlength=NUM_MODES), torch.bincount(codes[sure], minlength=NUM_MODES)


def kl_to_uniform(counts: Tensor) -> float:
    """KL(p || uniform) in nats of the histogram ``counts`` over the 1,000 modes: sum over observed modes of
    p log(p * 1000), p = counts / total (the reference's ``JSD().KLD(p, q)``, q = 1/1000)."""
    counts = torch.as_tensor(counts).double().cpu()
    if counts.shape != (NUM_MODES,) or bool((counts < 0).any()):
        raise ValueError(f"Invalid counts: shape {tuple(counts.shape)}; expected {NUM_MODES} non-negative counts")
    total = float(counts.sum())
    if total == 0:
        raise ValueError("Invalid counts: no sample counted; score at least one sample")
    p = counts[counts > 0] / total
    return float((p * (p * NUM_MODES).log()).sum())


def stacked_values(counts: Tensor, confident_counts: Tensor) -> dict[str, float]:
    """The values of :data:`STACKED_KEYS` from the counts of :func:`mode_counts` (see the module docstring)."""
    counts, confident_counts = counts.long().cpu(), confident_counts.long().cpu()
    kl = kl_to_uniform(counts)  # refuses empty counts
    return {"stacked_modes": float((counts > 0).sum()), "stacked_kl": kl,
            "stacked_confident": float(confident_counts.sum()) / float(counts.sum()),
            "stacked_modes_confident": float((confident_counts > 0).sum())}


def score_stacks(images: Tensor, extractor: DigitFeatureExtractor | None = None,
                 threshold: float = DEFAULT_THRESHOLD, batch_size: int = 1000) -> dict[str, float]:
    """The values of stacked images (N, 3, 28, 28) in [-1, 1]; ``extractor`` defaults to the shipped classifier."""
    _check_threshold(threshold)
    digits, confidence = classify_stacks(extractor or digit_extractor(), images, batch_size)
    return stacked_values(*mode_counts(digits, confidence, threshold))


def format_stacked(values: Mapping[str, float]) -> str:
    """``modes 987/1000  kl 0.0512  confident 91.3% (modes 975)`` (one line)."""
    return (f"modes {values['stacked_modes']:.0f}/{NUM_MODES}  kl {values['stacked_kl']:.4f}  confident "
            f"{100 * values['stacked_confident']:.1f}% (modes {values['stacked_modes_confident']:.0f})")


class StackedMNISTMetric(Metric):
    """The values of :data:`STACKED_KEYS` as a torchmetrics metric: ``update(fake)`` on each rank, ``compute()`` on
    every rank (the two count vectors are summed over ranks). The classifier is kept out of ``state_dict``.

    Args:
        weights: MNIST classifier file (None: the shipped one).
        threshold: Max softmax a digit needs to count as confidently read, in (0, 1].
        batch_size: Digit images per classifier forward.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, weights: str | Path | None = None, threshold: float = DEFAULT_THRESHOLD,
                 batch_size: int = 1000) -> None:
        _check_threshold(threshold)
        super().__init__()
        self.extractor = digit_extractor(weights)
        self.threshold, self.batch_size = threshold, batch_size
        self.add_state("counts", torch.zeros(NUM_MODES, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("confident_counts", torch.zeros(NUM_MODES, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, images: Tensor) -> None:
        digits, confidence = classify_stacks(self.extractor, images, self.batch_size)
        counts, confident = mode_counts(digits, confidence, self.threshold)
        self.counts += counts.to(self.counts.device)
        self.confident_counts += confident.to(self.counts.device)

    def compute(self) -> dict[str, float]:
        return stacked_values(self.counts, self.confident_counts)


@dataclass(frozen=True)
class StackedMNISTScorer:
    """``lightning-gan evaluate``'s scorer of stacked MNIST samples: ``scorer(images)`` -> values."""

    extractor: DigitFeatureExtractor
    threshold: float = DEFAULT_THRESHOLD
    batch_size: int = 1000

    def __call__(self, images: Tensor) -> dict[str, float]:
        return score_stacks(images, self.extractor, self.threshold, self.batch_size)


#: KL of a single mode: log(1000) = 6.9078 nats (the largest value).
MAX_KL = math.log(NUM_MODES)
