"""Stacked MNIST (three MNIST digits as channels, 1,000 modes): the data module (the table of image indices, the
channels, determinism, rank shards, resume, data on the device), the metric (KL by hand, a collapsed generator, real
stacks against the classifier's measured error rate), the in-training metric and ``lightning-gan evaluate`` end to
end, and the one-line errors of bad values."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from gan_fixtures import fit_in_process
from test_data import write_fake_mnist

from lightning_gan.callbacks import ImageMetrics
from lightning_gan.cli import main
from lightning_gan.data import DigitsDataModule, StackedMNISTDataModule
from lightning_gan.data.base import DeviceIndices, to_unit_range
from lightning_gan.data.mnist import read_idx
from lightning_gan.data.stacked_mnist import draw_stacks, triple_codes
from lightning_gan.metrics.stacked_mnist import (
    StackedMNISTMetric,
    classify_stacks,
    digit_extractor,
    format_stacked,
    kl_to_uniform,
    mode_counts,
    score_stacks,
    stacked_values,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning"),  # torchdata 0.11 on torch 2.14
    pytest.mark.filterwarnings("ignore:(?s).*skip_none parameter was deprecated"),  # Lightning's SaveConfigCallback
]

# MNIST where the configs expect it (../shared/data/mnist from the repository root), as tests/test_sum25.py finds it.
MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
REPO = Path(__file__).resolve().parents[1]
needs_mnist = pytest.mark.skipif(not (MNIST / "train-images-idx3-ubyte.gz").is_file(), reason=f"no MNIST at {MNIST}")


def mnist_all() -> tuple[torch.Tensor, torch.Tensor]:
    """The 70,000 MNIST images (training first, then t10k) and labels, read straight from the IDX files."""
    images = np.concatenate([read_idx(MNIST / f"{p}-images-idx3-ubyte.gz", 3) for p in ("train", "t10k")])
    labels = np.concatenate([read_idx(MNIST / f"{p}-labels-idx1-ubyte.gz", 1) for p in ("train", "t10k")])
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


@pytest.fixture(scope="module")
def data() -> StackedMNISTDataModule:
    if not (MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"no MNIST at {MNIST}")
    dm = StackedMNISTDataModule(root=str(MNIST), num_samples=3000, seed=5)
    dm.setup()
    return dm


def fake(tmp_path: Path, **kwargs) -> StackedMNISTDataModule:
    """A stacked data module over a fake 40 + 40 image MNIST folder (no real data needed)."""
    write_fake_mnist(tmp_path / "mnist", n=40)
    return StackedMNISTDataModule(root=str(tmp_path / "mnist"), num_samples=96, **kwargs)


# -- the data module -------------------------------------------------------------------------------------------

def test_triple_codes():
    assert triple_codes(torch.tensor([[0, 0, 0], [9, 9, 9], [1, 2, 3], [0, 7, 0]])).tolist() == [0, 999, 123, 70]
    with pytest.raises(ValueError, match=r"^Invalid digits: \(2, 5\); expected \(N, 3\) digit triples$"):
        triple_codes(torch.zeros(2, 5, dtype=torch.long))


@needs_mnist
def test_samples_are_three_mnist_images_of_the_table_stacked_as_channels(data):
    images, labels = mnist_all()
    picks = data.train_set.picks
    assert len(data.train_set) == 3000 and picks.shape == (3000, 3) and picks.dtype == torch.int64
    assert len(data.train_set.images) == 70000  # training and test images, as the reference's load_mnist
    assert torch.equal(data.labels, labels[picks])  # the digit of each channel is its image's label
    for index in (0, 7, 2999):
        x, i = data.train_set[index]
        assert i == index and x.shape == (3, 28, 28) and x.dtype == torch.float32
        for k in range(3):
            assert torch.equal(x[k], to_unit_range(images[picks[index, k]]))
    x = data.sample_real(20)
    assert x.shape == (20, 3, 28, 28) and x.min() == -1 and x.max() == 1
    # uniform draws with replacement among all 70,000 images: both splits are used, the channels are independent
    assert picks.max() >= 60000 and picks.min() < 60000 and picks.unique().numel() > 8000
    assert not torch.equal(picks[:, 0], picks[:, 1])
    assert torch.bincount(triple_codes(data.labels), minlength=1000).gt(0).sum() > 900  # 1000 (1 - e^-3) = 950


@needs_mnist
def test_the_table_is_a_function_of_the_seed_and_digit_images(data):
    again = StackedMNISTDataModule(root=str(MNIST), num_samples=3000, seed=5)
    again.setup()
    assert torch.equal(again.train_set.picks, data.train_set.picks)
    assert torch.equal(again.sample_real(50), data.sample_real(50))
    other = StackedMNISTDataModule(root=str(MNIST), num_samples=3000, seed=6)
    other.setup()
    assert not torch.equal(other.train_set.picks, data.train_set.picks)
    test_only = StackedMNISTDataModule(root=str(MNIST), num_samples=3000, seed=5, digit_images="test")
    test_only.setup()
    assert len(test_only.train_set.images) == 10000 and test_only.train_set.picks.max() < 10000
    assert torch.equal(draw_stacks(10, 4, seed=3), draw_stacks(10, 4, seed=3))


@pytest.mark.parametrize("draws", [1, 2])
def test_two_ranks_see_the_samples_of_one_rank_with_double_batch(draws, tmp_path):
    B = 4
    two, one = fake(tmp_path, batch_size=B, seed=7), fake(tmp_path, batch_size=2 * B, seed=7)
    two.draws_per_step = one.draws_per_step = draws
    ranks = [iter(two._train_loader(world_size=2, rank=r)) for r in (0, 1)]
    single = iter(one._train_loader(world_size=1, rank=0))
    for _ in range(3):
        (x0, i0), (x1, i1) = next(ranks[0]), next(ranks[1])
        x, i = next(single)
        assert len(i0) == len(i1) == B * draws and len(i) == 2 * B * draws
        for c0, c1, c in zip(i0.chunk(draws), i1.chunk(draws), i.chunk(draws), strict=True):
            assert sorted(c0.tolist() + c1.tolist()) == sorted(c.tolist())
        rows = {int(j): row for j, row in zip(torch.cat([i0, i1]), torch.cat([x0, x1]), strict=True)}
        assert all(torch.equal(rows[int(j)], row) for j, row in zip(i, x, strict=True))  # same index, same image


def test_the_loader_resumes_mid_epoch_and_on_device_gives_the_same_batches(tmp_path):
    dm = fake(tmp_path, batch_size=8, seed=1)
    dm.draws_per_step = 2
    expected = [next(it) for it in [iter(dm.train_dataloader())] for _ in range(4)]
    loader = dm.train_dataloader()
    it = iter(loader)
    for _ in range(3):
        next(it)
    resumed = dm.train_dataloader()
    resumed.load_state_dict(loader.state_dict())
    x, index = next(iter(resumed))
    assert torch.equal(index, expected[3][1]) and torch.equal(x, expected[3][0])
    on_device = fake(tmp_path, batch_size=8, seed=1, on_device=True)
    on_device.draws_per_step = 2
    for (x, index), batch in zip(expected, on_device._train_loader(1, 0), strict=False):
        assert isinstance(batch, DeviceIndices)
        x1, index1 = on_device.on_after_batch_transfer(batch, 0)
        assert torch.equal(index1, index) and torch.equal(x1, x) and x1.dtype == torch.float32


def test_bad_values_are_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"^Invalid num_samples: 0; expected an integer >= 1$"):
        StackedMNISTDataModule(root="x", num_samples=0)
    with pytest.raises(ValueError, match=r"^Invalid digit_images: 'both'; expected 'all', 'train' or 'test'$"):
        StackedMNISTDataModule(root="x", digit_images="both")
    with pytest.raises(FileNotFoundError, match=r"^MNIST folder .*nowhere does not exist; expected the four"):
        StackedMNISTDataModule(root=str(tmp_path / "nowhere")).setup()
    with pytest.raises(ValueError, match=r"^Invalid stacked MNIST samples: \(2, 5, 28, 28\); expected \(N, 3, 28"):
        score_stacks(torch.zeros(2, 5, 28, 28))
    with pytest.raises(ValueError, match=r"^Invalid threshold: 0; expected 0 < threshold <= 1$"):
        StackedMNISTMetric(threshold=0)
    with pytest.raises(ValueError, match=r"^Invalid counts: no sample counted"):
        kl_to_uniform(torch.zeros(1000))
    with pytest.raises(ValueError, match=r"^Invalid counts: shape \(10,\); expected 1000 non-negative counts$"):
        kl_to_uniform(torch.ones(10))


# -- the metric ------------------------------------------------------------------------------------------------

def test_kl_by_hand_and_its_extremes():
    counts = torch.zeros(1000, dtype=torch.long)
    counts[[5, 123]] = torch.tensor([3, 1])  # p = (3/4, 1/4): 0.75 log(750) + 0.25 log(250)
    assert kl_to_uniform(counts) == pytest.approx(0.75 * math.log(750) + 0.25 * math.log(250), abs=1e-12)
    assert kl_to_uniform(counts) == pytest.approx(6.34542, abs=1e-5)  # 4.965055 + 1.380365
    assert kl_to_uniform(torch.ones(1000)) == pytest.approx(0.0, abs=1e-12)
    single = torch.zeros(1000)
    single[999] = 26000
    assert kl_to_uniform(single) == pytest.approx(math.log(1000), abs=1e-12)


def test_values_of_hand_made_triples_are_exact():
    digits = torch.tensor([[1, 2, 3], [1, 2, 3], [1, 2, 3], [9, 0, 0]])
    confidence = torch.full((4, 3), 0.99)
    confidence[0, 2] = 0.5  # one blurry channel: its triple is a mode, not a confident one
    counts, confident = mode_counts(digits, confidence, threshold=0.9)
    assert counts[123] == 3 and counts[900] == 1 and counts.sum() == 4
    assert confident[123] == 2 and confident.sum() == 3
    values = stacked_values(counts, confident)
    assert values == pytest.approx({"stacked_modes": 2, "stacked_kl": 0.75 * math.log(750) + 0.25 * math.log(250),
                                    "stacked_confident": 3 / 4, "stacked_modes_confident": 2})
    assert format_stacked(values) == "modes 2/1000  kl 6.3454  confident 75.0% (modes 2)"


@needs_mnist
def test_a_collapsed_generator_has_one_mode_and_kl_log_1000(data):
    one = data.sample_real(1).expand(500, -1, -1, -1)  # every sample the same image
    values = score_stacks(one)
    assert values["stacked_modes"] == 1 and values["stacked_modes_confident"] <= 1
    assert values["stacked_kl"] == pytest.approx(math.log(1000), abs=1e-12)


@needs_mnist
def test_real_stacks_cover_all_modes_within_the_classifier_error():
    """The shipped classifier's error on MNIST's 10,000 test digits is 0.82% (measured here), so a triple is misread
    with probability at most about 3 x 0.82% = 2.5% (less on the training images, which it has seen). 10,000 uniform
    triples miss a given mode with probability (1 - 1/1000)^10000 = 4.5e-5, and their histogram is at KL about
    (1000 - 1) / (2 x 10000) = 0.05 from the uniform by sampling alone. Measured: 98.0% of the triples read right
    (bound: 1 - 3 x 0.0082 - 0.005 = 97.0%), all 1,000 modes read, KL 0.0540 (the true triples' KL: 0.0536); at
    N = 26,000, the protocol's size: 1,000 modes, KL 0.0232 (true: 0.0230), 93.0% read confidently."""
    extractor = digit_extractor()
    test_x = torch.from_numpy(read_idx(MNIST / "t10k-images-idx3-ubyte.gz", 3).copy())
    test_y = torch.from_numpy(read_idx(MNIST / "t10k-labels-idx1-ubyte.gz", 1).astype(np.int64))
    with torch.no_grad():
        read = torch.cat([extractor(to_unit_range(chunk).unsqueeze(1)).argmax(-1) for chunk in test_x.split(2000)])
    error = float((read != test_y).double().mean())
    assert 0.002 < error < 0.012  # 0.0082

    dm = StackedMNISTDataModule(root=str(MNIST), seed=0)  # the reference's 128,000 stacks
    dm.setup()
    n = 10_000
    real = dm.sample_real(n)
    order = torch.randperm(len(dm.train_set), generator=torch.Generator().manual_seed(0))[:n]  # sample_real's rows
    truth = dm.labels[order]
    digits, confidence = classify_stacks(extractor, real)
    right = float((digits == truth).all(-1).double().mean())
    assert right >= 1 - 3 * error - 0.005  # 3 binomial sd of slack at n = 10,000
    true_counts = torch.bincount(triple_codes(truth), minlength=1000)
    values = stacked_values(*mode_counts(digits, confidence))
    assert true_counts.gt(0).sum() >= 995 and values["stacked_modes"] >= true_counts.gt(0).sum() - 5
    assert values["stacked_kl"] < 2 * 999 / (2 * n)  # twice the sampling floor of the uniform
    assert abs(values["stacked_kl"] - kl_to_uniform(true_counts)) < 0.01
    assert values["stacked_confident"] > 0.85
    # the in-training metric gives the same values from the same samples, in any batching
    metric = StackedMNISTMetric()
    for chunk in real[:600].split(128):
        metric.update(chunk)
    assert metric.compute() == pytest.approx(score_stacks(real[:600], extractor))
    assert set(metric.state_dict()) <= {"counts", "confident_counts"}


def test_stacked_metric_needs_the_stacked_data_module():
    with pytest.raises(ValueError, match=r"Invalid metrics: \['stacked'\] for DigitsDataModule"):
        ImageMetrics(every_n_steps=1, metrics=["stacked"]).prepare(DigitsDataModule())
    with pytest.raises(ValueError, match=r"Invalid metrics: \['fid'\] for StackedMNISTDataModule"):
        ImageMetrics(every_n_steps=1, metrics=["fid"]).prepare(StackedMNISTDataModule(root="x"))


# -- training and evaluate, end to end --------------------------------------------------------------------------

TINY = """
seed_everything: 0
trainer: {max_steps: 4, log_every_n_steps: 2, enable_progress_bar: false, enable_model_summary: false}
model:
  generator:
    class_path: lightning_gan.models.DCGANGenerator
    init_args: {latent_dim: 16, channels: 3, image_size: 28, base_width: 8}
  discriminator:
    class_path: lightning_gan.models.DCGANDiscriminator
    init_args: {channels: 3, image_size: 28, base_width: 8, batch_norm: true, negative_slope: 0.2}
  loss: non_saturating
  scheme: alternating
  uniform_average: false
  ema_decay: 0.9
data:
  class_path: lightning_gan.data.StackedMNISTDataModule
  init_args: {root: ROOT, batch_size: 8, num_samples: 128}
samples: {every_n_steps: 0, num_samples: 8, generators: [ema]}
metrics: {every_n_steps: 2, num_samples: 40, metrics: [stacked], generators: [live, ema], batch_size: 20}
checkpoint: {every_n_train_steps: 4}
"""


@needs_mnist
def test_fit_logs_stacked_metrics_and_evaluate_prints_and_writes_json(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("ROOT", str(MNIST)))
    ckpt = fit_in_process(tmp_path / "run", config)
    rows = list(csv.DictReader(next((tmp_path / "run").rglob("metrics.csv")).read_text().splitlines()))
    logged = [r for r in rows if r.get("val/stacked_modes_live")]
    assert [int(r["step"]) for r in logged] == [2, 4]
    assert all(1 <= float(r[f"val/stacked_modes_{g}"]) <= 40 for r in logged for g in ("live", "ema"))
    assert all(0 <= float(r["val/stacked_kl_ema"]) <= math.log(1000) + 1e-9 for r in logged)
    capsys.readouterr()

    main(["evaluate", "--ckpt", str(ckpt), "--num-samples", "300", "--device", "cpu"])
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["real (train)", "live", "ema"], out.out
    assert all("/1000  kl " in line and "(N=300, extractor mnist, step 4)" in line for line in lines)
    report = json.loads(ckpt.with_name("last.eval.json").read_text())
    assert report["metrics"] == ["stacked"] and report["extractor"] == "mnist"
    assert set(report["results"]) == {"live", "ema"}
    real = report["stacked"]["real"]  # 300 draws from the 128-stack table: <= 128, ~ 1000 (1 - e^-0.128) = 120 triples
    assert 100 <= real["stacked_modes"] <= 128 and real["stacked_kl"] < 2.5
    assert all(v["stacked_modes"] < real["stacked_modes"] for v in report["results"].values())  # 4 iterations

    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--ckpt", str(ckpt), "--metrics", "fid", "--device", "cpu"])
    assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lightning-gan: error:")]
    assert len(errors) == 1 and "Invalid metrics for StackedMNISTDataModule" in errors[0]

    # two-sample tests read the three channels with the digit classifier (Inception is refused)
    out_json = tmp_path / "two_sample.json"
    main(["evaluate", "--ckpt", str(ckpt), "--num-samples", "100", "--device", "cpu", "--generator", "ema",
          "--two-sample", "--permutations", "20", "--out", str(out_json)])
    report = json.loads(out_json.read_text())["two_sample"]
    assert (report["features"], report["network"], report["num_samples"]) == ("classifier", "mnist", 100)
    assert set(report["results"]["ema"]) == {"mmd", "classifier"}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--ckpt", str(ckpt), "--device", "cpu", "--two-sample", "--two-sample-features",
              "inception"])
    assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lightning-gan: error:")]
    assert len(errors) == 1 and "'inception' for StackedMNISTDataModule" in errors[0]


