"""``lightning-gan evaluate --two-sample``: an MMD permutation test and a classifier two-sample test per generator,
one line each and the results in the JSON; a barely trained generator is told from the data; bad input is one line
and exit 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from gan_fixtures import fit_in_process

from lightning_gan.cli import main

pytestmark = [
    pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning"),  # torchdata 0.11 on torch 2.14
    pytest.mark.filterwarnings("ignore:(?s).*skip_none parameter was deprecated"),  # Lightning's SaveConfigCallback
]

REPO = Path(__file__).resolve().parents[1]
TOY_RING = REPO / "tests" / "configs" / "toy_ring_tiny.yaml"  # the quickstart's ring, cut down
DIGITS = REPO / "tests" / "configs" / "digits_tiny.yaml"  # 8x8 digits, MLP players, the shipped digits classifier


def _fit(root: Path, config: Path) -> Path:
    """10 iterations: a generator still far from the data, which the tests must tell apart."""
    return fit_in_process(root, config, "--trainer.max_steps=10", "--checkpoint.every_n_train_steps=10",
                          "--metrics.every_n_steps=0")


@pytest.fixture(scope="module")
def ring_run(tmp_path_factory) -> Path:
    return _fit(tmp_path_factory.mktemp("ring_run"), TOY_RING)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    return _fit(tmp_path_factory.mktemp("digits_run"), DIGITS)


@pytest.fixture(autouse=True)
def _offline(offline_and_clean):
    """Every test here runs offline and clean (conftest's ``offline_and_clean``)."""


def run_evaluate(ckpt: Path, out: Path, *args: str) -> dict:
    main(["evaluate", "--ckpt", str(ckpt), "--out", str(out), "--device", "cpu", *args])
    return json.loads(out.read_text())


MMD_LINE = re.compile(r"^(live|uniform|ema): mmd two-sample test: MMD\^2 -?[\d.e+-]+, p = ([\d.e+-]+) -> "
                      r"(told apart|not told apart) at 0\.05  \(bandwidth [\d.e+-]+, 99 permutations; M=(\d+) vs \d+, "
                      r"features (.+), step 10\)$")
C2ST_LINE = re.compile(r"^(live|uniform|ema): classifier two-sample test: accuracy [\d.]+, p = ([\d.e+-]+) -> "
                       r"(told apart|not told apart) at 0\.05  \((\d+)/(\d+) held-out correct; M=(\d+) vs \d+, "
                       r"features (.+), step 10\)$")


def _check_report(report: dict, out_lines: list[str], generators: list[str], m: int, features: str) -> None:
    mmd = [MMD_LINE.match(line) for line in out_lines if "mmd two-sample" in line]
    c2st = [C2ST_LINE.match(line) for line in out_lines if "classifier two-sample" in line]
    assert all(mmd) and all(c2st), out_lines
    assert [x.group(1) for x in mmd] == [x.group(1) for x in c2st] == generators
    assert {x.group(5) for x in mmd} == {x.group(7) for x in c2st} == {features}
    two_sample = report["two_sample"]
    assert (two_sample["num_samples"], two_sample["permutations"], two_sample["level"]) == (m, 99, 0.05)
    assert list(two_sample["results"]) == generators
    for which, line_mmd, line_c2st in zip(generators, mmd, c2st, strict=True):
        tests = two_sample["results"][which]
        assert (tests["mmd"]["test"], tests["classifier"]["test"]) == ("mmd", "classifier")
        for test in tests.values():
            assert 0 < test["p_value"] <= 1 and (test["num_x"], test["num_y"]) == (m, m)
        assert tests["mmd"]["detail"]["bandwidth"] > 0
        assert tests["classifier"]["detail"]["held_out"] == m  # half of the 2M pooled samples
        assert float(line_mmd.group(2)) == pytest.approx(tests["mmd"]["p_value"], rel=1e-2)
        assert float(line_c2st.group(2)) == pytest.approx(tests["classifier"]["p_value"], rel=1e-2)
        # 10 iterations from a random initialisation: M = 300 samples suffice to tell it from the data
        assert tests["mmd"]["p_value"] < 0.05 and tests["classifier"]["p_value"] < 0.05, tests
        assert line_mmd.group(3) == line_c2st.group(3) == "told apart"


def test_ring_run_two_sample_tests_on_raw_points(ring_run, tmp_path, capsys):
    out = tmp_path / "ring.json"
    report = run_evaluate(ring_run, out, "--num-samples", "400", "--metrics", "mmd", "--two-sample",
                          "--two-sample-num-samples", "300", "--permutations", "99")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["live", "live", "live", "ema", "ema", "ema"], lines
    _check_report(report, lines, ["live", "ema"], 300, "points")
    assert report["two_sample"]["features"] == "points" and report["two_sample"]["network"] is None
    assert set(report["results"]["ema"]) == {"mmd2"}  # the usual metrics are still there


def test_digits_run_two_sample_tests_in_the_digit_classifier_features(digits_run, tmp_path, capsys):
    out = tmp_path / "digits.json"
    report = run_evaluate(digits_run, out, "--num-samples", "300", "--metrics", "fid", "--generator", "ema",
                          "--two-sample", "--permutations", "99")  # M = min(N, 2000) = N
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("ema: fid "), lines
    _check_report(report, lines, ["ema"], 300, "classifier digits")
    assert report["two_sample"]["network"] == "digits" and Path(report["two_sample"]["weights"]).is_file()
    assert set(report["results"]["ema"]) == {"fid"}


@pytest.mark.parametrize(("run", "args", "named"), [
    ("digits", ["--two-sample-features", "points"], "Invalid --two-sample-features: 'points' for DigitsDataModule"),
    ("ring", ["--two-sample-features", "classifier"],
     "Invalid --two-sample-features: 'classifier' for GaussianMixtureDataModule"),
    ("ring", ["--two-sample-features", "inception"],
     "Invalid --two-sample-features: 'inception' for GaussianMixtureDataModule"),
    ("digits", ["--two-sample-features", "inception"], "Inception"),  # no weights here: refused before any data
    ("digits", ["--two-sample-features", "pixels"], "argument --two-sample-features: invalid choice: 'pixels'"),
    ("digits", ["--num-samples", "8"], "Invalid two-sample size: M = 8"),
    ("digits", ["--num-samples", "100", "--two-sample-num-samples", "200"], "Invalid two-sample size: M = 200"),
    ("digits", ["--permutations", "0"], "Invalid --permutations: 0"),
], ids=["points-on-images", "classifier-on-points", "inception-on-points", "inception-without-weights",
        "unknown-features", "n-too-small", "m-over-n", "no-permutations"])
def test_bad_two_sample_input_fails_with_one_line_and_exit_2(run, args, named, digits_run, ring_run, capsys,
                                                             tmp_path):
    ckpt = {"digits": digits_run, "ring": ring_run}[run]
    out = tmp_path / "results.json"
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--ckpt", str(ckpt), "--out", str(out), "--device", "cpu", "--two-sample", *args])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("lightning-gan: error:")]
    assert len(errors) == 1 and named in errors[0], captured.err
    assert "Traceback" not in captured.err and not captured.out  # nothing scored before the refusal
    assert not out.exists()


def test_two_sample_options_without_two_sample_are_refused(digits_run, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--ckpt", str(digits_run), "--two-sample-features", "classifier"])
    assert exit_.value.code == 2
    assert "add --two-sample" in capsys.readouterr().err


def test_a_p_value_that_underflows_is_printed_as_a_bound():
    from lightning_gan.evaluate import format_two_sample_line

    test = {"test": "classifier", "statistic": 0.974, "p_value": 0.0, "num_x": 2000, "num_y": 2000,
            "detail": {"correct": 1947, "held_out": 2000, "classifier": "MLP(64)"}}
    line = format_two_sample_line("uniform", test, "features points, step 2000")
    assert line == ("uniform: classifier two-sample test: accuracy 0.974, p < 1e-300 -> told apart at 0.05  "
                    "(1947/2000 held-out correct; M=2000 vs 2000, features points, step 2000)")


def test_sum25_tuples_are_embedded_digit_by_digit():
    """Sum-25 samples (N, 5, 28, 28): each channel goes through the MNIST classifier alone, features side by side."""
    from lightning_gan.evaluate import TwoSamplePlan
    from lightning_gan.metrics import default_classifier_path

    plan = TwoSamplePlan("classifier", "mnist", default_classifier_path("mnist"), num_samples=12, per_digit=True)
    network = plan.extractor()
    tuples = torch.rand(16, 5, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    features = plan.embed(network, tuples)
    width = network.num_features
    assert features.shape == (12, 5 * width) and features.dtype == torch.float64  # the first M = 12 tuples
    third_digit = network(tuples[:12, 2:3]).double()
    torch.testing.assert_close(features[:, 2 * width:3 * width], third_digit)
