"""FID / KID / IS as defined, offline Inception weights, DDP-synced FID, and the toy mixture metrics."""

from __future__ import annotations

import math
import urllib.request
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from ddp_harness import run_distributed
from lightning_gan.data import DigitsDataModule, GaussianMixtureDataModule
from lightning_gan.metrics import (
    ENV_INCEPTION_WEIGHTS,
    FIDELITY_EXTRACTORS,
    INCEPTION_FILENAME,
    DigitClassifier,
    DigitFeatureExtractor,
    InceptionFeatureExtractor,
    InceptionWeightsNotFoundError,
    ModeCoverage,
    build_image_metrics,
    energy_distance,
    fidelity_metrics,
    mixture_metrics,
    mmd2,
    mode_coverage,
    resolve_extractor,
    resolve_inception_weights,
    save_classifier,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:Metric `.*` will save all extracted features:UserWarning"),
    pytest.mark.filterwarnings("ignore:std.*degrees of freedom is <= 0:UserWarning"),  # one IS split: no std
]


# -- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Nothing here may download: any attempt fails the test loudly instead of hanging offline."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:1]}")
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture(autouse=True)
def empty_torch_home(monkeypatch, tmp_path):
    """A fresh torch hub cache and no weights variable: the machine's own cache must not leak in."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(ENV_INCEPTION_WEIGHTS, raising=False)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """The 1617 training images of scikit-learn's digits, (N, 1, 8, 8) in [-1, 1]."""
    dm = DigitsDataModule()
    dm.setup("fit")
    return dm.train_set.data.clone()


def _random_classifier(num_features: int = 16) -> DigitClassifier:
    """A fixed random-init 8x8 CNN: FID's properties hold for any fixed feature map, and it is instant."""
    torch.manual_seed(0)
    return DigitClassifier(input_size=8, num_features=num_features).eval()


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory) -> Path:
    return save_classifier(_random_classifier(), tmp_path_factory.mktemp("clf") / "classifier_digits.pt", "digits")


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory) -> tuple[Path, dict]:
    """A full, structurally valid InceptionV3 state dict with random values (the real file cannot be fetched)."""
    empty = tmp_path_factory.mktemp("inc") / "empty.pth"
    torch.save({}, empty)

    class _Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, *args, **kwargs):  # build the layers, skip the (empty) weights
            return None

    torch.manual_seed(0)
    state = _Skeleton("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty)).state_dict()
    path = empty.parent / INCEPTION_FILENAME
    torch.save(state, path)
    return path, state


def _shift(images: torch.Tensor, delta: float) -> torch.Tensor:
    return (images + delta).clamp(-1, 1)


# -- offline Inception weights ------------------------------------------------------------------------

def test_missing_inception_weights_fail_at_once_naming_the_file_and_how_to_pass_it(tmp_path):
    with pytest.raises(InceptionWeightsNotFoundError) as caught:
        resolve_inception_weights()
    message = str(caught.value)
    cache = tmp_path / "torch_home" / "hub" / "checkpoints" / INCEPTION_FILENAME
    assert INCEPTION_FILENAME in message and str(cache) in message
    assert ENV_INCEPTION_WEIGHTS in message and "inception_weights" in message
    assert "https://github.com/toshas/torch-fidelity/releases" in message
    with pytest.raises(InceptionWeightsNotFoundError, match=INCEPTION_FILENAME):  # before any sample exists
        build_image_metrics(("fid", "kid", "is"), extractor="inception")
    with pytest.raises(InceptionWeightsNotFoundError, match=INCEPTION_FILENAME):
        resolve_extractor("inception")


def test_explicit_and_environment_paths_must_exist_no_silent_fallback(tmp_path, monkeypatch, random_inception_weights):
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / INCEPTION_FILENAME
    cached.parent.mkdir(parents=True)
    cached.symlink_to(random_inception_weights[0])
    assert resolve_inception_weights() == cached  # torch hub's cache is found
    with pytest.raises(InceptionWeightsNotFoundError, match=r"the path given, .*nowhere\.pth, is not a file"):
        resolve_inception_weights(tmp_path / "nowhere.pth")
    monkeypatch.setenv(ENV_INCEPTION_WEIGHTS, str(tmp_path / "env.pth"))
    with pytest.raises(InceptionWeightsNotFoundError, match=rf"{ENV_INCEPTION_WEIGHTS}=.*env\.pth is not a file"):
        resolve_inception_weights()
    monkeypatch.setenv(ENV_INCEPTION_WEIGHTS, str(random_inception_weights[0]))
    assert resolve_inception_weights() == random_inception_weights[0]


def test_an_existing_file_that_is_not_inception_weights_is_refused_clearly(tmp_path):
    junk = tmp_path / INCEPTION_FILENAME
    junk.write_bytes(b"<html>proxy login page</html>")
    with pytest.raises(ValueError, match=r"Invalid Inception weights file .*cannot be read as a PyTorch state dict"):
        resolve_inception_weights(junk)
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(10, 4)}, other)
    with pytest.raises(ValueError, match=r"not torch-fidelity's InceptionV3 state dict .*fc\.weight \(\(10, 4\)"):
        resolve_inception_weights(other)


