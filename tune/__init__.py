"""Hyper-parameter searches over lightning-gan training configs with Ray Tune (``python -m tune.search``).

Modules: :mod:`tune.space` (the search space YAML), :mod:`tune.search` (the command), :mod:`tune.trainable` (one
trial), :mod:`tune.report` and :mod:`tune.metrics` (the trial's callbacks), :mod:`tune.results` (table, best
config), and :mod:`tune.requeue` (SLURM requeue callback used by slurm/train.sbatch). Ray is imported lazily, so the
space helpers and the requeue callback import without it.
"""
