"""Mixed precision for a game: which trainer precisions work, and fp16's loss scale shared by both players.

``bf16-mixed`` needs nothing of its own: Lightning runs ``training_step`` under ``torch.autocast`` (the players'
forwards and backwards in bfloat16 where autocast chooses it), the parameters, the all-reduced field, the optimizers'
moments and the averages stay float32, and the field casts D's outputs to float32 before the losses.

``16-mixed`` (float16) overflows and underflows where bfloat16 does not, hence a loss scale. torch's ``GradScaler``
(and Lightning's plugin around it) decides per optimizer, at ``optimizer.step()``: one player could step while the
other skips, and an extragradient iteration could keep its extrapolation and lose its update. Here one
:class:`GameLossScale` scales every loss of the game (both players, every evaluation, SVRE's snapshot pass), the
finite check reads the all-reduced field once per iteration (the same verdict on every rank), and an iteration
whose field was not finite anywhere is undone as a whole by :class:`IterationUndo`. What a skipped iteration does,
for every scheme: the players' parameters and buffers (BatchNorm statistics) and every optimizer's state (Adam's
moments and step, extragradient's saved point, past extragradient's and optimistic's previous field, momentum) are
back to where the iteration started - an alternating iteration's discriminator steps, an extragradient iteration's
extrapolation, are undone with its update; the averages are not updated and Lookahead does not step; the batch and
the latents of the iteration are consumed (the data and random streams go on as in a run that never skipped), the
iteration counts (``global_step``, the lr schedules), and the scale halves. SVRE: a snapshot pass whose mean mu is
not finite is retaken at once at half the scale (the snapshot point does not move), so mu is always finite; its
iterations skip as extragradient's do, keeping the snapshot. The scale doubles after ``growth_interval`` iterations
without a skip (torch's ``GradScaler`` defaults: 2^16, x2, x0.5, 2000). It lives in the checkpoint, so a resume
across a skip is bit-identical. A field that stays non-finite while the scale falls below 2^-16 is a divergence,
not an overflow: :class:`~lightning_gan.game.finite.DivergenceError`.

Multiplying a loss by a power of two and its gradients by the inverse is exact in floating point (away from
overflow and underflow), so the scale changes no finite result.

What Lightning's precision plugin does here: ``MixedPrecision`` supplies the autocast context around
``training_step`` (and refuses ``16-mixed`` on a CPU accelerator by switching to bf16: CPU tests pass the plugin
itself). Its ``GradScaler`` stays idle: it acts in ``manual_backward`` and ``LightningOptimizer.step``, and the game
takes its gradients with ``torch.autograd.grad`` and steps the raw optimizers (twice per iteration for
extragradient), so the scale, the check and the skip are done here instead.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer

#: ``trainer.precision`` values a game trains with.
SUPPORTED_PRECISIONS = ("32-true", "64-true", "bf16-mixed", "16-mixed")
#: Below this scale a non-finite field is a divergence.
MIN_SCALE = 2.0 ** -16


def check_precision(precision: str) -> str:
    """Refuse the "-true" half precisions: the game keeps float32 parameters, moments and averages."""
    if precision not in SUPPORTED_PRECISIONS:
        raise ValueError(f"Invalid trainer.precision: {precision!r}; expected one of {', '.join(SUPPORTED_PRECISIONS)} "
                         "(the game keeps float32 parameters, optimizer moments and averages; use bf16-mixed or "
                         "16-mixed for half-precision forwards)")
    return precision


class GameLossScale:
    """The dynamic loss scale of a float16 game: one number for both players.

    Args:
        init_scale: the first scale, a power of two.
        growth_factor: the scale's factor after ``growth_interval`` iterations without a skip.
        backoff_factor: the scale's factor at a skipped iteration.
        growth_interval: iterations without a skip before the scale grows.
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000) -> None:
        self.scale = float(init_scale)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval = growth_interval
        self.good_iterations = 0  # since the last skip or growth
        self.skipped = 0  # iterations skipped in this run
        self.retaken_snapshots = 0  # SVRE snapshot passes retaken

    def update(self, overflow: bool) -> None:
        """After an iteration: back off on an overflow, grow after ``growth_interval`` good iterations."""
        if overflow:
            self.backoff()
            self.skipped += 1
            return
        self.good_iterations += 1
        if self.good_iterations >= self.growth_interval:
            self.scale *= self.growth_factor
            self.good_iterations = 0

    def backoff(self) -> None:
        self.scale *= self.backoff_factor
        self.good_iterations = 0

    @property
    def exhausted(self) -> bool:
        """The scale fell so low that a non-finite field is not an overflow."""
        return self.scale < MIN_SCALE

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "good_iterations": self.good_iterations, "skipped": self.skipped,
                "retaken_snapshots": self.retaken_snapshots}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale = float(state["scale"])
        self.good_iterations = int(state["good_iterations"])
        self.skipped = int(state["skipped"])
        self.retaken_snapshots = int(state.get("retaken_snapshots", 0))