def test_local_weights_reach_torch_fidelity_and_torchmetrics_without_download(random_inception_weights,
                                                                              monkeypatch):
    path, state = random_inception_weights
    metrics = build_image_metrics(("fid",), weights=path)  # torchmetrics' FID on InceptionFeatureExtractor
    extractor = metrics["fid"].inception
    assert isinstance(extractor, InceptionFeatureExtractor) and extractor.weights_path == path
    torch.testing.assert_close(extractor.net.fc.weight, state["fc.weight"])
    assert InceptionFeatureExtractor("64", path)(torch.rand(2, 1, 8, 8) * 2 - 1).shape == (2, 64)  # early exit

    seen: dict = {}

    class _Recording(FeatureExtractorInceptionV3):
        """Records what torch-fidelity passes and loads the weights for real; skips the (slow on CPU) forward."""

        def __init__(self, name, features_list, **kwargs):
            seen.update(kwargs)
            super().__init__(name, features_list, **kwargs)
            seen["fc.weight"] = self.fc.weight.clone()

        def forward(self, x):
            assert x.dtype == torch.uint8 and x.shape[1] == 3
            return (torch.zeros(x.shape[0], 1008),)

    monkeypatch.setitem(FEATURE_EXTRACTORS_REGISTRY, "inception-v3-compat", _Recording)
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    scores = fidelity_metrics(images, images, resolve_extractor("inception", path), ("is",), is_splits=2)
    assert seen["feature_extractor_weights_path"] == str(path) and seen["datasets_download"] is False
    torch.testing.assert_close(seen["fc.weight"], state["fc.weight"])
    assert scores["is_mean"] == pytest.approx(1.0)


# -- FID / KID / IS with the digit feature extractor ----------------------------------------------------

def test_fid_of_a_sample_set_against_itself_is_zero(digits):
    fid = FrechetInceptionDistance(feature=DigitFeatureExtractor(_random_classifier()))
    fid.update(digits, real=True)
    fid.update(digits, real=False)
    assert abs(float(fid.compute())) < 1e-4


def test_fid_grows_as_samples_are_shifted(digits):
    fid = FrechetInceptionDistance(feature=DigitFeatureExtractor(_random_classifier()), reset_real_features=False)
    fid.update(digits, real=True)
    values = []
    for delta in (0.0, 0.1, 0.3, 0.6):
        fid.reset()  # keeps the real statistics
        fid.update(_shift(digits, delta), real=False)
        values.append(float(fid.compute()))
    assert values[0] < 1e-4 < values[1] < values[2] < values[3]


def test_torchmetrics_and_torch_fidelity_give_the_same_digit_fid_kid_and_is(digits, classifier_file):
    real, fake = digits[:800], _shift(digits[800:1600], 0.2)
    real8 = ((real + 1) * 127.5).round() / 127.5 - 1  # torch-fidelity sees uint8: quantise for both paths
    fake8 = ((fake + 1) * 127.5).round() / 127.5 - 1
    spec = resolve_extractor("digits", classifier_file)
    assert spec.fidelity_name == FIDELITY_EXTRACTORS["digits"]
    ref = fidelity_metrics(fake, real, spec, ("fid", "kid", "is"), kid_subsets=1, kid_subset_size=800, is_splits=1)
    tm = build_image_metrics(("fid", "kid", "is"), extractor="digits", weights=classifier_file,
                             kid_subsets=1, kid_subset_size=800, is_splits=1)
    for name in ("fid", "kid"):
        tm[name].update(real8, real=True)
        tm[name].update(fake8, real=False)
    tm["is"].update(fake8)
    assert float(tm["fid"].compute()) == pytest.approx(ref["fid"], rel=1e-4)
    assert float(tm["kid"].compute()[0]) == pytest.approx(ref["kid_mean"], rel=1e-3)
    assert float(tm["is"].compute()[0]) == pytest.approx(ref["is_mean"], rel=1e-5)
    assert ref["fid"] > 0 and ref["kid_mean"] > 0


