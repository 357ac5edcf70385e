"""bench/profile_step.py keeps running: it profiles one MLP iteration and charges the allocations to their parts."""

import json
import os
import subprocess
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]


def test_profile_step_smoke_run(tmp_path):
    out = tmp_path / "profile.json"
    # a subprocess: the script wraps library methods in profiler regions for the life of its process
    env = {**os.environ, "PYTHONPATH": str(_ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(_ROOT / "bench" / "profile_step.py"), "--mode", "profile", "--cases",
                    "mlp:simultaneous", "--batch", "8", "--warmup", "1", "--iterations", "1", "--out", str(out)],
                   env=env, check=True, capture_output=True, timeout=300)
    [result] = json.loads(out.read_text())
    regions = {row[0] for row in result["rows"]}
    assert {"field", "optimizer"} <= regions
    assert "all_reduce" not in regions  # one rank: no collective, no flat buffer
    # Adam's loop path: one new tensor per parameter and step (the denominator, the update written over it)
    big = [row for row in result["rows"] if row[0] == "optimizer" and row[3] / max(row[2], 1) > 64]
    assert sum(row[2] for row in big) == 16  # 8 + 8 trainable tensors of the quickstart's MLP players
