"""MNIST and Fashion-MNIST from the four standard IDX files in one folder (no torchvision, no download)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_gan.data.base import GameDataModule, IndexedTensorDataset, resolve_root

__all__ = ["MNISTDataModule", "read_idx"]

_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_SOURCES = {
    "mnist": "http://yann.lecun.com/exdb/mnist/ (or any mirror, e.g. torchvision's)",
    "fashion-mnist": "https://github.com/zalandoresearch/fashion-mnist (data/fashion/)",
}
_MAGIC = {3: 2051, 1: 2049}  # IDX magic of unsigned-byte files: 0x0803 images (3 dims), 0x0801 labels (1 dim)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Reads an unsigned-byte IDX file (gzip-compressed if it ends in .gz) and checks magic and size.

    Args:
        path: The file.
        ndim: Expected number of dimensions (3 for images, 1 for labels).

    Raises:
        ValueError: The file cannot be read or decompressed, or its magic number or byte count is not that of
            an unsigned-byte IDX file with ``ndim`` dimensions.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:  # a flipped bit may surface as any of the three
        raise ValueError(f"Malformed IDX file {path}: cannot decompress it ({type(error).__name__}: {error}); the "
                         f"file is truncated or corrupt, replace it") from error
    except OSError as error:  # e.g. no read permission: a bad input, not a crash
        raise ValueError(f"Unreadable IDX file {path}: {error.strerror or error}") from error
    header = 4 + 4 * ndim
    if len(raw) < 4:
        raise ValueError(f"Malformed IDX file {path}: {len(raw)} bytes, shorter than its {header}-byte header")
    magic = int(np.frombuffer(raw, dtype=">u4", count=1)[0])
    if magic != _MAGIC[ndim]:
        raise ValueError(f"Malformed IDX file {path}: magic number {magic}, expected {_MAGIC[ndim]}")
    if len(raw) < header:
        raise ValueError(f"Malformed IDX file {path}: {len(raw)} bytes, shorter than its {header}-byte header")
    shape = [int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)]
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise ValueError(f"Malformed IDX file {path}: {len(raw)} bytes, expected {expected} for shape {tuple(shape)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


class MNISTDataModule(GameDataModule):
    """MNIST or Fashion-MNIST as (1, S, S) images in [-1, 1]; the 10k test set is the held-out split.

    ``root`` must hold ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
    ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz`` (uncompressed files without
    ``.gz`` are accepted too). Nothing is ever downloaded.

    Attributes:
        train_labels: Class of every training image (int64), for classifier-based metrics.
        val_labels: Class of every test image (int64).

    Args:
        root: Folder holding the four IDX files; a relative one is relative to the repository root
            (:func:`~lightning_gan.data.base.resolve_root`), and errors name the absolute path.
        dataset: ``"mnist"`` or ``"fashion-mnist"`` (only changes error messages and the name in logs).
        image_size: 28 (native) or 32 (zero-padded by 2 pixels per side, i.e. black borders, as for LeNet).
        batch_size: Micro-batch per rank and per draw.
        num_workers: DataLoader worker processes.
        seed: Seed of the shuffling.
        num_train_samples: Use only the first this many training images (quick runs and tests); null: all.
        on_device: Keep the training set on the trainer's device and gather batches there (the same batches).
    """

    def __init__(self, root: str, dataset: Literal["mnist", "fashion-mnist"] = "mnist", image_size: int = 28,
                 batch_size: int = 64, num_workers: int = 0, seed: int = 0,
                 num_train_samples: int | None = None, on_device: bool = False) -> None:
        if dataset not in _SOURCES:
            raise ValueError(f"Invalid dataset: {dataset!r}; expected 'mnist' or 'fashion-mnist'")
        if image_size not in (28, 32):
            raise ValueError(f"Invalid image_size: {image_size}; expected 28 or 32")
        if num_train_samples is not None and num_train_samples < 1:
            raise ValueError(f"Invalid num_train_samples: {num_train_samples}; expected an integer >= 1, or null for all")
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, on_device=on_device)
        self.num_train_samples = num_train_samples
        self.root = root
        self.dataset = dataset
        self.image_size = image_size
        self.train_labels: Tensor | None = None
        self.val_labels: Tensor | None = None

    def _layout_hint(self) -> str:
        names = ", ".join(f"{name}.gz" for name in _FILES)
        return f"expected the four standard IDX files ({names}; uncompressed also accepted) " \
               f"from {_SOURCES[self.dataset]} placed directly in that folder"

    def _locate(self) -> dict[str, Path]:
        """Path of each of the four files; one error naming every missing file."""
        folder = resolve_root(self.root)
        label = "MNIST" if self.dataset == "mnist" else "Fashion-MNIST"
        if not folder.is_dir():
            raise FileNotFoundError(f"{label} folder {folder} does not exist; {self._layout_hint()}")
        found: dict[str, Path] = {}
        for name in _FILES:
            for candidate in (folder / f"{name}.gz", folder / name):
                if candidate.is_file():
                    found[name] = candidate
                    break
        missing = [f"{name}.gz" for name in _FILES if name not in found]
        if missing:
            raise FileNotFoundError(f"{label} folder {folder} is missing {', '.join(missing)}; {self._layout_hint()}")
        return found

    def _read_split(self, images_path: Path, labels_path: Path) -> tuple[Tensor, Tensor]:
        images, labels = read_idx(images_path, ndim=3), read_idx(labels_path, ndim=1)
        if images.shape[1:] != (28, 28):
            raise ValueError(f"Malformed IDX file {images_path}: images of {images.shape[1:]}, expected (28, 28)")
        if len(images) != len(labels):
            raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels")
        x = torch.from_numpy(images.copy()).unsqueeze(1)  # uint8 (N, 1, 28, 28), scaled on access
        if self.image_size == 32:
            x = F.pad(x, (2, 2, 2, 2))
        return x, torch.from_numpy(labels.astype(np.int64))

    def _load(self) -> None:
        paths = self._locate()
        train_x, self.train_labels = self._read_split(paths[_FILES[0]], paths[_FILES[1]])
        if self.num_train_samples is not None:
            train_x, self.train_labels = train_x[:self.num_train_samples], self.train_labels[:self.num_train_samples]
        val_x, self.val_labels = self._read_split(paths[_FILES[2]], paths[_FILES[3]])
        self.train_set, self.val_set = IndexedTensorDataset(train_x), IndexedTensorDataset(val_x)

    def val_dataloader(self) -> DataLoader | list:
        return self._val_loader()
