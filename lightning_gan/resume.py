"""Resuming a run: which checkpoint ``--ckpt_path`` means, and whether this run may continue it.

One rule for ``--ckpt_path FILE`` and ``--ckpt_path last``: the checkpoint's values (its ``hyper_parameters``, the
GANModule init arguments) are the run's. A value given in the config or on the command line that contradicts one of
them is refused, unless it is a step size and ``--resume_allow`` names it; the scheme and the optimizer rule never
change. The players' architectures must match the checkpoint's, and another world size (hence another global batch)
needs ``--resume_allow world_size``. Everything is checked before anything is trained or written.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Callback
from torch import nn
from typing_extensions import override

from lightning_gan.checkpointing import read_checkpoint

__all__ = [
    "ALLOWABLE",
    "Resume",
    "StepSizeOverride",
    "check_model",
    "check_trainer",
    "find_last_checkpoint",
    "given_model_values",
    "parse_resume_allow",
    "plan_resume",
    "prepare_resume",
]

#: What ``--resume_allow`` may name: the two step sizes, and the number of ranks.
ALLOWABLE = ("g_optimizer.lr", "d_optimizer.lr", "world_size")
#: Optimizer index of each player's step size (GANModule.configure_optimizers returns [generator, discriminator]).
_STEP_SIZES = {"g_optimizer.lr": 0, "d_optimizer.lr": 1}
#: Values that define the game or the optimizer family: never changed across a resume, whatever is allowed.
_FIXED = {"scheme": "the scheme", "g_optimizer.rule": "the optimizer rule", "d_optimizer.rule": "the optimizer rule"}


def note(message: str) -> None:
    """One line on stderr, from rank 0 only (every rank of a multi-process run parses the same arguments)."""
    if getattr(rank_zero_only, "rank", 0) == 0:
        print(f"lightning-gan: warning: {message}", file=sys.stderr, flush=True)


# -- which file ------------------------------------------------------------------------------------


def last_candidates(dirpath: Path, root: Path) -> list[Path]:
    """Every ``*.ckpt`` of the checkpoint folder and the ``hpc_ckpt_*.ckpt`` of the run directory (SLURMRequeue)."""
    found = {p for p in dirpath.glob("*.ckpt") if p.is_file()}  # dirpath and root are absolute already
    found |= {p for p in root.glob("hpc_ckpt_*.ckpt") if p.is_file()}
    return sorted(found)


def _preference(path: Path, step: int, last: Path) -> tuple[int, int, str]:
    """Highest step first; at equal steps ``last.ckpt``, then its previous states, then the rest (by name)."""
    rank = 2 if path == last else 1 if path.name.startswith(f"{last.stem}-previous-") else 0
    return step, rank, path.name


def find_last_checkpoint(dirpath: str | Path, root: str | Path) -> Optional[tuple[Path, dict[str, Any]]]:
    """The loadable checkpoint of the highest ``global_step`` (the one recorded in the file, not its time) among
    :func:`last_candidates`, with its content; None when there is none. Files that do not load are named in one
    stderr line.

    Raises:
        ValueError: there are checkpoints, but none of them loads.
    """
    dirpath, root = Path(dirpath).resolve(), Path(root).resolve()
    last = dirpath / "last.ckpt"
    steps, broken = {}, {}
    for path in last_candidates(dirpath, root):
        try:
            steps[path] = int(read_checkpoint(path, mmap=True)["global_step"])
        except ValueError as error:
            broken[path] = str(error)
    for path in sorted(steps, key=lambda p: _preference(p, steps[p], last), reverse=True):
        try:
            checkpoint = read_checkpoint(path)  # all of it: mmap does not read the tensors
        except ValueError as error:
            broken[path] = str(error)
            continue
        _report_choice(path, steps, broken, last)
        return path, checkpoint
    if broken:
        problems = "; ".join(f"{p}: {why}" for p, why in broken.items())
        raise ValueError(f"Invalid ckpt_path: last: no checkpoint in {dirpath} loads ({problems})")
    return None


def _report_choice(chosen: Path, steps: dict[Path, int], broken: dict[Path, str], last: Path) -> None:
    if broken:
        skipped = "; ".join(f"{p} ({why})" for p, why in broken.items())
        note(f"--ckpt_path last: skipped {len(broken)} checkpoint(s) that do not load: {skipped}; resuming from "
             f"{chosen} (step {steps[chosen]}), the newest loadable one")
    elif last in steps and chosen != last:
        note(f"--ckpt_path last: resuming from {chosen} (step {steps[chosen]}), which is ahead of {last} "
             f"(step {steps[last]})")


def load_resume_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at an explicit ``--ckpt_path FILE``, or a one-line ``ValueError`` naming it."""
    try:
        return read_checkpoint(path)
    except ValueError as error:
        raise ValueError(f"Invalid ckpt_path: {path}: {error}") from None


