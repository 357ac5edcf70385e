"""``lightning-gan evaluate``: FID / KID / IS (or the toy metrics) of a trained run's generators, from a checkpoint.

    lightning-gan evaluate --ckpt runs/mnist_extragradient/checkpoints/last.ckpt --num-samples 10000
    lightning-gan evaluate --ckpt last.ckpt --generator ema --extractor inception --weights pt_inception.pth

The module and the data module are rebuilt from the run's config and the checkpoint's weights loaded strictly
(:mod:`lightning_gan.run_files`): the config stored in the checkpoint, else (older checkpoints) the newest
``<run dir>/version_<k>/config.yaml``; ``--config`` overrides both.

Sum-to-25 runs (:class:`~lightning_gan.data.Sum25DataModule`) get the task's metrics instead (``--metrics sum25``,
:mod:`lightning_gan.metrics.sum25`): a line for the real tuples of ``--real-split`` (the classifier's ceiling), one per
generator, and the distribution of digit sums as ``<out stem>.sums.png`` next to the JSON. Stacked MNIST runs
(:class:`~lightning_gan.data.StackedMNISTDataModule`) get ``--metrics stacked`` instead
(:mod:`lightning_gan.metrics.stacked_mnist`: modes covered out of 1,000 and KL to the uniform), real line first.

``--two-sample`` adds two tests of H0 "generated and real samples come from one distribution" per generator
(:mod:`lightning_gan.metrics.two_sample`): an MMD permutation test (Gaussian kernel, median-heuristic bandwidth) and
a classifier two-sample test (an MLP trained on half of the generated and real features, its accuracy on the other
half, binomial p-value), on the first M (``--two-sample-num-samples``, default min(N, 2000)) of the same N generated
and N real samples the other metrics use, in the feature space of ``--two-sample-features``: ``points`` (2-D
mixtures, raw), ``classifier`` (the digit classifier's penultimate features; sum-25 tuples: the five digits'
features side by side) or ``inception`` (pool3, 2048). A p-value below 0.05 says M samples tell the generator from
the data.

Everything that can be checked without data (arguments, checkpoint file, config, generators, the
extractor's weights) is checked before any data is loaded or any sample drawn; bad input is one line
``lightning-gan: error: ...`` and exit code 2. Real features are cached by torch-fidelity under a name
built from the data module class, split, N, seed and a hash of the real images themselves (so that,
e.g., MNIST and Fashion-MNIST through one class never share an entry), plus the weights' hash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, get_args

import torch
from torch import Tensor

from lightning_gan.cli_errors import PROG, USER_ERRORS, OneLineArgumentParser, fail
from lightning_gan.data import GameDataModule, GaussianMixtureDataModule, StackedMNISTDataModule, Sum25DataModule
from lightning_gan.metrics import ExtractorSpec, fidelity_metrics, mixture_metrics, resolve_extractor
from lightning_gan.metrics.classifier import DATASETS
from lightning_gan.metrics.features import DigitFeatureExtractor, InceptionFeatureExtractor
from lightning_gan.metrics.fidelity import EXTRACTORS, METRICS
from lightning_gan.metrics.image_metrics import default_extractor
from lightning_gan.metrics.stacked_mnist import StackedMNISTScorer, format_stacked
from lightning_gan.metrics.sum25 import (DEFAULT_THRESHOLD, Sum25Scorer, digit_extractor, format_sum25,
                                         plot_sum_histograms)
from lightning_gan.metrics.two_sample import MIN_SAMPLES, classifier_two_sample_test, mmd_permutation_test
from lightning_gan.module import GANModule, GeneratorChoice
from lightning_gan.run_files import (check_overrides, check_run_arguments, find_config, kept_generators, load_run,
                                     load_weights, read_checkpoint, run_config)

__all__ = ["Scorer", "TwoSamplePlan", "build_parser", "evaluate", "find_config", "format_line",
           "format_two_sample_line", "load_run", "load_weights", "main", "real_cache_name"]

GENERATORS: tuple[str, ...] = get_args(GeneratorChoice)
TOY_METRICS = ("modes", "mmd", "energy")  # modes: modes covered and share of high-quality samples
SUM25_METRICS = ("sum25",)  # Sum25DataModule: digits read by the MNIST classifier (lightning_gan.metrics.sum25)
STACKED_METRICS = ("stacked",)  # StackedMNISTDataModule: modes /1000 and KL (lightning_gan.metrics.stacked_mnist)
TWO_SAMPLE_FEATURES = ("auto", "classifier", "inception", "points")
TWO_SAMPLE_DEFAULT_MAX = 2000  # default M = min(N, 2000): MMD's pooled kernel matrix holds (2M)^2 float64 numbers
TWO_SAMPLE_LEVEL = 0.05


def build_parser() -> argparse.ArgumentParser:
    """The options of ``lightning-gan evaluate`` (abbreviations off: ``--data.*`` overrides pass through)."""
    p = OneLineArgumentParser(prog=f"{PROG} evaluate", allow_abbrev=False,
                description="FID / KID / IS (images) or mode coverage, MMD and energy distance (2-D mixtures) of a "
                            "trained run's generators. Further --model.* / --data.* arguments override the run's "
                            "config (e.g. --data.init_args.root when the data moved).")
    p.add_argument("--ckpt", required=True, type=Path, metavar="PATH", help="checkpoint written by `lightning-gan fit`")
    p.add_argument("--metrics", metavar="LIST", help="comma list: fid,kid,is (images), modes,mmd,energy "
                   "(2-D mixtures), sum25 (Sum25DataModule; also writes <out stem>.sums.png) or stacked "
                   "(StackedMNISTDataModule); default: all of the data's kind")
    p.add_argument("--num-samples", type=int, default=10_000, metavar="N",
                   help="N generated and N real samples (default 10000)")
    p.add_argument("--generator", action="append", metavar="NAME",
                   help="live, uniform, ema (repeatable or comma list; default: all the checkpoint keeps)")
    p.add_argument("--extractor", choices=EXTRACTORS, help="default: the digit classifier of MNIST, Fashion-MNIST "
                   "or 8x8 digits data, inception otherwise")
    p.add_argument("--weights", type=Path, metavar="FILE", help="extractor weights file (inception: else "
                   "$LIGHTNING_GAN_INCEPTION_WEIGHTS, then torch hub's cache; digits: else the shipped file)")
    p.add_argument("--real-split", choices=("train", "test"), default="train",
                   help="real samples from the training or the held-out split")
    p.add_argument("--config", type=Path, metavar="YAML",
                   help="the run's config.yaml (default: the one stored in the checkpoint, else the "
                   "newest version_<k>/config.yaml)")
    p.add_argument("--out", type=Path, metavar="JSON", help="results JSON (default: <ckpt dir>/<ckpt stem>.eval.json)")
    p.add_argument("--batch-size", type=int, default=256, metavar="B", help="generator and feature-extractor batch")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where generators and extractor run (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the latents and of KID's subsets")
    p.add_argument("--kid-subset-size", type=int, metavar="K", help="default: min(1000, N)")
    p.add_argument("--kid-subsets", type=int, default=100, metavar="M", help="KID subsets (default 100)")
    p.add_argument("--is-splits", type=int, default=10, metavar="M", help="IS splits (default 10)")
    p.add_argument("--confidence", type=float, default=DEFAULT_THRESHOLD, metavar="P",
                   help=f"sum25, stacked: max softmax each digit needs for a tuple to count as confidently read "
                        f"(default {DEFAULT_THRESHOLD})")
    p.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help="real-feature cache (default: $TORCH_HOME/fidelity_cache)")
    p.add_argument("--two-sample", action="store_true",
                   help="also run two-sample tests per generator (MMD permutation test and classifier two-sample "
                        "test, each a statistic and a p-value): can M samples tell the generator from the data?")
    p.add_argument("--two-sample-features", choices=TWO_SAMPLE_FEATURES, default="auto",
                   help="feature space of the two-sample tests: points (2-D mixtures), classifier (the digit "
                        "classifier's features; --extractor picks which), inception (pool3; --weights when "
                        "--extractor is inception, else $LIGHTNING_GAN_INCEPTION_WEIGHTS or torch hub's cache); "
                        "auto: points for 2-D data, the digit classifier for digit data, inception otherwise")
    p.add_argument("--two-sample-num-samples", type=int, metavar="M",
                   help=f"samples per side of the two-sample tests: the first M of the N generated and N real "
                        f"samples (default min(N, {TWO_SAMPLE_DEFAULT_MAX}); MMD's kernel matrix is (2M)^2 float64)")
    p.add_argument("--permutations", type=int, default=500, metavar="P",
                   help="MMD test: random relabellings of the pooled sample (default 500; the smallest p-value "
                        "is 1 / (P + 1))")
    return p


def _names(values: Sequence[str] | None) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``, first occurrence kept."""
    return list(dict.fromkeys(v.strip() for value in values or () for v in value.split(",") if v.strip()))


