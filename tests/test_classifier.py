"""Digit classifiers: file format, training, input conventions, shipped weights and their accuracy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_gan.metrics import (
    DigitClassifier,
    DigitFeatureExtractor,
    default_classifier_path,
    load_classifier,
    save_classifier,
    to_classifier_input,
)
from lightning_gan.metrics.train_classifier import TrainingConfig, accuracy, load_split, main, train_classifier

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MAX_SHIPPED_BYTES = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def digits_splits():
    return load_split("digits", None, "train"), load_split("digits", None, "test")


@pytest.fixture(scope="module")
def tiny_digits_classifier(digits_splits):
    (train_x, train_y), _ = digits_splits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 8x8 convolutions: one thread is fastest, and immune to a busy machine
    try:
        return train_classifier(train_x, train_y, TrainingConfig(epochs=6, batch_size=64, num_features=32))
    finally:
        torch.set_num_threads(threads)


def test_training_a_tiny_digits_classifier_takes_seconds_and_generalises(tiny_digits_classifier, digits_splits):
    _, (test_x, test_y) = digits_splits
    assert accuracy(tiny_digits_classifier, test_x, test_y) >= 0.9
    assert not tiny_digits_classifier.training


def test_classifier_file_round_trip_keeps_weights_and_metadata(tiny_digits_classifier, tmp_path):
    path = save_classifier(tiny_digits_classifier, tmp_path / "c.pt", "digits", test_accuracy=0.95)
    loaded, meta = load_classifier(path, "digits")
    assert meta["dataset"] == "digits" and meta["config"]["input_size"] == 8 and meta["config"]["num_features"] == 32
    assert meta["normalization"].startswith("[-1, 1]") and meta["info"]["test_accuracy"] == 0.95
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    torch.testing.assert_close(loaded(x), tiny_digits_classifier(x), rtol=0, atol=0)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_loading_refuses_other_datasets_and_names_missing_files(tiny_digits_classifier, tmp_path):
    path = save_classifier(tiny_digits_classifier, tmp_path / "c.pt", "digits")
    with pytest.raises(ValueError, match="trained on 'digits', expected 'mnist'"):
        load_classifier(path, "mnist")
    with pytest.raises(FileNotFoundError, match=r"nope\.pt not found; train them with .*train_classifier"):
        load_classifier(tmp_path / "nope.pt", "digits")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="Invalid digit classifier file"):
        load_classifier(tmp_path / "junk.pt", "digits")
    with pytest.raises(ValueError, match="input_size 8, expected 28"):
        save_classifier(tiny_digits_classifier, tmp_path / "m.pt", "mnist")


def test_training_command_writes_a_loadable_file(tmp_path, capsys):
    out = tmp_path / "classifier_digits.pt"
    threads = torch.get_num_threads()
    try:
        main(["--dataset", "digits", "--epochs", "1", "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert "test accuracy" in capsys.readouterr().out
    _, meta = load_classifier(out, "digits")
    assert meta["info"]["epochs"] == 1 and 0 <= meta["info"]["test_accuracy"] <= 1


def test_inputs_in_unit_range_uint8_rgb_and_padded_all_agree():
    pixels = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    unit = pixels.float() / 127.5 - 1
    torch.testing.assert_close(to_classifier_input(pixels, 28), unit)
    torch.testing.assert_close(to_classifier_input(unit.expand(-1, 3, -1, -1), 28), unit)
    padded = F.pad(unit, (2, 2, 2, 2), value=-1.0)  # MNISTDataModule(image_size=32): black borders
    torch.testing.assert_close(to_classifier_input(padded, 28), unit)
    assert to_classifier_input(torch.zeros(2, 1, 32, 32), 8).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("bad, message", [
    (torch.rand(2, 1, 8, 8) * 255, r"float values in \[.*\]; expected \[-1, 1\]"),
    (torch.zeros(2, 2, 8, 8), "expected a tensor \\(N, C, H, W\\) with C = 1 or 3"),
    (torch.zeros(2, 1, 8, 8, dtype=torch.int64), "Invalid images dtype"),
])
def test_bad_inputs_are_refused_with_the_allowed_range(bad, message):
    with pytest.raises(ValueError, match=message):
        to_classifier_input(bad, 8)


def test_feature_extractor_has_num_features_and_never_trains(tiny_digits_classifier):
    features = DigitFeatureExtractor(tiny_digits_classifier, "features")
    logits = DigitFeatureExtractor(tiny_digits_classifier, "logits")
    parent = torch.nn.ModuleList([features, logits]).train()
    assert not any(m.training for m in parent.modules() if m is not parent)
    assert not features.classifier.training and not tiny_digits_classifier.training
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    assert features(x).shape == (3, features.num_features) == (3, 32)
    assert logits(x).shape == (3, logits.num_features) == (3, 10)
    with pytest.raises(ValueError, match="expected 'features' or 'logits'"):
        DigitFeatureExtractor(tiny_digits_classifier, "pool3")  # type: ignore[arg-type]


def test_metric_checkpoints_exclude_the_feature_network_which_still_follows_to(tiny_digits_classifier):
    from torchmetrics.image.fid import FrechetInceptionDistance

    holder = torch.nn.Module()
    holder.fid = FrechetInceptionDistance(feature=DigitFeatureExtractor(tiny_digits_classifier))
    assert not [k for k in holder.state_dict() if "classifier" in k]  # no network in Lightning checkpoints
    assert not list(holder.parameters())  # nothing for an optimizer to pick up
    extractor = DigitFeatureExtractor(load_classifier(None, "digits")[0]).double()
    assert extractor.classifier.head[1].weight.dtype == torch.float64
    assert extractor(torch.zeros(2, 1, 8, 8)).dtype == torch.float64


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist", "digits"])
def test_shipped_weights_are_small_and_describe_themselves(dataset):
    path = default_classifier_path(dataset)
    if not path.is_file():
        pytest.skip(f"{path} not shipped")
    assert path.stat().st_size < MAX_SHIPPED_BYTES
    classifier, meta = load_classifier(None, dataset)
    assert meta["dataset"] == dataset and isinstance(classifier, DigitClassifier)
    assert meta["info"]["test_accuracy"] > 0.85


def test_shipped_digits_classifier_is_accurate_on_held_out_digits(digits_splits):
    if not default_classifier_path("digits").is_file():
        pytest.skip("classifier_digits.pt not shipped")
    _, (test_x, test_y) = digits_splits
    classifier, _ = load_classifier(None, "digits")
    assert accuracy(classifier, test_x, test_y) >= 0.97


@pytest.mark.slow
@pytest.mark.parametrize("dataset, minimum", [("mnist", 0.98), ("fashion-mnist", 0.88)])
def test_shipped_28x28_classifiers_reach_their_test_accuracy(dataset, minimum):
    root = DATA / dataset
    if not root.is_dir() or not default_classifier_path(dataset).is_file():
        pytest.skip(f"needs {root} and the shipped classifier_{dataset}.pt")
    test_x, test_y = load_split(dataset, str(root), "test")
    classifier, meta = load_classifier(None, dataset)
    measured = accuracy(classifier, test_x, test_y)
    assert measured >= minimum
    assert measured == pytest.approx(meta["info"]["test_accuracy"], abs=1e-9)
