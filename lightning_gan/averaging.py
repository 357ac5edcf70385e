"""Uniform and EMA averages of a player, updated once per game iteration.

Built on ``torch.optim.swa_utils.AveragedModel``. BatchNorm policy: buffers are averaged with the
weights (``use_buffers=True``), so an averaged generator carries running statistics that match its
averaged weights without extra passes; :func:`recompute_batchnorm` re-estimates them from fresh
latents when exact "standing statistics" are wanted (e.g. before an evaluation).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, get_swa_multi_avg_fn


def uniform_multi_avg_fn():
    """torch's multi-tensor uniform average for floating tensors; integer buffers (``num_batches_tracked``)
    take torch's per-tensor rule, since its multi-tensor one refuses integer division."""
    floating_update = get_swa_multi_avg_fn()

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        if averaged[0].is_floating_point():
            floating_update(averaged, current, num_averaged)
        else:
            for a, c in zip(averaged, current):
                a.copy_(a + (c - a) / (num_averaged + 1))

    return update


def _frozen(average: AveragedModel) -> AveragedModel:
    for p in average.parameters():
        p.requires_grad_(False)
    return average


class PlayerAverages(nn.Module):
    """The averages of one player: uniform ``avg <- avg n/(n+1) + w/(n+1)`` and/or EMA.

    Args:
        player: the live player (deep-copied at construction).
        uniform: keep the uniform average of all iterates.
        ema_decay: EMA decay in [0, 1) per iteration, or None for no EMA.
    """

    def __init__(self, player: nn.Module, *, uniform: bool = True, ema_decay: float | None = 0.999) -> None:
        super().__init__()
        if ema_decay is not None and not 0 <= ema_decay < 1:
            raise ValueError(f"Invalid ema_decay: {ema_decay!r}; expected 0 <= ema_decay < 1, or null for no EMA")
        self.uniform = (
            _frozen(AveragedModel(player, multi_avg_fn=uniform_multi_avg_fn(), use_buffers=True)) if uniform else None
        )
        self.ema = (
            _frozen(AveragedModel(player, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True))
            if ema_decay is not None else None
        )

    @torch.no_grad()
    def update(self, player: nn.Module) -> None:
        for average in (self.uniform, self.ema):
            if average is not None:
                average.update_parameters(player)

    @torch.no_grad()
    def reset_to(self, player: nn.Module) -> None:
        """Restart the uniform average at ``player``: it becomes the average's only iterate (``n_averaged = 1``).

        The EMA, a running estimate with no count, is left as it is.
        """
        average = self._uniform_or_raise()
        average.n_averaged.zero_()
        average.update_parameters(player)  # with n_averaged 0, torch's update copies and counts 1

    @torch.no_grad()
    def restart(self, player: nn.Module) -> None:
        """SVRE's restart, as in the paper's code (``x = x_avg/S_t; x_avg = x; S_t = 1``): ``player`` takes the
        uniform average (parameters and buffers), then the average restarts from that point.

        Before the first update the average holds no iterate, and ``player`` stays where it is.
        """
        average = self._uniform_or_raise()
        if average.n_averaged > 0:
            player.load_state_dict(average.module.state_dict())
        self.reset_to(player)

    def _uniform_or_raise(self) -> AveragedModel:
        if self.uniform is None:
            raise ValueError("Invalid uniform_average: false; restarting from the uniform average needs "
                             "uniform_average: true")
        return self.uniform

    def get(self, which: str) -> nn.Module | None:
        """The averaged module for ``"uniform"`` or ``"ema"`` (None when not kept)."""
        average = {"uniform": self.uniform, "ema": self.ema}[which]
        return None if average is None else average.module


@torch.no_grad()
def recompute_batchnorm(generator: nn.Module, latent_batches: list[torch.Tensor]) -> nn.Module:
    """A copy of ``generator`` whose BatchNorm running statistics are re-estimated on ``latent_batches``."""
    copy_ = copy.deepcopy(generator)
    bn_layers = [m for m in copy_.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bn_layers:
        return copy_
    for m in bn_layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    copy_.train()
    for z in latent_batches:
        copy_(z)
    return copy_.eval()
