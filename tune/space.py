"""The search space, read from YAML: which config fields a search samples, and how.

A space file (``tune/spaces/default.yaml``) has the metric to optimise, its mode, and ``params``; each param is a
distribution::

    metric: toy/live/mmd2          # a key the trial reports (tune.report.TuneReport): logged by the module or
    mode: min                      # computed by tune.metrics.MixtureScore on 2-D mixtures
    params:
      lr_g: {distribution: loguniform, low: 1.0e-4, high: 1.0e-2}
      lr_ratio: {distribution: loguniform, low: 0.1, high: 10.0}
      momentum: {distribution: uniform, low: -0.9, high: 0.9}
      scheme: {distribution: choice, values: [simultaneous, extragradient]}
      model.r1_gamma: {distribution: loguniform, low: 0.01, high: 1.0}   # any dotted config path
      schedule_d: {distribution: choice, values: [constant, inverse_sqrt]}
      model.d_optimizer.t0: {distribution: loguniform, low: 10.0, high: 1000.0}

Names: ``lr_g`` (the generator's step size), ``lr_ratio`` (lr_D / lr_G: the discriminator's step size is
``lr_g * lr_ratio``), ``momentum`` (both players' SGD momentum or Adam beta1; may be negative), ``scheme``,
``schedule_g`` / ``schedule_d`` (each player's step-size schedule: constant, linear, cosine, step, inverse_sqrt,
inverse_time), ``warmup`` (both players' warm-up iterations), or a dotted path into the training config (a
schedule's parameters: ``model.d_optimizer.t0``, ``model.g_optimizer.decay_steps``...). ``lr_g`` and ``lr_ratio`` set
the schedules' initial step sizes; PBT mutates continuous ``model.*_optimizer.*`` values, schedule parameters
included, and the run continues the schedule at its iteration with the mutated values. Distributions: ``uniform``,
``loguniform`` (low, high), ``randint`` (low, high exclusive), ``choice``, ``grid`` (values; every value in every
sample), or a plain value (fixed).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from numbers import Number
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ALIASES", "Param", "SearchSpace", "apply_params", "load_space", "plain", "set_path", "get_path"]

#: Short names of the search space and the config fields they set.
ALIASES = {
    "lr_g": ("model.g_optimizer.lr",),
    "lr_ratio": ("model.d_optimizer.lr",),  # = lr_g * lr_ratio
    "momentum": ("model.g_optimizer.momentum", "model.d_optimizer.momentum"),
    "scheme": ("model.scheme",),
    # step-size schedules (lightning_gan.optim.schedules); their parameters are dotted paths, e.g.
    # model.d_optimizer.t0 or model.g_optimizer.decay_steps
    "schedule_g": ("model.g_optimizer.schedule",),
    "schedule_d": ("model.d_optimizer.schedule",),
    "warmup": ("model.g_optimizer.warmup", "model.d_optimizer.warmup"),
}
#: Fields that PBT may mutate during a trial: optimizer scalars only, re-applied after each restore (ray#36660).
OPTIMIZER_PREFIXES = ("model.g_optimizer.", "model.d_optimizer.")
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice", "grid")
#: OptimizerConfig's default lr: the generator's step size when neither the space nor the config sets it.
DEFAULT_LR = 2e-4


def plain(value: Any) -> Any:
    """numpy scalars (what Ray samples) as Python ones: YAML writes them and torch accepts float betas (T13)."""
    if isinstance(value, str):
        return str(value)  # numpy.str_ is a str subclass that YAML's safe dumper refuses
    if hasattr(value, "item") and not isinstance(value, (list, dict)):
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, Number):
        return float(value)
    return value


@dataclass
class Param:
    """One searched field: a distribution over it, or a fixed value."""

    name: str
    distribution: str | None = None  # None: fixed ``value``
    low: float | None = None
    high: float | None = None
    values: list[Any] = field(default_factory=list)
    value: Any = None

    @classmethod
    def parse(cls, name: str, spec: Any) -> "Param":
        if not isinstance(spec, dict):
            return cls(name, value=spec)
        unknown = set(spec) - {"distribution", "low", "high", "values"}
        kind = spec.get("distribution")
        if unknown or kind not in DISTRIBUTIONS:
            raise ValueError(f"Invalid search space entry {name}: {spec}; expected {{distribution: one of "
                             f"{', '.join(DISTRIBUTIONS)}, low, high}} or {{distribution, values}}, or a plain value")
        if kind in ("choice", "grid"):
            values = spec.get("values")
            if not isinstance(values, list) or not values:
                raise ValueError(f"Invalid search space entry {name}: {kind} needs a non-empty list `values`")
            return cls(name, kind, values=values)
        low, high = spec.get("low"), spec.get("high")
        if not isinstance(low, Number) or not isinstance(high, Number) or not low < high:
            raise ValueError(f"Invalid search space entry {name}: {kind} needs numbers low < high, got low={low!r}, "
                             f"high={high!r}")
        if kind == "loguniform" and low <= 0:
            raise ValueError(f"Invalid search space entry {name}: loguniform needs low > 0, got {low}")
        return cls(name, kind, low=float(low), high=float(high))

    @property
    def continuous(self) -> bool:
        return self.distribution in ("uniform", "loguniform")

    def domain(self) -> Any:
        """The Ray Tune domain (or the fixed value)."""
        from ray import tune

        if self.distribution is None:
            return self.value
        if self.distribution == "uniform":
            return tune.uniform(self.low, self.high)
        if self.distribution == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.distribution == "randint":
            return tune.randint(int(self.low), int(self.high))
        if self.distribution == "choice":
            return tune.choice(self.values)
        return tune.grid_search(self.values)

    def typical(self) -> Any:
        """A representative value (to check the config before any trial runs)."""
        if self.distribution is None:
            return self.value
        if self.distribution in ("choice", "grid"):
            return self.values[0]
        if self.distribution == "loguniform":
            return math.sqrt(self.low * self.high)
        if self.distribution == "randint":
            return int(self.low)
        return (self.low + self.high) / 2

    def clip(self, value: Any) -> Any:
        """Keep a perturbed value (PBT multiplies by 0.8 or 1.2) inside [low, high]."""
        if self.continuous:
            return min(max(float(value), self.low), self.high)
        return plain(value)


@dataclass
class SearchSpace:
    """Params plus the metric and mode that rank the trials."""

    params: dict[str, Param]
    metric: str | None = None
    mode: str | None = None

    def __post_init__(self) -> None:
        for name in self.params:
            if name not in ALIASES and "." not in name:
                raise ValueError(f"Invalid search space name: {name!r}; expected one of {', '.join(ALIASES)} or a "
                                 "dotted config path such as model.r1_gamma")
        if self.mode not in (None, "min", "max"):
            raise ValueError(f"Invalid mode: {self.mode!r}; expected 'min' or 'max'")

    def param_space(self) -> dict[str, Any]:
        return {name: param.domain() for name, param in self.params.items()}

    def typical(self) -> dict[str, Any]:
        return {name: param.typical() for name, param in self.params.items()}

    def clip(self, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` with each param inside its bounds and as a plain Python value (also PBT's explore hook)."""
        return {key: self.params[key].clip(value) if key in self.params else plain(value)
                for key, value in config.items()}

    def mutations(self) -> dict[str, Any]:
        """PBT's mutations: the continuous optimizer scalars only (step sizes, ratio, momentum, betas...)."""
        optimizer = [name for name, p in self.params.items() if p.continuous
                     and (name in ("lr_g", "lr_ratio", "momentum") or name.startswith(OPTIMIZER_PREFIXES))]
        if not optimizer:
            raise ValueError("Invalid search space for PBT: no continuous optimizer scalar (lr_g, lr_ratio, momentum "
                             "or model.g_optimizer.* / model.d_optimizer.*) to mutate")
        return {name: self.params[name].domain() for name in optimizer}


