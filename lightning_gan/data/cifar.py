"""CIFAR-10 from a local ``cifar-10-batches-py`` folder (the "python version" archive, extracted)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_gan.data.base import GameDataModule, IndexedTensorDataset, resolve_root

__all__ = ["CIFAR10DataModule", "read_cifar_batch"]

_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST = "test_batch"
_HINT = ("expected the extracted 'python version' archive https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz: "
         "a folder cifar-10-batches-py holding data_batch_1..data_batch_5 and test_batch (pickled dicts with "
         "b'data' uint8 [N, 3072] and b'labels')")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR batch as uint8 images (N, 3, 32, 32) and int64 labels (N,).

    Unpickling runs code from the file: only point this at data you trust.

    Raises:
        ValueError: The file is not a CIFAR batch dict of the expected shapes.
    """
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"Malformed CIFAR batch {path}: {type(error).__name__}: {error}; {_HINT}") from error
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"Malformed CIFAR batch {path}: b'data' is {data.dtype} {data.shape} with {len(labels)} "
                         f"labels, expected uint8 [N, 3072] and N labels; {_HINT}")
    return data.reshape(-1, 3, 32, 32), labels


class CIFAR10DataModule(GameDataModule):
    """CIFAR-10 as (3, 32, 32) images in [-1, 1]; ``test_batch`` is the held-out split. Nothing is downloaded.

    Attributes:
        train_labels: Class of every training image (int64).
        val_labels: Class of every test image (int64).

    Args:
        root: The ``cifar-10-batches-py`` folder, or a folder that contains it; a relative one is relative to the
            repository root (:func:`~lightning_gan.data.base.resolve_root`).
        batch_size: Micro-batch per rank and per draw.
        num_workers: DataLoader worker processes.
        seed: Seed of the shuffling.
        on_device: Keep the training set on the trainer's device and gather batches there (the same batches).
    """

    def __init__(self, root: str, batch_size: int = 64, num_workers: int = 0, seed: int = 0,
                 on_device: bool = False) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, on_device=on_device)
        self.root = root
        self.train_labels: Tensor | None = None
        self.val_labels: Tensor | None = None

    def _folder(self) -> Path:
        root = resolve_root(self.root)
        if (root / "cifar-10-batches-py").is_dir():
            root = root / "cifar-10-batches-py"
        if not root.is_dir():
            raise FileNotFoundError(f"CIFAR-10 folder {root} does not exist; {_HINT}")
        missing = [name for name in (*_TRAIN, _TEST) if not (root / name).is_file()]
        if missing:
            raise FileNotFoundError(f"CIFAR-10 folder {root} is missing {', '.join(missing)}; {_HINT}")
        return root

    def _load(self) -> None:
        folder = self._folder()
        train = [read_cifar_batch(folder / name) for name in _TRAIN]
        test_x, test_y = read_cifar_batch(folder / _TEST)
        self.train_set = IndexedTensorDataset(torch.from_numpy(np.concatenate([x for x, _ in train])))
        self.train_labels = torch.from_numpy(np.concatenate([y for _, y in train]))
        self.val_set, self.val_labels = IndexedTensorDataset(torch.from_numpy(test_x.copy())), torch.from_numpy(test_y)

    def val_dataloader(self) -> DataLoader | list:
        return self._val_loader()
