"""What a search leaves behind: the table of trials (printed and CSV) and the best config as YAML."""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Any

import yaml

from tune.report import CHECKPOINT_NAME
from tune.space import SearchSpace, apply_params, get_path, plain, set_path

__all__ = ["best_row", "print_table", "trial_rows", "write_best", "write_csv"]

PROG = "python -m tune.search"


def trial_rows(results: Any, space: SearchSpace, metric: str, max_steps: int,
               interrupted: bool = False) -> list[dict[str, Any]]:
    """One row per trial: id, outcome, sampled values (clipped, as trained), last step and metric. In an interrupted
    search a trial short of max_steps may have been stopped by the scheduler or cut off: "unfinished"."""
    rows = []
    for result in results:
        last = result.metrics or {}
        params = space.clip({k: v for k, v in (result.config or {}).items() if k in space.params})
        step = last.get("step")
        value = last.get(metric)
        outcome = ("error" if result.error else "completed" if step == max_steps
                   else "unfinished" if interrupted else "stopped early")
        rows.append({"trial": last.get("trial_id") or Path(result.path).name, "outcome": outcome, **params,
                     "step": step, metric: plain(value) if value is not None else None,
                     "checkpoint": _checkpoint_file(result),
                     "error": str(result.error).splitlines()[0] if result.error else ""})
    return sorted(rows, key=lambda r: r["trial"])


def _checkpoint_file(result: Any) -> str | None:
    """The trial's last checkpoint as Tune kept it (the trial's own folder may lack the final one: a scheduler stops
    a trial as soon as it reports its last step, before Lightning's end-of-training hooks run)."""
    checkpoint = getattr(result, "checkpoint", None)
    if checkpoint is None:
        return None
    path = Path(checkpoint.path) / CHECKPOINT_NAME
    return str(path) if path.is_file() else None


def best_row(rows: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The best last value among trials that ran to the end; among all trials only if none did."""
    scored = [r for r in rows if r["outcome"] != "error" and isinstance(r[metric], (int, float))
              and math.isfinite(r[metric])]
    finished = [r for r in scored if r["outcome"] == "completed"] or scored
    if not finished:
        return None
    return (min if mode == "min" else max)(finished, key=lambda r: r[metric])


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def print_table(rows: list[dict[str, Any]], metric: str) -> None:
    if not rows:
        print("no trials")
        return
    fields = [k for k in dict.fromkeys(k for row in rows for k in row) if k not in ("error", "checkpoint")]

    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)

    table = [fields] + [[cell(row.get(k)) for k in fields] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(fields))]
    for line in table:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)))
    counts = {outcome: sum(r["outcome"] == outcome for r in rows)
              for outcome in ("completed", "stopped early", "unfinished", "error")}
    print(f"{len(rows)} trials: " + ", ".join(f"{n} {outcome}" for outcome, n in counts.items() if n or outcome
                                               in ("completed", "stopped early")))
    errors = [r for r in rows if r["outcome"] == "error"]
    for row in errors:
        print(f"  {row['trial']}: {row['error']}")


def write_best(base: dict[str, Any], space: SearchSpace, best: dict[str, Any], path: Path, run_dir: Path,
               args: argparse.Namespace, metric: str, mode: str, *, max_steps: int, runs_dir: Path) -> None:
    """The base config with the best trial's values at the search's budget: what `lightning-gan fit --config` takes
    as it is, and trains as the winner was trained (``trainer.max_steps`` = the iterations per trial; a search picks
    step sizes for that length, and the same values can fail over a longer run). Its run folder is ``run_dir``
    (<experiment>/best), so that the full run overwrites neither the base config's runs nor the trials'. The header
    records the search (budget, metric, trial) and the two ways to go on: continue the winning trial itself from its
    last checkpoint, or train the same values longer from scratch."""
    params = {k: best[k] for k in space.params}
    config = apply_params(base, params)
    set_path(config, "trainer.default_root_dir", str(run_dir))
    set_path(config, "trainer.max_steps", max_steps)
    base_steps = get_path(base, "trainer.max_steps")
    trial_checkpoint = best.get("checkpoint") or runs_dir / str(best["trial"]) / "checkpoints" / "last.ckpt"
    value = best[metric]
    header = (
        f"# Best of {args.num_samples} trial(s) of `{PROG}` on {args.config} (space {args.space}, scheduler "
        f"{args.scheduler}).\n"
        f"# Budget: {max_steps} iterations per trial (trainer.max_steps below; the base config has {base_steps}).\n"
        f"# Metric: {metric} ({mode}) = {value:.6g} at step {best['step']}, trial {best['trial']}.\n"
        "# Values: " + ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        + "\n"
        f"# Train these values as the search did:\n#   lightning-gan fit --config {path}\n"
        f"# Continue the winning trial itself to N iterations (its weights, optimizer state and averages):\n"
        f"#   lightning-gan fit --config {path} --ckpt_path {trial_checkpoint} --trainer.max_steps N\n"
        f"# or train the same values longer from scratch: --trainer.max_steps N (not what the search measured).\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write(header)
        yaml.safe_dump(config, f, sort_keys=False)
