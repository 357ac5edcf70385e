"""``lightning-gan adagan``: the AdaGAN outer loop, resumable, every component an ordinary ``fit`` run.

    lightning-gan adagan --config configs/protocol_grid.yaml --adagan.components 5 --trainer.max_steps 1000 \\
        --trainer.default_root_dir runs/adagan_grid
    lightning-gan evaluate --ckpt runs/adagan_grid/mixture.ckpt --metrics modes --num-samples 2500 --generator live

Step t = 0, 1, ..., T - 1 (the reference's ``AdaGan.make_step``, tolstikhin/adagan ``adagan.py``):

1. beta_t = 1 for t = 0, then ``uniform`` 1 / (t + 1) or ``constant`` beta_constant (:mod:`.weights`);
2. for t >= 1, the data weights: a classifier tells the training points from N samples of the mixture so far
   (:mod:`.classifier`), h = (1 - D) / (D + 1e-8), w = the paper's closed form (``theory_star``), saved to
   ``component_<t>/data_weights.pt``;
3. component t is a ``fit`` run with every ``fit`` option given here (scheme, loss, DDP, checkpoints), in
   ``component_<t>/`` (its own ``checkpoints/last.ckpt``, ``version_<k>/``), on minibatches drawn with the data
   weights (:mod:`.component`, :mod:`.sampler`); seeds ``seed_everything + t`` and ``model.seed + t`` (the
   reference starts each component from a fresh random initialisation);
4. the mixture becomes ((1 - beta_t) * old weights, beta_t); ``adagan.json`` (the state: settings, the components
   trained, their steps, the mixture weights) and ``mixture.ckpt`` are rewritten (atomically).

``mixture.ckpt`` is an ordinary GANModule checkpoint whose generator is a
:class:`~lightning_gan.adagan.mixture.MixtureGenerator` holding the components and the weights (its config is the run's
with ``model.generator`` replaced and the averages off: the mixture is its ``live`` generator), so ``evaluate`` and
``sample`` take it unchanged; its ``global_step`` is the game iterations of all components together.

Resume: run the same command again. Components that ``adagan.json`` lists as trained are kept; the data weights of the
current component are reused if saved; the current component resumes from its own ``last.ckpt`` (``--ckpt_path last``,
checked as ``fit`` checks a resume), so a killed run ends as the uninterrupted one would. A larger
``--adagan.components`` adds components to a finished run; other AdaGAN settings must be the run's.

``--adagan.monitor_every K`` logs the mode metrics of the mixture being built while each component trains
(:mod:`.monitor`).

One process runs everything on one device; with several devices or nodes each component is started as its own
command (``python -m lightning_gan.adagan.component ... fit ...``), which Lightning's launcher runs on every rank.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from lightning_gan.adagan.classifier import ClassifierConfig, mixture_samples, prob_real
from lightning_gan.adagan.component import ComponentCLI
from lightning_gan.adagan.mixture import MixtureGenerator
from lightning_gan.adagan.weights import (
    BETA_RULES,
    density_ratios,
    mixture_weights_after,
    next_mixture_weight,
    theory_star_weights,
)
from lightning_gan.callbacks.run_config import CONFIG_KEY
from lightning_gan.checkpointing import atomic_save, read_checkpoint
from lightning_gan.cli import GANCLI
from lightning_gan.cli_errors import PROG, USER_ERRORS, OneLineArgumentParser, fail

__all__ = ["AdaGANSettings", "build_parser", "main", "run"]

STATE_FILE = "adagan.json"
MIXTURE_FILE = "mixture.ckpt"
GENERATORS = ("live", "uniform", "ema")
#: Data weights of the components after the first: the paper's, or none (the ensembling control).
REWEIGHTINGS = ("theory_star", "none")
LAUNCHES = ("auto", "in_process", "subprocess")
#: Options the run sets per component: given to ``adagan`` they would send every component to one place.
_REFUSED = ("--ckpt_path", "--checkpoint.dirpath")

DESCRIPTION = """\
AdaGAN (Tolstikhin et al., NeurIPS 2017): train T GANs one after another, each on the training data reweighted
towards what the mixture of the previous ones misses, and keep their mixture. Every component is an ordinary `fit` run
with the options given here (--config, --trainer.*, --model.*, --data.*; see `lightning-gan fit --help`) in
<trainer.default_root_dir>/component_<t>/; the state is <trainer.default_root_dir>/adagan.json and the mixture
<trainer.default_root_dir>/mixture.ckpt, which `lightning-gan evaluate` and `sample` take. trainer.max_steps is per
component. Run the same command again to resume a stopped run (mid-component from that component's last.ckpt)."""


@dataclass(frozen=True)
class AdaGANSettings:
    """The ``--adagan.*`` options."""

    components: int = 1
    beta: str = "uniform"
    reweighting: str = "theory_star"
    beta_constant: float = 0.5
    generator: str = "live"
    classifier_epochs: int = 5
    classifier_batch_size: int | None = None
    classifier_lr: float = 8e-4
    classifier_beta1: float = 0.5
    launch: str = "auto"
    monitor_every: int = 0

    def validate(self) -> None:
        if self.components < 1:
            raise ValueError(f"Invalid adagan.components: {self.components}; expected an integer >= 1")
        if self.beta not in BETA_RULES:
            raise ValueError(f"Invalid adagan.beta: {self.beta!r}; expected one of {', '.join(BETA_RULES)}")
        if self.reweighting not in REWEIGHTINGS:
            raise ValueError(f"Invalid adagan.reweighting: {self.reweighting!r}; expected one of "
                             f"{', '.join(REWEIGHTINGS)}")
        if not 0.0 < self.beta_constant <= 1.0:
            raise ValueError(f"Invalid adagan.beta_constant: {self.beta_constant}; expected 0 < beta_constant <= 1")
        if self.generator not in GENERATORS:
            raise ValueError(f"Invalid adagan.generator: {self.generator!r}; expected one of {', '.join(GENERATORS)}")
        if self.monitor_every < 0:
            raise ValueError(f"Invalid adagan.monitor_every: {self.monitor_every}; expected an integer >= 1, or 0 "
                             "for off")
        if self.launch not in LAUNCHES:
            raise ValueError(f"Invalid adagan.launch: {self.launch!r}; expected one of {', '.join(LAUNCHES)}")
        self.classifier().validate()

    def classifier(self) -> ClassifierConfig:
        return ClassifierConfig(epochs=self.classifier_epochs, batch_size=self.classifier_batch_size,
                                lr=self.classifier_lr, beta1=self.classifier_beta1)

    def recorded(self) -> dict[str, Any]:
        """What a resumed run must share with the run it resumes (``components`` may grow)."""
        values = asdict(self)
        values.pop("components")
        values.pop("launch")
        values.pop("monitor_every")
        return values


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog=f"{PROG} adagan", description=DESCRIPTION, allow_abbrev=False,
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              usage=f"{PROG} adagan [-h] [--config YAML] [--<fit option> VALUE ...] "
                                    "[--adagan.<option> VALUE ...]")
    g = p.add_argument_group("adagan")
    g.add_argument("--adagan.components", dest="components", type=int, default=1, metavar="T",
                   help="number of components T >= 1 (default 1: one plain GAN)")
    g.add_argument("--adagan.beta", dest="beta", default="uniform", metavar="RULE",
                   help="mixture weight of component t >= 1: uniform (1/(t+1), all components end at 1/T) or constant "
                        "(beta_constant) (default uniform)")
    g.add_argument("--adagan.reweighting", dest="reweighting", default="theory_star", metavar="RULE",
                   help="data weights of components t >= 1: theory_star (the paper's) or none (uniform data: "
                        "the ensembling control) (default theory_star)")
    g.add_argument("--adagan.beta_constant", dest="beta_constant", type=float, default=0.5, metavar="B",
                   help="beta of the constant rule, 0 < B <= 1 (default 0.5)")
    g.add_argument("--adagan.generator", dest="generator", default="live", metavar="NAME",
                   help="which generator of each component joins the mixture: live, uniform or ema (default live)")
    g.add_argument("--adagan.classifier_epochs", dest="classifier_epochs", type=int, default=5, metavar="E",
                   help="epochs of the real-vs-mixture classifier (default 5)")
    g.add_argument("--adagan.classifier_batch_size", dest="classifier_batch_size", type=int, metavar="B",
                   help="its minibatch (default: data.batch_size)")
    g.add_argument("--adagan.classifier_lr", dest="classifier_lr", type=float, default=8e-4, metavar="LR",
                   help="its Adam step size (default 0.0008)")
    g.add_argument("--adagan.classifier_beta1", dest="classifier_beta1", type=float, default=0.5, metavar="B1",
                   help="its Adam beta1 (default 0.5)")
    g.add_argument("--adagan.launch", dest="launch", default="auto", metavar="HOW",
                   help="auto (one device: in this process; several: one command per component), in_process or "
                        "subprocess (default auto)")
    g.add_argument("--adagan.monitor_every", dest="monitor_every", type=int, default=0, metavar="K",
                   help="every K iterations of a component, log the mode metrics of the mixture it makes (2-D "
                        "mixture data): adagan/mixture_modes, adagan/mixture_high_quality (default 0: off)")
    return p


