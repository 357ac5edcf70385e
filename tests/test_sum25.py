"""Sum-to-25 (five MNIST digits summing to 25): the combinations and their reference split, the data module, the
task's metrics (exact shares on hand-made tuples, > 95% at 25 on real held-out tuples), the histogram PNG, the
in-training metrics and ``lightning-gan evaluate`` end to end, and the one-line error of a missing MNIST folder."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gan_fixtures import fit_in_process

from lightning_gan.callbacks import ImageMetrics
from lightning_gan.cli import main
from lightning_gan.data import DigitsDataModule, Sum25DataModule
from lightning_gan.data.mnist import read_idx
from lightning_gan.data.sum25 import side_by_side, split_combinations, sum25_combinations, tuple_codes
from lightning_gan.metrics.sum25 import (
    Sum25Metric,
    digit_extractor,
    plot_sum_histograms,
    score_tuples,
    sum25_values,
    sum_histogram,
    tuple_counts,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning"),  # torchdata 0.11 on torch 2.14
    pytest.mark.filterwarnings("ignore:(?s).*skip_none parameter was deprecated"),  # Lightning's SaveConfigCallback
]

# MNIST where the configs expect it (../shared/data/mnist from the repository root), as tests/test_data.py finds it.
MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(not (MNIST / "train-images-idx3-ubyte.gz").is_file(), reason=f"no MNIST at {MNIST}")


# -- combinations ------------------------------------------------------------------------------------------------

def test_5631_combinations_by_brute_force_and_the_reference_80_20_split():
    combinations = sum25_combinations()
    brute = [t for t in itertools.product(range(10), repeat=5) if sum(t) == 25]
    assert len(brute) == 5631 and combinations.tolist() == [list(t) for t in brute]
    train, heldout = split_combinations()
    assert (len(train), len(heldout)) == (4504, 1127)  # int(0.8 * 5631)
    train_codes, heldout_codes = set(tuple_codes(train).tolist()), set(tuple_codes(heldout).tolist())
    assert not train_codes & heldout_codes and len(train_codes | heldout_codes) == 5631
    assert train_codes | heldout_codes == set(tuple_codes(combinations).tolist())
    # split_dataset.py's own calls: np.random.seed(1234); np.random.shuffle(<list of the combinations>)
    reference = [list(t) for t in brute]
    np.random.seed(1234)
    np.random.shuffle(reference)
    assert train.tolist() == reference[:4504] and heldout.tolist() == reference[4504:]
    assert train[:2].tolist() == [[7, 4, 2, 5, 7], [9, 5, 0, 5, 6]]
    other, _ = split_combinations(split_seed=0)
    assert not torch.equal(other, train)


def test_tuple_codes_and_side_by_side():
    assert tuple_codes(torch.tensor([[0, 7, 9, 4, 5], [9, 9, 9, 9, 9]])).tolist() == [7945, 99999]
    x = torch.arange(2 * 5 * 2 * 3, dtype=torch.float32).reshape(2, 5, 2, 3)
    wide = side_by_side(x)
    assert wide.shape == (2, 1, 2, 15)
    assert torch.equal(wide[1, 0, :, 6:9], x[1, 2])  # channel k is the k-th block of columns


# -- the data module -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data() -> Sum25DataModule:
    if not (MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"no MNIST at {MNIST}")
    dm = Sum25DataModule(root=str(MNIST), num_train_samples=3000, num_val_samples=3000, seed=5)
    dm.setup()
    return dm


def test_every_tuple_sums_to_25_and_uses_the_combinations_of_its_split(data):
    assert len(data.train_set) == 3000 and len(data.val_set) == 3000
    for labels, combinations in ((data.train_labels, data.train_combinations),
                                 (data.val_labels, data.heldout_combinations)):
        assert (labels.sum(1) == 25).all()
        assert set(tuple_codes(labels).tolist()) <= set(tuple_codes(combinations).tolist())
    x, index = data.train_set[7]
    assert x.shape == (5, 28, 28) and x.dtype == torch.float32 and index == 7
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1
    # each channel is an MNIST image of its digit: training tuples from the training images, held-out ones from t10k
    train_labels = torch.from_numpy(read_idx(MNIST / "train-labels-idx1-ubyte.gz", 1).astype(np.int64))
    test_labels = torch.from_numpy(read_idx(MNIST / "t10k-labels-idx1-ubyte.gz", 1).astype(np.int64))
    assert torch.equal(train_labels[data.train_set.picks], data.train_labels)
    assert torch.equal(test_labels[data.val_set.picks], data.val_labels)
    assert len(data.train_set.images) == 60000 and len(data.val_set.images) == 10000
    # random images among the digit's: 3000 tuples use many distinct images
    assert data.train_set.picks.unique().numel() > 10000


def test_tuples_are_a_function_of_the_seed(data):
    again = Sum25DataModule(root=str(MNIST), num_train_samples=3000, num_val_samples=3000, seed=5)
    again.setup()
    assert torch.equal(again.train_set.picks, data.train_set.picks)
    assert torch.equal(again.val_set.picks, data.val_set.picks)
    assert torch.equal(again.sample_real(50, "test"), data.sample_real(50, "test"))
    other = Sum25DataModule(root=str(MNIST), num_train_samples=3000, num_val_samples=0, seed=6, digit_images="test")
    other.setup()
    assert not torch.equal(other.train_labels, data.train_labels) and other.val_set is None
    assert len(other.train_set.images) == 10000  # the reference's choice: digits from MNIST's test images


def test_missing_folder_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"^MNIST folder .*nowhere does not exist; expected the four"):
        Sum25DataModule(root=str(missing)).setup()
    with pytest.raises(ValueError, match="Invalid train_fraction"):
        Sum25DataModule(root=str(missing), train_fraction=1.0)


def test_missing_folder_through_the_cli_is_exit_2_and_one_line(tmp_path, capsys, cli_process_state):
    config = Path(__file__).resolve().parents[1] / "configs" / "sum25_wgangp_extraadam.yaml"
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path}",
              "--data.init_args.root=/nonexistent/mnist", "--trainer.max_steps=1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("lightning-gan: error:")]
    assert len(errors) == 1 and "MNIST folder /nonexistent/mnist does not exist" in errors[0], err
    assert "Traceback" not in err and not list(tmp_path.rglob("*.ckpt"))


# -- the metrics -----------------------------------------------------------------------------------------------

def test_shares_of_hand_made_tuples_are_exact():
    train, heldout = split_combinations()
    a, b = train[0].tolist(), heldout[0].tolist()
    digits = torch.tensor([a, a, a, b, [0, 0, 0, 0, 0], [9, 9, 9, 9, 9], [9, 9, 9, 9, 0], a])
    confidence = torch.full((8, 5), 0.99)
    confidence[1, 3] = 0.5  # one blurry digit: right sum, not confident
    confidence[4, 0] = 0.2
    values = sum25_values(*tuple_counts(digits, confidence, threshold=0.9), train, heldout)
    assert values == pytest.approx({
        "sum25": 5 / 8, "sum25_confident": 4 / 8, "confident": 6 / 8, "train_combos": 4 / 8,
        "heldout_combos": 1 / 8, "neither": 3 / 8, "train_recall": 1 / 4504, "heldout_recall": 1 / 1127})
    histogram = sum_histogram(tuple_counts(digits, confidence)[0])
    assert histogram.sum() == 8 and histogram[25] == 5 and histogram[0] == 1 and histogram[45] == 1
    assert histogram[36] == 1


def test_histogram_png_is_written(tmp_path):
    path = plot_sum_histograms({"real": [0] * 25 + [96] + [4] + [0] * 19, "ema": list(range(46))},
                               tmp_path / "out" / "sums.png", "title")
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_real_held_out_tuples_put_more_than_95_percent_at_25(data):
    """The shipped classifier reads 99.18% of MNIST's test digits right, so a tuple of five is read right with
    probability about 0.9918 ** 5 = 0.960 (96.0% measured on 10,000 held-out tuples, and on these 3,000)."""
    real = data.sample_real(len(data.val_set), "test")  # all held-out tuples: the shares do not depend on the order
    values, histogram = score_tuples(real, data.train_combinations, data.heldout_combinations)
    assert values["sum25"] > 0.95 and histogram[25] == round(len(real) * values["sum25"])
    assert values["train_combos"] == 0 and values["heldout_combos"] == values["sum25"]
    assert values["sum25_confident"] > 0.8 and values["heldout_recall"] > 0.5
    # the in-training metric gives the same values from the same tuples, in any batching
    metric = Sum25Metric(data.train_combinations, data.heldout_combinations)
    for chunk in real[:300].split(128):
        metric.update(chunk)
    assert metric.compute() == pytest.approx(score_tuples(real[:300], data.train_combinations,
                                                          data.heldout_combinations, digit_extractor())[0])
    assert not metric.state_dict() or set(metric.state_dict()) <= {"counts", "confident_counts"}


def test_sum25_metric_needs_the_sum25_data_module():
    with pytest.raises(ValueError, match=r"Invalid metrics: \['sum25'\] for DigitsDataModule"):
        ImageMetrics(every_n_steps=1, metrics=["sum25"]).prepare(DigitsDataModule())
    with pytest.raises(ValueError, match=r"Invalid metrics: \['fid'\] for Sum25DataModule"):
        ImageMetrics(every_n_steps=1, metrics=["fid"]).prepare(Sum25DataModule(root="x"))


# -- training and evaluate, end to end --------------------------------------------------------------------------

TINY = """
seed_everything: 0
trainer: {max_steps: 4, log_every_n_steps: 2, enable_progress_bar: false, enable_model_summary: false}
model:
  generator:
    class_path: lightning_gan.models.DCGANGenerator
    init_args: {latent_dim: 16, channels: 5, image_size: 28, base_width: 8}
  discriminator:
    class_path: lightning_gan.models.DCGANDiscriminator
    init_args: {channels: 5, image_size: 28, base_width: 8}
  loss: wgan_gp
  scheme: extragradient
  uniform_average: false
  ema_decay: 0.9
