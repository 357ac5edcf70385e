"""Data modules: training items are ``(x, index)``; loaders sample identically for any number of ranks."""

from lightning_gan.data.base import GameDataModule, IndexedTensorDataset, ShardSampler
from lightning_gan.data.cifar import CIFAR10DataModule
from lightning_gan.data.digits import DigitsDataModule
from lightning_gan.data.folder import ImageFileDataset, ImageFolderDataModule
from lightning_gan.data.mixtures import GaussianMixtureDataModule, mixture_modes
from lightning_gan.data.mnist import MNISTDataModule, read_idx
from lightning_gan.data.stacked_mnist import StackedMNISTDataModule
from lightning_gan.data.sum25 import Sum25DataModule

__all__ = [
    "CIFAR10DataModule",
    "DigitsDataModule",
    "GameDataModule",
    "GaussianMixtureDataModule",
    "ImageFileDataset",
    "ImageFolderDataModule",
    "IndexedTensorDataset",
    "MNISTDataModule",
    "ShardSampler",
    "StackedMNISTDataModule",
    "Sum25DataModule",
    "mixture_modes",
    "read_idx",
]
