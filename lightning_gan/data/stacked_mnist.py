"""Stacked MNIST: three MNIST digits as the three channels of one (3, 28, 28) image in [-1, 1]; 1,000 modes.

The mode-collapse benchmark of Metz, Poole, Pfau and Sohl-Dickstein, "Unrolled Generative Adversarial Networks"
(ICLR 2017), in the version of Srivastava et al., "VEEGAN" (NeurIPS 2017) and Lin, Khetan, Fanti and Oh, "PacGAN"
(NeurIPS 2018). Reference code: https://github.com/fjxmlzn/PacGAN, ``stacked_MNIST_experiments/VEEGAN_experiment/``.
What is followed:

- ``model.py``, ``load_mnist`` (lines 361-386): the 60,000 training and 10,000 test images of MNIST concatenated
  (70,000), ``ids = np.random.randint(0, 70000, size=(num_training_sample, 3))``: each of the three channels an
  independent, uniform draw *with replacement* among the 70,000 images; channel j of sample i is image ``ids[i, j]``
  (``X_training[i, :, :, j] = X[ids[i, j]]``). ``digit_images="all"`` (the default) does the same here.
- ``config.py`` (lines 9-24): ``num_training_sample`` 128,000 (``num_samples`` here, the default), ``num_test_sample``
  26,000 generated samples for the metric (see :mod:`lightning_gan.metrics.stacked_mnist`).
- The mode of a sample is its digit triple (d0, d1, d2), 10^3 = 1,000 of them, numbered ``100 d0 + 10 d1 + d2``
  (:func:`triple_codes`); the table draws them (nearly) uniformly, since MNIST's classes are nearly balanced.

Deviations, and why:

- Pixels in [-1, 1] (pixel / 127.5 - 1) as every image data module here (tanh generators, the shipped classifier's
  input convention); the reference divides by 255 (``X_stacked / 255.``, line 386), i.e. [0, 1] data for a tanh
  generator.
- The table of (i, j, k) image indices is drawn from ``seed`` by numpy's ``default_rng`` (the reference: the global
  ``np.random`` state, seeded at random in ``pacgan_task.py``, lines 41-43), and images are stacked on access: the
  table holds ``num_samples x 3`` int64 indices (3 MB for 128,000), not 128,000 x 3 x 28 x 28 floats (1.2 GB).
- An epoch is a shuffled pass over the table (the project's rank-invariant sampler); the reference takes the
  batches in table order (``model.py`` line 189), the table itself being random.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_gan.data.base import DigitStackDataset, GameDataModule, to_unit_range
from lightning_gan.data.mnist import _FILES, MNISTDataModule

__all__ = ["NUM_CHANNELS", "NUM_MODES", "REFERENCE_NUM_SAMPLES", "StackedMNISTDataModule", "StackedMNISTDataset",
           "draw_stacks", "triple_codes"]

NUM_CHANNELS = 3
NUM_MODES = 10 ** NUM_CHANNELS
REFERENCE_NUM_SAMPLES = 128_000  # config.py: num_training_sample
DIGIT_IMAGES = ("all", "train", "test")


def triple_codes(digits: Tensor) -> Tensor:
    """Digit triples (N, 3) -> their mode numbers (N,) in [0, 1000): (d0, d1, d2) -> 100 d0 + 10 d1 + d2."""
    if digits.dim() != 2 or digits.shape[1] != NUM_CHANNELS:
        raise ValueError(f"Invalid digits: {tuple(digits.shape)}; expected (N, {NUM_CHANNELS}) digit triples")
    powers = torch.tensor([100, 10, 1], device=digits.device)
    return (digits.long() * powers).sum(-1)


def draw_stacks(num_images: int, num: int, seed: int) -> Tensor:
    """int64 (num, 3): for each sample and channel an image index uniform in [0, num_images), with replacement (the
    reference's ``np.random.randint(0, 70000, size=(num, 3))``); a pure function of ``seed``."""
    rng = np.random.default_rng([0, seed & (2 ** 63 - 1)])
    return torch.from_numpy(rng.integers(num_images, size=(num, NUM_CHANNELS), dtype=np.int64))


class StackedMNISTDataset(DigitStackDataset):
    """Items ``(x, index)``: x (3, 28, 28) float32 in [-1, 1], channel k the image ``picks[index, k]`` of ``images``; the
    sample's mode is :func:`triple_codes` of its row of ``labels``."""


class StackedMNISTDataModule(GameDataModule):
    """Three MNIST digits stacked as the channels of a (3, 28, 28) image in [-1, 1]: 1,000 modes (digit triples).

    The training set is a table of ``num_samples`` (i, j, k) MNIST image indices drawn once from ``seed``; samples are
    stacked on access (or gathered on the device with ``on_device``: the 70,000 uint8 images, 55 MB, and the table).
    There is no held-out split (the reference has none; the metric needs no real samples). ``root`` is MNIST's folder,
    read as :class:`~lightning_gan.data.MNISTDataModule` reads it (same files, same one-line errors); nothing is
    downloaded. Reference and deviations: see :mod:`lightning_gan.data.stacked_mnist`.

    Attributes:
        labels: int64 (num_samples, 3) the digits of each sample, after ``setup``.

    Args:
        root: MNIST folder with the four IDX files; a relative one is relative to the repository root.
        batch_size: Micro-batch per rank and per draw (reference: 64).
        num_workers: DataLoader worker processes.
        seed: Seed of the table of image indices and of the shuffling.
        on_device: Keep the images and the table on the trainer's device and stack each batch there.
        num_samples: Stacked samples in the table (the epoch length; reference: 128,000), >= 1.
        digit_images: MNIST images the channels are drawn from: ``all`` (the 70,000 training and test images, as the
            reference), ``train`` (60,000) or ``test`` (10,000).
    """

    def __init__(self, root: str, batch_size: int = 64, num_workers: int = 0, seed: int = 0, on_device: bool = False,
                 num_samples: int = REFERENCE_NUM_SAMPLES,
                 digit_images: Literal["all", "train", "test"] = "all") -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"Invalid num_samples: {num_samples!r}; expected an integer >= 1")
        if digit_images not in DIGIT_IMAGES:
            raise ValueError(f"Invalid digit_images: {digit_images!r}; expected 'all', 'train' or 'test'")
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, on_device=on_device)
        self.root = root
        self.num_samples = num_samples
        self.digit_images = digit_images
        self.labels: Tensor | None = None
        self._device_tables: tuple[Tensor, Tensor] | None = None  # (images, picks) on the device of the last gather

    def _load(self) -> None:
        mnist = MNISTDataModule(root=self.root)
        paths = mnist._locate()  # one line naming the folder and the four files expected
        parts = []
        if self.digit_images in ("all", "train"):
            parts.append(mnist._read_split(paths[_FILES[0]], paths[_FILES[1]]))
        if self.digit_images in ("all", "test"):
            parts.append(mnist._read_split(paths[_FILES[2]], paths[_FILES[3]]))
        images = torch.cat([x for x, _ in parts])[:, 0]  # uint8 (M, 28, 28): training images first, as the reference
        image_labels = torch.cat([y for _, y in parts])
        picks = draw_stacks(len(images), self.num_samples, self.seed)
        self.labels = image_labels[picks]
        self.train_set = StackedMNISTDataset(images, picks, self.labels)

    # -- data on the device: the images and the table, stacked by the gather ------------------------------------------
    def _refuse_on_device_unless_one_tensor(self, dataset: Dataset) -> None:
        if not isinstance(dataset, StackedMNISTDataset):
            super()._refuse_on_device_unless_one_tensor(dataset)

    def device_data(self, device: torch.device | str) -> Tensor:
        """The images on ``device`` (with the table, copied once; kept until a gather asks for another device)."""
        return self._tables_on(torch.device(device))[0]

    def _tables_on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        dataset = self._train_dataset()
        assert isinstance(dataset, StackedMNISTDataset)
        tables = self._device_tables
        if tables is not None and tables[0].device == device:
            return tables
        self._device_tables = None
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            needed = sum(t.numel() * t.element_size() for t in (dataset.images, dataset.picks))
            if needed > free:
                raise ValueError(f"Invalid on_device: true; {type(self).__name__}'s images and table take "
                                 f"{needed / 2**30:.2f} GiB, more than the {free / 2**30:.2f} GiB free on {device}; "
                                 "set on_device false")
        self._device_tables = (dataset.images.to(device), dataset.picks.to(device))
        return self._device_tables

    def gather(self, index: Tensor) -> list[Tensor]:
        """``[x, index]`` of the training rows ``index``, stacked on ``index``'s device: the loader path's batch."""
        images, picks = self._tables_on(index.device)
        return [to_unit_range(images[picks[index]]), index]
