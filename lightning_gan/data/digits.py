"""scikit-learn's 8x8 digits: a real image set that ships inside scikit-learn, for fast offline runs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_gan.data.base import GameDataModule, IndexedTensorDataset

__all__ = ["DigitsDataModule"]


class DigitsDataModule(GameDataModule):
    """The 1797 8x8 digits of ``sklearn.datasets.load_digits`` (values 0..16) as (1, S, S) images in [-1, 1].

    Attributes:
        train_labels: Class of every training image (int64), for classifier-based metrics.
        val_labels: Class of every held-out image (int64).

    Args:
        image_size: Side S of the returned images; 8 is native, other sizes (e.g. 28 or 32 for the DCGAN
            players) are bilinear resizes.
        val_fraction: Fraction of the 1797 images held out, chosen by a permutation seeded with ``seed``.
        batch_size: Micro-batch per rank and per draw.
        num_workers: DataLoader worker processes.
        seed: Seed of the train/held-out split and of the shuffling.
        on_device: Keep the training set on the trainer's device and gather batches there (the same batches).
    """

    def __init__(self, image_size: int = 8, val_fraction: float = 0.1, batch_size: int = 64, num_workers: int = 0,
                 seed: int = 0, on_device: bool = False) -> None:
        if image_size < 1:
            raise ValueError(f"Invalid image_size: {image_size}; expected an integer >= 1 (8 is native)")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"Invalid val_fraction: {val_fraction}; expected 0 <= val_fraction < 1")
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, on_device=on_device)
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.train_labels: Tensor | None = None
        self.val_labels: Tensor | None = None

    def _images(self) -> tuple[Tensor, Tensor]:
        from sklearn.datasets import load_digits  # local: scikit-learn is slow to import

        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
        if self.image_size != 8:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False, antialias=self.image_size < 8).clamp_(-1.0, 1.0)
        return images.contiguous(), torch.as_tensor(digits.target, dtype=torch.int64)

    def _load(self) -> None:
        images, labels = self._images()
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.seed))
        num_val = int(round(self.val_fraction * len(images)))
        train, val = order[num_val:], order[:num_val]
        self.train_set, self.train_labels = IndexedTensorDataset(images[train]), labels[train]
        if num_val > 0:
            self.val_set, self.val_labels = IndexedTensorDataset(images[val]), labels[val]

    def val_dataloader(self) -> DataLoader | list:
        return self._val_loader()