def _check_arguments(args: argparse.Namespace, overrides: list[str]) -> None:
    """Everything checkable from the arguments alone, before the config or the checkpoint is read."""
    check_overrides(overrides, "evaluate")
    unknown = [m for m in _names([args.metrics] if args.metrics else None)
               if m not in METRICS + TOY_METRICS + SUM25_METRICS + STACKED_METRICS]
    if unknown:
        fail(f"Invalid metrics: {unknown}; expected a comma list of {', '.join(METRICS)} (images), "
             f"{', '.join(TOY_METRICS)} (2-D mixtures), {', '.join(SUM25_METRICS)} (Sum25DataModule) or "
             f"{', '.join(STACKED_METRICS)} (StackedMNISTDataModule)")
    if not 0 < args.confidence <= 1:
        fail(f"Invalid --confidence: {args.confidence}; expected 0 < P <= 1")
    unknown = [g for g in _names(args.generator) if g not in GENERATORS]
    if unknown:
        fail(f"Invalid generator: {unknown}; expected live, uniform or ema")
    for name, low in (("num_samples", 2), ("batch_size", 1), ("kid_subsets", 1), ("is_splits", 1)):
        if getattr(args, name) < low:
            fail(f"Invalid --{name.replace('_', '-')}: {getattr(args, name)}; expected an integer >= {low}")
    if args.two_sample:
        m = _two_sample_size(args)
        if not MIN_SAMPLES <= m <= args.num_samples:
            fail(f"Invalid two-sample size: M = {m} (--two-sample-num-samples, default min(N, "
                 f"{TWO_SAMPLE_DEFAULT_MAX})); the two-sample tests need {MIN_SAMPLES} <= M <= N = "
                 f"{args.num_samples} (--num-samples) samples per side")
        if args.permutations < 1:
            fail(f"Invalid --permutations: {args.permutations}; expected an integer >= 1")
    elif args.two_sample_features != "auto" or args.two_sample_num_samples is not None:
        fail("Invalid --two-sample-features/--two-sample-num-samples without --two-sample; add --two-sample")
    check_run_arguments(args.device, args.ckpt, args.config)


