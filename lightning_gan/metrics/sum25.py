"""Sum-to-25 metrics: read the five digits of each generated tuple with the shipped MNIST classifier, then count.

    scores, histogram = score_tuples(fake, train_combinations, heldout_combinations)   # fake: (N, 5, 28, 28)
    plot_sum_histograms({"ema": histogram}, "sums.png")

As the reference's ``visual-hyperplane/analyze/count.py`` (the argmax digit and its softmax of each of the five
channels) and ``plot_barchart.py`` (the distribution of digit sums, the recall of training and held-out
combinations). Values, all shares of the N tuples unless said otherwise:

- ``sum25``: the read digits sum to exactly 25; ``sum25_confident``: they do and all five digits are read with a
  max softmax >= ``threshold`` (a blurry digit read as the right class does not count);
- ``confident``: all five digits read with max softmax >= ``threshold``;
- ``train_combos``, ``heldout_combos``, ``neither``: the read tuple is a training combination, a held-out one, or
  neither (they add up to 1; the first two add up to ``sum25``): a generator that only copies the training
  combinations has ``heldout_combos`` 0, one that generalises has ``heldout_combos / sum25`` near 1127 / 5631 = 0.2;
- ``train_recall``, ``heldout_recall``: distinct training (held-out) combinations read at least once, as a share of
  the 4,504 (1,127) combinations (the reference's recall; it grows with N).

The counts kept are one per 5-digit number (100,000 int64, twice): everything above, the histogram included, follows
from them, and in training they are summed over ranks in one all-reduce (:class:`Sum25Metric`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_gan.data.sum25 import NUM_DIGITS, TARGET_SUM, tuple_codes
from lightning_gan.metrics.classifier import load_classifier
from lightning_gan.metrics.features import DigitFeatureExtractor

__all__ = ["DEFAULT_THRESHOLD", "SUM25_KEYS", "Sum25Metric", "Sum25Scorer", "classify_tuples", "digit_extractor",
           "format_sum25", "plot_sum_histograms", "score_tuples", "sum25_values", "sum_histogram", "tuple_counts"]

DEFAULT_THRESHOLD = 0.9
NUM_CODES = 10 ** NUM_DIGITS
MAX_SUM = 9 * NUM_DIGITS
SUM25_KEYS = ("sum25", "sum25_confident", "confident", "train_combos", "heldout_combos", "neither", "train_recall",
              "heldout_recall")
_DIGIT_SUMS = torch.tensor([sum(map(int, f"{code:05d}")) for code in range(NUM_CODES)])


def digit_extractor(weights: str | Path | None = None) -> DigitFeatureExtractor:
    """The MNIST classifier's logits (the shipped weights unless ``weights``), kept out of any ``state_dict``."""
    classifier, _ = load_classifier(weights, "mnist")
    return DigitFeatureExtractor(classifier, "logits")


def _check_tuples(images: Tensor) -> None:
    if images.dim() != 4 or images.shape[1:] != (NUM_DIGITS, 28, 28):
        raise ValueError(f"Invalid sum-25 samples: {tuple(images.shape)}; expected (N, {NUM_DIGITS}, 28, 28), five "
                         f"28x28 digits stacked as channels (Sum25DataModule's layout)")


