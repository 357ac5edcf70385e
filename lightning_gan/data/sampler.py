"""The training sampler: one shared permutation per pass, sharded over ranks, resumable to the sample.

It is a ``DistributedSampler`` (so Lightning leaves it in place, also on one process) with two
changes that make a resumed run see exactly the samples of an uninterrupted one:

- it counts its passes itself and ignores Lightning's ``set_epoch``: Lightning's epoch counter is
  wrong after some resumes (lightning 2.6.6 counts an epoch saved at its last batch twice; GANModule
  rewrites its checkpoints so that it does not, see ``module._record_epoch_as_unfinished``, but other
  checkpoints may), which would reshuffle with the wrong seed;
- its position in the pass is in ``state_dict()``, which ``StatefulDataLoader`` stores in
  checkpoints, so a resumed iterator continues mid-pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

from torch.utils.data import DistributedSampler


class GameSampler(DistributedSampler):
    """Rank ``rank`` of ``num_replicas`` takes positions rank, rank + W, ... of the pass's permutation.

    Args:
        dataset: the training set.
        num_replicas: number of ranks W.
        rank: this rank.
        seed: the permutation of pass e is ``randperm(len(dataset))`` seeded with ``seed + e``.
    """

    def __init__(self, dataset: Sized, num_replicas: int, rank: int, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,  # type: ignore[arg-type]
                         drop_last=True)
        self.yielded = 0  # indices handed out in the current pass
        self._started = False
        self._resume_at: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the sampler counts passes itself (see the module docstring)."""

    def __iter__(self) -> Iterator[int]:
        if self._resume_at is not None:
            self.epoch, start = self._resume_at
            self._resume_at = None
        else:
            if self._started:
                self.epoch += 1
            start = 0
        self._started = True
        self.yielded = start
        for index in self._pass_indices()[start:]:
            self.yielded += 1
            yield index

    def _pass_indices(self) -> list[int]:
        """This rank's indices of pass ``self.epoch`` (subclasses draw them otherwise, e.g. with weights)."""
        return list(super().__iter__())

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume_at = (int(state["epoch"]), int(state["yielded"]))
