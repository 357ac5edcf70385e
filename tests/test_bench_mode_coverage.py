"""bench/mode_coverage.py: the method table is well formed and its --quick smoke run scores real runs."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "mode_coverage.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("mode_coverage_bench", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_methods_and_summary(bench):
    slugs = [bench.slug(m.name) for m in bench.METHODS]
    assert len(set(slugs)) == len(slugs)
    assert bench.METHODS[0].overrides == ()  # the protocol itself comes first
    outcomes = [bench.Outcome(bench.METHODS[0].name, "ring", s, m, 8.0, q, 1.0) for s, m, q in
                [(0, 8.0, 0.98), (1, 6.0, 0.96)]]
    table, rows = bench.summarize(outcomes, bench.METHODS[:1], ("ring", "grid"))
    assert "7.0 ± 1.0 (8/6)" in table and "97.0 ± 1.0 %" in table
    assert rows == [{"method": bench.METHODS[0].name, "kind": "ring", "seeds": [0, 1], "modes_mean": 7.0,
                     "modes_se": 1.0, "high_quality_mean": pytest.approx(0.97), "high_quality_se": pytest.approx(0.01)}]


@pytest.mark.slow
def test_quick_smoke_run(bench, tmp_path):
    result = bench.main(["--quick", "--out", str(tmp_path)])
    assert len(result["runs"]) == 2 * 2  # 2 methods x {ring, grid} x 1 seed
    for run in result["runs"]:
        assert run["num_modes"] == (8 if run["kind"] == "ring" else 25)
        assert 0 <= run["modes_covered"] <= run["num_modes"] and 0 <= run["high_quality"] <= 1
    saved = json.loads((tmp_path / "mode_coverage.json").read_text())
    assert saved["protocol"]["num_eval_samples"] == 2500 and len(saved["summary"]) == 4
    assert (tmp_path / "mode_coverage.md").read_text().startswith("| method |")
