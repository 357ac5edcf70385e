"""bench/gpu.py --device cpu --quick runs, and writes its JSON and table with the requested rows."""

import json
import subprocess
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_quick_on_cpu(tmp_path):
    out = tmp_path / "gpu"
    result = subprocess.run([sys.executable, str(_ROOT / "bench" / "gpu.py"), "--device", "cpu", "--quick",
                             "--out", str(out)], check=False, capture_output=True, text=True,
                            timeout=120, cwd=_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("device: "), result.stdout[:200]  # the header line comes first
    assert "torch " in result.stdout.splitlines()[0] and "CUDA" in result.stdout.splitlines()[0]
    report = json.loads((out / "gpu.json").read_text())
    table = (out / "gpu.md").read_text()
    assert {"device", "torch", "cuda", "cudnn"} <= set(report["info"])
    rows = report["rows"]
    ran = [r for r in rows if r["status"] == "ok"]
    assert {r["scheme"] for r in ran} == {"simultaneous", "extragradient", "svre"}
    assert {r["variant"] for r in ran} == {"fp32", "fp32+channels_last", "bf16", "bf16+channels_last"}
    assert len(ran) == len(rows) == 12  # 3 schemes x 4 variants, none skipped
    for r in ran:
        assert r["module_it_s"] > 0
        assert abs(r["module_img_s"] - r["batch"] * r["module_it_s"]) < 1e-6 * r["module_img_s"]
        assert r["module_peak_mib"] == "n/a"
        if r["scheme"] == "svre":
            assert r["hand_it_s"] is None and r["svre_snapshot_pass_s"] is not None
        else:
            assert r["hand_it_s"] > 0 and r["module_over_hand"] > 0
    assert {r["precision"] for r in ran} == {"fp32", "bf16"}
    assert table.count("\n| dcgan32 |") == len(rows)