# -- samples and scores -----------------------------------------------------------------------------

def real_cache_name(datamodule: GameDataModule, split: str, real: Tensor) -> str:
    """Cache entry of these real samples: readable parts plus a hash of the samples themselves."""
    digest = hashlib.sha256(real.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:12]
    return f"lightning-gan-{type(datamodule).__name__}-{split}-n{len(real)}-seed{datamodule.seed}-{digest}"


@dataclass(frozen=True)
class Scorer:
    """How every generator of one run is scored against the same real samples.

    ``spec`` None means 2-D mixture data, scored by :func:`~lightning_gan.metrics.mixture_metrics`
    (``modes``/``std`` of the data module); ``sum25`` set means sum-25 tuples, read by the digit classifier of
    ``spec`` (:class:`~lightning_gan.metrics.sum25.Sum25Scorer`); otherwise torch-fidelity with that extractor.
    """

    metrics: tuple[str, ...]
    spec: ExtractorSpec | None = None
    modes: Tensor | None = None
    std: float = 0.0
    device: str = "cpu"
    batch_size: int = 256
    seed: int = 0
    kid_subset_size: int = 1000
    kid_subsets: int = 100
    is_splits: int = 10
    cache_name: str | None = None
    cache_root: Path | None = None
    sum25: Sum25Scorer | None = None
    stacked: StackedMNISTScorer | None = None  # stacked MNIST: modes and KL of the digit triples read by ``spec``

    def __call__(self, samples: Tensor, real: Tensor) -> dict[str, float]:
        if self.stacked is not None:
            return self.stacked(samples)
        if self.sum25 is not None:
            return self.sum25(samples)[0]
        if self.spec is None:
            assert self.modes is not None, "mixture scoring needs the modes"
            needs_reference = any(m in self.metrics for m in ("mmd", "energy"))
            values = mixture_metrics(samples, self.modes, self.std, real if needs_reference else None)
            keep = {"modes": ("modes_covered", "num_modes", "high_quality"), "mmd": ("mmd2",), "energy": ("energy",)}
            return {key: values[key] for m in self.metrics for key in keep[m]}
        return fidelity_metrics(samples, real, self.spec, self.metrics, device=self.device,
                                batch_size=self.batch_size, kid_subsets=self.kid_subsets,
                                kid_subset_size=self.kid_subset_size, is_splits=self.is_splits, seed=self.seed,
                                real_cache_name=self.cache_name, cache_root=self.cache_root)