def load_space(path: str | Path) -> SearchSpace:
    """Read a space file (see the module docstring)."""
    with open(path) as f:
        spec = yaml.safe_load(f) or {}
    if not isinstance(spec, dict) or not isinstance(spec.get("params"), dict) or not spec["params"]:
        raise ValueError(f"Invalid search space file {path}: expected a mapping with a non-empty `params` mapping")
    unknown = set(spec) - {"metric", "mode", "params"}
    if unknown:
        raise ValueError(f"Invalid search space file {path}: unknown keys {sorted(unknown)}; expected metric, mode, "
                         "params")
    params = {name: Param.parse(name, value) for name, value in spec["params"].items()}
    return SearchSpace(params, metric=spec.get("metric"), mode=spec.get("mode"))


# -- applying sampled values to a training config -------------------------------------------------------------------


def get_path(config: dict, path: str, default: Any = None) -> Any:
    node: Any = config
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def set_path(config: dict, path: str, value: Any) -> None:
    """Set ``a.b.c`` in nested dicts, creating the missing levels."""
    keys = path.split(".")
    node = config
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ValueError(f"Invalid search space name: {path!r}; {'.'.join(keys[:i + 1])} is {child!r} in the "
                             "config, not a mapping")
        node = child
    node[keys[-1]] = value


def apply_params(config: dict, params: dict[str, Any]) -> dict:
    """A copy of the training ``config`` (a YAML mapping) with the sampled ``params`` written into it."""
    out = copy.deepcopy(config)
    params = {key: plain(value) for key, value in params.items()}
    for name, value in params.items():
        if name == "lr_ratio":
            continue  # needs the final lr_g, below
        for path in ALIASES.get(name, (name,)):
            set_path(out, path, value)
    if "lr_ratio" in params:
        lr_g = get_path(out, "model.g_optimizer.lr", DEFAULT_LR)
        set_path(out, "model.d_optimizer.lr", float(lr_g) * params["lr_ratio"])
    return out
