"""The ``lightning-gan`` command: LightningCLI over GANModule and any GameDataModule, with run defaults.

    lightning-gan fit --config configs/quickstart.yaml
    lightning-gan fit --config configs/mnist_extragradient.yaml --trainer.devices 4
    lightning-gan fit --config configs/quickstart.yaml --ckpt_path last       # resume
    lightning-gan fit --config configs/quickstart.yaml --print_config          # the full, resolved config

One knob places a run: ``trainer.default_root_dir`` (the run directory). Unless ``trainer.logger`` is set,
each invocation logs to TensorBoard and CSV in ``<run dir>/version_<k>/`` (with ``config.yaml`` and
``samples/``), while ``checkpoint`` writes ``<run dir>/checkpoints/last.ckpt`` (every
``checkpoint.every_n_train_steps`` iterations and at the final one), shared by all versions so that ``--ckpt_path
last`` finds the previous invocation's final state. ``trainer.strategy`` defaults to ``game_ddp``, which runs on one
device as well as on many, so ``--trainer.devices N`` just works. Inside a SLURM batch job, ``requeue`` saves and
requeues the job on SIGUSR1 (``--requeue.enabled auto|true|false``).

Invalid settings fail before training, as one line ``lightning-gan: error: <message>`` and exit code 2: values the
classes reject at construction, and missing data (the data module is loaded before the Trainer is built).
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, Optional

import torch

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

import lightning_gan.distributed  # noqa: F401  (registers strategy "game_ddp" before any Trainer is built)
from lightning_gan.callbacks import FinalStepCheckpoint, ImageMetrics, SampleGrid, SLURMRequeue
from lightning_gan.data import GameDataModule
from lightning_gan.module import GANModule

__all__ = ["GANArgumentParser", "GANCLI", "main"]

PROG = "lightning-gan"
DEFAULT_ROOT_DIR = "runs/default"
#: Exceptions that mean "the configuration is wrong" when raised while building or checking the run.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, MisconfigurationException)


def fail(error: BaseException | str) -> NoReturn:
    """Report a configuration error as one line on stderr and exit with status 2 (as argparse does)."""
    print(f"{PROG}: error: {_one_line(str(error))}", file=sys.stderr, flush=True)
    raise SystemExit(2)


_NOISE = ("Given value", "Subtypes:", "Does not validate against any of the Union subtypes", "Errors:",
          "- Expected a <class 'NoneType'>")


def _one_line(message: str) -> str:
    """A (jsonargparse) message on one line, without the lines that only repeat the input or list union types."""
    lines = (line.strip() for line in message.splitlines())
    return " ".join(line.removeprefix("- ") for line in lines if line and not line.startswith(_NOISE))


class GANArgumentParser(LightningArgumentParser):
    """Parse errors as one line (naming the key) instead of the full usage, like the errors raised at construction."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse parses sub-parsers with errors raised, not printed
            super().error(message, ex)
        fail(message)