def format_line(which: str, values: dict[str, float], note: str) -> str:
    """``ema: fid 12.34  kid 0.0123 ± 0.0011  is 8.12 ± 0.05  (N=10000, extractor mnist, step 5000)``."""
    parts = []
    if "fid" in values:
        parts.append(f"fid {values['fid']:.2f}")
    if "kid_mean" in values:
        parts.append(f"kid {values['kid_mean']:.4g} ± {values['kid_std']:.2g}")
    if "is_mean" in values:
        parts.append(f"is {values['is_mean']:.2f} ± {values['is_std']:.2f}")
    if "modes_covered" in values:
        parts.append(f"modes {values['modes_covered']:.0f}/{values['num_modes']:.0f}  "
                     f"high quality {100 * values['high_quality']:.1f}%")
    if "mmd2" in values:
        parts.append(f"mmd2 {values['mmd2']:.4f}")
    if "energy" in values:
        parts.append(f"energy {values['energy']:.4f}")
    if "sum25" in values:
        parts.append(format_sum25(values))
    if "stacked_modes" in values:
        parts.append(format_stacked(values))
    return f"{which}: {'  '.join(parts)}  ({note})"


# -- two-sample tests ---------------------------------------------------------------------------------

def _two_sample_size(args: argparse.Namespace) -> int:
    if args.two_sample_num_samples is not None:
        return args.two_sample_num_samples
    return min(args.num_samples, TWO_SAMPLE_DEFAULT_MAX)


