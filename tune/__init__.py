"""Hyper-parameter searches over lightning-gan training configs with Ray Tune (``python -m tune.search``).

Modules: :mod:`tune.space` (the search space YAML), :mod:`tune.search` (the command), :mod:`tune.trainable` (a
one-process trial), :mod:`tune.workers` (a trial of several Ray Train workers), :mod:`tune.report` and
:mod:`tune.metrics` (the trial's callbacks), :mod:`tune.results` (table, best config). Ray is imported lazily, so the
space helpers import without it. (SLURM requeue lives in :mod:`lightning_gan.callbacks.requeue`.)
"""
