"""Two-sample tests: can N samples tell a generator from the data?

Two tests on any feature space (raw 2-D points, the digit classifier's features, Inception's), each giving a
statistic and a p-value for H0 "generated and real samples come from the same distribution":

* **MMD permutation test** (Gretton, Borgwardt, Rasch, Schoelkopf, Smola, "A Kernel Two-Sample Test", JMLR 2012):
  the unbiased MMD^2 with a Gaussian kernel whose bandwidth is the median pairwise distance of the pooled sample
  (the median heuristic), and its null distribution from random relabellings of the pooled sample. All
  permutations share one pooled kernel matrix K: for a labelling a (1 on "x"), the three kernel sums are
  a^T K a, a^T K b and b^T K b (b = 1 - a), so a batch of permutations is one matrix product.
* **Classifier two-sample test** (Lopez-Paz, Oquab, "Revisiting Classifier Two-Sample Tests", ICLR 2017): a small
  classifier (scikit-learn's ``MLPClassifier``) trained on half of each sample to tell them apart, its accuracy on
  the other half, and the one-sided binomial p-value of that accuracy under H0 (accuracy 1/2).

A p-value below the level (e.g. 0.05) means that the N samples suffice to tell the two apart.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["TwoSampleResult", "classifier_two_sample_test", "mmd_permutation_test", "unbiased_mmd2"]

MIN_SAMPLES = 10  # per sample: below this the tests have no power to speak of


@dataclass(frozen=True)
class TwoSampleResult:
    """One test's outcome: its statistic, p-value and what they were computed on."""

    test: str  # "mmd" or "classifier"
    statistic: float  # MMD^2 (unbiased) or held-out accuracy
    p_value: float
    num_x: int
    num_y: int
    detail: dict  # bandwidth and permutations, or the held-out counts

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        name = "MMD^2" if self.test == "mmd" else "accuracy"
        return f"{self.test} test: {name} {self.statistic:.4g}, p = {self.p_value:.3g}"


def _check(x: Tensor, y: Tensor, test: str) -> tuple[Tensor, Tensor]:
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"Invalid samples for the {test} test: shapes {tuple(x.shape)} and {tuple(y.shape)}; "
                         "expected (N, D) and (M, D) feature matrices")
    if min(x.shape[0], y.shape[0]) < MIN_SAMPLES:
        raise ValueError(f"Invalid sample sizes for the {test} test: {x.shape[0]} and {y.shape[0]}; expected at "
                         f"least {MIN_SAMPLES} samples each")
    return x.detach().double().cpu(), y.detach().double().cpu()


def gaussian_kernel_matrix(z: Tensor, bandwidth: float) -> Tensor:
    """exp(-|z_i - z_j|^2 / (2 bandwidth^2)) for all pairs of rows of ``z``."""
    return torch.cdist(z, z).square_().mul_(-1 / (2 * bandwidth * bandwidth)).exp_()


def median_heuristic(z: Tensor, max_points: int = 2000) -> float:
    """Median pairwise distance among (at most ``max_points`` evenly spaced) rows of ``z``."""
    rows = z[torch.linspace(0, z.shape[0] - 1, min(max_points, z.shape[0])).long()]
    distances = torch.pdist(rows)
    median = float(distances.median()) if distances.numel() else 0.0
    if median <= 0:
        raise ValueError("Invalid samples for the median heuristic: fewer than two distinct points")
    return median


def _mmd2_of_labellings(kernel: Tensor, labels: Tensor) -> Tensor:
    """Unbiased MMD^2 for each column of ``labels`` (1: sample x, 0: sample y), from the pooled kernel matrix."""
    a = labels.to(kernel.dtype)
    b = 1 - a
    m, n = a.sum(0), b.sum(0)
    diagonal = kernel.diagonal().unsqueeze(1)
    ka = kernel @ a
    xx = ((ka * a).sum(0) - (diagonal * a).sum(0)) / (m * (m - 1))
    yy = (((kernel @ b) * b).sum(0) - (diagonal * b).sum(0)) / (n * (n - 1))
    xy = (ka * b).sum(0) / (m * n)
    return xx + yy - 2 * xy