@dataclass(frozen=True)
class TwoSamplePlan:
    """The two-sample tests of ``--two-sample``: M samples per side, in one feature space.

    ``features`` is ``points`` (raw 2-D samples, ``network`` None), ``classifier`` (``network`` a digit data set:
    its classifier's penultimate features; on sum-25 tuples the five digits' features concatenated) or
    ``inception`` (pool3, 2048 features).
    """

    features: str
    network: str | None
    weights: Path | None
    num_samples: int
    permutations: int = 500
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 256
    per_digit: bool = False  # sum-25 tuples: each channel is one 28x28 digit

    @property
    def label(self) -> str:
        return self.features if self.network is None else f"{self.features} {self.network}"

    def extractor(self) -> torch.nn.Module | None:
        """The feature network (frozen, eval mode, on ``device``); None for raw points."""
        if self.features == "points":
            return None
        if self.features == "inception":
            return InceptionFeatureExtractor("2048", self.weights).to(self.device)
        return DigitFeatureExtractor.from_file(self.network, self.weights, "features").to(self.device)

    @torch.no_grad()
    def embed(self, network: torch.nn.Module | None, samples: Tensor) -> Tensor:
        """(M, D) float64 features of the first M samples."""
        samples = samples[: self.num_samples]
        if network is None:
            return samples.reshape(samples.shape[0], -1).double().cpu()
        if self.per_digit:  # (M, 5, 28, 28) -> (5M, 1, 28, 28) -> (M, 5 * features)
            features = self.embed_images(network, samples.reshape(-1, 1, *samples.shape[2:]))
            return features.reshape(samples.shape[0], -1)
        return self.embed_images(network, samples)

    def embed_images(self, network: torch.nn.Module, images: Tensor) -> Tensor:
        out = [network(chunk.to(self.device)).double().cpu() for chunk in images.split(self.batch_size)]
        return torch.cat(out).reshape(images.shape[0], -1)

    def __call__(self, fake: Tensor, real: Tensor) -> dict[str, dict[str, Any]]:
        """Both tests of generated against real features: ``{"mmd": {...}, "classifier": {...}}``."""
        mmd = mmd_permutation_test(fake, real, permutations=self.permutations, seed=self.seed)
        c2st = classifier_two_sample_test(fake, real, seed=self.seed)
        return {"mmd": mmd.as_dict(), "classifier": c2st.as_dict()}


def _plan_two_sample(args: argparse.Namespace, datamodule: GameDataModule, scorer: Scorer) -> TwoSamplePlan:
    """The feature space of ``--two-sample`` checked against the data, and its network's weights resolved."""
    name = type(datamodule).__name__
    asked = args.two_sample_features
    common = {"num_samples": _two_sample_size(args), "permutations": args.permutations, "seed": args.seed,
              "device": args.device, "batch_size": args.batch_size}
    if isinstance(datamodule, GaussianMixtureDataModule):
        if asked not in ("auto", "points"):
            raise ValueError(f"Invalid --two-sample-features: {asked!r} for {name}: its samples are 2-D points, not "
                             f"images; use points (or auto)")
        return TwoSamplePlan("points", None, None, **common)
    if asked == "points":
        raise ValueError(f"Invalid --two-sample-features: 'points' for {name}: its samples are images (raw points "
                         f"are for 2-D mixtures); use classifier or inception (or auto)")
    fid_network = scorer.spec.extractor if scorer.spec is not None else None
    if isinstance(datamodule, StackedMNISTDataModule):  # three digits as channels: each read by the MNIST classifier
        if asked == "inception":
            raise ValueError(f"Invalid --two-sample-features: 'inception' for {name}: its channels are three "
                             f"digits, read one by one; use classifier (or auto)")
        return TwoSamplePlan("classifier", "mnist", scorer.spec.weights if scorer.spec else None, per_digit=True,
                             **common)
    if isinstance(datamodule, Sum25DataModule):
        if asked == "inception":
            raise ValueError(f"Invalid --two-sample-features: 'inception' for {name}: its samples are five digits "
                             f"stacked as channels, not an image Inception reads; use classifier (or auto)")
        return TwoSamplePlan("classifier", "mnist", scorer.spec.weights if scorer.spec else None, per_digit=True,
                             **common)
    default = default_extractor(datamodule)
    if asked == "auto":
        asked = "inception" if default == "inception" else "classifier"
    if asked == "inception":
        weights = args.weights if fid_network == "inception" else None
        return TwoSamplePlan("inception", None, resolve_extractor("inception", weights).weights, **common)
    network = fid_network if fid_network in DATASETS else default
    if network not in DATASETS:
        raise ValueError(f"Invalid --two-sample-features: 'classifier' for {name}: no digit classifier fits its "
                         f"images; use inception, or name a digit classifier with --extractor "
                         f"({', '.join(DATASETS)})")
    weights = args.weights if fid_network == network else None
    return TwoSamplePlan("classifier", network, resolve_extractor(network, weights).weights, **common)


