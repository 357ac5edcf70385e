"""A trained run from its checkpoint: which config built it, the module and data module rebuilt, the weights loaded.

Shared by ``lightning-gan evaluate`` and ``lightning-gan sample``. A checkpoint holds no player architectures (GANModule
leaves them out of its hyper-parameters), so the module is rebuilt from the run's config through
:class:`~lightning_gan.cli.GANCLI` (validated as ``fit`` validates), then the weights are loaded strictly. The config
is, in this order: ``--config`` when given; the one ``fit`` stored in the checkpoint
(:class:`~lightning_gan.callbacks.RunConfigInCheckpoint`), which survives moves and other runs in the same folder;
for older checkpoints, the newest ``<run dir>/version_<k>/config.yaml`` next to ``<run dir>/checkpoints/``.
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI

from lightning_gan import checkpointing
from lightning_gan.callbacks.run_config import CONFIG_KEY
from lightning_gan.cli import GANCLI
from lightning_gan.cli_errors import PROG, fail
from lightning_gan.data import GameDataModule
from lightning_gan.module import GANModule

__all__ = ["RunConfig", "check_overrides", "find_config", "kept_generators", "load_run", "load_weights",
           "read_checkpoint", "run_config"]

#: Arguments of the ``fit`` subcommand itself (ckpt_path, ...): in a run's config.yaml, unknown to a run=False parser.
_FIT_ONLY = [name for name in inspect.signature(Trainer.fit).parameters
             if name != "self" and name not in LightningCLI.subcommands()["fit"]]


@dataclass(frozen=True)
class RunConfig:
    """The YAML a run was built from, and where it came from (``path`` None: stored in the checkpoint)."""

    text: str
    path: Path | None
    label: str  # for messages: the file, or "stored in <ckpt>"


def check_overrides(overrides: Sequence[str], command: str) -> None:
    """Only ``--model.*`` / ``--data.*`` config overrides may follow a command's own options."""
    bad = [token for token in overrides if token.startswith("-") and not token.startswith(("--model.", "--data."))]
    if bad or (overrides and not overrides[0].startswith("-")):
        fail(f"unrecognized arguments: {' '.join(bad or overrides[:1])}; only --model.* and --data.* config "
             f"overrides may follow the {command} options")


def check_run_arguments(device: str, ckpt: Path, config: Path | None) -> None:
    """The arguments every command on a run's checkpoint takes (evaluate, sample), checked before it is read."""
    if device == "cuda" and not torch.cuda.is_available():
        fail("Invalid --device: 'cuda'; CUDA is not available on this machine, use --device cpu")
    if not ckpt.is_file():
        fail(f"Checkpoint {ckpt} not found; expected a .ckpt file written by `{PROG} fit` "
             f"(e.g. <run dir>/checkpoints/last.ckpt)")
    if config is not None and not config.is_file():
        fail(f"Config {config} not found; expected the config.yaml that `{PROG} fit` wrote into "
             f"<run dir>/version_<k>/")


def read_checkpoint(ckpt: Path) -> dict[str, Any]:
    """The checkpoint as written by ``fit``, read without unpickling code (weights_only)."""
    try:
        return checkpointing.read_checkpoint(ckpt)
    except ValueError as error:
        raise ValueError(f"Invalid checkpoint {ckpt}: {error}; expected a checkpoint written by `{PROG} fit`"
                         ) from error


def find_config(ckpt: Path) -> Path:
    """The newest ``version_<k>/config.yaml`` of the checkpoint's run (``<run dir>/checkpoints/x.ckpt``)."""
    run_dir = ckpt.resolve().parent
    if run_dir.name == "checkpoints":
        run_dir = run_dir.parent
    versions = [(int(m.group(1)), p) for p in run_dir.glob("version_*/config.yaml")
                if (m := re.fullmatch(r"version_(\d+)", p.parent.name))]
    if not versions:
        raise FileNotFoundError(f"No config found for checkpoint {ckpt}: it stores none (written before configs were "
                                f"stored) and there is no {run_dir}/version_<k>/config.yaml; pass the run's config "
                                f"with --config")
    return max(versions)[1]


def run_config(ckpt: Path, given: Path | None, checkpoint: dict[str, Any]) -> RunConfig:
    """``--config`` if given, else the config stored in the checkpoint, else the newest one of its run folder."""
    if given is not None:
        path = given.resolve()
    elif isinstance(checkpoint.get(CONFIG_KEY), str):
        return RunConfig(checkpoint[CONFIG_KEY], None, f"stored in {ckpt}")
    else:
        path = find_config(ckpt)
    return _read(path)


def _read(path: Path) -> RunConfig:
    try:
        return RunConfig(path.read_text(), path, str(path))
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"Invalid config {path}: cannot be read ({error})") from error


class _BuildCLI(GANCLI):
    """GANCLI that builds module and data module only: no Trainer (it would open a logger's version folder)."""

    def instantiate_trainer(self, **kwargs: Any) -> None:  # type: ignore[override]
        return None


def load_run(ckpt: Path, config: Path | RunConfig, overrides: Sequence[str] = ()) -> tuple[GANModule, GameDataModule]:
    """Module and data module from ``config`` (validated as ``fit`` does, data not loaded yet), no weights yet."""
    if isinstance(config, Path):
        config = _read(config)
    try:
        settings = yaml.safe_load(config.text)
    except yaml.YAMLError as error:
        raise ValueError(f"Invalid config {config.label}: cannot be read as YAML ({error})") from error
    if not isinstance(settings, dict) or "model" not in settings:
        raise ValueError(f"Invalid config {config.label}: expected the config.yaml that `{PROG} fit` writes")
    for key in _FIT_ONLY:
        settings.pop(key, None)  # e.g. ckpt_path: not an argument of the run=False parser
    args = ["--config", yaml.safe_dump(settings), "--seed_everything=false", "--torch_num_threads=null", *overrides]
    with warnings.catch_warnings():  # it warns that `args` and sys.argv (`evaluate ...`) are both given
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        cli = _BuildCLI(args=args, run=False)
    return cli.model, cli.datamodule


def load_weights(module: GANModule, ckpt: Path, config: Path | RunConfig,
                 checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Loads the checkpoint's weights into ``module`` strictly; returns step, F-evaluations and images seen."""
    checkpoint = read_checkpoint(ckpt) if checkpoint is None else checkpoint
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        label = config.label if isinstance(config, RunConfig) else str(config)
        raise ValueError(f"Checkpoint {ckpt} does not match config {label}: "
                         f"{detail[:400]}{'...' if len(detail) > 400 else ''}; pass the run's own config with "
                         f"--config") from error
    state = checkpoint["lightning_gan"]
    return {"global_step": int(checkpoint.get("global_step", 0)), "evaluations": state.get("evaluations"),
            "images_seen": state.get("images_seen")}


def kept_generators(module: GANModule) -> list[str]:
    """``live`` and the averages this run keeps."""
    return ["live", *(g for g in ("uniform", "ema") if module.generator_averages.get(g) is not None)]