# -- may this run continue it ----------------------------------------------------------------------


def parse_resume_allow(value: Any) -> frozenset[str]:
    """``--resume_allow``: a list, or one comma-separated string, of names in :data:`ALLOWABLE`."""
    items = value if isinstance(value, (list, tuple)) else [] if value is None else [value]
    names = {name.strip() for item in items for name in str(item).split(",") if name.strip()}
    unknown = sorted(names - set(ALLOWABLE))
    if unknown:
        raise ValueError(f"Invalid resume_allow: {', '.join(unknown)}; expected any of {', '.join(ALLOWABLE)} "
                         "(the scheme, the optimizer rule and the other model values never change across a resume)")
    return frozenset(names)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"g_optimizer": {"lr": 1}}`` -> ``{"g_optimizer.lr": 1}``."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and "class_path" not in value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _same(given: Any, saved: Any) -> bool:
    if isinstance(given, (list, tuple)) and isinstance(saved, (list, tuple)):
        return len(given) == len(saved) and all(_same(a, b) for a, b in zip(given, saved))
    if isinstance(given, float) and isinstance(saved, float) and math.isnan(given) and math.isnan(saved):
        return True
    return given == saved


def _comparable(given: Any, saved: Any) -> bool:
    """Values a checkpoint can be checked against: not a class config (a GANLoss instance is saved as its repr)."""
    return not isinstance(given, Mapping) and not isinstance(saved, Mapping)


def conflicts(given: Mapping[str, Any], saved: Mapping[str, Any], allowed: frozenset[str], path: Path) -> list[str]:
    """One phrase per given model value that contradicts the checkpoint's and is not allowed to."""
    flat_given, flat_saved = flatten(given), flatten(saved)
    problems = []
    for key, value in flat_given.items():
        if key not in flat_saved or not _comparable(value, flat_saved[key]) or _same(value, flat_saved[key]):
            continue
        if key in allowed and key in _STEP_SIZES:
            continue
        if key in _FIXED:
            how = f"{_FIXED[key]} cannot change across a resume (start a new run instead)"
        elif key in _STEP_SIZES:
            how = f"keep the checkpoint's value, or allow the change with --resume_allow {key}"
        else:
            how = "keep the checkpoint's value (only the step sizes may change, with --resume_allow)"
        problems.append(f"Invalid model.{key}: {value!r} given, but the checkpoint {path} has "
                        f"{flat_saved[key]!r}; {how}")
    return problems


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return nested