def test_kid_is_the_unbiased_polynomial_mmd_and_vanishes_for_one_distribution(digits):
    features = DigitFeatureExtractor(_random_classifier())
    kid = KernelInceptionDistance(feature=features, subsets=1, subset_size=800)
    real, same, shifted = digits[:800], digits[800:1600], _shift(digits[800:1600], 0.5)
    kid.update(real, real=True)
    kid.update(same, real=False)
    near_zero = float(kid.compute()[0])
    kid.reset()
    kid.update(real, real=True)
    kid.update(shifted, real=False)
    far = float(kid.compute()[0])

    x, y = features(real).double(), features(shifted).double()
    kernel = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3  # noqa: E731 - degree 3, gamma 1/d, coef 1
    m = x.shape[0]
    unbiased = ((kernel(x, x).sum() - kernel(x, x).trace()) / (m * (m - 1))
                + (kernel(y, y).sum() - kernel(y, y).trace()) / (m * (m - 1)) - 2 * kernel(x, y).mean())
    assert far == pytest.approx(float(unbiased), rel=1e-3)
    assert abs(near_zero) < far / 20


@pytest.mark.parametrize("score", ["torchmetrics", "torch-fidelity"])
def test_inception_score_is_the_number_of_classes_for_confident_uniform_predictions_and_one_for_identical(score):
    def inception_score(logits: torch.Tensor) -> float:
        if score == "torch-fidelity":
            return isc_features_to_metric(logits, splits=1)["inception_score_mean"]
        metric = InceptionScore(feature=nn.Identity(), splits=1)
        metric.update(logits)
        return float(metric.compute()[0])

    confident = 50.0 * nn.functional.one_hot(torch.arange(1000) % 10, 10).double()
    assert inception_score(confident) == pytest.approx(10.0, rel=1e-9)
    assert inception_score(confident[torch.zeros(1000, dtype=torch.long)]) == pytest.approx(1.0, abs=1e-9)
    uniform = torch.zeros(1000, 10, dtype=torch.float64)  # p(y|x) uniform: no information
    assert inception_score(uniform) == pytest.approx(1.0, abs=1e-9)


def test_digit_extractors_are_registered_with_torch_fidelity():
    for name in FIDELITY_EXTRACTORS.values():
        assert name in FEATURE_EXTRACTORS_REGISTRY
    cls = FEATURE_EXTRACTORS_REGISTRY[FIDELITY_EXTRACTORS["mnist"]]
    assert cls.get_default_feature_layer_for_metric("fid") == "features"
    assert cls.get_default_feature_layer_for_metric("isc") == "logits"


def test_fidelity_metrics_refuse_a_kid_subset_larger_than_the_samples(digits, classifier_file):
    spec = resolve_extractor("digits", classifier_file)
    with pytest.raises(ValueError, match=r"Invalid kid_subset_size: 1000; .*fake 100, real 100"):
        fidelity_metrics(digits[:100], digits[100:200], spec, ("kid",))
    with pytest.raises(ValueError, match="Invalid metrics"):
        fidelity_metrics(digits[:100], digits[100:200], spec, ("fid", "precision"))
    with pytest.raises(ValueError, match="Invalid extractor: 'cifar'"):
        resolve_extractor("cifar")


def _fid_child(rank: int, state_dict: dict, real: torch.Tensor, fake: torch.Tensor) -> dict:
    dist.init_process_group("gloo")
    classifier = _random_classifier()
    classifier.load_state_dict(state_dict)
    fid = FrechetInceptionDistance(feature=DigitFeatureExtractor(classifier))
    fid.update(real.chunk(2)[rank], real=True)
    fid.update(fake.chunk(2)[rank], real=False)
    value = fid.compute()  # on every rank: torchmetrics syncs the float64 sums with one all-reduce each
    return {"fid": float(value), "local_n": int(fid.fake_features_num_samples)}  # compute() restores local state