def split_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(--adagan.* tokens with their values, the fit arguments)``; ``-h``/``--help`` go with the former."""
    mine, rest = [], []
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        if item.startswith("--adagan.") or item in ("-h", "--help"):
            mine.append(item)
            if "=" not in item and item not in ("-h", "--help") and i + 1 < len(items):
                mine.append(items[i + 1])
                i += 1
        else:
            rest.append(item)
        i += 1
    return mine, rest


class _BuildCLI(GANCLI):
    """GANCLI that builds module and data module only (no Trainer, nothing written): the arguments' check."""

    def instantiate_trainer(self, **kwargs: Any) -> None:  # type: ignore[override]
        return None


@dataclass
class _Plan:
    root: Path
    fit_args: list[str]
    seed: int
    model_seed: int
    data_seed: int
    max_steps: int
    in_process: bool
    module: Any
    datamodule: Any


def _plan(settings: AdaGANSettings, rest: list[str]) -> _Plan:
    refused = [a for a in rest if a.split("=", 1)[0] in _REFUSED]
    if refused:
        fail(f"Invalid {refused[0].split('=', 1)[0][2:]}: an AdaGAN run places and resumes its components itself "
             f"(<trainer.default_root_dir>/component_<t>/checkpoints); expected no {refused[0].split('=', 1)[0]}")
    argv = sys.argv
    sys.argv = [PROG]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            cli = _BuildCLI(args=rest, run=False)  # refuses bad values as `fit` does: one line, exit 2
    finally:
        sys.argv = argv
    config = cli.config
    kept = ["live", *(g for g in ("uniform", "ema") if cli.model.generator_averages.get(g) is not None)]
    if settings.generator not in kept:
        fail(f"Invalid adagan.generator: {settings.generator!r}; the components keep {', '.join(kept)} (averages come "
             "from model.uniform_average / model.ema_decay)")
    seed = config.get("seed_everything")
    seed = 0 if seed is None or isinstance(seed, bool) else int(seed)
    trainer = config.trainer
    devices, nodes = trainer.get("devices"), trainer.get("num_nodes") or 1
    one = nodes == 1 and (devices in (1, "1") or (isinstance(devices, list) and len(devices) == 1)
                          or (devices in ("auto", None) and not torch.cuda.is_available()))
    in_process = settings.launch == "in_process" or (settings.launch == "auto" and one)
    try:
        cli.datamodule.setup("fit")  # the data, loaded now: missing data fails before anything is written
    except USER_ERRORS as error:
        fail(error)
    if settings.monitor_every and getattr(cli.datamodule, "modes", None) is None:
        fail(f"Invalid adagan.monitor_every: {settings.monitor_every}; the mode metrics need 2-D mixture data "
             f"(GaussianMixtureDataModule), not {type(cli.datamodule).__name__}; expected 0")
    return _Plan(root=Path(trainer.default_root_dir), fit_args=rest, seed=seed, model_seed=int(config.model.seed),
                 data_seed=int(cli.datamodule.seed), max_steps=int(trainer.max_steps or -1), in_process=in_process,
                 module=cli.model, datamodule=cli.datamodule)


