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
requeues the job on SIGUSR1 (``--requeue.enabled auto|true|false``); everywhere, ``signals`` saves ``last.ckpt`` and
stops on SIGTERM and Ctrl-C (:class:`~lightning_gan.callbacks.SignalCheckpoint`).

Invalid settings fail before training, as one line ``lightning-gan: error: <message>`` and exit code 2: values the
classes reject at construction, bad checkpoints and contradicting resumes (:mod:`lightning_gan.resume`), and missing
or corrupt data (the data module is loaded before the Trainer is built). A run that cannot go on ends in one line
too, with an exit code a job script can act on (:mod:`lightning_gan.cli_errors`).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import warnings
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn, Optional

import torch

from lightning.pytorch import Trainer
from lightning.fabric.utilities.rank_zero import _get_rank, rank_prefixed_message
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_info

import lightning_gan.distributed  # noqa: F401  (registers strategy "game_ddp" before any Trainer is built)
from lightning_gan import distributed
from lightning_gan.callbacks import (FinalStepCheckpoint, ImageMetrics, RunConfigInCheckpoint, SampleGrid,
                                    SignalCheckpoint, SLURMRequeue)
from lightning_gan.checkpointing import with_atomic_checkpoint_io
from lightning_gan.cli_errors import (DEFAULT_ROOT_DIR, EXIT_DIVERGED, EXIT_RANK_LOST, PROG, SEED_LOGGER, USER_ERRORS,
                                      RankLost, check_strategy, check_trainer_values, fail, full_disk_ends_run,
                                      held_log_lines, last_checkpoint_note, one_line, report)
from lightning_gan.cli_help import FIT_DESCRIPTION, GANHelpFormatter
from lightning_gan.data import GameDataModule
from lightning_gan.diagnostics import SpectrumDiagnostics
from lightning_gan.game.finite import DivergenceError
from lightning_gan.module import GANModule
from lightning_gan.resume import check_model, check_trainer, given_model_values, parse_resume_allow, plan_resume
from lightning_gan.threads import choose_num_threads

__all__ = ["GANArgumentParser", "GANCLI", "main"]

#: Every subcommand of ``lightning-gan``: ``fit`` is GANCLI's, the others are dispatched by :func:`main`.
SUBCOMMANDS = ("fit", "evaluate", "sample", "adagan")
DESCRIPTION = "Train a GAN as a two-player game, score its checkpoints, draw samples from them."
EPILOG = """\
what each subcommand does:
  fit        train (or resume) a run: lightning-gan fit --config configs/quickstart.yaml
  evaluate   FID / KID / IS or toy metrics of a checkpoint: lightning-gan evaluate --ckpt PATH
  sample     write samples of a checkpoint (grid, PNGs, npz): lightning-gan sample --ckpt PATH
  adagan     train an AdaGAN mixture of GANs (each a fit run): lightning-gan adagan --config C --adagan.components 5
each has its own --help."""

#: Default of ``--collective_timeout``: long enough for a slow checkpoint write or SVRE snapshot pass of one rank.
DEFAULT_COLLECTIVE_TIMEOUT_S = 300

