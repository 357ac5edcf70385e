"""Mode-collapse metrics for the 2-D Gaussian mixtures (ring of 8, grid of 25) and two-sample statistics.

Definitions (VEEGAN, Srivastava et al. 2017, sec. 5.1, on the ring and grid of Metz et al.'s unrolled-GAN
benchmark; PacGAN, Lin et al. 2018, reports the same two numbers on the same mixtures):

- a sample is *high quality* if its Euclidean distance to the nearest mode centre is at most 3 standard
  deviations of a mode (``num_std * std``);
- a mode is *covered* (captured) if at least ``min_samples`` high-quality samples have it as nearest mode.
  VEEGAN's threshold is one sample, out of 2500 drawn; that is our default. A stricter threshold
  (e.g. a fraction of the 2500 / K expected per mode) ignores stray samples: pass ``min_samples``.

For samples of the mixture itself, high quality is P(|N(0, std^2 I_2)| <= 3 std) = 1 - exp(-9/2) = 98.9 %.

Two-sample statistics, both U-statistics (unbiased, so about 0, possibly slightly negative, for two
samples of one distribution): the squared MMD with a Gaussian kernel (Gretton et al. 2012) and the
energy distance (Szekely and Rizzo 2013), computed in float64 in row blocks (memory O(block * n)).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = [
    "ModeCoverage",
    "ModeCoverageResult",
    "energy_distance",
    "median_bandwidth",
    "mixture_metrics",
    "mmd2",
    "mode_coverage",
]

_BLOCK = 2048


@dataclass(frozen=True)
class ModeCoverageResult:
    """Number of modes covered, fraction of high-quality samples, and high-quality samples per mode."""

    modes_covered: int
    num_modes: int
    high_quality: float
    counts: Tensor


def _check_points(name: str, x: Tensor, dim: int | None = None) -> None:
    if x.dim() != 2 or x.shape[0] < 1 or (dim is not None and x.shape[1] != dim):
        want = f"(N, {dim})" if dim is not None else "(N, D)"
        raise ValueError(f"Invalid {name}: shape {tuple(x.shape)}; expected {want} with N >= 1")


def _assign(samples: Tensor, modes: Tensor, std: float, num_std: float) -> tuple[Tensor, Tensor]:
    """Index of each sample's nearest mode and whether it lies within ``num_std * std`` of it."""
    if std <= 0:
        raise ValueError(f"Invalid std: {std}; expected a positive number")
    if num_std <= 0:
        raise ValueError(f"Invalid num_std: {num_std}; expected a positive number")
    _check_points("modes", modes)
    _check_points("samples", samples, modes.shape[1])
    distance = torch.cdist(samples.double(), modes.to(samples.device).double())
    nearest_distance, nearest = distance.min(dim=1)
    return nearest, nearest_distance <= num_std * std


def mode_coverage(samples: Tensor, modes: Tensor, std: float, *, num_std: float = 3.0,
                  min_samples: int = 1) -> ModeCoverageResult:
    """Modes covered and fraction of high-quality samples (definitions in the module docstring).

    Args:
        samples: Generated points (N, D).
        modes: Mode centres (K, D), e.g. ``GaussianMixtureDataModule.modes``.
        std: Per-coordinate standard deviation of a mode, e.g. ``GaussianMixtureDataModule.std``.
        num_std: Quality radius in standard deviations (3 in the literature).
        min_samples: High-quality samples a mode needs to count as covered (VEEGAN: 1).
    """
    if min_samples < 1:
        raise ValueError(f"Invalid min_samples: {min_samples}; expected an integer >= 1")
    nearest, good = _assign(samples, modes, std, num_std)
    counts = torch.bincount(nearest[good], minlength=modes.shape[0]).cpu()
    return ModeCoverageResult(modes_covered=int((counts >= min_samples).sum()), num_modes=modes.shape[0],
                              high_quality=float(good.double().mean()), counts=counts)