def merged_model_values(given: Mapping[str, Any], saved: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's values, with the given ones that may differ (checked by :func:`conflicts`) on top; values
    the checkpoint cannot be checked against (class configs) are left to the config."""
    flat_given, flat_saved = flatten(given), flatten(saved)
    merged = {key: value for key, value in flat_saved.items()
              if key not in flat_given or _comparable(flat_given[key], value)}
    merged.update({key: value for key, value in flat_given.items() if key in merged})
    return _unflatten(merged)


@dataclass
class Resume:
    """What the CLI keeps of the checkpoint it resumes from, for the checks that need the built model and Trainer."""

    path: Path
    global_step: int
    shapes: dict[str, tuple[int, ...]]  # the players' parameters and buffers
    world_size: Optional[int]
    allowed: frozenset[str]
    step_sizes: dict[int, float] = field(default_factory=dict)  # optimizer index -> new lr, when one changes

    def check_architecture(self, model: nn.Module) -> None:
        """The generator's and discriminator's tensors must have the checkpoint's names and shapes."""
        have = _player_shapes(model.state_dict())
        missing = sorted(self.shapes.keys() - have.keys())
        extra = sorted(have.keys() - self.shapes.keys())
        shaped = sorted(k for k in self.shapes.keys() & have.keys() if self.shapes[k] != have[k])
        if not (missing or extra or shaped):
            return
        details = [f"{k}: {list(have[k])} here, {list(self.shapes[k])} in the checkpoint" for k in shaped[:3]]
        details += [f"missing here: {', '.join(missing[:3])}"] if missing else []
        details += [f"not in the checkpoint: {', '.join(extra[:3])}"] if extra else []
        players = sorted({key.split(".")[0] for key in (*missing, *extra, *shaped)})
        raise ValueError(f"Invalid {'/'.join(f'model.{p}' for p in players)}: the architecture differs from the "
                         f"checkpoint {self.path} ({'; '.join(details)}); use the architecture it was trained with")

    def check_world_size(self, world_size: int, batch_per_rank: Optional[int]) -> None:
        """Another number of ranks changes the global batch: refused unless ``world_size`` is allowed, then said."""
        if self.world_size is None or self.world_size == world_size:
            return
        change = f"{self.world_size} to {world_size} ranks"
        if batch_per_rank is not None:
            change += (f": the global batch changes from {self.world_size * batch_per_rank} to "
                       f"{world_size * batch_per_rank} (ranks x batch_size x accumulation)")
        if "world_size" not in self.allowed:
            raise ValueError(f"Invalid trainer.devices/trainer.num_nodes: resuming {self.path} goes from {change}; "
                             "allow it with --resume_allow world_size, or resume on the checkpoint's world size")
        note(f"resuming {self.path} from {change}")


def _player_shapes(state_dict: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state_dict.items()
            if key.startswith(("generator.", "discriminator.")) and hasattr(value, "shape")}


def prepare_resume(path: Path, checkpoint: Mapping[str, Any], given: Mapping[str, Any],
                   allowed: frozenset[str]) -> tuple[Resume, dict[str, Any]]:
    """Check the given model values against the checkpoint's; return what to keep and the model values to use.

    Raises:
        ValueError: given values contradict the checkpoint (all of them, in one line).
    """
    saved = dict(checkpoint.get("hyper_parameters") or {})
    for key in ("_instantiator", "_class_path"):
        saved.pop(key, None)
    problems = conflicts(given, saved, allowed, path)
    if problems:
        raise ValueError("; ".join(problems))
    flat_given, flat_saved = flatten(given), flatten(saved)
    step_sizes = {index: float(flat_given[key]) for key, index in _STEP_SIZES.items()
                  if key in flat_given and key in flat_saved and not _same(flat_given[key], flat_saved[key])}
    state = checkpoint.get("lightning_gan") or {}
    world_size = state.get("world_size") if isinstance(state, Mapping) else None
    resume = Resume(path=path, global_step=int(checkpoint["global_step"]),
                    shapes=_player_shapes(checkpoint["state_dict"]),
                    world_size=int(world_size) if world_size is not None else None,
                    allowed=allowed, step_sizes=step_sizes)
    return resume, merged_model_values(given, saved)


class StepSizeOverride(Callback):
    """Put allowed new step sizes into the optimizer state being restored, which holds the old ones.

    Lightning restores the optimizers after the callbacks, from the same checkpoint dict, so rewriting its
    ``param_groups`` here is what makes the new ``lr`` the one the optimizers use from the first resumed step.
    """

    def __init__(self, step_sizes: Mapping[int, float]) -> None:
        self.step_sizes = dict(step_sizes)

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("optimizer_states") or []
        for index, lr in self.step_sizes.items():
            if index < len(states):
                for group in states[index].get("param_groups", []):
                    group["lr"] = lr


def given_model_values(namespace: Any) -> dict[str, Any]:
    """The model values a config file or the command line set (not the defaults), as plain dicts."""
    if namespace is None:
        return {}
    values = namespace.as_dict() if hasattr(namespace, "as_dict") else dict(namespace)
    return {key: value for key, value in values.items() if key not in ("generator", "discriminator")}


def plan_resume(ckpt_path: str, *, dirpath: str | Path, root: str | Path, given: Mapping[str, Any],
                allowed: frozenset[str]) -> tuple[Optional[Resume], dict[str, Any]]:
    """Resolve ``--ckpt_path`` (``last`` or a file) and check it against the given model values.

    Returns:
        The :class:`Resume` (None: ``last`` found no checkpoint, the run starts from scratch) and the model values
        the run uses (the checkpoint's, with allowed changes).

    Raises:
        ValueError: one line, naming the file and what is wrong with it or with the given values.
    """
    if ckpt_path == "last":
        found = find_last_checkpoint(dirpath, root)
        if found is None:
            note(f"--ckpt_path last: no checkpoint in {Path(dirpath).resolve()}; starting from step 0")
            return None, {}
        path, checkpoint = found
    else:
        path = Path(ckpt_path).resolve()
        checkpoint = load_resume_checkpoint(path)
    return prepare_resume(path, checkpoint, given, allowed)


def check_model(resume: Optional[Resume], model: nn.Module) -> None:
    """Before anything is loaded or written: the players must be the checkpoint's."""
    if resume is not None:
        resume.check_architecture(model)


def check_trainer(resume: Optional[Resume], trainer: pl.Trainer, batch_per_rank: Optional[int]) -> None:
    """Once the Trainer is built: the world size, and the new step sizes to put into the restored optimizers."""
    if resume is None:
        return
    resume.check_world_size(trainer.num_devices * trainer.num_nodes, batch_per_rank)
    if resume.step_sizes:
        trainer.callbacks.append(StepSizeOverride(resume.step_sizes))
