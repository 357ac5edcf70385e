"""Feature networks for FID / KID / IS, for torchmetrics (``feature=<module>``) and torch-fidelity (registry).

One input convention everywhere, the generators' own: float images in [-1, 1], shape (N, C, H, W) with
C = 1 or 3; uint8 pixels in [0, 255] are accepted too (torch-fidelity feeds uint8 RGB). torchmetrics
hands a custom ``feature`` module whatever ``update`` gets (its ``normalize`` flag only rescales for
its own Inception), so with these modules keep ``normalize=False`` and pass generator outputs as they
are. Each module has ``num_features`` (torchmetrics then skips its 299x299 uint8 probe), stays
in eval mode even when a parent calls ``.train()`` (a training-mode BatchNorm/Dropout would change
the features), and keeps its network out of ``state_dict()`` and ``parameters()``: a metric held by
a LightningModule would otherwise put the network into every checkpoint (Inception: ~95 MB per
metric) and make checkpoints depend on the metric configuration.

torch-fidelity: importing :mod:`lightning_gan.metrics` registers the digit classifiers as feature
extractors ``lightning-gan-digits-mnist``, ``lightning-gan-digits-fashion-mnist`` and
``lightning-gan-digits-8x8``, with features ``"features"`` (FID, KID) and ``"logits"`` (IS);
``feature_extractor_weights_path`` overrides the shipped weights file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from lightning_gan.metrics.classifier import DATASETS, DigitClassifier, load_classifier
from lightning_gan.metrics.weights import resolve_inception_weights

__all__ = [
    "FIDELITY_EXTRACTORS",
    "DigitFeatureExtractor",
    "FidelityDigitExtractor",
    "InceptionFeatureExtractor",
    "register_fidelity_extractors",
    "to_classifier_input",
    "to_uint8",
]

#: Data set -> name of its classifier in torch-fidelity's feature-extractor registry.
FIDELITY_EXTRACTORS: dict[str, str] = {
    "mnist": "lightning-gan-digits-mnist",
    "fashion-mnist": "lightning-gan-digits-fashion-mnist",
    "digits": "lightning-gan-digits-8x8",
}
_RANGE_SLACK = 1e-3


def _check_images(images: Tensor) -> None:
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"Invalid images: {shape}; expected a tensor (N, C, H, W) with C = 1 or 3")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"Invalid images dtype: {images.dtype}; expected floats in [-1, 1] or uint8 in [0, 255]")
    if images.is_floating_point() and images.numel() > 0:
        low, high = torch.aminmax(images.detach())
        if low < -1 - _RANGE_SLACK or high > 1 + _RANGE_SLACK:
            raise ValueError(f"Invalid images: float values in [{low.item():.4g}, {high.item():.4g}]; expected [-1, 1] "
                             f"(generator output), or uint8 pixels in [0, 255]")


def to_uint8(images: Tensor, channels: int | None = None) -> Tensor:
    """Images in [-1, 1] (or uint8) -> uint8 pixels, the inverse of the data modules' pixel / 127.5 - 1.

    Args:
        images: (N, C, H, W) floats in [-1, 1] or uint8.
        channels: 3 repeats a grey channel (Inception wants RGB); None keeps C.
    """
    _check_images(images)
    pixels = images if images.dtype == torch.uint8 else ((images.float() + 1) * 127.5).round_().clamp_(0, 255).byte()
    if channels is not None and channels != pixels.shape[1]:
        if channels != 3 or pixels.shape[1] != 1:
            raise ValueError(f"Invalid channels: {channels} from {pixels.shape[1]}; expected 3 from 1, or None")
        pixels = pixels.expand(-1, 3, -1, -1)
    return pixels


def to_classifier_input(images: Tensor, size: int) -> Tensor:
    """Images in [-1, 1] (or uint8) -> float32 grey (N, 1, size, size) in [-1, 1] for a digit classifier.

    RGB becomes the channel mean. A 32x32 image fed to a 28x28 classifier is center-cropped by 2 pixels,
    undoing ``MNISTDataModule(image_size=32)``'s zero padding exactly; other sizes are resized
    bilinearly with antialiasing (e.g. ``DigitsDataModule(image_size=28)`` back to 8x8).
    """
    _check_images(images)
    x = images.float().div(127.5).sub(1.0) if images.dtype == torch.uint8 else images.float()
    if x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)
    height, width = x.shape[-2:]
    if (height, width) == (size, size):
        return x
    if size == 28 and (height, width) == (32, 32):
        return x[..., 2:30, 2:30]
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class _FrozenNetwork(nn.Module):
    """A frozen network held outside the module tree: moved by ``.to()``/``.cuda()``, never saved or trained."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self._frozen = (net.eval().requires_grad_(False),)  # a tuple: nn.Module does not register it
        self.eval()

    @property
    def net(self) -> nn.Module:
        return self._frozen[0]

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - nn.Module's private signature
        self.net._apply(fn)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> _FrozenNetwork:
        """Stays in eval mode: metrics must not see dropout or batch statistics."""
        return super().train(False)