class ModeCoverage(Metric):
    """:func:`mode_coverage` accumulated over batches and ranks: per-mode counts are sums (one all-reduce).

    ``compute()`` returns ``{"modes_covered": ..., "high_quality": ...}`` (float64 tensors).
    """

    full_state_update = False

    def __init__(self, modes: Tensor, std: float, num_std: float = 3.0, min_samples: int = 1, **kwargs) -> None:
        if min_samples < 1:
            raise ValueError(f"Invalid min_samples: {min_samples}; expected an integer >= 1")
        _assign(modes[:1], modes, std, num_std)  # validates modes, std and num_std now
        super().__init__(**kwargs)
        self.register_buffer("modes", modes.detach().clone().double(), persistent=False)
        self.std, self.num_std, self.min_samples = float(std), float(num_std), int(min_samples)
        self.add_state("counts", torch.zeros(modes.shape[0], dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, samples: Tensor) -> None:
        nearest, good = _assign(samples, self.modes, self.std, self.num_std)
        self.counts += torch.bincount(nearest[good], minlength=self.modes.shape[0]).to(self.counts)
        self.total += samples.shape[0]

    def compute(self) -> dict[str, Tensor]:
        if self.total == 0:
            raise RuntimeError("ModeCoverage.compute() called before any update()")
        return {"modes_covered": (self.counts >= self.min_samples).sum().double(),
                "high_quality": self.counts.sum() / self.total}


def _block_sum(x: Tensor, y: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Sum of fn(|x_i - y_j|) over all pairs, in row blocks."""
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], _BLOCK):
        total += fn(torch.cdist(x[start:start + _BLOCK], y)).sum()
    return total


def _pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    _check_points("x", x)
    _check_points("y", y, x.shape[1])
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"Invalid sample sizes: {x.shape[0]} and {y.shape[0]}; the U-statistics need >= 2 each")
    return x.double(), y.to(x.device).double()


def median_bandwidth(x: Tensor, max_points: int = 1000) -> float:
    """Median pairwise distance of (at most ``max_points`` evenly spaced rows of) ``x``: the median heuristic.

    Compute it once on the real reference set and reuse it, so that scores of different generators
    share one kernel.
    """
    _check_points("x", x)
    x = x[torch.linspace(0, x.shape[0] - 1, min(max_points, x.shape[0])).long()].double()
    distances = torch.pdist(x)
    if distances.numel() == 0 or distances.median() <= 0:
        raise ValueError("Invalid x for the median heuristic: fewer than two distinct points")
    return float(distances.median())


def mmd2(x: Tensor, y: Tensor, bandwidths: float | Sequence[float] | None = None) -> Tensor:
    """Unbiased squared MMD with a Gaussian kernel, mean of exp(-d^2 / (2 s^2)) over ``bandwidths`` s.

    Args:
        x, y: Samples (m, D) and (n, D), m, n >= 2.
        bandwidths: Kernel widths; None uses the median heuristic on ``y`` (pass the real set as ``y``).
    """
    x, y = _pair(x, y)
    widths = [median_bandwidth(y)] if bandwidths is None else \
        [float(bandwidths)] if isinstance(bandwidths, (int, float)) else [float(b) for b in bandwidths]
    if not widths or any(w <= 0 for w in widths):
        raise ValueError(f"Invalid bandwidths: {bandwidths}; expected positive numbers")

    def kernel(d: Tensor) -> Tensor:  # d is a fresh block: modified in place to save memory and time
        d2 = d.square_()
        if len(widths) == 1:
            return d2.mul_(-1 / (2 * widths[0] ** 2)).exp_()
        return sum(torch.exp(d2 * (-1 / (2 * w * w))) for w in widths) / len(widths)

    m, n = x.shape[0], y.shape[0]
    k_xx = (_block_sum(x, x, kernel) - m) / (m * (m - 1))  # k(x, x) = 1 on the diagonal
    k_yy = (_block_sum(y, y, kernel) - n) / (n * (n - 1))
    k_xy = _block_sum(x, y, kernel) / (m * n)
    return k_xx + k_yy - 2 * k_xy


def energy_distance(x: Tensor, y: Tensor) -> Tensor:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (within-sample terms over distinct pairs)."""
    x, y = _pair(x, y)
    m, n = x.shape[0], y.shape[0]
    identity = lambda d: d  # noqa: E731
    return (2 * _block_sum(x, y, identity) / (m * n) - _block_sum(x, x, identity) / (m * (m - 1))
            - _block_sum(y, y, identity) / (n * (n - 1)))


def mixture_metrics(samples: Tensor, modes: Tensor, std: float, reference: Tensor | None = None, *,
                    num_std: float = 3.0, min_samples: int = 1,
                    bandwidths: float | Sequence[float] | None = None) -> dict[str, float]:
    """Everything for a toy run in one dict: ``modes_covered``, ``num_modes``, ``high_quality`` and, given
    real ``reference`` samples, ``mmd2`` (median heuristic on the reference unless ``bandwidths``) and ``energy``.
    """
    coverage = mode_coverage(samples, modes, std, num_std=num_std, min_samples=min_samples)
    out = {"modes_covered": float(coverage.modes_covered), "num_modes": float(coverage.num_modes),
           "high_quality": coverage.high_quality}
    if reference is not None:
        out["mmd2"] = float(mmd2(samples, reference, bandwidths))
        out["energy"] = float(energy_distance(samples, reference))
    return out
