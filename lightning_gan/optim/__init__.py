"""Game optimizers with the ``torch.optim`` contract.

Plain steps (:class:`SGD`, :class:`Adam`) accept negative momentum; the extragradient family adds
``extrapolation()``; the optimistic family corrects each step with the previous update.
"""

from lightning_gan.optim.adam import Adam
from lightning_gan.optim.base import GameOptimizer
from lightning_gan.optim.extragradient import (
    Extragradient,
    ExtraAdam,
    ExtraSGD,
    PastExtraAdam,
    PastExtragradient,
    PastExtraSGD,
)
from lightning_gan.optim.optimistic import Optimistic, OptimisticAdam, OptimisticSGD
from lightning_gan.optim.sgd import SGD

__all__ = [
    "SGD",
    "Adam",
    "ExtraSGD",
    "ExtraAdam",
    "PastExtraSGD",
    "PastExtraAdam",
    "OptimisticSGD",
    "OptimisticAdam",
    "GameOptimizer",
    "Extragradient",
    "PastExtragradient",
    "Optimistic",
]