# -- state ------------------------------------------------------------------------------------------

def _read_state(root: Path) -> dict[str, Any] | None:
    path = root / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"Invalid AdaGAN state {path}: cannot be read ({error}); expected the file an AdaGAN run "
                         "wrote, or a fresh trainer.default_root_dir") from error


def _write_json(path: Path, value: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(temporary, path)


def _check_resume(state: dict[str, Any], settings: AdaGANSettings, root: Path) -> None:
    for key, value in settings.recorded().items():
        if state["settings"].get(key) != value:
            raise ValueError(f"Invalid adagan.{key}: {value!r}; the AdaGAN run in {root} was started with "
                             f"{state['settings'].get(key)!r}; expected the same value (or another "
                             "trainer.default_root_dir)")


# -- one component ----------------------------------------------------------------------------------

def _component_dir(root: Path, t: int) -> Path:
    return root / f"component_{t}"


def _fit_arguments(plan: _Plan, t: int) -> list[str]:
    folder = _component_dir(plan.root, t)
    return ["fit", *plan.fit_args, f"--trainer.default_root_dir={folder}",
            f"--checkpoint.dirpath={folder / 'checkpoints'}", f"--seed_everything={plan.seed + t}",
            f"--model.seed={plan.model_seed + t}",
            *(["--ckpt_path=last"] if (folder / "checkpoints" / "last.ckpt").is_file() else [])]


def _finished_steps(ckpt: Path, max_steps: int) -> int | None:
    """The checkpoint's step when it has reached ``max_steps`` (the component is done), else None."""
    if max_steps < 1 or not ckpt.is_file():
        return None
    step = int(read_checkpoint(ckpt, mmap=True)["global_step"])
    return step if step >= max_steps else None


def _train_component(plan: _Plan, t: int, weights_file: Path | None, monitor: dict[str, Any] | None) -> None:
    args = _fit_arguments(plan, t)
    seed = plan.data_seed + t
    if plan.in_process:
        weights = torch.load(weights_file, weights_only=True) if weights_file is not None else None
        import torch.distributed as dist

        threads, argv = torch.get_num_threads(), sys.argv
        sys.argv = [PROG]
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
                ComponentCLI(args=args, data_weights=weights, weights_seed=seed, monitor=monitor)
        finally:
            sys.argv = argv
            torch.set_num_threads(threads)
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()  # game_ddp's 1-rank group; the next component starts its own
        return
    command = [sys.executable, "-m", "lightning_gan.adagan.component"]
    if weights_file is not None:
        command += ["--adagan_weights", str(weights_file), "--adagan_weights_seed", str(seed)]
    if monitor is not None:
        command += ["--adagan_monitor", json.dumps(monitor)]
    code = subprocess.run([*command, *args], check=False).returncode
    if code != 0:
        raise SystemExit(code)


def _component_generator(plan: _Plan, t: int, which: str) -> tuple[nn.Module, nn.Module, int]:
    """(generator ``which``, discriminator, step) of component t, from its ``last.ckpt``."""
    from lightning_gan.run_files import load_run, load_weights, run_config

    ckpt = _component_dir(plan.root, t) / "checkpoints" / "last.ckpt"
    checkpoint = read_checkpoint(ckpt)
    config = run_config(ckpt, None, checkpoint)
    module, _ = load_run(ckpt, config)
    progress = load_weights(module, ckpt, config, checkpoint)
    generator = module.generator_for(which)  # type: ignore[arg-type]
    generator = getattr(generator, "module", generator)  # an AveragedModel's average
    return generator, module.discriminator, progress["global_step"]


def _mixture(generators: list[nn.Module], weights: list[float]) -> MixtureGenerator:
    import copy

    mixture = MixtureGenerator(copy.deepcopy(generators[0]), weights)
    for slot, generator in zip(mixture.components, generators):
        slot.load_state_dict(generator.state_dict())
    return mixture.eval()


def _data_weights(plan: _Plan, settings: AdaGANSettings, t: int, beta: float,
                  mixture: MixtureGenerator) -> tuple[torch.Tensor, float | None]:
    dataset = plan.datamodule._train_dataset()
    n = len(dataset)
    fake = mixture_samples(mixture, n, seed=plan.seed + 100_003 * t)
    probabilities = prob_real(plan.module.discriminator, dataset, fake, settings.classifier(), seed=plan.seed + t,
                              default_batch_size=plan.datamodule.batch_size)
    return theory_star_weights(density_ratios(probabilities), beta)


def _write_mixture(plan: _Plan, generators: list[nn.Module], discriminator: nn.Module, weights: list[float],
                   steps: int, state: dict[str, Any]) -> Path:
    """``mixture.ckpt``: the run's config with the mixture as generator, the weights, loadable by evaluate."""
    from lightning_gan.run_files import RunConfig, load_run

    first = _component_dir(plan.root, 0) / "checkpoints" / "last.ckpt"
    settings = yaml.safe_load(read_checkpoint(first)[CONFIG_KEY])
    model = settings["model"]
    model["generator"] = {"class_path": "lightning_gan.adagan.MixtureGenerator",
                          "init_args": {"component": model["generator"], "weights": [float(w) for w in weights]}}
    model["uniform_average"], model["ema_decay"], model["average_discriminator"] = False, None, False
    settings["trainer"]["default_root_dir"] = str(plan.root)
    text = yaml.safe_dump(settings, sort_keys=False)
    path = plan.root / MIXTURE_FILE
    module, _ = load_run(path, RunConfig(text, None, f"the mixture of {plan.root}"))
    for slot, generator in zip(module.generator.components, generators):
        slot.load_state_dict(generator.state_dict())
    module.discriminator.load_state_dict(discriminator.state_dict())
    import lightning

    checkpoint: dict[str, Any] = {"state_dict": module.state_dict(), "global_step": steps, "epoch": 0,
                                  "pytorch-lightning_version": lightning.__version__, CONFIG_KEY: text,
                                  "adagan": json.loads(json.dumps(state))}
    module.on_save_checkpoint(checkpoint)
    atomic_save(checkpoint, path)
    return path


def _note(message: str) -> None:
    print(f"{PROG} adagan: {message}", file=sys.stderr, flush=True)


def run(settings: AdaGANSettings, rest: list[str]) -> Path:
    """Trains (or resumes) the AdaGAN run described by the settings and the fit arguments; returns mixture.ckpt."""
    try:
        settings.validate()
    except ValueError as error:
        fail(error)
    plan = _plan(settings, rest)
    root = plan.root
    try:
        state = _read_state(root)
        if state is not None:
            _check_resume(state, settings, root)
    except ValueError as error:
        fail(error)
    if state is None:
        state = {"format": 1, "settings": settings.recorded(), "trained": [], "mixture_weights": [],
                 "data_weights": {}}
    root.mkdir(parents=True, exist_ok=True)
    state["components"] = settings.components
    _write_json(root / STATE_FILE, state)
    generators, discriminator = [], None
    for entry in state["trained"]:
        generator, discriminator, _ = _component_generator(plan, entry["index"], settings.generator)
        generators.append(generator)
    if len(generators) >= settings.components:
        _note(f"{len(generators)} components already trained in {root}; nothing to do")
    for t in range(len(generators), settings.components):
        beta = next_mixture_weight(t, settings.beta, settings.beta_constant)
        folder = _component_dir(root, t)
        folder.mkdir(parents=True, exist_ok=True)
        weights_file = None
        if t > 0 and settings.reweighting != "none":
            weights_file = folder / "data_weights.pt"
            if not weights_file.is_file():
                _note(f"component {t}: reweighting the data (classifier of real vs mixture, beta {beta:.4g})")
                mixture = _mixture(generators, state["mixture_weights"])
                weights, lam = _data_weights(plan, settings, t, beta, mixture)
                temporary = weights_file.with_name(f".{weights_file.name}.tmp-{os.getpid()}")
                torch.save(weights, temporary)
                os.replace(temporary, weights_file)
                state["data_weights"][str(t)] = {
                    "file": str(weights_file.relative_to(root)), "beta": beta, "lambda": lam,
                    "uniform_fallback": lam is None, "nonzero": int((weights > 0).sum()), "max": float(weights.max())}
                _write_json(root / STATE_FILE, state)
        ckpt = folder / "checkpoints" / "last.ckpt"
        if _finished_steps(ckpt, plan.max_steps) is None:
            _note(f"component {t + 1}/{settings.components}: training in {folder}")
            monitor = None
            if settings.monitor_every:
                monitor = {"every": settings.monitor_every, "beta": beta, "seed": plan.seed,
                           "previous": str(root / MIXTURE_FILE) if t > 0 else None}
            _train_component(plan, t, weights_file, monitor)
        generator, discriminator, steps = _component_generator(plan, t, settings.generator)
        generators.append(generator)
        state["mixture_weights"] = mixture_weights_after(state["mixture_weights"], beta)
        state["trained"].append({"index": t, "folder": folder.name, "beta": beta, "global_step": steps})
        _write_json(root / STATE_FILE, state)
        total = sum(entry["global_step"] for entry in state["trained"])
        path = _write_mixture(plan, generators, discriminator, state["mixture_weights"], total, state)
        _note(f"component {t + 1}/{settings.components} done; mixture weights "
              f"{[round(w, 4) for w in state['mixture_weights']]}; wrote {path}")
    return root / MIXTURE_FILE


def main(argv: Sequence[str]) -> Path:
    """``lightning-gan adagan ARGV`` (``argv`` without the word ``adagan``)."""
    mine, rest = split_arguments(argv)
    args = build_parser().parse_args(mine)
    settings = AdaGANSettings(**vars(args))
    return run(settings, rest)


