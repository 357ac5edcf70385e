"""torchmetrics FID / KID / IS built on our feature modules, for validation during training (DDP-synced).

    metrics = build_image_metrics(("fid", "is"), extractor="mnist")   # weights checked here, before sampling
    for real, fake in ...:                                              # each rank: its N / world_size samples
        metrics["fid"].update(real, real=True); metrics["fid"].update(fake, real=False)
        metrics["is"].update(fake)
    values = {name: m.compute() for name, m in metrics.items()}         # on every rank

FID keeps float64 sums (one sum all-reduce per state, no gather); KID and IS keep every feature
vector (gathered at ``compute``). All take images in [-1, 1] (generator output) as they are.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

from torch import nn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from lightning_gan.data import DigitsDataModule, MNISTDataModule
from lightning_gan.metrics.classifier import DATASETS, load_classifier
from lightning_gan.metrics.features import DigitFeatureExtractor, InceptionFeatureExtractor

__all__ = ["build_image_metrics", "default_extractor", "feature_modules"]

_METRICS = ("fid", "kid", "is")


def default_extractor(datamodule: object) -> str:
    """The feature network that fits a data module: its digit classifier (MNIST, Fashion-MNIST, 8x8 digits),
    else Inception (natural images, e.g. CIFAR-10 or an image folder)."""
    if isinstance(datamodule, MNISTDataModule):
        return datamodule.dataset  # "mnist" or "fashion-mnist"
    if isinstance(datamodule, DigitsDataModule):
        return "digits"
    return "inception"


def feature_modules(extractor: str = "inception", weights: str | Path | None = None, *,
                    need_features: bool = True, need_logits: bool = False,
                    allow_download: bool = False) -> tuple[nn.Module | None, nn.Module | None]:
    """(features module for FID/KID, logits module for IS) of one extractor; digit ones share one classifier."""
    if extractor == "inception":
        features = InceptionFeatureExtractor("2048", weights, allow_download) if need_features else None
        logits = InceptionFeatureExtractor("logits_unbiased", weights, allow_download) if need_logits else None
        return features, logits
    if extractor not in DATASETS:
        raise ValueError(f"Invalid extractor: {extractor!r}; expected 'inception' or one of {sorted(DATASETS)}")
    classifier, _ = load_classifier(weights, extractor)
    return (DigitFeatureExtractor(classifier, "features") if need_features else None,
            DigitFeatureExtractor(classifier, "logits") if need_logits else None)


def build_image_metrics(metrics: Sequence[str] = ("fid",), extractor: str = "inception",
                        weights: str | Path | None = None, *, kid_subsets: int = 100, kid_subset_size: int = 1000,
                        is_splits: int = 10, reset_real_features: bool = False,
                        allow_download: bool = False) -> dict[str, Metric]:
    """torchmetrics metrics keyed ``"fid"``, ``"kid"``, ``"is"``; their feature networks are built (and the
    weights checked) now.

    Args:
        metrics: Any of ``"fid"``, ``"kid"``, ``"is"``.
        extractor: ``"inception"`` or a digit data set (``"mnist"``, ``"fashion-mnist"``, ``"digits"``).
        weights: Inception weights file, or a classifier file (None: env var / torch hub cache, or shipped).
        kid_subset_size: Must not exceed the number of samples per side at ``compute`` (torchmetrics raises).
        reset_real_features: False keeps the real statistics across ``reset()`` (real data do not change).
    """
    unknown = sorted(set(metrics) - set(_METRICS))
    if unknown or not metrics:
        raise ValueError(f"Invalid metrics: {list(metrics)}; expected a non-empty subset of {list(_METRICS)}")
    features, logits = feature_modules(extractor, weights, need_features=bool({"fid", "kid"} & set(metrics)),
                                       need_logits="is" in metrics, allow_download=allow_download)
    out: dict[str, Metric] = {}
    if "fid" in metrics:
        out["fid"] = FrechetInceptionDistance(feature=features, reset_real_features=reset_real_features)
    with warnings.catch_warnings():  # "will save all extracted features in buffer": said in the docstring above
        warnings.filterwarnings("ignore", message=".*will save all extracted features", category=UserWarning)
        if "kid" in metrics:
            out["kid"] = KernelInceptionDistance(feature=features, subsets=kid_subsets, subset_size=kid_subset_size,
                                                 reset_real_features=reset_real_features)
        if "is" in metrics:
            out["is"] = InceptionScore(feature=logits, splits=is_splits)
    return out