def format_two_sample_line(which: str, test: dict[str, Any], note: str) -> str:
    """``ema: mmd two-sample test: MMD^2 0.0123, p = 0.002 -> told apart at 0.05  (bandwidth 3.2, 500
    permutations; M=2000 vs 2000, features classifier mnist, step 300)``."""
    p = f"= {test['p_value']:.3g}" if test["p_value"] > 0 else "< 1e-300"  # binomial tails underflow to 0.0
    if test["test"] == "mmd":
        head = f"mmd two-sample test: MMD^2 {test['statistic']:.4g}, p {p}"
        detail = f"bandwidth {test['detail']['bandwidth']:.3g}, {test['detail']['permutations']} permutations"
    else:
        head = f"classifier two-sample test: accuracy {test['statistic']:.3f}, p {p}"
        detail = f"{test['detail']['correct']}/{test['detail']['held_out']} held-out correct"
    verdict = "told apart" if test["p_value"] < TWO_SAMPLE_LEVEL else "not told apart"
    return (f"{which}: {head} -> {verdict} at {TWO_SAMPLE_LEVEL}  ({detail}; M={test['num_x']} vs {test['num_y']}, "
            f"{note})")


# -- the command --------------------------------------------------------------------------------------

def _note(message: str) -> None:
    print(f"{PROG} evaluate: {message}", file=sys.stderr, flush=True)


def _digit_task_extractor(args: argparse.Namespace, datamodule: GameDataModule, asked: Sequence[str],
                          allowed: Sequence[str], what: str) -> ExtractorSpec:
    """The MNIST classifier that reads a digit task's channels (sum-to-25, stacked MNIST), once the metrics asked
    are the task's own and no other extractor is."""
    if set(asked) - set(allowed):
        raise ValueError(f"Invalid metrics for {type(datamodule).__name__} ({what}): {list(asked)}; expected "
                         f"{', '.join(allowed)}")
    if args.extractor not in (None, "mnist"):
        raise ValueError(f"Invalid --extractor: {args.extractor!r} for {type(datamodule).__name__}; its digits are read "
                         "by the MNIST classifier ('mnist', the default)")
    return resolve_extractor("mnist", args.weights)


