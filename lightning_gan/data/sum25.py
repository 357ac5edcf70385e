"""Sum-to-25: five MNIST digits whose labels sum to 25, stacked as channels, (5, 28, 28) in [-1, 1].

The visual-hyperplane task of Huang, Berard, Touati, Gidel, Vincent and Lacoste-Julien, "Parametric Adversarial
Divergences are Good Task Losses for Generative Modeling" (2017), reference code
https://github.com/gabrielhuang/adversarial-divergence-code, folder ``visual-hyperplane/``. What is followed:

- Combinations (``coins.py``, ``generate_combinations(25, range(10), 5)``): the 5,631 ordered 5-tuples of digits
  0..9 that sum to 25, in lexicographic order (that of ``itertools.product`` filtered): :func:`sum25_combinations`.
- Split of combinations (``split_dataset.py`` -> ``hyperplane_dataset.get_full_train_test(validation=0.8,
  seed=1234)``): ``np.random.seed(1234); np.random.shuffle(combinations)``, the first ``int(0.8 * 5631)`` = 4,504
  are the training combinations, the other 1,127 are held out. :func:`split_combinations` reproduces this split
  exactly with ``train_fraction=0.8, split_seed=1234`` (the defaults). (``end2end/split_combinations.py`` writes
  another split, seed 0 and a 0.5 ratio, into the ``end2end/sum_25.pkl`` that ``train_gan_visual.py`` loads; that
  pickle is not readable in the public snapshot. The paper and the README describe the 80/20 split used here.)
- A sample (``common/digits_sampler.py``, ``sample_visual_combination`` / ``combination_to_visual``): a combination
  drawn uniformly among the training combinations, then for each of its five digits an independent, uniformly drawn
  MNIST image of that class; the five images are concatenated along the channel axis (``torch.cat(x, 1)``), so a
  sample is (5, 28, 28), channel k holding the k-th digit. :func:`side_by_side` gives the 28 x 140 picture.

Deviations, and why:

- Pixels in [-1, 1] (pixel / 127.5 - 1) as every image data module here (tanh generators, the shipped classifier's
  input convention); the reference keeps ``ToTensor``'s [0, 1].
- Digit images: the reference's GAN training (``end2end/train_gan_visual.py``) draws them from the 10,000 MNIST
  *test* images (``load_all_mnist_digits(train=False)``). Here training tuples use the 60,000 training images by
  default (more visual variety, and the test images stay unseen by the generator, as by the shipped classifier);
  ``digit_images="test"`` reproduces the reference. Held-out tuples always use the test images, so the held-out
  split is new in both respects: unseen combinations and unseen images.
- A finite epoch: the reference samples without end. Here the training set is a table of ``num_train_samples``
  tuples (default 60,000, one per MNIST training image) drawn once from ``seed``; an epoch is one shuffled pass over
  it, so training items are ``(x, index)`` with ``x`` a pure function of ``(seed, index)``, which keeps the project's
  rank-invariant sampling and mid-epoch resume exact. Tuples are composed on access (the table holds indices).
"""

from __future__ import annotations

import itertools
from functools import cached_property
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_gan.data.base import DigitStackDataset, GameDataModule
from lightning_gan.data.mnist import _FILES, MNISTDataModule

__all__ = ["NUM_DIGITS", "TARGET_SUM", "Sum25DataModule", "Sum25Dataset", "side_by_side", "split_combinations",
           "sum25_combinations", "tuple_codes"]

NUM_DIGITS = 5
TARGET_SUM = 25
REFERENCE_SPLIT_SEED = 1234  # split_dataset.py --random-seed
REFERENCE_TRAIN_FRACTION = 0.8  # split_dataset.py --train-ratio


def sum25_combinations(target: int = TARGET_SUM, num_digits: int = NUM_DIGITS) -> Tensor:
    """Every ordered tuple of ``num_digits`` digits 0..9 summing to ``target``, lexicographic, int64 (K, num_digits);
    5,631 tuples for the defaults (the reference's ``coins.generate_combinations`` order)."""
    rows = [t for t in itertools.product(range(10), repeat=num_digits) if sum(t) == target]
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, num_digits)


def split_combinations(train_fraction: float = REFERENCE_TRAIN_FRACTION,
                       split_seed: int = REFERENCE_SPLIT_SEED) -> tuple[Tensor, Tensor]:
    """(training, held-out) combinations: the reference's ``np.random.seed(split_seed); np.random.shuffle(...)``,
    then the first ``int(train_fraction * 5631)`` shuffled combinations for training (numpy's legacy generator,
    whose streams are frozen across numpy versions, so the split is the reference's: 4,504 / 1,127)."""
    combinations = sum25_combinations()
    order = np.arange(len(combinations))
    np.random.RandomState(split_seed).shuffle(order)
    shuffled = combinations[torch.from_numpy(order)]
    end = int(train_fraction * len(combinations))
    return shuffled[:end].clone(), shuffled[end:].clone()


def tuple_codes(digits: Tensor) -> Tensor:
    """Digit tuples (N, 5) -> their base-10 numbers (N,) in [0, 100000), e.g. (0, 7, 9, 4, 5) -> 7945."""
    powers = 10 ** torch.arange(digits.shape[-1] - 1, -1, -1, device=digits.device)
    return (digits.long() * powers).sum(-1)


def side_by_side(images: Tensor) -> Tensor:
    """(N, 5, H, W) -> (N, 1, H, 5 * W): the five digits side by side, for pictures."""
    from lightning_gan.callbacks.samples import displayable  # the same layout as the sample grids

    return displayable(images)


class Sum25Dataset(DigitStackDataset):
    """Items ``(x, index)``: x (5, 28, 28) float32 in [-1, 1], the five images ``picks[index]`` of ``images``; each row
    of ``labels`` sums to 25."""


