"""Two-sample tests (lightning_gan.metrics.two_sample): exact statistics, calibrated p-values under H0, power."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import binom

from lightning_gan.metrics.two_sample import (classifier_two_sample_test, gaussian_kernel_matrix,
                                              mmd_permutation_test, unbiased_mmd2)


def _direct_mmd2(x, y, width):
    """The U-statistic by explicit double loops (float64)."""
    def k(a, b):
        return math.exp(-float(((a - b) ** 2).sum()) / (2 * width * width))
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_unbiased_mmd2_equals_the_double_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(13, 3, generator=g, dtype=torch.float64)
    y = torch.randn(17, 3, generator=g, dtype=torch.float64) + 0.5
    for width in (0.5, 1.0, 3.0):
        assert unbiased_mmd2(x, y, width) == pytest.approx(_direct_mmd2(x, y, width), abs=1e-14)
    assert gaussian_kernel_matrix(x, 1.0).diagonal().eq(1).all()


def test_unbiased_mmd2_is_zero_in_expectation_for_one_distribution():
    g = torch.Generator().manual_seed(1)
    values = [unbiased_mmd2(torch.randn(40, 2, generator=g), torch.randn(40, 2, generator=g), 1.0)
              for _ in range(300)]
    mean = sum(values) / len(values)
    spread = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    assert abs(mean) < 4 * spread / len(values) ** 0.5  # unbiased: the mean is within 4 standard errors of 0


def _share_rejected(test, seeds=50, shift=0.0, n=60, dim=2):
    rejected = 0
    for seed in range(seeds):
        g = torch.Generator().manual_seed(100 + seed)
        x = torch.randn(n, dim, generator=g)
        y = torch.randn(n, dim, generator=g)
        y[:, 0] += shift
        rejected += test(x, y, seed=seed).p_value < 0.05
    return rejected


# Under H0 the number of p-values below 0.05 out of 50 is Binomial(50, p) with p <= 0.05 (a valid test): more than
# binom.ppf(0.999, 50, 0.05) = 8 would happen with probability < 0.001.
H0_BOUND = int(binom.ppf(0.999, 50, 0.05))


def test_mmd_permutation_test_is_calibrated_under_h0_and_rejects_a_shift():
    same = _share_rejected(lambda x, y, seed: mmd_permutation_test(x, y, permutations=200, seed=seed))
    assert same <= H0_BOUND, same
    shifted = _share_rejected(lambda x, y, seed: mmd_permutation_test(x, y, permutations=200, seed=seed), shift=1.0)
    assert shifted >= 45, shifted


def test_mmd_p_value_is_never_zero_and_names_its_bandwidth():
    g = torch.Generator().manual_seed(2)
    result = mmd_permutation_test(torch.randn(50, 2, generator=g), torch.randn(50, 2, generator=g) + 5,
                                  permutations=99)
    assert result.p_value == pytest.approx(1 / 100)
    assert result.detail["bandwidth"] > 0 and result.detail["permutations"] == 99
    assert "mmd test: MMD^2" in result.describe()


def test_classifier_test_is_calibrated_under_h0_and_rejects_a_shift():
    same = _share_rejected(lambda x, y, seed: classifier_two_sample_test(x, y, seed=seed, max_iter=100), n=100)
    assert same <= H0_BOUND, same
    shifted = _share_rejected(lambda x, y, seed: classifier_two_sample_test(x, y, seed=seed, max_iter=100),
                              shift=1.5, n=100)
    assert shifted >= 45, shifted


@pytest.mark.parametrize("test", [mmd_permutation_test, classifier_two_sample_test])
def test_too_few_samples_or_mismatched_features_fail_in_one_line(test):
    with pytest.raises(ValueError, match=r"^Invalid sample sizes for the \w+ test: 5 and 50; expected at least 10"):
        test(torch.randn(5, 2), torch.randn(50, 2))
    with pytest.raises(ValueError, match=r"^Invalid samples for the \w+ test: shapes \(50, 2\) and \(50, 3\)"):
        test(torch.randn(50, 2), torch.randn(50, 3))