def _plan(args: argparse.Namespace, module: GANModule, datamodule: GameDataModule) -> tuple[list[str], Scorer]:
    """Generators and scorer, checked against the run; resolves (and so checks) the extractor's weights."""
    kept = kept_generators(module)
    generators = _names(args.generator) or kept
    missing = [g for g in generators if g not in kept]
    if missing:
        raise ValueError(f"Invalid generator: {missing}; this run keeps {', '.join(kept)} (averages come from the "
                         f"run's uniform_average / ema_decay)")
    asked = tuple(_names([args.metrics] if args.metrics else None))
    if isinstance(datamodule, GaussianMixtureDataModule):
        if args.extractor is not None or args.weights is not None:
            raise ValueError(f"Invalid --extractor/--weights for {type(datamodule).__name__}: 2-D points are scored "
                             f"by the toy metrics ({', '.join(TOY_METRICS)}), without a feature extractor")
        if set(asked) - set(TOY_METRICS):
            raise ValueError(f"Invalid metrics for {type(datamodule).__name__} (2-D points): {list(asked)}; expected "
                             f"a subset of {', '.join(TOY_METRICS)}")
        return generators, Scorer(asked or TOY_METRICS, modes=datamodule.modes, std=datamodule.std)
    if isinstance(datamodule, Sum25DataModule):
        spec = _digit_task_extractor(args, datamodule, asked, SUM25_METRICS, "five digits stacked as channels")
        task = Sum25Scorer(datamodule.train_combinations, datamodule.heldout_combinations,
                           digit_extractor(spec.weights).to(args.device), args.confidence, args.batch_size)
        return generators, Scorer(SUM25_METRICS, spec, device=args.device, batch_size=args.batch_size, seed=args.seed,
                                  sum25=task)
    if isinstance(datamodule, StackedMNISTDataModule):
        spec = _digit_task_extractor(args, datamodule, asked, STACKED_METRICS, "three digits stacked as channels")
        task = StackedMNISTScorer(digit_extractor(spec.weights).to(args.device), args.confidence, args.batch_size)
        return generators, Scorer(STACKED_METRICS, spec, device=args.device, batch_size=args.batch_size,
                                  seed=args.seed, stacked=task)
    if set(asked) - set(METRICS):
        raise ValueError(f"Invalid metrics for image data: {list(asked)}; expected a subset of {', '.join(METRICS)}")
    metrics = asked or METRICS
    kid_subset_size = args.kid_subset_size if args.kid_subset_size is not None else min(1000, args.num_samples)
    if "kid" in metrics and not 2 <= kid_subset_size <= args.num_samples:
        raise ValueError(f"Invalid --kid-subset-size: {kid_subset_size}; expected 2 <= kid_subset_size <= N = "
                         f"{args.num_samples} (--num-samples)")
    if "is" in metrics and args.is_splits > args.num_samples:
        raise ValueError(f"Invalid --is-splits: {args.is_splits}; expected at most N = {args.num_samples}")
    spec = resolve_extractor(args.extractor or default_extractor(datamodule), args.weights)
    return generators, Scorer(metrics, spec, device=args.device, batch_size=args.batch_size, seed=args.seed,
                              kid_subset_size=kid_subset_size, kid_subsets=args.kid_subsets,
                              is_splits=args.is_splits, cache_root=args.cache_dir)