# -- bench/stacked_mnist.py ------------------------------------------------------------------------------------

def _bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_stacked_mnist", REPO / "bench" / "stacked_mnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_budgets_give_equal_f_evaluations_and_the_table_reads_the_records(tmp_path):
    bench = _bench()
    gpu = bench.parse_args(["--out", str(tmp_path)])
    assert (gpu.budget, gpu.evaluations, gpu.runs, gpu.jobs) == ("gpu", 200_000, 10, 1)
    assert [bench.iterations(m, gpu.evaluations) for m in ("alternating", "simultaneous", "extragradient")] == \
        [100_000, 200_000, 100_000]  # alternating: the reference's 100,000 D steps
    cpu = bench.parse_args(["--budget", "cpu", "--out", str(tmp_path), "--methods", "alternating,optimistic"])
    assert (cpu.evaluations, cpu.runs, cpu.jobs, cpu.methods) == (2000, 1, 2, ["alternating", "optimistic"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--out", str(tmp_path), "--methods", "adagrad"])
    value = {"stacked_modes": 12.0, "stacked_kl": 4.5, "stacked_confident": 0.5, "stacked_modes_confident": 3.0}
    records = [{"method": "alternating", "seed": 0, "live": value, "ema": value, "real": value, "fit_seconds": 60.0},
               {"method": "optimistic", "seed": 0, "error": "fit failed"}]
    text = bench.table(cpu, records)
    assert "| alternating | 2 | 1000 | 1 | 12.0 | 4.500 | 12.0 | 4.500 | 50.0% | 3.0 | 1.0 |" in text
    assert "| optimistic | 1 | 2000 | 0 | n/a |" in text and "2,000 F-evaluations per run" in text


@pytest.mark.slow
@needs_mnist
def test_bench_cpu_smoke_run(tmp_path):
    """~1-2 min: two methods, 8 F-evaluations each, 300 samples scored."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(REPO / "bench" / "stacked_mnist.py"), "--budget", "cpu", "--root",
                           str(MNIST), "--methods", "alternating,optimistic", "--evaluations", "8", "--num-samples",
                           "300", "--out", str(tmp_path)], capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert [(r["method"], r["iterations"], r["evaluations"]) for r in report["records"]] == \
        [("alternating", 4, 8), ("optimistic", 8, 8)]
    for r in report["records"]:
        assert 1 <= r["ema"]["stacked_modes"] <= 300 and 0 <= r["live"]["stacked_kl"] <= math.log(1000) + 1e-9
        assert 230 <= r["real"]["stacked_modes"] <= 300  # 300 real stacks: ~259 distinct triples
    assert "| optimistic | 1 | 8 | 1 |" in (tmp_path / "table.md").read_text()
