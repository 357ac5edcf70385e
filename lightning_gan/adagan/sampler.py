"""Weighted minibatches for an AdaGAN component: the same global index sequence on every rank, resumable mid-pass.

The reference trains each component on minibatches drawn as ``np.random.choice(N, batch_size, replace=False,
p=data_weights)`` (tolstikhin/adagan ``gan.py``, ``ToyGan._train_internal``), ``N // batch_size`` of them per epoch.
Here one seeded ``torch.Generator`` per pass draws, block after block, ``world_size * batch_size`` distinct indices
with probabilities proportional to the weights (``torch.multinomial(..., replacement=False)``: successive sampling
without replacement, as numpy's choice), and rank r of W takes positions r, r + W, ... of each block, as
:class:`~lightning_gan.data.sampler.GameSampler` does with its permutation. So every rank computes the same global
sequence, the ranks' k-th micro-batches together are the k-th block (what one rank with batch W*B draws), and no
collective is needed. A pass holds ``N // (W * B)`` blocks (about N samples, the reference's epoch); pass e is drawn
from seed ``seed + e``.

A GameSampler subclass, it counts its passes itself (Lightning's ``set_epoch`` is ignored) and keeps its position in
``state_dict()``, which ``StatefulDataLoader`` stores in checkpoints, so that a resumed run continues mid-pass with the
very indices an uninterrupted one draws.

Weights that vanish: a block draws W*B distinct points, so fewer than W*B points of nonzero weight cannot fill one;
that is refused at construction (``ValueError`` naming the count), before any training.
"""

from __future__ import annotations


import torch
from torch import Tensor

from lightning_gan.data.sampler import GameSampler

__all__ = ["WeightedGameSampler", "check_weights"]


def check_weights(weights: Tensor, size: int, block: int) -> Tensor:
    """The weights as float64 (N,), refused unless finite, >= 0, one per sample and at least ``block`` nonzero."""
    w = torch.as_tensor(weights).detach().to(torch.float64).flatten().cpu()
    if w.numel() != size:
        raise ValueError(f"Invalid data weights: {w.numel()} values for {size} training samples; expected one per "
                         "training sample")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("Invalid data weights: expected finite values >= 0")
    nonzero = int((w > 0).sum())
    if nonzero < block:
        raise ValueError(f"Invalid data weights: only {nonzero} training samples have a nonzero weight, fewer than the "
                         f"{block} (world_size * batch_size) that each minibatch draws without replacement (weights "
                         "that vanish); expected more samples of nonzero weight, or a smaller batch_size")
    return w


class WeightedGameSampler(GameSampler):
    """Rank ``rank`` of ``num_replicas`` takes positions rank, rank + W, ... of each weighted block of W*B indices.

    Args:
        size: number of training samples N.
        num_replicas: number of ranks W.
        rank: this rank.
        weights: (N,) nonnegative sampling weights (need not sum to 1).
        batch_size: micro-batch per rank B; a block (one global minibatch) holds W * B distinct indices.
        seed: pass e is drawn from a generator seeded with ``seed + e``.
    """

    def __init__(self, size: int, num_replicas: int, rank: int, weights: Tensor, batch_size: int,
                 seed: int = 0) -> None:
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, seed=seed)  # type: ignore[arg-type]
        if batch_size < 1:
            raise ValueError(f"Invalid batch_size: {batch_size}; expected an integer >= 1")
        self.size = size
        self.batch_size = batch_size
        self.block = num_replicas * batch_size
        self.weights = check_weights(weights, size, self.block)
        self.blocks_per_pass = size // self.block
        if self.blocks_per_pass < 1:
            raise ValueError(f"Invalid batch_size: {batch_size}; {size} training samples, fewer than world_size * "
                             f"batch_size = {self.block}")
        self.num_samples = self.blocks_per_pass * batch_size  # this rank's indices per pass
        self.total_size = self.blocks_per_pass * self.block

    def __len__(self) -> int:
        return self.num_samples

    def global_sequence(self, epoch: int) -> Tensor:
        """All ranks' indices of pass ``epoch``, block after block (int64, ``blocks_per_pass * W * B``)."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        blocks = [torch.multinomial(self.weights, self.block, replacement=False, generator=generator)
                  for _ in range(self.blocks_per_pass)]
        return torch.cat(blocks)

    def _pass_indices(self) -> list[int]:
        return self.global_sequence(self.epoch)[self.rank::self.num_replicas].tolist()
