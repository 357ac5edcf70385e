"""SampleGrid: what the generator (and its averages) draw, as PNG files and TensorBoard images.

A fixed latent seed makes grids of successive steps comparable. Drawing happens on rank 0 only
and runs the generators forward in eval mode: no collective is called, so other ranks never wait.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_gan.module import GeneratorChoice

__all__ = ["SampleGrid"]

GENERATOR_CHOICES: tuple[str, ...] = get_args(GeneratorChoice)


class SampleGrid(Callback):
    """Every ``every_n_steps`` game iterations and at the end of training, saves a grid of samples per generator.

    Files go to ``<trainer.log_dir or default_root_dir>/samples/<which>_step<k>.png`` and, when a
    TensorBoardLogger is attached, to its ``samples/<which>`` image tag. Images (N, C, H, W) in [-1, 1]
    become a ``make_grid`` mosaic (C other than 1 or 3: the channels side by side, one grey tile per sample);
    2-D points (N, 2) become a scatter plot, over the real modes when the datamodule has a ``modes`` attribute.
    An average the module does not keep (``uniform`` or ``ema`` switched off) is skipped.

    Args:
        every_n_steps: Draw every this many game iterations (``trainer.global_step``), >= 0; 0 draws only
            at the end of training.
        num_samples: Samples per grid, >= 1.
        generators: Any of ``live``, ``uniform``, ``ema`` (empty: no grids at all).
        seed: Seed of the fixed latent batch, so that grids of successive steps show the same z.

    Raises:
        ValueError: a value is out of range or a generator name is unknown.
    """

    def __init__(self, every_n_steps: int = 500, num_samples: int = 64,
                 generators: Sequence[GeneratorChoice] = ("live", "ema"), seed: int = 1234) -> None:
        if every_n_steps < 0:
            raise ValueError(f"Invalid every_n_steps: {every_n_steps}; expected an integer >= 0 (0: only at the end)")
        if num_samples < 1:
            raise ValueError(f"Invalid num_samples: {num_samples}; expected an integer >= 1")
        unknown = [g for g in generators if g not in GENERATOR_CHOICES]
        if unknown:
            raise ValueError(f"Invalid generators: {unknown}; expected a subset of {list(GENERATOR_CHOICES)}")
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.generators = list(dict.fromkeys(generators))
        self.seed = seed
        self.dirpath: Path | None = None
        self._last_drawn_step: int | None = None
        self._warned_shape = False

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # trainer.log_dir broadcasts from rank 0, so every rank must read it here, never on rank 0 alone.
        self.dirpath = Path(trainer.log_dir or trainer.default_root_dir) / "samples"

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0:
            self.draw(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._last_drawn_step != trainer.global_step:
            self.draw(trainer, pl_module)

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Path]:
        """Write one file per available generator (rank 0 only); returns the paths written."""
        step = trainer.global_step
        self._last_drawn_step = step
        if not trainer.is_global_zero:
            return []
        written = []
        for which in self.generators:
            try:
                pl_module.generator_for(which)  # type: ignore[operator]
            except ValueError:
                continue  # this run keeps no such average
            samples = pl_module.sample(self.num_samples, which=which, seed=self.seed)  # type: ignore[operator]
            samples = samples.detach().float().cpu()
            path = self._path(which, step)
            if samples.ndim == 4:
                image = _image_grid(samples, path, f"{which}, step {step}")
            elif samples.ndim == 2 and samples.shape[1] == 2:
                image = _scatter(samples, path, getattr(trainer.datamodule, "modes", None), f"{which}, step {step}")
            else:
                if not self._warned_shape:
                    rank_zero_warn(f"SampleGrid: cannot draw samples of shape {tuple(samples.shape)}; expected "
                                   "images (N, C, H, W) or 2-D points (N, 2)")
                    self._warned_shape = True
                return written
            written.append(path)
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image(f"samples/{which}", image, global_step=step)
        return written

    def _path(self, which: str, step: int) -> Path:
        assert self.dirpath is not None, "setup() sets dirpath"
        self.dirpath.mkdir(parents=True, exist_ok=True)
        return self.dirpath / f"{which}_step{step}.png"


def displayable(images: Tensor) -> Tensor:
    """Images with 1 or 3 channels as they are; others (e.g. Sum25DataModule's five digits as channels) with their
    channels side by side as one grey image, (N, C, H, W) -> (N, 1, H, C * W)."""
    if images.shape[1] in (1, 3):
        return images
    n, c, h, w = images.shape
    return images.permute(0, 2, 1, 3).reshape(n, 1, h, c * w)


GRID_MIN_WIDTH = 480  # px: a grid of 64 MNIST digits is 242 px wide, too small to judge on a screen
TITLE_HEIGHT = 20  # px


def _image_grid(images: Tensor, path: Path, title: str | None = None) -> Tensor:
    """Save a square-ish mosaic of images in [-1, 1]; returns it as a (C, H, W) tensor in [0, 1] (unscaled).

    The PNG is the mosaic enlarged by the smallest whole factor that makes it at least ``GRID_MIN_WIDTH`` wide
    (nearest neighbour: pixels stay pixels), under a one-line ``title`` (e.g. which generator, which step)."""
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid  # local: only needed when images are drawn

    images = displayable(images)
    aspect = images.shape[-1] / images.shape[-2]  # tiles per row for a square-ish mosaic, also of wide tiles
    nrow = max(1, math.ceil(math.sqrt(len(images) / aspect)))
    grid = make_grid(images, nrow=nrow, normalize=True, value_range=(-1.0, 1.0))
    pixels = grid.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    mosaic = Image.fromarray(pixels).convert("RGB")
    scale = max(1, math.ceil(GRID_MIN_WIDTH / mosaic.width))
    mosaic = mosaic.resize((mosaic.width * scale, mosaic.height * scale), Image.NEAREST)
    band = TITLE_HEIGHT if title else 0
    canvas = Image.new("RGB", (mosaic.width, mosaic.height + band), "white")
    canvas.paste(mosaic, (0, band))
    if title:
        ImageDraw.Draw(canvas).text((4, 4), title, fill="black")
    canvas.save(path)
    return grid


def _scatter(points: Tensor, path: Path, modes: Tensor | None, title: str) -> Tensor:
    """Save a scatter plot of 2-D samples (and the real modes); returns the rendered (3, H, W) image in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")  # no display; safe to call repeatedly
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    try:
        ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6, label="generated")
        if modes is not None:
            modes = torch.as_tensor(modes).cpu()
            ax.scatter(modes[:, 0], modes[:, 1], s=40, marker="x", c="red", label="real modes")
            lim = float(modes.abs().max()) * 1.5 + 0.5
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(title)
        ax.legend(loc="upper right", fontsize="small")
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def save_figure(fig: Any, path: Path) -> Tensor:
    """Save a matplotlib figure as ``path`` (tight layout); returns it rendered as a (3, H, W) image in [0, 1]
    (for TensorBoard). The caller closes the figure."""
    fig.tight_layout()
    fig.savefig(path)
    fig.canvas.draw()
    rgba = torch.from_numpy(np.asarray(fig.canvas.buffer_rgba()).copy())
    return rgba[..., :3].permute(2, 0, 1).float() / 255.0