def unbiased_mmd2(x: Tensor, y: Tensor, bandwidth: float) -> float:
    """The unbiased MMD^2 of x and y with a Gaussian kernel of width ``bandwidth`` (float64)."""
    x, y = x.double(), y.double()
    kernel = gaussian_kernel_matrix(torch.cat([x, y]), bandwidth)
    labels = torch.cat([torch.ones(x.shape[0]), torch.zeros(y.shape[0])]).unsqueeze(1)
    return float(_mmd2_of_labellings(kernel, labels)[0])


def mmd_permutation_test(x: Tensor, y: Tensor, *, permutations: int = 500, bandwidth: float | None = None,
                         seed: int = 0, batch: int = 100) -> TwoSampleResult:
    """MMD permutation test of x against y.

    Args:
        x, y: (N, D) and (M, D) samples (e.g. generated and real features), N, M >= 10.
        permutations: random relabellings of the pooled sample; the p-value is (1 + #{MMD^2_perm >= MMD^2}) /
            (1 + permutations), so it is never 0.
        bandwidth: Gaussian kernel width; None: the median heuristic on the pooled sample.
        seed: seed of the permutations.
        batch: permutations per matrix product.
    """
    x, y = _check(x, y, "mmd")
    if permutations < 1:
        raise ValueError(f"Invalid permutations: {permutations}; expected an integer >= 1")
    pooled = torch.cat([x, y])
    width = median_heuristic(pooled) if bandwidth is None else float(bandwidth)
    kernel = gaussian_kernel_matrix(pooled, width)
    m, total = x.shape[0], pooled.shape[0]
    observed_labels = torch.zeros(total, 1, dtype=torch.float64)
    observed_labels[:m] = 1
    observed = float(_mmd2_of_labellings(kernel, observed_labels)[0])
    generator = torch.Generator().manual_seed(seed)
    exceed = 0
    for start in range(0, permutations, batch):
        count = min(batch, permutations - start)
        ranks = torch.rand(total, count, generator=generator).argsort(dim=0)
        labels = (ranks < m).double()  # a random m-subset per column
        exceed += int((_mmd2_of_labellings(kernel, labels) >= observed).sum())
    p_value = (1 + exceed) / (1 + permutations)
    return TwoSampleResult("mmd", observed, p_value, x.shape[0], y.shape[0],
                           {"bandwidth": width, "permutations": permutations, "kernel": "gaussian"})


def classifier_two_sample_test(x: Tensor, y: Tensor, *, seed: int = 0, hidden: int = 64,
                               max_iter: int = 300) -> TwoSampleResult:
    """Classifier two-sample test of x against y.

    Both samples are cut to the same size (the smaller one's, so that chance is exactly 1/2), shuffled and halved;
    an ``MLPClassifier`` (one hidden layer of ``hidden`` units, features standardised on the training half) learns
    x from y on one half and is scored on the other. p = P(Binomial(n, 1/2) >= correct), n the held-out count.
    """
    from scipy.stats import binomtest
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _check(x, y, "classifier")
    rng = np.random.default_rng(seed)
    size = min(x.shape[0], y.shape[0])
    x = x.numpy()[rng.permutation(x.shape[0])[:size]]
    y = y.numpy()[rng.permutation(y.shape[0])[:size]]
    features = np.concatenate([x, y])
    labels = np.concatenate([np.ones(size, dtype=np.int64), np.zeros(size, dtype=np.int64)])
    order = rng.permutation(2 * size)
    features, labels = features[order], labels[order]
    half = size  # train on the first half, test on the second
    classifier = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=max_iter,
                                                               random_state=seed, early_stopping=False))
    with warnings.catch_warnings():  # convergence warnings: the test stays valid, its power may be lower
        warnings.simplefilter("ignore")
        classifier.fit(features[:half], labels[:half])
    correct = int((classifier.predict(features[half:]) == labels[half:]).sum())
    held_out = 2 * size - half
    p_value = float(binomtest(correct, held_out, 0.5, alternative="greater").pvalue)
    return TwoSampleResult("classifier", correct / held_out, p_value, x.shape[0], y.shape[0],
                           {"correct": correct, "held_out": held_out, "classifier": f"MLP({hidden})"})
