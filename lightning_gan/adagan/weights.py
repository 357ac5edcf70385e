"""The two weightings of AdaGAN: the new component's mixture weight beta_t and the data weights it trains on.

Both follow the reference code, tolstikhin/adagan ``adagan.py`` (class ``AdaGan``), line for line in meaning:

- ``_next_mixture_weight``: beta = 1 for the first component; then ``uniform``: beta = 1 / (t + 1), t the number of
  components already trained (every component ends with weight 1 / T: a uniform mixture), or ``constant``:
  beta = beta_constant. ``make_step`` then sets the mixture to ((1 - beta) * old weights, beta).
- ``_compute_data_weights_theory_star`` (the paper's Section 3.1, Algorithm 1 with the closed form of its
  Theorem 1 / equations (17)-(18) of the arXiv version): given h_i, an estimate of dP_model / dP_data at training point
  x_i, sort h ascending; lambda = (N beta + (1 - beta) sum_{j <= i} h_(j)) / (i + 1) is accepted at the first i where
  (1 - beta) h_(i) <= lambda <= (1 - beta) h_(i+1) (at the last i: (1 - beta) h_(N) <= lambda); then
  w_i = (lambda - (1 - beta) h_i)_+ / (N beta), renormalised to sum 1 (the estimated h need not give weights that sum
  to 1). No lambda found: uniform weights (the reference logs a warning and does the same).
- ``_update_data_weights``: h_i = (1 - D(x_i)) / (D(x_i) + 1e-8), D the probability of "real" of a classifier trained
  to tell the data from the current mixture (:mod:`lightning_gan.adagan.classifier`).

Computed in float64 on the CPU, so that the weights do not depend on the device or the number of ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["BETA_RULES", "density_ratios", "mixture_weights_after", "next_mixture_weight", "theory_star_weights"]

BETA_RULES = ("uniform", "constant")
#: The reference's guard in h = (1 - D) / (D + 1e-8) (adagan.py, ``_update_data_weights``).
RATIO_EPS = 1e-8


def next_mixture_weight(trained: int, rule: str = "uniform", beta_constant: float = 0.5) -> float:
    """beta of the next component, ``trained`` components being trained already (``_next_mixture_weight``)."""
    if trained == 0:
        return 1.0
    if rule == "uniform":
        return 1.0 / (trained + 1.0)
    if rule == "constant":
        if not 0.0 < beta_constant <= 1.0:
            raise ValueError(f"Invalid adagan.beta_constant: {beta_constant}; expected 0 < beta_constant <= 1")
        return float(beta_constant)
    raise ValueError(f"Invalid adagan.beta: {rule!r}; expected one of {', '.join(BETA_RULES)}")


def mixture_weights_after(weights: Sequence[float], beta: float) -> list[float]:
    """The mixture's weights once a component of weight beta joins: ((1 - beta) * old weights, beta)."""
    if not weights:
        return [float(beta)]
    return [float(w) * (1.0 - beta) for w in weights] + [float(beta)]


def density_ratios(prob_real: Tensor) -> Tensor:
    """h = (1 - D) / (D + 1e-8), float64, from the classifier's probabilities of "real" on the training points."""
    p = prob_real.detach().to(torch.float64).flatten()
    return (1.0 - p) / (p + RATIO_EPS)


def theory_star_weights(ratios: Tensor, beta: float) -> tuple[Tensor, float | None]:
    """The data weights of the next component (float64, sum 1) and lambda* (None: uniform weights were returned).

    With finite h >= 0 and 0 < beta <= 1 the scan always finds a lambda in exact arithmetic (lambda_0 >= (1 - beta)
    h_(0), and when lambda_i overshoots (1 - beta) h_(i+1), lambda_{i+1} is a convex combination of the two, so it
    passes the lower test at i + 1). In float64 it can fail, or give a lambda with every weight 0, when N beta
    vanishes beside (1 - beta) h (e.g. beta = 1e-18, so that 1 - beta rounds to 1); then, as the reference does when
    its search fails, the weights are uniform.

    Args:
        ratios: h_i >= 0, one per training point (estimates of dP_mixture / dP_data at the point).
        beta: the next component's mixture weight, 0 < beta <= 1. With beta = 1 the formula gives uniform weights.
    """
    h = ratios.detach().to(torch.float64).flatten().cpu()
    n = h.numel()
    if n == 0:
        raise ValueError("Invalid density ratios: empty; expected one per training point")
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"Invalid beta: {beta}; expected 0 < beta <= 1")
    if not bool(torch.isfinite(h).all()) or bool((h < 0).any()):
        raise ValueError("Invalid density ratios: expected finite values >= 0")
    ordered = torch.sort(h).values
    cumulative = torch.cumsum(ordered, 0)
    scale = 1.0 - beta
    # The reference's scan, vectorised: every candidate lambda at once, the first i that passes its test wins.
    index = torch.arange(1, n + 1, dtype=torch.float64)
    lambdas = (n * beta + scale * cumulative) / index
    upper = torch.cat([scale * ordered[1:], torch.full((1,), float("inf"), dtype=torch.float64)])
    passes = (scale * ordered <= lambdas) & (lambdas <= upper)
    hits = torch.nonzero(passes).flatten()
    found = float(lambdas[hits[0]]) if hits.numel() else None
    if found is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64), None
    weights = torch.clamp(found - scale * h, min=0.0) / (n * beta)
    total = float(weights.sum())
    if not total > 0.0:  # lambda* = 0 with beta < 1 would zero every point; the reference would divide by zero
        return torch.full((n,), 1.0 / n, dtype=torch.float64), None
    return weights / total, found
