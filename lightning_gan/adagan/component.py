"""One AdaGAN component is one ordinary ``lightning-gan fit`` run, on weighted minibatches.

:class:`ComponentCLI` is :class:`~lightning_gan.cli.GANCLI` (any scheme, loss, strategy, resume, checkpoints, loggers,
refusals) plus one thing: it hands the data module the component's data weights (a float64 (N,) tensor in a file the
AdaGAN run wrote), so that its training loader draws minibatches with
:class:`~lightning_gan.adagan.sampler.WeightedGameSampler` instead of the uniform permutation. The weights are checked
against the training set and the global batch before the Trainer trains (one line, exit 2), e.g. weights that vanish
on all but a few points.

The weights file is not part of the run's config (a component's ``config.yaml`` and checkpoints are a plain ``fit``
run's, so ``evaluate`` and ``sample`` take a component's checkpoint as they take any). Multi-process runs start each
component as ``python -m lightning_gan.adagan.component --adagan_weights FILE --adagan_weights_seed S fit ...``, which
Lightning's DDP launcher then re-runs on every rank.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer

from lightning_gan.adagan.sampler import check_weights
from lightning_gan.cli import GANCLI
from lightning_gan.cli_errors import USER_ERRORS, fail

__all__ = ["ComponentCLI", "load_data_weights", "main", "split_weights_arguments"]

WEIGHTS_FLAG = "--adagan_weights"
SEED_FLAG = "--adagan_weights_seed"
MONITOR_FLAG = "--adagan_monitor"  # JSON: {"every": K, "beta": b, "previous": mixture.ckpt or null, "seed": s}


def load_data_weights(path: str | Path) -> torch.Tensor:
    """The float64 (N,) data weights saved by the AdaGAN run (``torch.save``)."""
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as error:
        raise ValueError(f"Invalid data weights file {path}: cannot be read ({error})") from error
    if not torch.is_tensor(weights):
        raise ValueError(f"Invalid data weights file {path}: expected a tensor")
    return weights.to(torch.float64)


class ComponentCLI(GANCLI):
    """GANCLI whose data module samples with the given data weights (None: an ordinary ``fit`` run).

    Args:
        args: the ``fit`` arguments, as for GANCLI.
        data_weights: (N,) weights of the training points, or None.
        weights_seed: seed of the weighted sampler (None: the data module's ``seed``).
        monitor: ``{"every": K, "beta": b, "previous": path of the previous mixture.ckpt or None, "seed": s}``: log
            the mode metrics of the mixture so far every K iterations (:class:`~lightning_gan.adagan.monitor.MixtureModes`).
    """

    def __init__(self, args: Sequence[str] | None = None, data_weights: torch.Tensor | None = None,
                 weights_seed: int | None = None, monitor: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._data_weights = data_weights
        self._weights_seed = weights_seed
        self._monitor = monitor
        super().__init__(args=args, **kwargs)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Trainer:
        if self._monitor is not None:
            from lightning_gan.adagan.monitor import MixtureModes, previous_mixture

            spec = self._monitor
            try:
                previous = previous_mixture(Path(spec["previous"])) if spec.get("previous") else ([], [])
                callbacks = [*callbacks, MixtureModes(int(spec["every"]), float(spec["beta"]), previous,
                                                      seed=int(spec.get("seed", 0)))]
            except USER_ERRORS as error:
                fail(error)
        trainer = super()._instantiate_trainer(config, callbacks)
        if self._data_weights is not None:
            datamodule = self.datamodule
            try:
                size = len(datamodule._train_dataset())
                block = trainer.world_size * datamodule.batch_size
                datamodule.train_weights = check_weights(self._data_weights, size, block)
                datamodule.train_weights_seed = datamodule.seed if self._weights_seed is None else self._weights_seed
            except USER_ERRORS as error:
                fail(error)
        return trainer


def split_weights_arguments(argv: Sequence[str]) -> tuple[str | None, int | None, dict | None, list[str]]:
    """``(weights file, seed, monitor, the rest)`` from ``[--adagan_weights FILE] [--adagan_weights_seed S]
    [--adagan_monitor JSON] fit ...``."""
    rest, path, seed, monitor = [], None, None, None
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        for flag in (WEIGHTS_FLAG, SEED_FLAG, MONITOR_FLAG):
            if item == flag or item.startswith(flag + "="):
                value = item.split("=", 1)[1] if "=" in item else (items[i + 1] if i + 1 < len(items) else None)
                if value is None:
                    fail(f"Invalid {flag[2:]}: missing; expected {flag} VALUE")
                if flag == WEIGHTS_FLAG:
                    path = value
                elif flag == MONITOR_FLAG:
                    try:
                        monitor = json.loads(value)
                    except ValueError:
                        fail(f"Invalid {flag[2:]}: {value!r}; expected a JSON object")
                else:
                    try:
                        seed = int(value)
                    except ValueError:
                        fail(f"Invalid {flag[2:]}: {value!r}; expected an integer")
                i += 1 if "=" in item else 2
                break
        else:
            rest.append(item)
            i += 1
    return path, seed, monitor, rest


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m lightning_gan.adagan.component [--adagan_weights FILE] [--adagan_weights_seed S] [--adagan_monitor
    JSON] fit ...``."""
    path, seed, monitor, rest = split_weights_arguments(sys.argv[1:] if argv is None else argv)
    weights = None
    if path is not None:
        try:
            weights = load_data_weights(path)
        except ValueError as error:
            fail(error)
    ComponentCLI(args=rest, data_weights=weights, weights_seed=seed, monitor=monitor)


if __name__ == "__main__":
    main()
