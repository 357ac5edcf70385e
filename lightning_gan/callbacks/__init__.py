"""Callbacks of the ``lightning-gan`` trainer, one class per file."""

from lightning_gan.callbacks.budget import EvaluationBudget
from lightning_gan.callbacks.checkpoint import FinalStepCheckpoint
from lightning_gan.callbacks.image_metrics import ImageMetrics
from lightning_gan.callbacks.requeue import SLURMRequeue
from lightning_gan.callbacks.run_config import RunConfigInCheckpoint
from lightning_gan.callbacks.samples import SampleGrid
from lightning_gan.callbacks.signals import SignalCheckpoint

__all__ = ["EvaluationBudget", "FinalStepCheckpoint", "ImageMetrics", "RunConfigInCheckpoint", "SLURMRequeue",
           "SampleGrid", "SignalCheckpoint"]
