"""bench/mode_coverage.py: the method table and budgets are well formed, and its --quick smoke run scores real runs
and writes the table, the picture and the JSON."""

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
    assert bench.METHODS[0].overrides == () and bench.METHODS[0].adagan_components is None  # the protocol first
    assert [m.adagan_components for m in bench.METHODS if m.adagan_components] == [1, 3, 5, 10]
    outcomes = [bench.Outcome(bench.METHODS[0].name, "ring", s, m, 8.0, q, 1.0) for s, m, q in
                [(0, 8.0, 0.98), (1, 6.0, 0.96)]]
    outcomes.append(bench.Outcome(bench.METHODS[0].name, "ring", 2, float("nan"), 8.0, float("nan"), 1.0,
                                  error="fit: DivergenceError"))
    table, rows = bench.summarize(outcomes, bench.METHODS[:1], ("ring", "grid"))
    assert "7.0 ± 1.0 (8/6), 1 failed" in table and "97.0 ± 1.0 %" in table
    assert ("| *PacGAN Table 1: GAN (400k iterations, reference players)* | 6.3 ± 0.5 | 98.2 ± 0.2 % | 17.3 ± 0.8 "
            "| 94.8 ± 0.7 % |") in table
    assert rows == [{"method": bench.METHODS[0].name, "kind": "ring", "seeds": [0, 1], "failed_seeds": [2],
                     "modes_mean": 7.0, "modes_se": 1.0, "high_quality_mean": pytest.approx(0.97),
                     "high_quality_se": pytest.approx(0.01)}]


def test_budgets_and_commands(bench, tmp_path):
    """Every method gets the budget's iterations (generator updates); AdaGAN's T components share them."""
    cpu, full = bench.BUDGETS["cpu"], bench.BUDGETS["full"]
    assert full.iterations == 400_000 and full.overrides == ()
    assert cpu.iterations == bench.CPU_ITERATIONS < full.iterations
    for method in bench.METHODS:
        train, evaluate, sample = bench.commands(method, "grid", 3, tmp_path, cpu, 1000, draw_samples=False)
        assert sample is None and train[train.index("--seed_everything") + 1] == "3"
        assert all(o in train for o in cpu.overrides)
        assert train[len(train) - len(method.overrides):] == list(method.overrides)  # the method's overrides last
        steps = int(train[train.index("--trainer.max_steps") + 1])
        if method.adagan_components:
            assert train[0] == "adagan" and steps == 1000 // method.adagan_components
            assert evaluate[evaluate.index("--ckpt") + 1].endswith("mixture.ckpt")
        else:
            assert train[0] == "fit" and steps == 1000
        assert evaluate[:1] == ["evaluate"] and "2500" in evaluate and "live" in evaluate
    assert bench.commands(bench.METHODS[0], "grid", 0, tmp_path, cpu, 10, draw_samples=True)[2][0] == "sample"


def test_method_selection(bench):
    args = ["--methods", "adagan*", "--exclude", "adagan_t_10*"]
    assert bench._select(["adagan*"], "--methods") == {bench.slug(m.name) for m in bench.METHODS
                                                        if m.adagan_components}
    with pytest.raises(SystemExit, match="Invalid --exclude: 'nope' matches no method"):
        bench._select(["nope"], "--exclude")
    assert bench.parse_args(args).exclude == ["adagan_t_10*"]


@pytest.mark.slow
def test_quick_smoke_run(bench, tmp_path):
    result = bench.main(["--quick", "--out", str(tmp_path)])
    assert len(result["runs"]) == 2 * 2  # 2 methods x {ring, grid} x 1 seed
    for run in result["runs"]:
        assert run["error"] is None, run["error"]
        assert run["num_modes"] == (8 if run["kind"] == "ring" else 25)
        assert 0 <= run["modes_covered"] <= run["num_modes"] and 0 <= run["high_quality"] <= 1
        assert run["fit_seconds"] > 0 and run["cpu_seconds"] > 0
        assert (run["samples"] is not None) == (run["kind"] == "grid")  # the picture's runs: seed 0 on the grid
    saved = json.loads((tmp_path / "mode_coverage.json").read_text())
    assert saved["protocol"]["num_eval_samples"] == 2500 and len(saved["summary"]) == 4
    for key in ("budget", "max_steps", "seeds", "kinds", "jobs", "wall_seconds", "methods", "picture", "summary",
                "reference_pacgan_table1", "runs"):
        assert key in saved, key
    assert saved["budget"]["name"] == "cpu" and saved["max_steps"] == 20
    for row in saved["summary"]:
        assert set(row) == {"method", "kind", "seeds", "failed_seeds", "modes_mean", "modes_se", "high_quality_mean",
                            "high_quality_se"}
    table = (tmp_path / "mode_coverage.md").read_text()
    assert "| method |" in table and "PacGAN Table 1: GAN" in table and "Budget `cpu`: 20 iterations" in table
    picture = tmp_path / "mode_coverage_grid.png"
    assert saved["picture"] == str(picture)
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 10_000
