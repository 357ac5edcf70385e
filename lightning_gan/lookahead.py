"""Lookahead-minmax (Chavdarova et al., "Taming GANs with Lookahead-Minmax", ICLR 2021) over any scheme.

Every ``k`` game iterations, at the same iteration for both players::

    slow <- slow + alpha (fast - slow);   fast <- slow

The fast weights are the live players, moved by the scheme (simultaneous, alternating, extragradient, ...);
the slow weights are buffers here, so checkpoints carry them and a resume mid-cycle is exact. The update is
deterministic and every rank holds the same fast and slow weights, so it needs no collective.

Policies follow the reference code (github Chavdarova/LAGAN-Lookahead_Minimax, ``lagan/optim/lookahead.py``,
``Lookahead.update``, called from ``lagan/trainer.py`` after both players' steps):

- **Optimizer state is kept** across a sync (Adam's moments, momentum buffers, the previous gradient of
  optimistic and past-extragradient steps): ``Lookahead.update`` touches ``param_groups``' parameters only.
- **Only trainable parameters are synced**; buffers (BatchNorm running statistics) continue from the fast
  weights, as the reference's update loops over ``group["params"]`` only.
- **Averages and the SVRE snapshot see the live (fast) weights**, which at a sync iteration are the new slow
  weights: the reference updates ``G_avg``/``G_ema`` from ``G`` after the sync, every iteration, and SVRE's
  control variate must sit where the field is evaluated, which is the fast point.

Differences: the slow weights start at the weights a fit starts from (the paper's Algorithm 1; GANModule resets
them in ``setup``, and a resumed checkpoint overwrites them); the reference creates them lazily at the first
sync from the fast weights, which makes its first sync a no-op. The reference's extra averages of the slow
weights alone (``G_avg_slow``, ``G_ema_slow``, updated at syncs) are not kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class LookaheadConfig:
    """Settings of Lookahead-minmax.

    Args:
        k: game iterations per cycle; the slow weights move after every ``k``-th iteration (the paper uses 5).
        alpha: step of the slow weights towards the fast ones, in (0, 1]; 1 is plain training (the paper uses 0.5).
    """

    k: int = 5
    alpha: float = 0.5

    def validate(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"Invalid lookahead.k: {self.k!r}; expected an integer >= 1")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha <= 1:
            raise ValueError(f"Invalid lookahead.alpha: {self.alpha!r}; expected a number in (0, 1]")


def trainable(player: nn.Module) -> list[Tensor]:
    """The parameters that the optimizers move (as :class:`~lightning_gan.game.step.GameStep` lists them)."""
    return [p for p in player.parameters() if p.requires_grad]


class SlowWeights(nn.Module):
    """One player's slow weights, one buffer per trainable parameter (``w0``, ``w1``, ... in parameter order)."""

    def __init__(self, player: nn.Module) -> None:
        super().__init__()
        for j, p in enumerate(trainable(player)):
            self.register_buffer(f"w{j}", p.detach().clone())

    @property
    def tensors(self) -> list[Tensor]:
        return list(self.buffers())

    def check(self, fast: Sequence[Tensor]) -> None:
        """Refuse a player whose trainable parameters are not the ones these slow weights were made for."""
        shapes = [tuple(t.shape) for t in self.tensors]
        if shapes != [tuple(p.shape) for p in fast]:
            raise ValueError(f"Invalid lookahead: the player's trainable parameters changed since its slow weights "
                             f"were made ({len(shapes)} tensors expected, {len(fast)} found)")


class LookaheadMinmax(nn.Module):
    """Both players' slow weights and the Lookahead-minmax update.

    The players are passed to each call, not held, so that they are not registered twice in a state dict.

    Args:
        players: the live players, in game order (generator, discriminator); their weights start the slow ones.
        config: period ``k`` and step ``alpha``.
    """

    def __init__(self, players: Sequence[nn.Module], config: LookaheadConfig) -> None:
        super().__init__()
        config.validate()
        self.k, self.alpha = config.k, float(config.alpha)
        self.slow = nn.ModuleList(SlowWeights(player) for player in players)

    @torch.no_grad()
    def reset(self, players: Sequence[nn.Module]) -> None:
        """Start a cycle at the players' current weights: slow <- fast (at the start of a run)."""
        for slow, player in zip(self.slow, players, strict=True):
            fast = trainable(player)
            slow.check(fast)
            torch._foreach_copy_(slow.tensors, fast)

    @torch.no_grad()
    def step(self, players: Sequence[nn.Module], iteration: int) -> bool:
        """After game iteration ``iteration`` (counted from 1): sync both players if it ends a cycle.

        Returns whether it synced. Costs a modulo on the other iterations.
        """
        if iteration % self.k != 0:
            return False
        for slow, player in zip(self.slow, players, strict=True):
            fast = trainable(player)
            torch._foreach_lerp_(slow.tensors, fast, self.alpha)  # slow + alpha (fast - slow)
            torch._foreach_copy_(fast, slow.tensors)
        return True