def evaluate(args: argparse.Namespace, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Runs the evaluation described by the parsed arguments; prints one line per generator, returns the report."""
    ckpt = args.ckpt.resolve()
    checkpoint = read_checkpoint(ckpt)
    config = run_config(ckpt, args.config, checkpoint)
    if args.config is None:
        _note(f"config {config.label}" if config.path is None
              else f"config {config.path} (the checkpoint stores none: newest version of the run; pass --config to "
                   "choose)")
    module, datamodule = load_run(ckpt, config, overrides)
    generators, scorer = _plan(args, module, datamodule)  # the extractor's weights are checked here, before any data
    two_sample = _plan_two_sample(args, datamodule, scorer) if args.two_sample else None
    progress = load_weights(module, ckpt, config, checkpoint)
    module.to(args.device)
    n = args.num_samples
    real = datamodule.sample_real(n, split=args.real_split)
    available = len(datamodule.split_dataset(args.real_split))  # type: ignore[arg-type]
    if n > available:
        _note(f"N = {n} exceeds the {available} samples of the {args.real_split} split: real samples repeat")
    if scorer.spec is not None and scorer.sum25 is None and scorer.stacked is None:
        scorer = replace(scorer, cache_name=real_cache_name(datamodule, args.real_split, real))
    extractor = None if scorer.spec is None else scorer.spec.extractor
    note = f"N={n}" + (f", extractor {extractor}" if extractor else "") + f", step {progress['global_step']}"
    results, sum25, tests = {}, None, {}
    if two_sample is not None:
        network = two_sample.extractor()
        real_features = two_sample.embed(network, real)
        test_note = f"features {two_sample.label}, step {progress['global_step']}"
    if scorer.sum25 is not None:  # the real tuples read the same way: the ceiling the classifier allows
        values, histogram = scorer.sum25(real)
        label = f"real ({args.real_split})"
        sum25 = {"threshold": scorer.sum25.threshold, "real": values, "histograms": {label: histogram}}
        print(format_line(label, values, note), flush=True)
    stacked = None
    if scorer.stacked is not None:  # the real stacks read the same way: the ceiling the classifier allows
        stacked = {"threshold": scorer.stacked.threshold, "real": scorer.stacked(real)}
        print(format_line(f"real ({args.real_split})", stacked["real"], note), flush=True)
    for which in generators:
        fake = module.sample(n, which, args.seed, batch_size=args.batch_size).float().cpu()  # type: ignore[arg-type]
        if sum25 is not None and scorer.sum25 is not None:
            results[which], sum25["histograms"][which] = scorer.sum25(fake)
        else:
            results[which] = scorer(fake, real)
        print(format_line(which, results[which], note), flush=True)
        if two_sample is not None:
            tests[which] = two_sample(two_sample.embed(network, fake), real_features)
            for test in tests[which].values():
                print(format_two_sample_line(which, test, test_note), flush=True)
    extra = {} if sum25 is None else {"sum25": sum25}
    if stacked is not None:
        extra["stacked"] = stacked
    if two_sample is not None:
        extra["two_sample"] = {
            "features": two_sample.features, "network": two_sample.network,
            "weights": None if two_sample.weights is None else str(two_sample.weights),
            "num_samples": two_sample.num_samples, "permutations": two_sample.permutations, "seed": two_sample.seed,
            "level": TWO_SAMPLE_LEVEL, "results": tests,
        }
    return {
        "checkpoint": str(ckpt), "config": config.label, **progress,
        "data": type(datamodule).__name__, "real_split": args.real_split, "num_samples": n, "seed": args.seed,
        "extractor": extractor,
        "weights": None if scorer.spec is None else str(scorer.spec.weights),
        "weights_hash": None if scorer.spec is None else scorer.spec.digest(),
        "metrics": list(scorer.metrics),
        "kid_subset_size": scorer.kid_subset_size if "kid" in scorer.metrics else None,
        "kid_subsets": scorer.kid_subsets if "kid" in scorer.metrics else None,
        "is_splits": scorer.is_splits if "is" in scorer.metrics else None,
        "real_cache_name": scorer.cache_name,
        "results": results,
        **extra,
    }


def main(argv: Sequence[str]) -> dict[str, Any]:
    """``lightning-gan evaluate ARGV`` (``argv`` without the word ``evaluate``); returns the report it writes."""
    args, overrides = build_parser().parse_known_args(list(argv))
    _check_arguments(args, overrides)
    out = args.out or args.ckpt.with_name(f"{args.ckpt.stem}.eval.json")
    try:
        report = evaluate(args, overrides)
    except USER_ERRORS as error:
        fail(error)
    if not all(math.isfinite(v) for values in report["results"].values() for v in values.values()):
        _note("some values are not finite (e.g. a standard deviation over a single split)")
    out.parent.mkdir(parents=True, exist_ok=True)
    if "sum25" in report:  # the distribution of digit sums, next to the JSON
        png = plot_sum_histograms(report["sum25"]["histograms"], out.with_suffix(".sums.png"),
                                  f"{Path(report['checkpoint']).name}, step {report['global_step']}, "
                                  f"N={report['num_samples']}")
        report["sum25"]["png"] = str(png)
        _note(f"wrote {png}")
    out.write_text(json.dumps(report, indent=2) + "\n")
    _note(f"wrote {out}")
    return report