@torch.no_grad()
def classify_tuples(extractor: DigitFeatureExtractor, images: Tensor, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """(digits, confidence), int64 and float (N, 5): the argmax class and max softmax of each of the five channels."""
    _check_tuples(images)
    device = next(iter(extractor.net.parameters())).device
    digits, confidence = [], []
    for chunk in images.split(max(1, batch_size // NUM_DIGITS)):
        logits = extractor(chunk.reshape(-1, 1, 28, 28).to(device)).float()
        top, label = logits.softmax(-1).max(-1)
        digits.append(label.reshape(-1, NUM_DIGITS).cpu())
        confidence.append(top.reshape(-1, NUM_DIGITS).cpu())
    return torch.cat(digits), torch.cat(confidence)


def tuple_counts(digits: Tensor, confidence: Tensor, threshold: float = DEFAULT_THRESHOLD) -> tuple[Tensor, Tensor]:
    """(all, confident): int64 (100000,) counts of each read 5-digit tuple, all of them and those whose five digits
    all have max softmax >= ``threshold``."""
    codes = tuple_codes(digits)
    sure = (confidence >= threshold).all(-1)
    return (torch.bincount(codes, minlength=NUM_CODES),
            torch.bincount(codes[sure], minlength=NUM_CODES))


def sum_histogram(counts: Tensor) -> Tensor:
    """int64 (46,): number of tuples whose digits sum to 0, 1, ..., 45."""
    return torch.zeros(MAX_SUM + 1, dtype=torch.int64).index_add_(0, _DIGIT_SUMS, counts.long().cpu())


def sum25_values(counts: Tensor, confident_counts: Tensor, train_combinations: Tensor,
                 heldout_combinations: Tensor) -> dict[str, float]:
    """The values of :data:`SUM25_KEYS` from the counts of :func:`tuple_counts` (see the module docstring)."""
    counts, confident_counts = counts.long().cpu(), confident_counts.long().cpu()
    total = int(counts.sum())
    if total == 0:
        raise ValueError("Invalid counts: no tuple counted; score at least one sample")
    at_target = _DIGIT_SUMS == TARGET_SUM
    train, heldout = counts[tuple_codes(train_combinations)], counts[tuple_codes(heldout_combinations)]
    values = {
        "sum25": counts[at_target].sum(),
        "sum25_confident": confident_counts[at_target].sum(),
        "confident": confident_counts.sum(),
        "train_combos": train.sum(),
        "heldout_combos": heldout.sum(),
    }
    out = {key: float(value) / total for key, value in values.items()}
    out["neither"] = 1.0 - out["train_combos"] - out["heldout_combos"]
    out["train_recall"] = float((train > 0).sum()) / len(train_combinations)
    out["heldout_recall"] = float((heldout > 0).sum()) / len(heldout_combinations)
    return {key: out[key] for key in SUM25_KEYS}


def score_tuples(images: Tensor, train_combinations: Tensor, heldout_combinations: Tensor,
                 extractor: DigitFeatureExtractor | None = None, threshold: float = DEFAULT_THRESHOLD,
                 batch_size: int = 1000) -> tuple[dict[str, float], list[int]]:
    """(values, histogram of sums) of tuples (N, 5, 28, 28) in [-1, 1]; ``extractor`` defaults to the shipped one."""
    digits, confidence = classify_tuples(extractor or digit_extractor(), images, batch_size)
    counts, confident = tuple_counts(digits, confidence, threshold)
    return (sum25_values(counts, confident, train_combinations, heldout_combinations),
            sum_histogram(counts).tolist())


def format_sum25(values: Mapping[str, float]) -> str:
    """``sum25 96.0% (confident 88.1%)  combos train 0.0% held-out 96.0% neither 4.0%  recall train 0.00 held-out
    1.00`` (one line)."""
    return (f"sum25 {100 * values['sum25']:.1f}% (confident {100 * values['sum25_confident']:.1f}%)  combos train "
            f"{100 * values['train_combos']:.1f}% held-out {100 * values['heldout_combos']:.1f}% neither "
            f"{100 * values['neither']:.1f}%  recall train {values['train_recall']:.2f} held-out "
            f"{values['heldout_recall']:.2f}")


def plot_sum_histograms(histograms: Mapping[str, Sequence[int] | Tensor], path: str | Path,
                        title: str | None = None) -> Path:
    """Bar chart of the distribution of digit sums (% of tuples), one bar series per entry, 25 marked (as the talk's
    figure, ``plot_barchart.py``'s ``sum_digits_dist``); returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width = 1.0 / (len(histograms) + 1)
    sums = torch.arange(MAX_SUM + 1)
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    try:
        for i, (name, counts) in enumerate(histograms.items()):
            counts = torch.as_tensor(counts, dtype=torch.float64)
            share = 100 * counts / max(1.0, float(counts.sum()))
            ax.bar((sums + (i - (len(histograms) - 1) / 2) * width).numpy(), share.numpy(), width=width, alpha=0.7,
                   label=name)
        ax.axvline(TARGET_SUM, color="black", linestyle=":", linewidth=1)
        ax.set_xticks([0, 10, 20, TARGET_SUM, 30, 40])
        ax.set_xticklabels(["0", "10", "20", str(TARGET_SUM), "30", "40"])
        for label in ax.get_xticklabels():
            if label.get_text() == str(TARGET_SUM):
                label.set_fontweight("bold")
        ax.set_xlim(-0.5, MAX_SUM + 0.5)
        ax.set_xlabel("sum of the five digits read by the MNIST classifier")
        ax.set_ylabel("% of tuples")
        if title:
            ax.set_title(title)
        ax.legend(loc="upper left", fontsize="small")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


class Sum25Metric(Metric):
    """The values of :data:`SUM25_KEYS` as a torchmetrics metric: ``update(fake)`` on each rank, ``compute()`` on
    every rank (the two count vectors are summed over ranks). The classifier is kept out of ``state_dict``.

    Args:
        train_combinations: int64 (K, 5) training combinations (``Sum25DataModule.train_combinations``).
        heldout_combinations: int64 (K', 5) held-out combinations.
        weights: MNIST classifier file (None: the shipped one).
        threshold: Max-softmax a digit needs to count as confidently read, in (0, 1].
        batch_size: Digit images per classifier forward.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, train_combinations: Tensor, heldout_combinations: Tensor, weights: str | Path | None = None,
                 threshold: float = DEFAULT_THRESHOLD, batch_size: int = 1000) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"Invalid threshold: {threshold}; expected 0 < threshold <= 1")
        super().__init__()
        self.extractor = digit_extractor(weights)
        self.train_combinations, self.heldout_combinations = train_combinations, heldout_combinations
        self.threshold, self.batch_size = threshold, batch_size
        self.add_state("counts", torch.zeros(NUM_CODES, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("confident_counts", torch.zeros(NUM_CODES, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, images: Tensor) -> None:
        digits, confidence = classify_tuples(self.extractor, images, self.batch_size)
        counts, confident = tuple_counts(digits, confidence, self.threshold)
        self.counts += counts.to(self.counts.device)
        self.confident_counts += confident.to(self.counts.device)

    def compute(self) -> dict[str, float]:
        return sum25_values(self.counts, self.confident_counts, self.train_combinations, self.heldout_combinations)


@dataclass(frozen=True)
class Sum25Scorer:
    """``lightning-gan evaluate``'s scorer of sum-25 tuples: ``scorer(images)`` -> (values, histogram of sums)."""

    train_combinations: Tensor
    heldout_combinations: Tensor
    extractor: DigitFeatureExtractor
    threshold: float = DEFAULT_THRESHOLD
    batch_size: int = 1000

    def __call__(self, images: Tensor) -> tuple[dict[str, float], list[int]]:
        return score_tuples(images, self.train_combinations, self.heldout_combinations, self.extractor,
                            self.threshold, self.batch_size)
