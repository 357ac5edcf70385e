"""A newcomer's first run, scripted (issue 18's acceptance): from a clean clone of this repository, the README's
quickstart with its output redirected to a file, then every subcommand ``lightning-gan --help`` lists, on that
run's checkpoint. The README's quoted evaluation of the quickstart must be what the run prints (modes exactly, the
high-quality share to 3 points: another CPU may round differently), so that the README cannot drift."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _clean_clone(target: Path) -> Path:
    """``git clone`` of this checkout's HEAD (what CI tests); a copy of the tracked files where git is missing."""
    if shutil.which("git") and (REPO / ".git").exists():
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(target)], check=True)
    else:  # an unpacked source tree: copy what a clone holds
        shutil.copytree(REPO, target, ignore=shutil.ignore_patterns(".git", ".venv", ".ci-venv", "runs", "__pycache__"))
    return target


def _command(clone: Path, *args: str, log: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``lightning-gan ARGS`` with the clone's code (first on PYTHONPATH), from the clone, output redirected."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(clone), os.environ.get("PYTHONPATH")]))}
    for name in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_JOB_ID"):
        env.pop(name, None)
    if log is None:
        return subprocess.run([sys.executable, "-m", "lightning_gan", *args], cwd=clone, env=env, capture_output=True,
                              text=True, timeout=timeout)
    with open(log, "w") as out:  # a file, not a terminal: what a scheduler's log sees
        return subprocess.run([sys.executable, "-m", "lightning_gan", *args], cwd=clone, env=env, stdout=out,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)


def _readme_quickstart_lines(readme: str) -> dict[str, tuple[int, float]]:
    block = re.search(r"<!-- readme-output: quickstart -->\n(.*?)<!-- /readme-output -->", readme, re.S)
    assert block, "README.md has no quickstart output block"
    return _modes_lines(block.group(1))


def _modes_lines(text: str) -> dict[str, tuple[int, float]]:
    """``{generator: (modes covered, high quality %)}`` from evaluate's lines."""
    return {m.group(1): (int(m.group(2)), float(m.group(3)))
            for m in re.finditer(r"^(\w+): modes (\d+)/8\s+high quality ([\d.]+)%", text, re.M)}


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_fresh_clone_runs_the_quickstart_and_every_listed_subcommand(tmp_path):
    clone = _clean_clone(tmp_path / "lightning-gan")

    listed = _command(clone, "--help")
    assert listed.returncode == 0, listed.stderr
    section = listed.stdout[listed.stdout.index("what each subcommand does:"):]
    subcommands = re.findall(r"^  (\w+) ", section, re.M)
    assert subcommands == ["fit", "evaluate", "sample", "adagan"], listed.stdout
    assert not any(name in listed.stdout for name in ("validate", "predict")), listed.stdout

    log = tmp_path / "quickstart.log"
    fit = _command(clone, "fit", "--config", "configs/quickstart.yaml", log=log)
    text = log.read_text()
    assert fit.returncode == 0, text[-3000:]
    assert log.stat().st_size < 20_000, f"quickstart log is {log.stat().st_size} bytes:\n{text[:3000]}"
    assert "\r" not in text  # no progress bar redraws in a file
    assert "Traceback" not in text and "Warning" not in text, text
    checkpoint = clone / "runs" / "quickstart" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()

    # Every listed subcommand runs on that checkpoint.
    evaluate = _command(clone, "evaluate", "--ckpt", str(checkpoint))
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    measured = _modes_lines(evaluate.stdout)
    quoted = _readme_quickstart_lines((clone / "README.md").read_text())
    assert set(quoted) == set(measured) == {"live", "uniform", "ema"}, (quoted, evaluate.stdout)
    for generator, (modes, quality) in quoted.items():
        assert measured[generator][0] == modes, (generator, measured, quoted)
        assert abs(measured[generator][1] - quality) <= 3.0, (generator, measured, quoted)

    out = tmp_path / "samples"
    sample = _command(clone, "sample", "--ckpt", str(checkpoint), "--format", "npz", "--out", str(out))
    assert sample.returncode == 0, sample.stderr[-3000:]
    written = re.findall(r"wrote (\S+)", sample.stdout + sample.stderr)
    assert written and all(Path(path).is_file() and Path(path).stat().st_size > 0 for path in written), sample

    resumed = _command(clone, "fit", "--config", "configs/quickstart.yaml", "--ckpt_path", "last",
                       "--trainer.max_steps", "2010", log=tmp_path / "resume.log")
    assert resumed.returncode == 0, (tmp_path / "resume.log").read_text()[-3000:]

    for refused in ("validate", "test", "predict"):
        result = _command(clone, refused, "--config", "configs/quickstart.yaml")
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, (refused, result.stderr)