class DigitFeatureExtractor(_FrozenNetwork):
    """A digit classifier's penultimate ReLU features (FID, KID) or its logits (IS), as a torchmetrics ``feature``.

        fid = FrechetInceptionDistance(feature=DigitFeatureExtractor.from_file("mnist"))
        is_ = InceptionScore(feature=DigitFeatureExtractor.from_file("mnist", output="logits"))

    Args:
        classifier: A trained :class:`DigitClassifier` (frozen here).
        output: ``"features"`` (``num_features`` = penultimate width) or ``"logits"`` (= number of classes).
    """

    def __init__(self, classifier: DigitClassifier, output: Literal["features", "logits"] = "features") -> None:
        if output not in ("features", "logits"):
            raise ValueError(f"Invalid output: {output!r}; expected 'features' or 'logits'")
        super().__init__(classifier)
        self.output = output
        self.num_features: int = classifier.num_features if output == "features" else classifier.num_classes

    @classmethod
    def from_file(cls, dataset: str = "mnist", path: str | Path | None = None,
                  output: Literal["features", "logits"] = "features") -> DigitFeatureExtractor:
        """Loads ``path`` (default: the shipped weights of ``dataset``; refuses a file trained on another set)."""
        classifier, _ = load_classifier(path, dataset)
        return cls(classifier, output)

    @property
    def classifier(self) -> DigitClassifier:
        return self.net  # type: ignore[return-value]

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = to_classifier_input(images, self.classifier.input_size).to(self.classifier.head[1].weight)
        features, logits = self.classifier.features_and_logits(x)
        return features if self.output == "features" else logits


class InceptionFeatureExtractor(_FrozenNetwork):
    """torch-fidelity's InceptionV3 (the TF-FID network) from a local weights file, taking images in [-1, 1].

    Gives torchmetrics' FID, KID and IS the same local weights (torchmetrics 1.9 only lets FID take
    ``feature_extractor_weights_path``; its KID and IS always download) and the same input convention
    as :class:`DigitFeatureExtractor`. The weights are resolved at construction, so a missing file
    fails before any sample is generated.

    Args:
        output: ``"2048"`` (pool3, FID/KID), ``"logits_unbiased"`` (IS, as torchmetrics), or ``"64"``,
            ``"192"``, ``"768"``, ``"logits"``.
        weights: Local weights file; None looks at ``$LIGHTNING_GAN_INCEPTION_WEIGHTS``, then torch hub's cache.
        allow_download: Download into torch hub's cache when found nowhere.
    """

    _WIDTHS = {"64": 64, "192": 192, "768": 768, "2048": 2048, "logits_unbiased": 1008, "logits": 1008}

    def __init__(self, output: str = "2048", weights: str | Path | None = None, allow_download: bool = False) -> None:
        if output not in self._WIDTHS:
            raise ValueError(f"Invalid output: {output!r}; expected one of {sorted(self._WIDTHS)}")
        path = resolve_inception_weights(weights, allow_download=allow_download)
        super().__init__(FeatureExtractorInceptionV3("inception-v3-compat", [output],
                                                     feature_extractor_weights_path=str(path)))
        self.weights_path = path
        self.output = output
        self.num_features: int = self._WIDTHS[output]

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        self.net.feature_extractor_internal_dtype = self.net.fc.weight.dtype  # follow .to() / set_dtype(float64)
        return self.net(to_uint8(images, channels=3))[0].reshape(images.shape[0], -1)


class FidelityDigitExtractor(FeatureExtractorBase):
    """A digit classifier in torch-fidelity's registry: features ``"features"`` (FID, KID) and ``"logits"`` (IS).

    torch-fidelity builds it as ``cls(name, features_list, **all_calculate_metrics_kwargs)``; the
    registered name picks the data set and ``feature_extractor_weights_path`` (None: the shipped file)
    the weights. Inputs: uint8 (torch-fidelity's convention) or floats in [-1, 1], 1 or 3 channels.
    """

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs: object) -> None:
        super().__init__(name, features_list)
        datasets = {v: k for k, v in FIDELITY_EXTRACTORS.items()}
        if name not in datasets:
            raise ValueError(f"Invalid feature extractor name: {name!r}; expected one of {sorted(datasets)}")
        self.classifier, self.metadata = load_classifier(feature_extractor_weights_path, datasets[name])
        self.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return "features", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        layers = {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}
        if metric not in layers:
            raise ValueError(f"Invalid metric: {metric!r}; expected one of {sorted(layers)}")
        return layers[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> Tensor:
        return torch.zeros(1, 3, 28, 28, dtype=torch.uint8)

    def train(self, mode: bool = True) -> FidelityDigitExtractor:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        features, logits = self.classifier.features_and_logits(to_classifier_input(images, self.classifier.input_size))
        out = {"features": features, "logits": logits}
        return tuple(out[name] for name in self.features_list)


def register_fidelity_extractors() -> None:
    """Adds the digit classifiers to torch-fidelity's registry (idempotent: it refuses duplicate names)."""
    for dataset, name in FIDELITY_EXTRACTORS.items():
        assert dataset in DATASETS
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(name, FidelityDigitExtractor)
