"""2-D Gaussian mixtures, the standard mode-collapse benchmarks.

- ``ring``: 8 modes evenly spaced on a circle of radius 2, std 0.02 (the defaults: Metz et al. 2017,
  "Unrolled GANs", appendix). The mode-collapse protocol of VEEGAN (Srivastava et al. 2017) and PacGAN
  (Lin et al. 2018) uses the same shape at half the scale: radius 1, std 0.01 (``MODE_PROTOCOL``).
- ``grid``: 25 modes at {-4, -2, 0, 2, 4}^2, std 0.05 (VEEGAN; PacGAN, Lin et al. 2018).

``MODE_PROTOCOL`` holds the PacGAN reference code's values (github fjxmlzn/PacGAN,
synthetic_data_experiments/2D{Ring,Grid}_GAN&PacGAN/config.py, PacGAN/pacgan/extensions.py): data, number of
generated samples scored and the mode rule; bench/mode_coverage.py and configs/protocol_{ring,grid}.yaml use them.

Modes are picked uniformly. The data are generated once from ``seed``, so every rank holds
the same set; the held-out split is drawn after the training samples from the same stream.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_gan.data.base import GameDataModule, IndexedTensorDataset

__all__ = ["MODE_PROTOCOL", "GaussianMixtureDataModule", "mixture_modes"]

_DEFAULT_STD = {"ring": 0.02, "grid": 0.05}

# The mode-collapse protocol of VEEGAN / PacGAN, from the PacGAN code (fjxmlzn/PacGAN, synthetic_data_experiments):
# ring: MEANS = (cos(2 pi i / 8), sin(2 pi i / 8)), VARIANCES = 0.01 ** 2 I (2DRing_GAN&PacGAN/config.py);
# grid: MEANS = {-4, -2, 0, 2, 4}^2, VARIANCES = 0.05 ** 2 I (2DGrid_GAN&PacGAN/config.py); 2500 samples scored
# ("num_log_figure_sample"); high quality: Mahalanobis distance to the nearest mean < 3 ("dis_thre=3"); a mode is
# captured when at least one high-quality sample has it as nearest mean (numpy.nonzero of the per-mode counts,
# PacGAN/pacgan/extensions.py MetricLogger). VEEGAN's text (akashgit/VEEGAN index.md) states the same rule and N.
MODE_PROTOCOL: dict = {
    "ring": {"kind": "ring", "radius": 1.0, "std": 0.01},
    "grid": {"kind": "grid", "grid_step": 2.0, "std": 0.05},
    "num_eval_samples": 2500,
    "num_std": 3.0,
    "min_samples": 1,
}


def mixture_modes(kind: str, radius: float = 2.0, grid_step: float = 2.0) -> Tensor:
    """Mode centres, shape (K, 2): 8 on a circle of ``radius``, or a 5x5 grid with spacing ``grid_step`` around 0."""
    if kind == "ring":
        angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        modes = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    elif kind == "grid":
        axis = (torch.arange(5, dtype=torch.float64) - 2) * grid_step
        modes = torch.cartesian_prod(axis, axis)
    else:
        raise ValueError(f"Invalid kind: {kind!r}; expected 'ring' or 'grid'")
    return modes.to(torch.float32)


class GaussianMixtureDataModule(GameDataModule):
    """Samples of a 2-D Gaussian mixture; items ``(x, index)`` with x of shape (2,).

    Attributes:
        modes: Mode centres, shape (K, 2) (toy metrics count covered modes from these).
        std: Per-coordinate standard deviation of every mode.

    Args:
        kind: ``"ring"`` (8 modes) or ``"grid"`` (25 modes).
        num_samples: Size of the training set.
        num_val_samples: Size of the held-out set (0 for none).
        std: Std of every mode; None picks the literature value (0.02 ring, 0.05 grid).
        radius: Ring radius (literature: 2).
        grid_step: Spacing of the grid modes (literature: 2, i.e. {-4, ..., 4}).
        batch_size: Micro-batch per rank and per draw.
        num_workers: DataLoader worker processes.
        seed: Seed of the generated data and of the shuffling.
        on_device: Keep the training set on the trainer's device and gather batches there (the same batches).
    """

    def __init__(self, kind: Literal["ring", "grid"] = "ring", num_samples: int = 100_000,
                 num_val_samples: int = 10_000, std: float | None = None, radius: float = 2.0,
                 grid_step: float = 2.0, batch_size: int = 64, num_workers: int = 0, seed: int = 0,
                 on_device: bool = False) -> None:
        if kind not in _DEFAULT_STD:
            raise ValueError(f"Invalid kind: {kind!r}; expected 'ring' or 'grid'")
        if num_samples < 1:
            raise ValueError(f"Invalid num_samples: {num_samples}; expected an integer >= 1")
        if num_val_samples < 0:
            raise ValueError(f"Invalid num_val_samples: {num_val_samples}; expected an integer >= 0")
        if std is not None and std <= 0:
            raise ValueError(f"Invalid std: {std}; expected a positive number or None")
        if radius <= 0:
            raise ValueError(f"Invalid radius: {radius}; expected a positive number")
        if grid_step <= 0:
            raise ValueError(f"Invalid grid_step: {grid_step}; expected a positive number")
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, on_device=on_device)
        self.kind = kind
        self.num_samples = num_samples
        self.num_val_samples = num_val_samples
        self.std: float = _DEFAULT_STD[kind] if std is None else float(std)
        self.modes: Tensor = mixture_modes(kind, radius=radius, grid_step=grid_step)

    def _draw(self, n: int, generator: torch.Generator) -> Tensor:
        which = torch.randint(len(self.modes), (n,), generator=generator)
        return self.modes[which] + self.std * torch.randn(n, 2, generator=generator)

    def _load(self) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        self.train_set = IndexedTensorDataset(self._draw(self.num_samples, generator))
        if self.num_val_samples > 0:
            self.val_set = IndexedTensorDataset(self._draw(self.num_val_samples, generator))

    def val_dataloader(self) -> DataLoader | list:
        return self._val_loader()