data:
  class_path: lightning_gan.data.Sum25DataModule
  init_args: {root: ROOT, batch_size: 8, num_train_samples: 64, num_val_samples: 16}
samples: {every_n_steps: 0, num_samples: 8, generators: [ema]}
metrics: {every_n_steps: 2, num_samples: 40, metrics: [sum25], generators: [live, ema], batch_size: 20}
checkpoint: {every_n_train_steps: 4}
"""


@needs_mnist
def test_fit_logs_sum25_metrics_and_evaluate_prints_writes_json_and_png(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("ROOT", str(MNIST)))
    ckpt = fit_in_process(tmp_path / "run", config)
    rows = list(csv.DictReader(next((tmp_path / "run").rglob("metrics.csv")).read_text().splitlines()))
    logged = [r for r in rows if r.get("val/sum25_live")]
    assert [int(r["step"]) for r in logged] == [2, 4]
    assert all(0 <= float(r[f"val/{k}_ema"]) <= 1 for r in logged for k in ("sum25", "heldout_combos", "neither"))
    grids = list((tmp_path / "run").rglob("ema_step4.png"))
    assert len(grids) == 1  # five channels drawn side by side
    capsys.readouterr()

    main(["evaluate", "--ckpt", str(ckpt), "--num-samples", "60", "--device", "cpu"])
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["real (train)", "live", "ema"], out.out
    assert all("sum25 " in line and "held-out" in line and "(N=60, extractor mnist, step 4)" in line for line in lines)
    report = json.loads(ckpt.with_name("last.eval.json").read_text())
    assert report["metrics"] == ["sum25"] and report["extractor"] == "mnist"
    assert set(report["results"]) == {"live", "ema"}
    assert report["sum25"]["real"]["sum25"] > 0.85 and report["sum25"]["threshold"] == 0.9
    assert all(sum(h) == 60 and len(h) == 46 for h in report["sum25"]["histograms"].values())
    png = Path(report["sum25"]["png"])
    assert png == ckpt.with_name("last.eval.sums.png") and png.is_file()

    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--ckpt", str(ckpt), "--metrics", "fid", "--device", "cpu"])
    assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lightning-gan: error:")]
    assert len(errors) == 1 and "Invalid metrics for Sum25DataModule" in errors[0]
