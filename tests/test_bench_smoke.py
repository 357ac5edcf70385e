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


@pytest.mark.parametrize("feature", ["consensus", "unrolled"])
def test_step_overhead_feature_hand_loops(step_overhead, feature):
    """--compare consensus/unrolled: module and hand loop both with the feature, and the hand loop is right."""
    threads = torch.get_num_threads()
    try:
        rows = step_overhead.main(["--model", "mlp", "--schemes", "simultaneous", "alternating1", "--iterations", "2",
                                   "--warmup", "1", "--repeats", "1", "--batch-size", "8", "--threads", "1",
                                   "--compare", feature])
    finally:
        torch.set_num_threads(threads)
    assert [r.scheme for r in rows] == ["simultaneous", "alternating1"]
    for r in rows:
        assert r.compared == feature and r.baseline_ms > 0 and r.module_fit_ms > 0
        assert r.feature_cost > 0 and r.hand_feature_cost > 0 and r.plain_ratio > 0
        # the hand-written consensus / unrolled loop computes what the module computes (bit for bit today)
        assert r.max_param_diff < 1e-6, (r.scheme, r.max_param_diff)


MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.mark.slow
@pytest.mark.skipif(not (MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="needs ../shared/data/mnist")
def test_compare_methods_smoke_run(tmp_path):
    import subprocess

    script = Path(__file__).resolve().parents[1] / "bench" / "compare_methods.py"
    proc = subprocess.run([sys.executable, str(script), "--root", str(MNIST), "--budget", "12", "--seeds", "0",
                           "--methods", "extraadam", "svre", "--train-samples", "640", "--num-samples", "200",
                           "--points", "2", "--width", "8", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in results["runs"]] == ["extraadam", "svre"]
    for run in results["runs"]:
        last = run["curve"][-1]
        assert last["val/evaluations"] >= 12  # stopped by the budget, not before
        assert all(0 < last[f"val/fid_{g}"] < 1e6 for g in ("live", "uniform", "ema"))
    # SVRE: a pass over 640 images at batch 64 is worth 10 evaluations, then 4 per iteration: 14 at the stop.
    assert results["runs"][1]["curve"][-1]["val/evaluations"] == 14
    assert 0 <= results["real_floor_fid"] < 50
    assert "| ExtraAdam |" in (tmp_path / "table.md").read_text() and (tmp_path / "fid_vs_evaluations.png").is_file()


@pytest.mark.slow
def test_fault_trials_smoke_run(tmp_path):
    """bench/fault_trials.py runs a signal trial and a bad-checkpoint trial and writes its table (~30 s)."""
    path = Path(__file__).resolve().parents[1] / "bench" / "fault_trials.py"
    spec = importlib.util.spec_from_file_location("fault_trials", path)
    fault_trials = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = fault_trials  # dataclasses look their module up there
    try:
        spec.loader.exec_module(fault_trials)
        trials = fault_trials.main(["--trials", "1", "--faults", "sigterm", "bad_ckpt_missing", "--out", str(tmp_path)])
    finally:
        sys.modules.pop(spec.name, None)
    assert [(t.fault, t.met) for t in trials] == [("sigterm", True), ("bad_ckpt_missing", True)], trials
    assert "| SIGTERM, 1 process | 1 | 1 |" in (tmp_path / "fault_trials.md").read_text()
    assert len(json.loads((tmp_path / "fault_trials.json").read_text())["trials"]) == 2
