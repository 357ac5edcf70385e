"""Any folder of images (searched recursively), decoded lazily with PIL so large folders need no RAM up front."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from lightning_gan.data.base import GameDataModule, to_unit_range

__all__ = ["ImageFolderDataModule", "ImageFileDataset"]

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def load_image(path: Path, image_size: int, channels: int) -> Tensor:
    """Decode, resize the shorter side to ``image_size`` (bicubic, antialiased), center-crop, scale to [-1, 1]."""
    with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB")
        width, height = image.size
        scale = image_size / min(width, height)
        size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
        left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
        image = image.crop((left, top, left + image_size, top + image_size))
        pixels = np.asarray(image, dtype=np.uint8).reshape(image_size, image_size, channels)
    return to_unit_range(torch.from_numpy(pixels.copy()).permute(2, 0, 1))


class ImageFileDataset(Dataset):
    """Items ``(x, index)``, x of shape (channels, image_size, image_size) in [-1, 1], decoded on access.

    Args:
        paths: Image files, in index order.
        image_size: Side of the square output.
        channels: 1 (grayscale) or 3 (RGB).
    """

    def __init__(self, paths: list[Path], image_size: int, channels: int) -> None:
        self.paths, self.image_size, self.channels = paths, image_size, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return load_image(self.paths[index], self.image_size, self.channels), index


class ImageFolderDataModule(GameDataModule):
    """All images under ``root`` (recursively; .png, .jpg, .jpeg, .bmp, .webp), sorted by path. No held-out split.

    Args:
        root: Folder to search.
        image_size: Side of the square images after resize (shorter side) and center crop.
        channels: 3 for RGB, 1 for grayscale.
        batch_size: Micro-batch per rank and per draw.
        num_workers: DataLoader worker processes (decoding happens in them).
        seed: Seed of the shuffling.
    """

    def __init__(self, root: str, image_size: int = 32, channels: int = 3, batch_size: int = 64,
                 num_workers: int = 0, seed: int = 0) -> None:
        if image_size < 1:
            raise ValueError(f"Invalid image_size: {image_size}; expected an integer >= 1")
        if channels not in (1, 3):
            raise ValueError(f"Invalid channels: {channels}; expected 1 (grayscale) or 3 (RGB)")
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.root = root
        self.image_size = image_size
        self.channels = channels

    def _load(self) -> None:
        folder = Path(self.root).expanduser()
        layout = f"expected a folder with image files ({', '.join(EXTENSIONS)}) at any depth"
        if not folder.is_dir():
            raise FileNotFoundError(f"Image folder {folder} does not exist; {layout}")
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
        if not paths:
            raise FileNotFoundError(f"Image folder {folder} contains no images; {layout}")
        self.train_set = ImageFileDataset(paths, self.image_size, self.channels)
