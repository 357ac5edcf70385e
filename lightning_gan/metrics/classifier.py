"""Small CNN classifiers for digit images, whose penultimate layer replaces Inception's pool3 on digit data.

Inception features mean little on 28x28 grey digits; FID/KID/IS on MNIST-like data are computed with
a classifier trained on that data (as in the SVRE paper, which used an MLP for IS). One file per data
set holds the state dict and what is needed to use it correctly (see :func:`save_classifier`).

Input convention: float images in [-1, 1] (pixel / 127.5 - 1 for uint8 pixels), shape (N, 1, S, S)
with S the ``input_size`` (28 for MNIST / Fashion-MNIST, 8 for scikit-learn's digits).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "CLASSIFIER_FORMAT",
    "DATASETS",
    "DigitClassifier",
    "default_classifier_path",
    "load_classifier",
    "save_classifier",
]

#: Data set name -> side of the classifier's input images.
DATASETS: dict[str, int] = {"mnist": 28, "fashion-mnist": 28, "digits": 8}
CLASSIFIER_FORMAT = "lightning-gan-digit-classifier"
_VERSION = 1
NORMALIZATION = "[-1, 1]: x = pixel / 127.5 - 1 for uint8 pixels"


def _trunk(input_size: int) -> tuple[nn.Sequential, int]:
    """Convolutional trunk and its flattened output size; sized to train in about a minute on 2 CPU cores."""
    if input_size == 28:
        trunk = nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),   # 14x14
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 7x7
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 3x3
            nn.Flatten(),
        )
        return trunk, 64 * 3 * 3
    if input_size == 8:
        trunk = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
            nn.Flatten(),
        )
        return trunk, 64 * 4 * 4
    raise ValueError(f"Invalid input_size: {input_size}; expected 28 (MNIST, Fashion-MNIST) or 8 (sklearn digits)")


class DigitClassifier(nn.Module):
    """CNN trunk -> ``num_features`` ReLU units (the FID/KID features) -> dropout -> ``num_classes`` logits (IS).

    Args:
        input_size: Side of the input images: 28 or 8.
        num_features: Width of the penultimate layer.
        num_classes: Number of classes.
        dropout: Dropout before the last layer (training only).
    """

    def __init__(self, input_size: int = 28, num_features: int = 128, num_classes: int = 10,
                 dropout: float = 0.3) -> None:
        if num_features < 1:
            raise ValueError(f"Invalid num_features: {num_features}; expected an integer >= 1")
        if num_classes < 2:
            raise ValueError(f"Invalid num_classes: {num_classes}; expected an integer >= 2")
        if not 0 <= dropout < 1:
            raise ValueError(f"Invalid dropout: {dropout}; expected 0 <= dropout < 1")
        super().__init__()
        self.input_size = input_size
        self.num_features = num_features
        self.num_classes = num_classes
        self.dropout = dropout
        self.trunk, flat = _trunk(input_size)
        self.penultimate = nn.Sequential(nn.Linear(flat, num_features), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, num_classes))

    def features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Penultimate features (N, num_features) and logits (N, num_classes) of images in [-1, 1]."""
        features = self.penultimate(self.trunk(x))
        return features, self.head(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.features_and_logits(x)[1]

    def config(self) -> dict[str, Any]:
        """Constructor arguments, stored in the weights file."""
        return {"input_size": self.input_size, "num_features": self.num_features, "num_classes": self.num_classes,
                "dropout": self.dropout}


def default_classifier_path(dataset: str) -> Path:
    """The weights file shipped with the package for ``dataset`` (``classifier_<dataset>.pt``)."""
    if dataset not in DATASETS:
        raise ValueError(f"Invalid dataset: {dataset!r}; expected one of {sorted(DATASETS)}")
    return Path(str(resources.files("lightning_gan.metrics") / "weights" / f"classifier_{dataset}.pt"))


def save_classifier(classifier: DigitClassifier, path: str | Path, dataset: str, **info: Any) -> Path:
    """Writes the state dict with its metadata: data set, input size, normalisation, feature width, ``info``.

    ``info`` holds anything else worth keeping (test accuracy, training command); values must be plain
    Python types so the file loads with ``weights_only=True``.
    """
    if dataset not in DATASETS:
        raise ValueError(f"Invalid dataset: {dataset!r}; expected one of {sorted(DATASETS)}")
    if DATASETS[dataset] != classifier.input_size:
        raise ValueError(f"Invalid classifier for {dataset!r}: input_size {classifier.input_size}, expected "
                         f"{DATASETS[dataset]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in classifier.state_dict().items()}
    torch.save({"format": CLASSIFIER_FORMAT, "version": _VERSION, "dataset": dataset,
                "normalization": NORMALIZATION, "config": classifier.config(), "info": dict(info),
                "state_dict": state}, path)
    return path


def load_classifier(path: str | Path | None = None, dataset: str | None = None) -> tuple[DigitClassifier, dict]:
    """A classifier in eval mode, frozen, and the file's metadata.

    Args:
        path: Weights file written by :func:`save_classifier`; None takes the shipped file of ``dataset``.
        dataset: Expected data set; a file trained on another one is refused (features would be meaningless).

    Raises:
        FileNotFoundError: the file does not exist (the message says how to train one).
        ValueError: the file is not a digit-classifier file, or was trained on another data set.
    """
    if path is None:
        if dataset is None:
            raise ValueError("load_classifier needs a path or a dataset; got neither")
        path = default_classifier_path(dataset)
    path = Path(path).expanduser()
    if not path.is_file():
        hint = dataset or "mnist"
        raise FileNotFoundError(
            f"Digit classifier weights {path} not found; train them with `python -m "
            f"lightning_gan.metrics.train_classifier --dataset {hint} --root DATA_FOLDER --out {path}`"
        )
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"Invalid digit classifier file {path}: cannot be read ({type(error).__name__}: "
                         f"{error})") from error
    if not isinstance(saved, dict) or saved.get("format") != CLASSIFIER_FORMAT:
        raise ValueError(f"Invalid digit classifier file {path}: expected a {CLASSIFIER_FORMAT!r} file written by "
                         f"lightning_gan.metrics.save_classifier")
    if dataset is not None and saved["dataset"] != dataset:
        raise ValueError(f"Invalid digit classifier file {path}: trained on {saved['dataset']!r}, expected "
                         f"{dataset!r}")
    classifier = DigitClassifier(**saved["config"])
    classifier.load_state_dict(saved["state_dict"])
    classifier.eval().requires_grad_(False)
    metadata = {k: v for k, v in saved.items() if k != "state_dict"}
    return classifier, metadata
