"""``lightning-gan sample``: samples of one of a checkpoint's generators, as a grid PNG, one PNG each, or an npz.

    lightning-gan sample --ckpt runs/quickstart/checkpoints/last.ckpt
    lightning-gan sample --ckpt last.ckpt --generator live --num_samples 1000 --format npz --out samples/

The run is rebuilt as ``evaluate`` rebuilds it (:mod:`lightning_gan.run_files`: the config stored in the checkpoint,
else the run folder's newest; ``--config`` overrides). Images (N, C, H, W) in [-1, 1] become a ``make_grid`` mosaic
(``grid``), one PNG per sample (``png``), or ``samples`` (float32, as generated) and ``images`` (uint8, N x H x W x C)
in an npz; 2-D points become a scatter plot over the data's modes (``grid``) or ``samples`` in an npz. The latents
come from ``--seed`` alone, so a sample set can be drawn again. Bad input is one line and exit 2, checked before
anything is written; the files written are printed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lightning_gan.callbacks.samples import _image_grid, _scatter, displayable
from lightning_gan.cli_errors import PROG, USER_ERRORS, OneLineArgumentParser, fail
from lightning_gan.module import GANModule
from lightning_gan.run_files import (
    check_overrides,
    check_run_arguments,
    kept_generators,
    load_run,
    load_weights,
    read_checkpoint,
    run_config,
)

__all__ = ["FORMATS", "build_parser", "main", "sample"]

FORMATS = ("grid", "png", "npz")


def build_parser() -> argparse.ArgumentParser:
    """The options of ``lightning-gan sample`` (abbreviations off: ``--data.*`` overrides pass through)."""
    p = OneLineArgumentParser(prog=f"{PROG} sample", allow_abbrev=False,
                description="Write samples of a trained run's generator: a grid PNG (a scatter plot for 2-D "
                            "points), one PNG per sample, or an .npz array file. Further --model.* / --data.* "
                            "arguments override the run's config.")
    p.add_argument("--ckpt", required=True, type=Path, metavar="PATH", help="checkpoint written by `lightning-gan fit`")
    p.add_argument("--generator", choices=("live", "uniform", "ema"),
                   help="which generator (default: ema if the run keeps it, else live)")
    p.add_argument("--num_samples", "--num-samples", dest="num_samples", type=int, default=64, metavar="N",
                   help="number of samples (default 64)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the latents (default 0)")
    p.add_argument("--format", choices=FORMATS, default="grid",
                   help="grid: one PNG; png: one PNG per sample (images only); npz: an array file (default grid)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="folder to write into, created if absent (default: <ckpt dir>/<ckpt stem>_samples)")
    p.add_argument("--config", type=Path, metavar="YAML",
                   help="the run's config.yaml (default: the one stored in the checkpoint, else the newest "
                        "version_<k>/config.yaml)")
    p.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int, default=256, metavar="B",
                   help="latents per generator forward (default 256); the samples do not depend on it")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the generator runs (default: cuda when available)")
    return p


def _check_arguments(args: argparse.Namespace, overrides: list[str]) -> None:
    """Everything checkable from the arguments alone, before the checkpoint is read."""
    check_overrides(overrides, "sample")
    for name in ("num_samples", "batch_size"):
        if getattr(args, name) < 1:
            fail(f"Invalid --{name}: {getattr(args, name)}; expected an integer >= 1")
    check_run_arguments(args.device, args.ckpt, args.config)
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        fail(f"Invalid --out: {args.out} is a file; expected a folder (created if absent)")


def _generator(asked: str | None, module: GANModule) -> str:
    """The asked generator, checked against the run; default ema when kept, else live."""
    kept = kept_generators(module)
    if asked is None:
        return "ema" if "ema" in kept else "live"
    if asked not in kept:
        raise ValueError(f"Invalid --generator: {asked!r}; this run keeps {', '.join(kept)} (averages come from the "
                         f"run's uniform_average / ema_decay)")
    return asked


def _kind(module: GANModule, which: str, fmt: str) -> str:
    """``images`` or ``points``, from one sample; refuses outputs and formats that do not fit."""
    shape = tuple(module.sample(1, which).shape[1:])  # type: ignore[arg-type]
    kind = "images" if len(shape) == 3 else "points" if shape == (2,) else None
    if kind is None:
        raise ValueError(f"Cannot write samples of shape {shape}; expected images (C, H, W) or 2-D points (2,)")
    if kind == "points" and fmt == "png":
        raise ValueError("Invalid --format: 'png' for 2-D points (one file per point); expected grid (a scatter "
                         "plot) or npz")
    return kind


def _write(samples: Tensor, kind: str, fmt: str, out: Path, stem: str, title: str, modes: Tensor | None) -> Path:
    """Writes the samples; returns the file (grid, npz) or folder (png) written."""
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "npz":
        path = out / f"{stem}.npz"
        arrays = {"samples": samples.numpy()}
        if kind == "images":
            arrays["images"] = _uint8(samples).permute(0, 2, 3, 1).numpy()
        np.savez(path, **arrays)
        return path
    if fmt == "grid":
        path = out / f"{stem}.png"
        if kind == "images":
            _image_grid(samples, path, title)
        else:
            _scatter(samples, path, modes, title)
        return path
    from torchvision.utils import save_image  # local: only needed for single images

    folder = out / stem
    folder.mkdir(exist_ok=True)
    width = len(str(len(samples) - 1))
    for i, image in enumerate(displayable(samples)):
        save_image(image, folder / f"{i:0{width}d}.png", normalize=True, value_range=(-1.0, 1.0))
    return folder


def _uint8(images: Tensor) -> Tensor:
    """[-1, 1] -> {0, ..., 255}, rounded as torchvision's save_image rounds."""
    return ((images.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8)


def sample(args: argparse.Namespace, overrides: Sequence[str] = ()) -> Path:
    """Draws and writes the samples described by the parsed arguments; returns what it wrote."""
    ckpt = args.ckpt.resolve()
    checkpoint = read_checkpoint(ckpt)
    config = run_config(ckpt, args.config, checkpoint)
    module, datamodule = load_run(ckpt, config, overrides)
    which = _generator(args.generator, module)
    progress = load_weights(module, ckpt, config, checkpoint)
    module.to(args.device)
    kind = _kind(module, which, args.format)
    samples = module.sample(args.num_samples, which, args.seed,  # type: ignore[arg-type]
                            batch_size=args.batch_size).detach().float().cpu()
    step = progress["global_step"]
    out = args.out or ckpt.with_name(f"{ckpt.stem}_samples")
    path = _write(samples, kind, args.format, out, f"{which}_step{step}", f"{which}, step {step}",
                  getattr(datamodule, "modes", None))
    what = f"{args.num_samples} PNG files" if args.format == "png" else args.format
    print(f"{PROG} sample: wrote {path} ({what}, {args.num_samples} samples of {which}, step {step}, seed "
          f"{args.seed}; config {config.label})", flush=True)
    return path


def main(argv: Sequence[str]) -> Path:
    """``lightning-gan sample ARGV`` (``argv`` without the word ``sample``); returns the file or folder written."""
    args, overrides = build_parser().parse_known_args(list(argv))
    _check_arguments(args, overrides)
    try:
        return sample(args, overrides)
    except USER_ERRORS as error:
        fail(error)


if __name__ == "__main__":
    main(sys.argv[1:])
