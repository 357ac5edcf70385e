"""Standalone FID / KID / IS with torch-fidelity on in-memory samples, offline and checked up front.

    spec = resolve_extractor("inception", weights=args.inception_weights)   # fails here, before sampling
    fake = module.sample(10_000, which="ema")
    scores = fidelity_metrics(fake, real, spec, metrics=("fid", "kid", "is"), real_cache_name="mnist-train")

Samples go to torch-fidelity as uint8 (the usual PNG protocol; the data modules' real images are
exactly representable). Every call passes ``cuda`` and ``datasets_download=False`` explicitly
(torch-fidelity defaults to ``cuda=True`` and downloading) and always the resolved weights path,
so nothing is fetched behind our back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch_fidelity
from torch import Tensor
from torch.utils.data import Dataset

from lightning_gan.metrics.classifier import DATASETS, default_classifier_path
from lightning_gan.metrics.features import FIDELITY_EXTRACTORS, register_fidelity_extractors, to_uint8
from lightning_gan.metrics.weights import resolve_inception_weights

__all__ = ["EXTRACTORS", "METRICS", "ExtractorSpec", "ImageTensorDataset", "fidelity_metrics", "resolve_extractor"]

#: Extractor choices: Inception (natural images) or a digit classifier per data set.
EXTRACTORS = ("inception", *DATASETS)
METRICS = ("fid", "kid", "is")
_KEYS = {
    torch_fidelity.KEY_METRIC_FID: "fid",
    torch_fidelity.KEY_METRIC_KID_MEAN: "kid_mean",
    torch_fidelity.KEY_METRIC_KID_STD: "kid_std",
    torch_fidelity.KEY_METRIC_ISC_MEAN: "is_mean",
    torch_fidelity.KEY_METRIC_ISC_STD: "is_std",
}


@dataclass(frozen=True)
class ExtractorSpec:
    """A feature extractor resolved to a checked local weights file: what torch-fidelity is told to use."""

    extractor: str
    fidelity_name: str
    weights: Path

    @property
    def channels(self) -> int | None:
        """Channels torch-fidelity's network wants: 3 for Inception, any (None) for the digit classifiers."""
        return 3 if self.extractor == "inception" else None

    def digest(self) -> str:
        """Short hash of the weights file, so cached real statistics of other weights are never reused."""
        h = hashlib.sha256()
        with open(self.weights, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()[:12]


def resolve_extractor(extractor: str = "inception", weights: str | Path | None = None,
                      allow_download: bool = False) -> ExtractorSpec:
    """Checks the extractor's weights now, so a missing file fails before any sample is generated.

    Args:
        extractor: ``"inception"`` or a digit data set (``"mnist"``, ``"fashion-mnist"``, ``"digits"``).
        weights: Inception: the local weights file (else ``$LIGHTNING_GAN_INCEPTION_WEIGHTS``, then torch
            hub's cache). Digits: a classifier file (else the shipped one).
        allow_download: Inception only: download into torch hub's cache if found nowhere.
    """
    if extractor == "inception":
        path = resolve_inception_weights(weights, allow_download=allow_download)
        return ExtractorSpec("inception", "inception-v3-compat", path)
    if extractor not in DATASETS:
        raise ValueError(f"Invalid extractor: {extractor!r}; expected one of {list(EXTRACTORS)}")
    path = Path(weights).expanduser() if weights is not None else default_classifier_path(extractor)
    if not path.is_file():
        raise FileNotFoundError(
            f"Digit classifier weights {path} not found; train them with `python -m "
            f"lightning_gan.metrics.train_classifier --dataset {extractor} --root DATA_FOLDER --out {path}`"
        )
    register_fidelity_extractors()
    return ExtractorSpec(extractor, FIDELITY_EXTRACTORS[extractor], path)


class ImageTensorDataset(Dataset):
    """Images in [-1, 1] (or uint8) as the uint8 tensors torch-fidelity's dataset inputs must yield."""

    def __init__(self, images: Tensor, channels: int | None = None) -> None:
        self.pixels = to_uint8(images.detach().cpu(), channels=channels).contiguous()

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.pixels[index]


def fidelity_metrics(fake: Tensor, real: Tensor, spec: ExtractorSpec, metrics: Sequence[str] = ("fid",), *,
                     device: str | torch.device = "cpu", batch_size: int = 256, kid_subsets: int = 100,
                     kid_subset_size: int = 1000, is_splits: int = 10, seed: int = 2020,
                     real_cache_name: str | None = None, cache_root: str | Path | None = None,
                     verbose: bool = False) -> dict[str, float]:
    """FID / KID / IS of ``fake`` against ``real`` with torch-fidelity; IS uses ``fake`` only.

    Args:
        fake: Generated images (N, C, H, W) in [-1, 1] (or uint8).
        real: Real images, same layout (e.g. ``datamodule.sample_real(n)``).
        spec: From :func:`resolve_extractor`.
        metrics: Any of ``"fid"``, ``"kid"``, ``"is"``.
        device: ``"cpu"`` or a CUDA device; passed to torch-fidelity as ``cuda`` explicitly.
        kid_subset_size: Must not exceed either sample count (no silent clamping).
        real_cache_name: Cache the real features/statistics under this name (plus the weights' hash) in
            ``cache_root`` (default ``$TORCH_HOME/fidelity_cache``); None: no cache.

    Returns:
        ``fid``, ``kid_mean``/``kid_std``, ``is_mean``/``is_std`` for the metrics asked.
    """
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or not metrics:
        raise ValueError(f"Invalid metrics: {list(metrics)}; expected a non-empty subset of {list(METRICS)}")
    if "kid" in metrics and not 2 <= kid_subset_size <= min(len(fake), len(real)):
        raise ValueError(f"Invalid kid_subset_size: {kid_subset_size}; expected 2 <= kid_subset_size <= the number "
                         f"of samples (fake {len(fake)}, real {len(real)})")
    device = torch.device(device)
    cache = real_cache_name is not None
    out = torch_fidelity.calculate_metrics(
        input1=ImageTensorDataset(fake, spec.channels),
        input2=ImageTensorDataset(real, spec.channels),
        input2_cache_name=f"{real_cache_name}-{spec.digest()}" if cache else None,
        cache=cache,
        cache_root=None if cache_root is None else str(cache_root),
        cuda=device.type == "cuda",
        datasets_download=False,
        feature_extractor=spec.fidelity_name,
        feature_extractor_weights_path=str(spec.weights),
        fid="fid" in metrics,
        kid="kid" in metrics,
        isc="is" in metrics,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        isc_splits=is_splits,
        batch_size=batch_size,
        rng_seed=seed,
        save_cpu_ram=True,  # samples are already in memory: no DataLoader worker processes
        verbose=verbose,
    )
    return {_KEYS[k]: float(v) for k, v in out.items() if k in _KEYS}