class GANArgumentParser(LightningArgumentParser):
    """Parse errors as one line (naming the key) instead of the full usage, like the errors raised at construction.

    Abbreviated keys are refused (``allow_abbrev=False``, also in the subcommand parsers, which jsonargparse gives the
    main parser's setting): argparse would silently read ``--model.schem`` as ``--model.scheme``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def _load_config_parser_mode(self, content: str, path: Any = "", *args: Any, **kwargs: Any) -> Any:
        """Name the config file in its errors (jsonargparse names neither it nor the option, and quotes a non-mapping
        file whole)."""
        try:
            return super()._load_config_parser_mode(content, path, *args, **kwargs)
        except TypeError as error:
            if not path:
                raise
            if str(error).startswith("Unexpected config"):
                raise TypeError(f"Invalid config file {path}: not a mapping of keys; expected top-level keys such "
                                "as trainer:, model:, data:") from error
            if str(error).startswith("Problems parsing config"):
                raise TypeError(f"Invalid config file {path}: {str(error).removeprefix('Problems parsing config: ')}"
                                ) from error
            raise

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse parses sub-parsers with errors raised, not printed
            super().error(message, ex)
        if message.startswith("unrecognized arguments:"):
            message += ("; expected keys that `lightning-gan <subcommand> --help` lists, spelled in full "
                        "(abbreviations are refused)")
        fail(message)


#: Lines that are not the user's business: library deprecations inside torchdata and Lightning, Lightning's advice
#: for modules with a validation step (GANs score in callbacks), and its advertisement for a cloud logger.
_QUIET_WARNINGS = ("'set_vital' is deprecated", "You passed in a `val_dataloader` but have no `validation_step`",
                   "`isinstance(treespec, LeafSpec)` is deprecated")
_QUIET_LOG_PREFIXES = ("💡 Tip:",)


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_QUIET_LOG_PREFIXES)


def quiet_start() -> None:
    """Filter what every run printed before its first step although no user acts on it (idempotent)."""
    for message in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=f".*{re.escape(message)}")
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLines) for f in rank_zero.filters):
        rank_zero.addFilter(_DropLines())


def default_loggers(root_dir: str | Path) -> list[Logger]:
    """TensorBoard and CSV loggers writing into the same ``<root_dir>/version_<k>`` (next free k)."""
    root = Path(root_dir)
    taken = [int(m.group(1)) for p in root.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    version = max(taken, default=-1) + 1  # picked once, so that both loggers share it
    csv = CSVLogger(save_dir=root, name="", version=version)
    return [TensorBoardLogger(save_dir=root, name="", version=version, default_hp_metric=False), csv]


def create_log_dirs(trainer: Trainer) -> None:
    """Create the CSV loggers' ``version_<k>`` folders once the run is accepted (a refused run leaves none), and before
    ``config.yaml`` lands there: CSVLogger warns (wrongly, it appends) when config.yaml got there first."""
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            logger.experiment  # noqa: B018 (rank 0 only; a no-op elsewhere)


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
        parser_kwargs = {"prog": PROG, "description": DESCRIPTION, "epilog": EPILOG,
                         "formatter_class": GANHelpFormatter,
                         "fit": {"description": FIT_DESCRIPTION}}
        parser_kwargs.update(kwargs.pop("parser_kwargs", {}))
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_class", GANArgumentParser)
        kwargs.setdefault("save_config_callback", RunConfigInCheckpoint)  # config.yaml, and the same in checkpoints
        # GANModule builds its players' optimizers itself; a top-level `optimizer:` key would only mislead.
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("seed_everything_default", 0)  # reproducible unless asked otherwise
        # Saving the state after the iteration is what we want; Lightning's advice to snapshot "pre-optimization"
        # weights targets single-optimizer manual loops.
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization",
                                category=UserWarning)
        # A hint for users who meant to run under SLURM; lightning-gan jobs do (slurm/train.sbatch), others are not.
        warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used")
        quiet_start()
        super().__init__(GANModule, GameDataModule, subclass_mode_data=True, args=args, run=run,
                         parser_kwargs=parser_kwargs, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit`` only: Lightning's validate, test and predict need steps a GAN does not define (see ``evaluate``)."""
        return {"fit": LightningCLI.subcommands()["fit"]}

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument(
            "--torch_num_threads", type=Optional[int], default=None,
            help="Intra-op CPU threads of PyTorch per process (null: $OMP_NUM_THREADS if set, else the cores available "
                 "to the process / the ranks on its node, logged at the start). Small players run fastest with 1: "
                 "several threads spin against each other on a busy machine. Also exported as OMP_NUM_THREADS, which "
                 "Lightning's DDP and the ranks it launches respect.",
        )
        parser.add_lightning_class_args(SampleGrid, "samples")
        parser.add_lightning_class_args(ImageMetrics, "metrics")
        parser.add_lightning_class_args(FinalStepCheckpoint, "checkpoint")
        parser.add_lightning_class_args(SLURMRequeue, "requeue")
        parser.add_lightning_class_args(SignalCheckpoint, "signals")
        parser.add_lightning_class_args(SpectrumDiagnostics, "diagnostics")  # off unless every_n_steps is set
        parser.add_argument(
            "--collective_timeout", type=float, default=DEFAULT_COLLECTIVE_TIMEOUT_S,
            help="Seconds a collective (gradient all-reduce, barrier) may wait for the other ranks before the job ends "
                 "naming the rank that did not answer (gloo and NCCL). Make it longer than the slowest thing one rank "
                 "does alone: a checkpoint write, an SVRE snapshot pass, a metric computation.",
        )
        parser.add_argument(
            "--resume_allow", type=list[str] | str, default=[],
            help="With --ckpt_path: changes to the checkpoint's values that this resume may make, comma-separated: "
                 "g_optimizer.lr, d_optimizer.lr (the new step size replaces the restored one), world_size (another "
                 "number of ranks, hence another global batch). Any other contradicting model value is refused.",
        )
        parser.set_defaults({
            # game_ddp works with one process too (a 1-rank process group), and it is the only DDP GANModule accepts.
            "trainer.strategy": "game_ddp",
            "trainer.default_root_dir": DEFAULT_ROOT_DIR,
            "checkpoint.save_last": True,
            "checkpoint.save_top_k": 0,  # only last.ckpt; set -1 to keep every every_n_train_steps checkpoint
            "checkpoint.every_n_train_steps": 1000,
            "checkpoint.keep_previous": 1,  # last-previous-1.ckpt: the state last.ckpt held before its last save
        })

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self._raw_args = args  # _parse_ckpt_path parses them again, for the values given explicitly
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Resolve and check ``--ckpt_path`` where LightningCLI loads it: before seeding, building or writing anything.

        ``last`` is the loadable checkpoint of the highest step (files that do not load are named and skipped); a file
        must load and come from GANModule; the model values given (config file or command line, not defaults) must
        agree with the checkpoint's, which the run then uses (see :mod:`lightning_gan.resume`). The resolved absolute
        path goes into the config, so that the Trainer loads that very file.
        """
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else None
        ckpt_path = config.get("ckpt_path") if config is not None else None
        if not ckpt_path or ckpt_path in ("best", "hpc") or str(ckpt_path).startswith("registry"):
            return
        raw = self._raw_args
        explicit = (self.parser.parse_args(raw, defaults=False) if raw is None or isinstance(raw, (list, tuple))
                    else self.parser.parse_object(raw, defaults=False))
        root = config.trainer.default_root_dir or DEFAULT_ROOT_DIR
        try:
            self._resume, model = plan_resume(
                str(ckpt_path), dirpath=config.checkpoint.dirpath or Path(root) / "checkpoints", root=root,
                given=given_model_values(explicit.get(f"{subcommand}.model")),
                allowed=parse_resume_allow(config.get("resume_allow")))
        except ValueError as error:
            fail(error)
        config.ckpt_path = str(self._resume.path) if self._resume is not None else None
        if model:
            self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)

    def _subconfig(self, config: Any) -> Any:
        return config[self.subcommand] if self.subcommand else config

    def before_instantiate_classes(self) -> None:
        config = self._subconfig(self.config)
        threads = config.get("torch_num_threads")
        if threads is not None:
            if threads < 1:
                fail(f"Invalid torch_num_threads: {threads}; expected an integer >= 1, or null for the default")
        elif not os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():  # else the user's (or the launcher's)
            choice = choose_num_threads(config.trainer.get("devices"), config.trainer.get("accelerator"),
                                        gpus_available=torch.cuda.device_count())
            threads, self._threads_note = choice.threads, choice.message()
        if threads is not None:
            os.environ["OMP_NUM_THREADS"] = str(threads)  # else game_ddp's setup resets it to cores / processes
            torch.set_num_threads(threads)
        timeout = config.get("collective_timeout")
        if timeout is not None and not timeout > 0:
            fail(f"Invalid collective_timeout: {timeout}; expected a number of seconds > 0")
        root = config.trainer.default_root_dir or DEFAULT_ROOT_DIR
        config.trainer.default_root_dir = root
        if config.checkpoint.dirpath is None:
            # Not versioned: the next invocation's ``--ckpt_path last`` looks in this very folder.
            config.checkpoint.dirpath = str(Path(root) / "checkpoints")
        if config.trainer.get("enable_progress_bar") is None and not sys.stderr.isatty():
            # Redirected to a file, the bar's carriage returns make a 400 KB log of the quickstart.
            config.trainer.enable_progress_bar = False

    def _set_seed(self) -> None:
        """Seed as LightningCLI does, without its ``Seed set to N`` line: that would come before a configuration
        error; :meth:`instantiate_classes` logs it once the run is accepted."""
        seed_log = logging.getLogger(SEED_LOGGER)
        level = seed_log.level
        seed_log.setLevel(logging.WARNING)
        try:
            super()._set_seed()
        finally:
            seed_log.setLevel(level)

    def instantiate_classes(self) -> None:
        try:
            with held_log_lines():
                seed = self._get(self.config, "seed_everything")
                if seed is not False and seed is not None:
                    logging.getLogger(SEED_LOGGER).info(rank_prefixed_message(f"Seed set to {seed}", _get_rank()))
                if getattr(self, "_threads_note", None):
                    rank_zero_info(self._threads_note)
                super().instantiate_classes()
        except USER_ERRORS as error:
            fail(error)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Trainer:
        """Build the Trainer, refusing in one line before training what would fail mid-fit or train nothing."""
        try:
            check_trainer_values(config)
            trainer = super()._instantiate_trainer(config, callbacks)
            check_strategy(trainer.strategy, config.get("strategy"))
            if isinstance(self.model, GANModule):
                self.model.check_trainer_precision(str(trainer.precision))
            if self.subcommand == "fit" and getattr(self.datamodule, "train_set", None) is not None:
                draws = self.model.scheme.draws_per_step * self.model.accumulation  # as GANModule.setup sets it
                self.datamodule.check_train_batch(trainer.world_size, draws)
        except TypeError as error:  # how Lightning refuses e.g. devices=-2, or devices=-1 on CPU
            fail(f"Invalid trainer.devices: {config.get('devices')!r}; {error}" if "devices" in str(error)
                 else f"Invalid trainer setting: {error}")
        except USER_ERRORS as error:
            fail(error)
        return trainer

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Load the data first (a missing folder then fails before anything is written), then build the Trainer."""
        resume = getattr(self, "_resume", None)
        try:
            check_model(resume, self.model)  # the players' architecture, before anything is loaded or written
        except ValueError as error:
            fail(error)
        if self.subcommand is not None and self.datamodule is not None:
            self.datamodule.setup(self.subcommand)
        trainer_config = self._subconfig(self.config_init)["trainer"]
        if trainer_config.get("logger") in (None, True):
            kwargs.setdefault("logger", default_loggers(trainer_config["default_root_dir"]))
        plugins = with_atomic_checkpoint_io(trainer_config.get("plugins"), trainer_config.get("strategy"))
        if plugins is not None:  # checkpoints written in place, atomically (unless the user chose a CheckpointIO)
            kwargs.setdefault("plugins", plugins)
        trainer = super().instantiate_trainer(**kwargs)
        batch = getattr(self.datamodule, "batch_size", None)
        try:  # the world size (global batch), and allowed new step sizes for the restored optimizers
            check_trainer(resume, trainer, batch * self.model.accumulation if batch else None)
        except ValueError as error:
            fail(error)
        timeout = self._subconfig(self.config).get("collective_timeout")
        if isinstance(trainer.strategy, distributed.GameDDPStrategy) and timeout is not None:
            trainer.strategy.collective_timeout = timedelta(seconds=timeout)  # set when training starts
        for callback in trainer.callbacks:
            if isinstance(callback, ImageMetrics):
                try:
                    callback.prepare(self.datamodule)  # feature-network weights are checked now, not after training
                except USER_ERRORS as error:
                    fail(error)
            if isinstance(callback, SpectrumDiagnostics):
                try:
                    callback.check(self.model)  # diagnostics.k against the players' parameter count
                except ValueError as error:
                    fail(error)
        create_log_dirs(trainer)
        return trainer

    def fit(self, model: GANModule, **kwargs: Any) -> None:
        """``trainer.fit``, ending a run that cannot go on in one line and an exit code a job script can act on.

        Exit codes: 3 the game diverged (the last checkpoint on disk is the last finite state); 4 a rank stopped
        answering (named, from every surviving rank); 128 + n signal n stopped the run after saving ``last.ckpt``.
        """
        trainer = self.trainer
        try:
            trainer.fit(model, **kwargs)
        except DivergenceError as error:
            report(f"error: {error}{last_checkpoint_note(trainer)}", rank=trainer.global_rank)
            raise SystemExit(EXIT_DIVERGED) from None
        except Exception as error:
            if not distributed.is_collective_failure(error):
                raise
            self._rank_lost(error)
        stopper = next((c for c in trainer.callbacks if isinstance(c, SignalCheckpoint)), None)
        if stopper is not None and stopper.stopped_by is not None:
            report(f"{stopper.stopped_by.name}: saved {stopper.saved} at step {trainer.global_step}; "
                   "resume with --ckpt_path last", rank=trainer.global_rank)
            raise SystemExit(128 + stopper.stopped_by)

    def _rank_lost(self, error: BaseException) -> NoReturn:
        """Name the ranks that do not answer, end the processes this one launched, and leave without collectives."""
        trainer = self.trainer
        timeout = self._subconfig(self.config).get("collective_timeout") or DEFAULT_COLLECTIVE_TIMEOUT_S
        missing = distributed.roll_call(wait=timedelta(seconds=min(10.0, timeout)))
        me = trainer.global_rank
        who = ", ".join(str(r) for r in missing) if missing else "unknown (all answered the roll call afterwards)"
        report(f"error: rank {me}: a collective failed at step {trainer.global_step}; rank(s) {who} did not answer "
               f"(collective_timeout {timeout:g} s): {one_line(str(error))[:200]}", every_rank=True)
        launcher = trainer.strategy.launcher
        if getattr(launcher, "procs", None):  # the ranks Lightning started from this process
            launcher.kill(signal.SIGKILL)
        raise RankLost(EXIT_RANK_LOST)


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``lightning-gan`` console script and of ``python -m lightning_gan``.

    ``lightning-gan evaluate ...`` goes to :mod:`lightning_gan.evaluate`, ``sample ...`` to :mod:`lightning_gan.sample`,
    ``adagan ...`` to :mod:`lightning_gan.adagan.run`, ``fit`` and the options to :class:`GANCLI`; any other first word
    is refused in one line.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] == ["evaluate"]:
        from lightning_gan.evaluate import main as evaluate  # here: evaluate imports this module

        evaluate(argv[1:])
        return
    if argv[:1] == ["sample"]:
        from lightning_gan.sample import main as sample  # here: sample imports this module

        sample(argv[1:])
        return
    if argv[:1] == ["adagan"]:
        from lightning_gan.adagan.run import main as adagan  # here: it imports this module

        with full_disk_ends_run():
            adagan(argv[1:])
        return
    if argv and not argv[0].startswith("-") and argv[0] not in SUBCOMMANDS:
        fail(f"Invalid subcommand: {argv[0]!r}; expected one of {', '.join(SUBCOMMANDS)} (see {PROG} --help)")
    try:
        with full_disk_ends_run():
            GANCLI(args=args)
    except RankLost as lost:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(lost.code)  # a normal exit runs torch.distributed's teardown, which waits for the lost rank


if __name__ == "__main__":
    main()