def draw_tuples(combinations: Tensor, image_labels: Tensor, num: int, seed: int, stream: int) -> tuple[Tensor, Tensor]:
    """(picks, labels) of ``num`` tuples: combinations uniform among ``combinations``, each digit's image uniform among
    the images of its class; a pure function of (``seed``, ``stream``)."""
    rng = np.random.default_rng([stream, seed & (2 ** 63 - 1)])
    labels = combinations[torch.from_numpy(rng.integers(len(combinations), size=num))]
    order = torch.argsort(image_labels, stable=True)  # image indices grouped by class
    counts = torch.bincount(image_labels, minlength=10)
    offsets = torch.cumsum(counts, 0) - counts
    u = torch.from_numpy(rng.random(size=(num, labels.shape[1])))
    within = torch.minimum((u * counts[labels]).long(), counts[labels] - 1)  # uniform in 0..count-1
    return order[offsets[labels] + within], labels


class Sum25DataModule(GameDataModule):
    """Five MNIST digits summing to 25 as (5, 28, 28) images in [-1, 1]; the held-out split has unseen combinations.

    Training tuples: ``num_train_samples`` tuples of the training combinations, drawn once from ``seed`` (an epoch is
    one shuffled pass). Held-out tuples (``val_set``, ``sample_real(split="test")``): ``num_val_samples`` tuples of
    the held-out combinations, made of MNIST test images. ``root`` is MNIST's folder, read as
    :class:`~lightning_gan.data.MNISTDataModule` reads it (same files, same one-line errors); nothing is downloaded.
    Reference and deviations: see :mod:`lightning_gan.data.sum25`.

    Attributes:
        train_combinations: int64 (4504, 5) the training combinations (known without data).
        heldout_combinations: int64 (1127, 5) the held-out combinations.
        train_labels: int64 (num_train_samples, 5) digits of each training tuple, after ``setup``.
        val_labels: int64 (num_val_samples, 5) digits of each held-out tuple, after ``setup``.

    Args:
        root: MNIST folder with the four IDX files; a relative one is relative to the repository root.
        batch_size: Micro-batch per rank and per draw.
        num_workers: DataLoader worker processes.
        seed: Seed of the tuples drawn and of the shuffling.
        num_train_samples: Training tuples (the epoch length), >= 1.
        num_val_samples: Held-out tuples, >= 0 (0: no held-out split).
        train_fraction: Share of the 5,631 combinations used for training (reference: 0.8), in (0, 1).
        split_seed: Seed of the combination split (reference: 1234); independent of ``seed``.
        digit_images: MNIST split the training tuples' digits come from: ``train`` (60,000 images) or ``test``
            (10,000 images, as the reference).
    """

    def __init__(self, root: str, batch_size: int = 64, num_workers: int = 0, seed: int = 0,
                 num_train_samples: int = 60_000, num_val_samples: int = 10_000,
                 train_fraction: float = REFERENCE_TRAIN_FRACTION, split_seed: int = REFERENCE_SPLIT_SEED,
                 digit_images: Literal["train", "test"] = "train") -> None:
        if num_train_samples < 1:
            raise ValueError(f"Invalid num_train_samples: {num_train_samples}; expected an integer >= 1")
        if num_val_samples < 0:
            raise ValueError(f"Invalid num_val_samples: {num_val_samples}; expected an integer >= 0 (0: none)")
        if not 0 < train_fraction < 1:
            raise ValueError(f"Invalid train_fraction: {train_fraction}; expected 0 < train_fraction < 1")
        if digit_images not in ("train", "test"):
            raise ValueError(f"Invalid digit_images: {digit_images!r}; expected 'train' or 'test'")
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.root = root
        self.num_train_samples = num_train_samples
        self.num_val_samples = num_val_samples
        self.train_fraction = train_fraction
        self.split_seed = split_seed
        self.digit_images = digit_images
        self.train_labels: Tensor | None = None
        self.val_labels: Tensor | None = None

    @cached_property
    def _split(self) -> tuple[Tensor, Tensor]:
        train, heldout = split_combinations(self.train_fraction, self.split_seed)
        if len(train) == 0 or len(heldout) == 0:
            raise ValueError(f"Invalid train_fraction: {self.train_fraction}; it leaves {len(train)} training and "
                             f"{len(heldout)} held-out combinations of {len(train) + len(heldout)}")
        return train, heldout

    @property
    def train_combinations(self) -> Tensor:
        return self._split[0]

    @property
    def heldout_combinations(self) -> Tensor:
        return self._split[1]

    def _load(self) -> None:
        mnist = MNISTDataModule(root=self.root)
        paths = mnist._locate()  # one line naming the folder and the four files expected
        test_x, test_y = mnist._read_split(paths[_FILES[2]], paths[_FILES[3]])
        if self.digit_images == "train":
            train_x, train_y = mnist._read_split(paths[_FILES[0]], paths[_FILES[1]])
        else:
            train_x, train_y = test_x, test_y
        train_x, test_x = train_x[:, 0], test_x[:, 0]  # (M, 28, 28) uint8
        picks, self.train_labels = draw_tuples(self.train_combinations, train_y, self.num_train_samples,
                                               self.seed, stream=0)
        self.train_set = Sum25Dataset(train_x, picks, self.train_labels)
        if self.num_val_samples > 0:
            picks, self.val_labels = draw_tuples(self.heldout_combinations, test_y, self.num_val_samples,
                                                 self.seed, stream=1)
            self.val_set = Sum25Dataset(test_x, picks, self.val_labels)

    def val_dataloader(self) -> DataLoader | list:
        return self._val_loader()