class IterationUndo:
    """What one game iteration may change, copied before it so that a skipped iteration can be undone.

    The copies are kept between iterations and overwritten in place (``copy_``), so capturing allocates only when an
    optimizer's state gains a tensor (its first step, extragradient's saved point). Restoring writes back into the
    live tensors, so no optimizer holds a stale reference.
    """

    def __init__(self, players: Sequence[nn.Module], optimizers: Sequence[Optimizer]) -> None:
        self.players, self.optimizers = list(players), list(optimizers)
        self._tensors: list[Tensor] = []
        self._saved: list[Tensor] = []
        self._states: list[dict[Tensor, dict[str, Any]]] = [{} for _ in self.optimizers]

    def capture(self) -> None:
        tensors = [t for player in self.players for t in (*player.parameters(), *player.buffers())]
        if [t.shape for t in tensors] != [t.shape for t in self._saved]:
            self._saved = [t.detach().clone() for t in tensors]
        else:
            for saved, t in zip(self._saved, tensors):
                saved.copy_(t.detach())
        self._tensors = tensors
        self._states = [_save_state(optimizer, saved) for optimizer, saved in zip(self.optimizers, self._states)]

    def restore(self) -> None:
        for t, saved in zip(self._tensors, self._saved):
            t.detach().copy_(saved)
        for optimizer, saved in zip(self.optimizers, self._states):
            _restore_state(optimizer, saved)


def _save_state(optimizer: Optimizer, previous: dict[Tensor, dict[str, Any]]) -> dict[Tensor, dict[str, Any]]:
    saved: dict[Tensor, dict[str, Any]] = {}
    for p, state in optimizer.state.items():
        before = previous.get(p, {})
        entry: dict[str, Any] = {}
        for key, value in state.items():
            if isinstance(value, Tensor):
                buffer = before.get(key)
                if (isinstance(buffer, Tensor) and buffer.shape == value.shape and buffer.dtype == value.dtype
                        and buffer.device == value.device):
                    buffer.copy_(value.detach())
                else:
                    buffer = value.detach().clone()
                entry[key] = buffer
            else:
                entry[key] = copy.deepcopy(value)
        saved[p] = entry
    return saved


def _restore_state(optimizer: Optimizer, saved: dict[Tensor, dict[str, Any]]) -> None:
    for p in [p for p in optimizer.state if p not in saved]:
        del optimizer.state[p]
    for p, entry in saved.items():
        state = optimizer.state[p]
        for key in [key for key in state if key not in entry]:
            del state[key]  # e.g. extragradient's saved point, made during the skipped iteration
        for key, value in entry.items():
            current = state.get(key)
            if isinstance(value, Tensor) and isinstance(current, Tensor) and current.shape == value.shape:
                current.detach().copy_(value)
            elif isinstance(value, Tensor):
                state[key] = value.clone()
            else:
                state[key] = copy.deepcopy(value)


__all__ = ["GameLossScale", "IterationUndo", "MIN_SCALE", "SUPPORTED_PRECISIONS", "check_precision"]
