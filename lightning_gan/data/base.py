"""What every game data module shares: (x, index) items, rank-invariant sampling, resumable loaders.

Sampling contract. The training loader always uses a ``DistributedSampler`` (also with one
process), seeded with ``seed``. Rank r of W takes positions r, r + W, r + 2W, ... of one
shared permutation, so with micro-batch B the union of the ranks' k-th batches is exactly
the k-th batch of a 1-rank run with batch W*B, and each of the ``draws_per_step`` chunks
of a batch matches chunk-wise too. A ``RandomSampler`` would draw another permutation.
Lightning leaves a sampler that is already a ``DistributedSampler`` alone. The sampler
(:class:`~lightning_gan.data.sampler.GameSampler`) counts its passes itself and keeps its position
in its state, which ``StatefulDataLoader`` checkpoints: a resumed run replays and skips no batch.

Data on the device (``on_device=True``). The training tensor is copied once to the trainer's device (the whole
training set on every rank: its bytes, e.g. 47 MB for MNIST, 154 MB for CIFAR-10, all uint8), the loader yields only
the indices of the very same sampler (:class:`DeviceIndices`; same order, shard per rank and checkpointed state), and
:meth:`GameDataModule.on_after_batch_transfer`, which Lightning calls once the indices are on the device, gathers the
rows there: the same ``(x, index)`` batches without a host-to-device copy of samples per batch nor worker processes.
It needs the data module passed to ``fit`` as ``datamodule`` and a training set held as one tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized
from pathlib import Path
from typing import Any, NamedTuple

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_gan.data.sampler import GameSampler

__all__ = ["REPOSITORY_ROOT", "DeviceIndices", "GameDataModule", "IndexedTensorDataset", "ShardSampler",
           "resolve_root", "to_unit_range"]


#: The folder that holds the ``lightning_gan`` package: the repository root of a clone (or an editable install).
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


def resolve_root(root: str | Path) -> Path:
    """A data module's ``root`` as an absolute path: ``~`` expanded, and a relative root taken relative to
    :data:`REPOSITORY_ROOT`, not to the current directory, so that a config's ``root: ../shared/data/mnist`` names
    the same folder from wherever the command runs and whichever folder the config was copied to (a run's saved
    config, a checkpoint's). Give an absolute path for data outside the clone, or with a non-editable install."""
    path = Path(root).expanduser()
    return (path if path.is_absolute() else REPOSITORY_ROOT / path).resolve()


def to_unit_range(images: Tensor) -> Tensor:
    """uint8 pixels in [0, 255] -> float32 in [-1, 1]."""
    return images.to(torch.float32).div_(127.5).sub_(1.0)


class IndexedTensorDataset(Dataset):
    """Items ``(x, index)`` from one tensor; uint8 images stay uint8 in memory and are scaled to [-1, 1] on access.

    Args:
        data: Samples stacked along dim 0 (uint8 images or float32 values).
    """

    def __init__(self, data: Tensor) -> None:
        self.data = data

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x = self.data[index]
        return (to_unit_range(x) if x.dtype == torch.uint8 else x), index


class DigitStackDataset(Dataset):
    """Items ``(x, index)``: x (K, H, W) float32 in [-1, 1], channel k the image ``picks[index, k]`` of ``images`` (the
    sum-to-25 task's five digits, stacked MNIST's three), stacked on access from uint8 images.

    Attributes:
        images: uint8 (M, H, W) digit images.
        picks: int64 (N, K) image index of each channel of each sample.
        labels: int64 (N, K) the digit of each channel.
    """

    def __init__(self, images: Tensor, picks: Tensor, labels: Tensor) -> None:
        self.images, self.picks, self.labels = images, picks, labels

    def __len__(self) -> int:
        return self.picks.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return to_unit_range(self.images[self.picks[index]]), index

    def stack(self, rows: Tensor) -> Tensor:
        """float32 (len(rows), K, H, W) in [-1, 1]: the samples ``rows``, in one gather."""
        return to_unit_range(self.images[self.picks[rows]])


class DeviceIndices(NamedTuple):
    """A training batch of the ``on_device`` path before the gather: the sampler's indices only (int64)."""

    index: Tensor


class _IndexDataset(Dataset):
    """Items are their own index; as long as the training set, so the sampler and ``len(loader.dataset)`` agree."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return index


def _collate_indices(items: list[int]) -> DeviceIndices:
    return DeviceIndices(torch.tensor(items, dtype=torch.int64))


class ShardSampler(DistributedSampler):
    """Unpadded, unshuffled shard r::W of a held-out set, so every sample is seen exactly once.

    A ``DistributedSampler`` subclass so that Lightning does not replace it with its padded one;
    ranks may get up to one sample more than others, so no per-batch collectives in validation.
    """

    def __init__(self, dataset: Sized, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)  # type: ignore[arg-type]
        self.num_samples = len(range(rank, len(dataset), num_replicas))
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))


class GameDataModule(LightningDataModule):
    """Base class: subclasses fill ``train_set`` (and ``val_set`` when there is a held-out split) in ``setup``.

    Args:
        batch_size: Micro-batch per rank and per draw (one F evaluation's real batch on one rank).
        num_workers: DataLoader worker processes.
        seed: Seed of the shuffling permutation (and of any generated or split data).
        on_device: Keep the whole training set on the trainer's device and gather each batch there (see the module
            docstring); the batches, their order and the resume state are those of the loader path.
    """

    #: Number of independent real batches one game iteration consumes (e.g. 2 for extragradient).
    #: Set by the training module before the dataloaders are built; each loader batch holds
    #: ``batch_size * draws_per_step`` samples, to be split into ``draws_per_step`` chunks.
    draws_per_step: int = 1
    #: Sampling weights of the training points (float64, (N,)) for an AdaGAN component, set before the loaders are
    #: built (:class:`~lightning_gan.adagan.component.ComponentCLI`); None: the uniform permutation of GameSampler.
    train_weights: Tensor | None = None
    #: Seed of the weighted sampler (None: ``seed``).
    train_weights_seed: int | None = None

    def __init__(self, batch_size: int = 64, num_workers: int = 0, seed: int = 0, on_device: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"Invalid batch_size: {batch_size}; expected an integer >= 1")
        if num_workers < 0:
            raise ValueError(f"Invalid num_workers: {num_workers}; expected an integer >= 0")
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.on_device = bool(on_device)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self._device_copy: Tensor | None = None  # the training tensor on the device of the last gather

    # -- hooks for subclasses ------------------------------------------------------------
    def _load(self) -> None:
        """Fill ``self.train_set`` (and ``self.val_set`` if any); raise one clear error if the data is missing."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self._load()

    # -- loaders -------------------------------------------------------------------------
    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _train_dataset(self) -> Dataset:
        self.setup("fit")
        assert self.train_set is not None, "_load() must set train_set"
        return self.train_set

    def _train_loader(self, world_size: int, rank: int) -> StatefulDataLoader:
        """The training loader of one rank of ``world_size``; ``train_dataloader`` passes the trainer's values."""
        self.check_train_batch(world_size, self.draws_per_step)
        dataset = self._train_dataset()
        batch = self.batch_size * self.draws_per_step
        if self.on_device:  # the same sampler over the indices alone; the rows are gathered on the device
            indices = _IndexDataset(len(dataset))  # type: ignore[arg-type]
            sampler = self._train_sampler(indices, world_size, rank)
            return StatefulDataLoader(indices, batch_size=batch, sampler=sampler, drop_last=True,
                                      collate_fn=_collate_indices)
        sampler = self._train_sampler(dataset, world_size, rank)
        return StatefulDataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=True,
                                  num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def _train_sampler(self, dataset: Sized, world_size: int, rank: int) -> DistributedSampler:
        """GameSampler, or AdaGAN's weighted minibatches when ``train_weights`` is set (same sharding contract)."""
        if self.train_weights is None:
            return GameSampler(dataset, num_replicas=world_size, rank=rank, seed=self.seed)
        from lightning_gan.adagan.sampler import WeightedGameSampler

        seed = self.seed if self.train_weights_seed is None else self.train_weights_seed
        return WeightedGameSampler(len(dataset), world_size, rank, self.train_weights, self.batch_size, seed=seed)

    def check_train_batch(self, world_size: int, draws_per_step: int) -> None:
        """Refuse a batch that leaves no training batch on some rank; callable before ``fit`` (the CLI does), so that
        the error comes before training rather than from the first loader, mid-fit."""
        if draws_per_step < 1:
            raise ValueError(f"Invalid draws_per_step: {draws_per_step}; expected an integer >= 1")
        dataset = self._train_dataset()
        if self.on_device:
            self._refuse_on_device_unless_one_tensor(dataset)
        size = len(dataset)  # type: ignore[arg-type]
        if size // world_size < self.batch_size * draws_per_step:
            raise ValueError(
                f"Invalid batch_size: {self.batch_size}; {type(self).__name__} has {size} training samples, fewer "
                f"than world_size * batch_size * draws_per_step = {world_size} * {self.batch_size} * "
                f"{draws_per_step}, so drop_last would leave no batch"
            )

    def train_dataloader(self) -> StatefulDataLoader:
        loader = self._train_loader(*self._world())
        trainer = getattr(self, "trainer", None)
        if self.on_device and trainer is not None:  # copy now, so that a set too large fails before the first batch
            self.device_data(trainer.strategy.root_device)
        return loader

    # -- data on the device ----------------------------------------------------------------------
    def _refuse_on_device_unless_one_tensor(self, dataset: Dataset) -> None:
        if not isinstance(dataset, IndexedTensorDataset):  # a bad setting of the user's, hence ValueError
            raise ValueError(f"Invalid on_device: true; {type(self).__name__} builds its training samples on access "  # noqa: TRY004
                             f"({type(dataset).__name__}), not from one tensor that could be held on the device; "
                             "set on_device false")

    def device_data(self, device: torch.device | str) -> Tensor:
        """The training tensor on ``device``, copied once (kept until a gather asks for another device)."""
        device = torch.device(device)
        dataset = self._train_dataset()
        self._refuse_on_device_unless_one_tensor(dataset)
        data = dataset.data  # type: ignore[attr-defined]
        if data.device == device:
            return data
        copy = self._device_copy
        if copy is not None and copy.device == device:
            return copy
        self._device_copy = None  # free the previous copy first
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            needed = data.numel() * data.element_size()
            if needed > free:
                raise ValueError(f"Invalid on_device: true; {type(self).__name__}'s training set takes "
                                 f"{needed / 2**30:.2f} GiB, more than the {free / 2**30:.2f} GiB free on {device}; "
                                 "set on_device false")
        self._device_copy = data.to(device)
        return self._device_copy

    def gather(self, index: Tensor) -> list[Tensor]:
        """``[x, index]`` of the training rows ``index``, gathered on ``index``'s device: the loader path's batch."""
        x = self.device_data(index.device)[index]
        return [to_unit_range(x) if x.dtype == torch.uint8 else x, index]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Turns an ``on_device`` batch of indices, now on the device, into its ``(x, index)`` batch."""
        if isinstance(batch, DeviceIndices):
            return self.gather(batch.index)
        return batch

    def _val_loader(self) -> DataLoader | list:
        """Sequential loader over this rank's unpadded shard of the held-out split (subclasses with one opt in).

        An empty list when the split is empty (e.g. ``num_val_samples=0``): Lightning then skips validation.
        """
        self.setup("validate")
        if self.val_set is None:
            return []
        sampler = ShardSampler(self.val_set, *self._world())  # type: ignore[arg-type]
        return DataLoader(self.val_set, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers)

    def full_pass_dataloader(self, batch_size: int | None = None) -> DataLoader:
        """One ordered pass over this rank's unpadded shard of the training set (e.g. SVRE's full mean mu).

        Over all ranks every training sample appears exactly once; sum per rank, then all-reduce
        the sum and the count. Items are ``(x, index)`` as in training.

        Args:
            batch_size: Samples per batch; defaults to ``batch_size * draws_per_step``.
        """
        dataset = self._train_dataset()
        sampler = ShardSampler(dataset, *self._world())  # type: ignore[arg-type]
        batch = batch_size or self.batch_size * self.draws_per_step
        return DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=self.num_workers)

    # -- real samples for metrics ----------------------------------------------------------
    def sample_real(self, n: int, split: str = "train") -> Tensor:
        """``n`` samples of ``split``, the same on every call and every rank (seeded by ``seed``).

        Draws without replacement in a seeded permutation; if ``n`` exceeds the split, further
        permutations are appended (each sample then appears at most ceil(n / len) times).

        Args:
            n: Number of samples, >= 1.
            split: ``"train"``, or ``"test"`` for the held-out split (``val_set``: e.g. MNIST's t10k).
        """
        if n < 1:
            raise ValueError(f"Invalid n: {n}; expected an integer >= 1")
        dataset = self.split_dataset(split)
        size = len(dataset)  # type: ignore[arg-type]
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.cat([torch.randperm(size, generator=generator) for _ in range(math.ceil(n / size))])[:n]
        return self.gather_samples(dataset, order)

    def gather_samples(self, dataset: Dataset, order: Tensor) -> Tensor:
        """The samples ``order`` of ``dataset``, stacked (one gather for in-memory sets, not n item lookups)."""
        if isinstance(dataset, IndexedTensorDataset):
            x = dataset.data[order]
            return to_unit_range(x) if x.dtype == torch.uint8 else x.clone()
        if isinstance(dataset, DigitStackDataset):
            return dataset.stack(order)
        return torch.stack([dataset[i][0] for i in order.tolist()])

    def split_dataset(self, split: str) -> Dataset:
        """The training set or the (non-empty) held-out set, loaded; one error naming the split otherwise."""
        if split == "train":
            return self._train_dataset()
        if split != "test":
            raise ValueError(f"Invalid split: {split!r}; expected 'train' or 'test' (the held-out split)")
        self.setup("validate")
        if self.val_set is None or len(self.val_set) == 0:  # type: ignore[arg-type]
            raise ValueError(f"Invalid split: 'test'; {type(self).__name__} holds no held-out samples here "
                             f"(e.g. num_val_samples=0 or val_fraction=0, or none exists); use 'train'")
        return self.val_set
