"""bench/step_overhead.py keeps running, and its hand-written baseline still computes what GANModule computes."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "bench" / "step_overhead.py"


@pytest.fixture(scope="module")
def step_overhead():
    spec = importlib.util.spec_from_file_location("step_overhead", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_step_overhead_smoke_run(step_overhead, tmp_path):
    out = tmp_path / "overhead.json"
    threads = torch.get_num_threads()
    try:  # one thread: on a shared 2-core machine two threads make small backward passes ~100x slower
        rows = step_overhead.main(["--model", "mlp", "--iterations", "2", "--warmup", "1", "--repeats", "1",
                                   "--batch-size", "8", "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert [r.scheme for r in rows] == list(step_overhead.SCHEMES)
    for r in rows:
        assert r.baseline_ms > 0 and r.module_fit_ms > 0 and r.module_step_ms > 0
        # the baseline is the same algorithm: same parameters after 3 iterations from one initialisation
        assert r.max_param_diff < 1e-6, (r.scheme, r.max_param_diff)
    assert len(json.loads(out.read_text())["rows"]) == len(rows)