def default_loggers(root_dir: str | Path) -> list[Logger]:
    """TensorBoard and CSV loggers writing into the same ``<root_dir>/version_<k>`` (next free k)."""
    root = Path(root_dir)
    taken = [int(m.group(1)) for p in root.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    version = max(taken, default=-1) + 1  # picked once, so that both loggers share it
    csv = CSVLogger(save_dir=root, name="", version=version)
    # Create the folder now: CSVLogger warns (wrongly, it appends) when config.yaml got there first.
    csv.experiment  # noqa: B018 (rank 0 only; a no-op elsewhere)
    return [TensorBoardLogger(save_dir=root, name="", version=version, default_hp_metric=False), csv]


class GANCLI(LightningCLI):
    """LightningCLI for :class:`~lightning_gan.module.GANModule` and any ``GameDataModule`` subclass.

    Adds always-present callbacks configured from their own groups: ``samples``
    (:class:`~lightning_gan.callbacks.SampleGrid`), ``metrics`` (:class:`~lightning_gan.callbacks.ImageMetrics`,
    off unless ``metrics.every_n_steps`` > 0), ``checkpoint`` (:class:`~lightning_gan.callbacks.FinalStepCheckpoint`,
    a ``ModelCheckpoint`` writing ``last.ckpt`` every ``checkpoint.every_n_train_steps`` game iterations and at the
    final one) and ``requeue`` (:class:`~lightning_gan.callbacks.SLURMRequeue`; with ``enabled: auto`` it is active
    inside a SLURM batch job only, so that other runs make exactly the collectives they made without it).

    Args:
        args: Command-line arguments (``None``: ``sys.argv[1:]``), a list, or a dict.
        run: Run the subcommand; ``False`` only parses and instantiates (then there are no subcommands).
        **kwargs: Further ``LightningCLI`` arguments.
    """

    def __init__(self, args: Sequence[str] | dict[str, Any] | None = None, run: bool = True, **kwargs: Any) -> None:
        parser_kwargs = {"prog": PROG, "description": "Train a GAN as a two-player game (lightning-gan). "
                                                       "Score a checkpoint: lightning-gan evaluate --help."}
        parser_kwargs.update(kwargs.pop("parser_kwargs", {}))
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_class", GANArgumentParser)
        # GANModule builds its players' optimizers itself; a top-level `optimizer:` key would only mislead.
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("seed_everything_default", 0)  # reproducible unless asked otherwise
        # Saving the state after the iteration is what we want; Lightning's advice to snapshot "pre-optimization"
        # weights targets single-optimizer manual loops.
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization",
                                category=UserWarning)
        super().__init__(GANModule, GameDataModule, subclass_mode_data=True, args=args, run=run,
                         parser_kwargs=parser_kwargs, **kwargs)

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument(
            "--torch_num_threads", type=Optional[int], default=None,
            help="Intra-op CPU threads of PyTorch per process (null: PyTorch's default; under DDP, Lightning's cores / "
                 "processes). Small players run fastest with 1: several threads spin against each other on a busy "
                 "machine. Also exported as OMP_NUM_THREADS, which Lightning's DDP and the ranks it launches respect.",
        )
        parser.add_lightning_class_args(SampleGrid, "samples")
        parser.add_lightning_class_args(ImageMetrics, "metrics")
        parser.add_lightning_class_args(FinalStepCheckpoint, "checkpoint")
        parser.add_lightning_class_args(SLURMRequeue, "requeue")
        parser.set_defaults({
            # game_ddp works with one process too (a 1-rank process group), and it is the only DDP GANModule accepts.
            "trainer.strategy": "game_ddp",
            "trainer.default_root_dir": DEFAULT_ROOT_DIR,
            "checkpoint.save_last": True,
            "checkpoint.save_top_k": 0,  # only last.ckpt; set -1 to keep every every_n_train_steps checkpoint
            "checkpoint.every_n_train_steps": 1000,
        })

    def _subconfig(self, config: Any) -> Any:
        return config[self.subcommand] if self.subcommand else config

    def before_instantiate_classes(self) -> None:
        config = self._subconfig(self.config)
        threads = config.get("torch_num_threads")
        if threads is not None:
            if threads < 1:
                fail(f"Invalid torch_num_threads: {threads}; expected an integer >= 1, or null for PyTorch's default")
            os.environ["OMP_NUM_THREADS"] = str(threads)  # else game_ddp's setup resets it to cores / processes
            torch.set_num_threads(threads)
        root = config.trainer.default_root_dir or DEFAULT_ROOT_DIR
        config.trainer.default_root_dir = root
        if config.checkpoint.dirpath is None:
            # Not versioned: the next invocation's ``--ckpt_path last`` looks in this very folder.
            config.checkpoint.dirpath = str(Path(root) / "checkpoints")

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except USER_ERRORS as error:
            fail(error)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Load the data first (a missing folder then fails before anything is written), then build the Trainer."""
        if self.subcommand is not None and self.datamodule is not None:
            self.datamodule.setup(self.subcommand)
        trainer_config = self._subconfig(self.config_init)["trainer"]
        if trainer_config.get("logger") in (None, True):
            kwargs.setdefault("logger", default_loggers(trainer_config["default_root_dir"]))
        trainer = super().instantiate_trainer(**kwargs)
        for callback in trainer.callbacks:
            if isinstance(callback, ImageMetrics):
                try:
                    callback.prepare(self.datamodule)  # feature-network weights are checked now, not after training
                except USER_ERRORS as error:
                    fail(error)
        return trainer


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``lightning-gan`` console script and of ``python -m lightning_gan``.

    ``lightning-gan evaluate ...`` goes to :mod:`lightning_gan.evaluate`; everything else to :class:`GANCLI`.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] == ["evaluate"]:
        from lightning_gan.evaluate import main as evaluate  # here: evaluate imports this module

        evaluate(argv[1:])
        return
    GANCLI(args=args)


if __name__ == "__main__":
    main()
