"""Evaluation: FID / KID / IS (torchmetrics in training, torch-fidelity standalone), offline weights, digit
feature extractors, toy mixture metrics, the sum-to-25 task's metrics (:mod:`.sum25`) and stacked MNIST's
(:mod:`.stacked_mnist`).

Importing this package registers the digit classifiers with torch-fidelity (see :mod:`.features`).
"""

from lightning_gan.metrics.classifier import (
    DATASETS,
    DigitClassifier,
    default_classifier_path,
    load_classifier,
    save_classifier,
)
from lightning_gan.metrics.features import (
    FIDELITY_EXTRACTORS,
    DigitFeatureExtractor,
    FidelityDigitExtractor,
    InceptionFeatureExtractor,
    register_fidelity_extractors,
    to_classifier_input,
    to_uint8,
)
from lightning_gan.metrics.fidelity import (
    EXTRACTORS,
    ExtractorSpec,
    ImageTensorDataset,
    fidelity_metrics,
    resolve_extractor,
)
from lightning_gan.metrics.image_metrics import build_image_metrics, default_extractor, feature_modules
from lightning_gan.metrics.stacked_mnist import StackedMNISTMetric, score_stacks
from lightning_gan.metrics.sum25 import Sum25Metric, plot_sum_histograms, score_tuples
from lightning_gan.metrics.toy import (
    ModeCoverage,
    ModeCoverageResult,
    energy_distance,
    median_bandwidth,
    mixture_metrics,
    mmd2,
    mode_coverage,
)
from lightning_gan.metrics.weights import (
    ENV_INCEPTION_WEIGHTS,
    INCEPTION_FILENAME,
    INCEPTION_URL,
    InceptionWeightsNotFoundError,
    check_inception_weights,
    inception_cache_path,
    resolve_inception_weights,
)

register_fidelity_extractors()

__all__ = [
    "DATASETS",
    "ENV_INCEPTION_WEIGHTS",
    "EXTRACTORS",
    "FIDELITY_EXTRACTORS",
    "INCEPTION_FILENAME",
    "INCEPTION_URL",
    "DigitClassifier",
    "DigitFeatureExtractor",
    "ExtractorSpec",
    "FidelityDigitExtractor",
    "ImageTensorDataset",
    "InceptionFeatureExtractor",
    "InceptionWeightsNotFoundError",
    "ModeCoverage",
    "ModeCoverageResult",
    "StackedMNISTMetric",
    "Sum25Metric",
    "build_image_metrics",
    "check_inception_weights",
    "default_extractor",
    "default_classifier_path",
    "energy_distance",
    "feature_modules",
    "fidelity_metrics",
    "inception_cache_path",
    "load_classifier",
    "median_bandwidth",
    "mixture_metrics",
    "mmd2",
    "mode_coverage",
    "plot_sum_histograms",
    "register_fidelity_extractors",
    "resolve_extractor",
    "resolve_inception_weights",
    "save_classifier",
    "score_stacks",
    "score_tuples",
    "to_classifier_input",
    "to_uint8",
]
