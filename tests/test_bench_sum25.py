"""bench/sum25.py (GAN vs VAE on sum-to-25) runs end to end on a tiny budget and writes its table, JSON and figure."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist"  # the configs' default root, ../shared/data/mnist


@pytest.mark.slow
@pytest.mark.skipif(not (MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="needs ../shared/data/mnist")
def test_sum25_bench_smoke_run(tmp_path):
    """~1 min: 2 GAN iterations, 4 VAE steps, 50 tuples scored per row."""
    png = tmp_path / "sums.png"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "sum25.py"), "--root", str(MNIST),
                           "--gan-iterations", "2", "--vae-steps", "4", "--num-samples", "50", "--out", str(tmp_path),
                           "--png", str(png)], capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "results.json").read_text())
    names = [row["name"] for row in report["rows"]]
    assert names == ["data (training tuples)", "data (held-out tuples)", "GAN (live)", "GAN (ema)", "GAN (uniform)",
                     "VAE"]
    for row in report["rows"]:
        values = row["values"]
        assert all(0 <= values[k] <= 1 for k in ("sum25", "sum25_confident", "train_combos", "heldout_combos"))
        assert sum(row["histogram"]) == 50
    real_train, real_heldout = report["rows"][0]["values"], report["rows"][1]["values"]
    assert real_train["sum25"] > 0.8 and real_train["heldout_combos"] == 0  # the classifier reads real tuples
    assert real_heldout["sum25"] > 0.8 and real_heldout["train_combos"] == 0
    assert report["gan_seconds"] > 0 and report["vae_seconds"] > 0 and report["tuples_seen_each"] == 4 * 64
    assert "| VAE |" in (tmp_path / "table.md").read_text() and png.is_file()