@pytest.mark.slow
def test_two_ranks_fid_equals_one_rank_fid_on_the_same_samples(digits):
    classifier = _random_classifier()
    real, fake = digits[:1000], _shift(digits[600:1600], 0.2)
    fid = FrechetInceptionDistance(feature=DigitFeatureExtractor(classifier))
    fid.update(real, real=True)
    fid.update(fake, real=False)
    one_rank = float(fid.compute())
    results = run_distributed(_fid_child, 2, classifier.state_dict(), real, fake)
    for result in results:
        assert result["local_n"] == 500
        assert result["fid"] == pytest.approx(one_rank, rel=1e-6)
    assert one_rank > 1e-3


# -- toy mixtures -----------------------------------------------------------------------------------------

def _mixture(kind: str, n: int = 2500, seed: int = 0) -> GaussianMixtureDataModule:
    dm = GaussianMixtureDataModule(kind=kind, num_samples=n, num_val_samples=n, seed=seed)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("kind, modes", [("ring", 8), ("grid", 25)])
def test_samples_of_the_mixture_itself_cover_every_mode_with_98_9_percent_quality(kind, modes):
    dm = _mixture(kind)
    result = mode_coverage(dm.train_set.data, dm.modes, dm.std)
    assert (result.modes_covered, result.num_modes) == (modes, modes)
    assert result.high_quality == pytest.approx(1 - math.exp(-4.5), abs=0.01)  # P(|N(0, I_2)| <= 3)


def test_a_collapsed_sampler_covers_one_mode_and_min_samples_ignores_strays():
    dm = _mixture("ring")
    generator = torch.Generator().manual_seed(1)
    collapsed = dm.modes[3] + dm.std * torch.randn(2500, 2, generator=generator)
    assert mode_coverage(collapsed, dm.modes, dm.std).modes_covered == 1
    with_stray = torch.cat([collapsed, dm.modes[5:6]])
    assert mode_coverage(with_stray, dm.modes, dm.std).modes_covered == 2  # VEEGAN: one sample captures a mode
    assert mode_coverage(with_stray, dm.modes, dm.std, min_samples=20).modes_covered == 1
    far = mode_coverage(torch.full((100, 2), 10.0), dm.modes, dm.std)
    assert (far.modes_covered, far.high_quality) == (0, 0.0)


def test_mode_coverage_metric_accumulates_batches_like_the_function():
    dm = _mixture("grid")
    samples = dm.train_set.data
    metric = ModeCoverage(dm.modes, dm.std)
    for batch in samples.split(300):
        metric.update(batch)
    out = metric.compute()
    ref = mode_coverage(samples, dm.modes, dm.std)
    assert int(out["modes_covered"]) == ref.modes_covered
    assert float(out["high_quality"]) == pytest.approx(ref.high_quality, abs=1e-12)
    with pytest.raises(ValueError, match="Invalid std: 0"):
        ModeCoverage(dm.modes, 0.0)


def test_two_sample_statistics_are_near_zero_for_one_distribution_and_grow_with_a_shift():
    a, b = _mixture("ring", n=1000, seed=0), _mixture("ring", n=1000, seed=1)
    x, y = a.train_set.data, b.val_set.data
    shifted = x + torch.tensor([0.5, 0.0])  # a quarter of the ring radius
    collapsed = a.modes[0] + a.std * torch.randn(1000, 2, generator=torch.Generator().manual_seed(2))
    for statistic in (mmd2, energy_distance, lambda p, q: mmd2(p, q, bandwidths=(0.05, 0.5, 2.0))):
        same, moved, dropped = (float(statistic(p, y)) for p in (x, shifted, collapsed))
        assert abs(same) < moved / 5 and moved < dropped
    summary = mixture_metrics(shifted, a.modes, a.std, reference=y)
    assert summary["high_quality"] < 0.01 and summary["mmd2"] == pytest.approx(float(mmd2(shifted, y)))
    assert summary["energy"] == pytest.approx(float(energy_distance(shifted, y)))
