"""Fault trials: each fault of issue 17 met as an operator of a cluster job meets it, repeated, its promise checked.

Every trial starts the ``lightning-gan fit`` command of this repository (``python -m lightning_gan`` with this
repository first on ``PYTHONPATH``) on the quickstart config cut down, injects one fault from outside (a signal, a
diverging step size, a kill -9 during checkpoint writes, a full disk, a frozen rank, a copied run folder, a bad
checkpoint) and checks what the user was promised: the exit code, the time to exit, the stderr lines, the
checkpoints on disk and the processes left. Random delays come from one seeded RNG, so a run is repeatable up to the
machine's timing. One trial process tree runs at a time.

    python bench/fault_trials.py                      # all faults, 8 trials each, tables in bench/out
    python bench/fault_trials.py --trials 2 --faults sigterm frozen_rank --out /tmp/ft

Writes ``fault_trials.json`` (every trial, with the reason of each failure) and ``fault_trials.md`` (the table) in
``--out``. Needs Linux (/proc), and root for the full-disk trial (it mounts a 3 MiB tmpfs; skipped otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PROG = "lightning-gan"
TWO_RANKS = ("--trainer.devices=2", "--trainer.accelerator=cpu")
#: A step size that sets the quickstart's extragradient SGD off after tens of iterations (15-110 measured).
DELAYED_LR = (0.45, 0.8)
#: Bytes taken on the 3 MiB tmpfs before the run. A checkpoint is 1.1 MB; from the second save on the run keeps two
#: (last.ckpt, last-previous-1.ckpt) and a save needs no more (the older one is unlinked before the temporary is
#: written). So a filler of ~0.95-2.4 MB fills the disk at the first or second checkpoint write, and one of
#: ~0.78-0.84 MB leaves tens of kB that the logs (every iteration) fill later: TensorBoard's writer thread,
#: metrics.csv.
FILLER_CHECKPOINT = (950_000, 2_400_000)
FILLER_LOGS = (780_000, 840_000)


# -- processes ---------------------------------------------------------------------------------------------------------

def command(root: Path, *extra: str) -> list[str]:
    """The quickstart cut down: small data, no sample grids, a checkpoint every 20 iterations, one thread."""
    return [sys.executable, "-m", "lightning_gan", "fit", "--config", "configs/quickstart.yaml",
            f"--trainer.default_root_dir={root}", "--trainer.max_steps=100000", "--trainer.enable_progress_bar=false",
            "--data.init_args.num_samples=4096", "--data.init_args.batch_size=32", "--samples.every_n_steps=0",
            "--checkpoint.every_n_train_steps=20", "--torch_num_threads=1", *extra]


def environment(**extra: str) -> dict[str, str]:
    """This repository first on the path, so that the checkout measured is the one the script lives in."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.update(extra)
    return env


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def descendants(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def alive(pid: int) -> bool:
    """Running or stopped; a zombie has exited."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def wait_gone(pids: list[int], limit: float) -> float | None:
    """Seconds until none of ``pids`` is alive, or None if some still are after ``limit``."""
    start = time.monotonic()
    while any(alive(p) for p in pids):
        if time.monotonic() - start > limit:
            return None
        time.sleep(0.02)
    return time.monotonic() - start


class Run:
    """One ``lightning-gan`` process in its own session (so that its whole tree can be killed), stderr in a file."""

    #: the newest run: its exit code and stderr tail are kept as evidence when a trial fails
    newest: Run | None = None

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        Run.newest = self
        self.started = time.monotonic()
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(argv, cwd=REPO, env=env or environment(), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        self.pid = self.proc.pid
        self.tree: list[int] = []

    def __enter__(self) -> Run:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill_tree()

    def kill_tree(self) -> None:
        """SIGKILL everything this run started (its session, and ranks seen earlier that left it)."""
        pids = {self.pid, *self.tree, *descendants(self.pid)}
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for pid in pids:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def remember_tree(self) -> list[int]:
        self.tree = descendants(self.pid)
        return self.tree

    def wait_for(self, path: Path, limit: float = 120.0) -> None:
        """Until ``path`` exists (training runs); a run that ends or stalls first fails the trial."""
        deadline = time.monotonic() + limit
        while not path.exists():
            if self.proc.poll() is not None:
                raise Failed(f"exited {self.proc.returncode} before {path.name} appeared: {tail(self.stderr())}")
            if time.monotonic() > deadline:
                raise Failed(f"{path.name} did not appear within {limit:g} s")
            time.sleep(0.05)

    def wait(self, limit: float) -> int | None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.proc.wait(timeout=limit)
        return None

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


class Failed(Exception):
    """A trial whose promise was not met; the message is the reason."""


def tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])[-600:]


def finish(run: Run, limit: float = 300.0) -> tuple[int, str, float]:
    """Wait for a run that ends by itself: (exit code, stderr, seconds)."""
    code = run.wait(limit)
    if code is None:
        raise Failed(f"still running after {limit:g} s")
    return code, run.stderr(), time.monotonic() - run.started


# -- checkpoints -------------------------------------------------------------------------------------------------------

def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def step_of(path: Path) -> int:
    """``global_step`` of a checkpoint, loaded as a user would (weights_only); raises Failed when it does not load."""
    try:
        return int(load(path)["global_step"])
    except Exception as error:  # noqa: BLE001  (whatever torch raises on a torn file)
        raise Failed(f"{path.name} does not load: {type(error).__name__}: {str(error)[:200]}") from None


def non_finite(path: Path) -> list[str]:
    state = load(path)["state_dict"]
    return [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]


def temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob(".*.tmp*")) if directory.is_dir() else []


def listing(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its mtime, to tell whether a run wrote anything."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")} if root.exists() else {}


def last_line(stderr: str) -> str:
    lines = stderr.rstrip().splitlines()
    return lines[-1] if lines else ""


class SaveWatch:
    """Follows a run's periodic saves of ``last.ckpt`` while waiting: the step reached before a fault, and the rate."""

    def __init__(self, last: Path) -> None:
        self.last = last
        self.seen: list[tuple[float, int]] = []  # (mtime, step) of each save observed

    def follow(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        mtime = None
        while True:
            with contextlib.suppress(OSError):
                now = self.last.stat().st_mtime
                if now != mtime:
                    mtime = now
                    with contextlib.suppress(Exception):
                        self.seen.append((now, int(torch.load(self.last, map_location="cpu", weights_only=True,
                                                              mmap=True)["global_step"])))
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def step(self) -> int:
        """The step of the newest save seen."""
        return self.seen[-1][1] if self.seen else 0


def iterations_done(root: Path, at: float) -> int | None:
    """Iterations completed by wall time ``at``, read from the TensorBoard events of rank 0 (with
    ``log_every_n_steps=1`` iteration k writes its ``train/`` scalars as step k - 1, with their wall time)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = [event.step for path in root.glob("version_*/events.out.tfevents.*")
             for event in EventFileLoader(str(path)).Load()
             if event.wall_time <= at and any(v.tag.startswith("train/") for v in event.summary.value)]
    return max(steps) + 1 if steps else None


# -- trials ------------------------------------------------------------------------------------------------------------

@dataclass
class Trial:
    fault: str
    index: int
    met: bool = False
    reason: str = ""
    exit_code: int | None = None
    seconds: float | None = None  # time to exit, from the fault (see the fault's clock)
    steps_lost: float | None = None
    figures: dict = field(default_factory=dict)


class Context:
    """Where trials write (one fresh folder each), the seeded RNG, and the checkpoints several trials reuse."""

    def __init__(self, work: Path, shm: Path, rng: random.Random) -> None:
        self.work, self.shm, self.rng = work, shm, rng
        self._count = 0
        self._sources: dict[str, Path] = {}

    def fresh(self, name: str, base: Path | None = None) -> Path:
        self._count += 1
        path = (base or self.work) / f"{name}-{self._count}"
        path.mkdir(parents=True)
        return path

    def source(self, name: str, steps: int, *extra: str) -> Path:
        """A finished run's folder, made once (the quickstart is seeded: every trial would make the same one)."""
        if name not in self._sources:
            root = self.fresh(f"source-{name}")
            code, stderr, _ = finish(Run(command(root, f"--trainer.max_steps={steps}", *extra), root / "stderr"))
            if code != 0:
                raise RuntimeError(f"source run {name} failed ({code}): {tail(stderr)}")
            self._sources[name] = root
        return self._sources[name]


def signal_trial(ctx: Context, trial: Trial, signum: signal.Signals, ranks: int, limit: float,
                 whole_group: bool = False) -> None:
    """Signal rank 0 (or Ctrl-C the process group) a random moment after training starts; the stop must save the
    iteration in flight, exit ``128 + n`` within ``limit`` on every rank and leave no process."""
    root = ctx.fresh(f"{signum.name.lower()}{ranks}")
    last = root / "checkpoints" / "last.ckpt"
    with Run(command(root, "--trainer.log_every_n_steps=1", *(TWO_RANKS if ranks == 2 else ())),
             root / "stderr") as run:
        run.wait_for(last)
        watch = SaveWatch(last)
        watch.follow(ctx.rng.uniform(0.0, 3.0))
        tree = run.remember_tree()
        if len([p for p in children(run.pid)]) != ranks - 1:
            raise Failed(f"expected {ranks - 1} launched rank(s), found children {children(run.pid)}")
        sent_wall, sent = time.time(), time.monotonic()
        if whole_group:
            os.killpg(run.pid, signum)  # what a terminal's Ctrl-C does
        else:
            os.kill(run.pid, signum)
        code = run.wait(max(60.0, 3 * limit))
        trial.exit_code = code
        if code is None:
            raise Failed(f"hang: rank 0 still running {max(60.0, 3 * limit):g} s after {signum.name}; "
                         f"stacks of {[run.pid, *tree]} not taken; stderr: {tail(run.stderr())}")
        rank0 = time.monotonic() - sent
        gone = wait_gone(tree, max(1.0, limit + 5 - rank0))
        trial.seconds = time.monotonic() - sent if gone is not None else None
        stderr = run.stderr()
    trial.figures["rank0_exit_s"] = round(rank0, 2)
    if gone is None:
        raise Failed(f"processes {[p for p in tree if alive(p)]} still alive after rank 0 exited {code}")
    if code != 128 + signum:
        raise Failed(f"exit code {code}, expected {128 + signum}: {tail(stderr)}")
    if trial.seconds > limit:
        raise Failed(f"took {trial.seconds:.1f} s, more than {limit:g} s")
    saved, before, done = step_of(last), watch.step(), iterations_done(root, sent_wall)
    trial.figures.update(saved_step=saved, last_periodic_step=before, done_at_signal=done)
    trial.steps_lost = max(0, done - saved) if done is not None else None
    if saved < before:
        raise Failed(f"last.ckpt holds step {saved}, behind the step {before} saved before the signal")
    if done is None or saved < done:
        raise Failed(f"last.ckpt holds step {saved}; {done} iterations were done when the signal was sent")
    if last.stat().st_mtime < sent_wall - 0.02:
        raise Failed(f"last.ckpt (step {saved}) was not written after the signal: the stop did not save")
    told = last_line(stderr)
    if not told.startswith(f"{PROG}: {signum.name}: saved") or f"at step {saved};" not in told:
        raise Failed(f"last stderr line does not name the save at step {saved}: {told!r}")


def divergence_trial(ctx: Context, trial: Trial, delayed: bool) -> None:
    """A step size that diverges at once (lr 1e6, Adam) or after tens of iterations (SGD): exit 3 with one line,
    no traceback, and no checkpoint on disk with a non-finite weight."""
    root = ctx.fresh("diverge")
    if delayed:
        lr = round(ctx.rng.uniform(*DELAYED_LR), 3)
        extra = ["--model.g_optimizer.rule=sgd", "--model.d_optimizer.rule=sgd"]
    else:
        lr, extra = 1e6, []
    trial.figures["lr"] = lr
    argv = command(root, "--trainer.max_steps=2000", "--checkpoint.every_n_train_steps=1",
                   f"--model.g_optimizer.lr={lr}", f"--model.d_optimizer.lr={lr}", *extra)
    with Run(argv, root / "stderr") as run:
        code, stderr, trial.seconds = finish(run)
    trial.exit_code = code
    checkpoints = sorted(root.rglob("*.ckpt"))
    trial.figures["checkpoints"] = len(checkpoints)
    match = re.search(r"Diverged in iteration (\d+)", stderr)
    if match:
        trial.figures["diverged_at"] = int(match.group(1))
    if match and (root / "checkpoints" / "last.ckpt").exists():
        saved = trial.figures["last_ckpt_step"] = step_of(root / "checkpoints" / "last.ckpt")
        trial.steps_lost = int(match.group(1)) - 1 - saved  # finite iterations not on disk
    if code != 3:
        raise Failed(f"exit code {code}, expected 3: {tail(stderr)}")
    if not last_line(stderr).startswith(f"{PROG}: error: Diverged"):
        raise Failed(f"last stderr line: {last_line(stderr)!r}")
    if "Traceback" in stderr:
        raise Failed("a traceback on stderr")
    for path in checkpoints:
        bad = non_finite(path)
        if bad:
            raise Failed(f"{path.name} holds non-finite {bad[:3]}")


def kill_during_writes_trial(ctx: Context, trial: Trial) -> None:
    """kill -9 while a checkpoint is written every iteration, the run folder on /dev/shm and $TMPDIR on /tmp:
    last.ckpt loads, nothing leaks into $TMPDIR, and ``--ckpt_path last`` resumes."""
    root = ctx.fresh("kill", ctx.shm)
    tmpdir = ctx.fresh("tmpdir")
    env = environment(TMPDIR=str(tmpdir))
    checkpoints = root / "checkpoints"
    last = checkpoints / "last.ckpt"
    on_sight = trial.index % 2 == 1  # odd trials wait for a temporary to exist: a kill inside a write for sure
    trial.figures["kill"] = "on a temporary" if on_sight else "random moment"
    with Run(command(root, "--checkpoint.every_n_train_steps=1"), root.parent / f"{root.name}.stderr", env) as run:
        run.wait_for(last)
        time.sleep(ctx.rng.uniform(0.0, 2.0 if not on_sight else 1.0))
        deadline = time.monotonic() + 5.0
        while on_sight and not temporaries(checkpoints) and time.monotonic() < deadline:
            time.sleep(0.001)
        writing = bool(temporaries(checkpoints))
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(10)
    trial.exit_code = run.proc.returncode
    left = temporaries(checkpoints)
    trial.figures.update(temp_seen_at_kill=writing, tmp_left_in_run_dir=left)
    saved = step_of(last)
    trial.figures["saved_step"] = saved
    leaked = leftovers(tmpdir)
    if leaked:
        raise Failed(f"left in $TMPDIR after the kill: {leaked[:5]}")
    resume = Run(command(root, "--checkpoint.every_n_train_steps=1", "--ckpt_path=last",
                         f"--trainer.max_steps={saved + 5}"), root.parent / f"{root.name}.resume.stderr", env)
    with resume:
        code, stderr, trial.seconds = finish(resume)
    trial.figures["tmp_left_after_resume"] = temporaries(checkpoints)
    if code != 0:
        raise Failed(f"resume exit code {code}: {tail(stderr)}")
    if step_of(last) != saved + 5:
        raise Failed(f"resumed last.ckpt holds step {step_of(last)}, expected {saved + 5}")
    leaked = leftovers(tmpdir)
    if leaked:
        raise Failed(f"left in $TMPDIR after the resume: {leaked[:5]}")


def leftovers(tmpdir: Path) -> list[str]:
    """What a run left in ``$TMPDIR``: every file, and every folder except the empty ``torchinductor_<user>`` that
    importing torch creates in every run (killed or not)."""
    found = []
    for path in sorted(tmpdir.rglob("*")):
        empty_cache = path.is_dir() and path.name.startswith("torchinductor_") and not any(path.iterdir())
        if not empty_cache and not (path.is_dir() and any(path.iterdir())):
            found.append(f"{path.relative_to(tmpdir)} ({path.stat().st_size} B)")
    return found


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str):
    """A tmpfs of ``size`` at ``path`` (root only), unmounted afterwards whatever happens."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                   capture_output=True, text=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def full_disk_trial(ctx: Context, trial: Trial) -> None:
    """The run folder on a 3 MiB tmpfs, part of it taken by a random filler so that the disk fills at a checkpoint
    write (even trials) or a log write (odd trials): exit 1 with one ``no space left on device`` line, no traceback,
    the previous last.ckpt still loads."""
    mount = ctx.fresh("full")
    logs = trial.index % 2 == 1
    filler = ctx.rng.randrange(*(FILLER_LOGS if logs else FILLER_CHECKPOINT))
    trial.figures.update(filler_bytes=filler, aimed_at="logs" if logs else "checkpoint")
    with tiny_tmpfs(mount, "3m"):
        (mount / "filler").write_bytes(b"\0" * filler)
        root = mount / "run"
        extra = ["--trainer.log_every_n_steps=1"] if logs else []
        with Run(command(root, *extra), ctx.work / f"{mount.name}.stderr") as run:
            code, stderr, trial.seconds = finish(run, limit=180)
        trial.exit_code = code
        last = root / "checkpoints" / "last.ckpt"
        trial.figures["tmp_left_in_run_dir"] = temporaries(root / "checkpoints")
        trial.figures["previous_last_step"] = step_of(last) if last.exists() else None
        lines = [l for l in stderr.splitlines() if l.startswith(f"{PROG}: error: no space left on device")]
        trial.figures["named"] = lines[0].split(" writing ")[1].split(" (")[0] if lines and " writing " in lines[0] \
            else None
    if code != 1:
        raise Failed(f"exit code {code}, expected 1: {tail(stderr)}")
    if len(lines) != 1:
        raise Failed(f"{len(lines)} 'no space left on device' lines: {tail(stderr)}")
    if "Traceback" in stderr:
        raise Failed(f"a traceback on stderr: {tail(stderr)}")


def frozen_rank_trial(ctx: Context, trial: Trial, timeout: float) -> None:
    """SIGSTOP rank 1 of 2 (a stuck file system, a dead GPU): rank 0 exits 4 within the collective timeout + 10 s
    roll call + 10 s, names rank 1 on its last line, and ends the stopped rank."""
    root = ctx.fresh("frozen")
    limit = timeout + 10 + 10
    with Run(command(root, *TWO_RANKS, f"--collective_timeout={timeout:g}"), root / "stderr") as run:
        run.wait_for(root / "checkpoints" / "last.ckpt")
        time.sleep(ctx.rng.uniform(0.0, 3.0))
        ranks = children(run.pid)
        run.remember_tree()
        if len(ranks) != 1:
            raise Failed(f"expected 1 launched rank, found {ranks}")
        os.kill(ranks[0], signal.SIGSTOP)
        frozen = time.monotonic()
        code = run.wait(max(120.0, 3 * limit))
        trial.exit_code = code
        trial.seconds = time.monotonic() - frozen if code is not None else None
        stderr = run.stderr()
        if code is None:
            raise Failed(f"hang: rank 0 still running {max(120.0, 3 * limit):g} s after rank 1 froze")
        survived = wait_gone(ranks, 2.0) is None
    if survived:
        raise Failed(f"the stopped rank {ranks[0]} was still there 2 s after rank 0 exited {code} (killed by the "
                     "script)")
    if code != 4:
        raise Failed(f"exit code {code}, expected 4: {tail(stderr)}")
    if trial.seconds > limit:
        raise Failed(f"took {trial.seconds:.1f} s, more than {limit:g} s")
    if "rank(s) 1 did not answer" not in last_line(stderr):
        raise Failed(f"last stderr line does not name rank 1: {last_line(stderr)!r}")


def moved_folder_trial(ctx: Context, trial: Trial) -> None:
    """A run folder copied elsewhere (cp -a keeps mtimes, cp -r does not) resumes from its own newest state and
    keeps ``last.ckpt`` the newest, also when the config is re-run in it."""
    source = ctx.source("40", 40)
    preserve = trial.index % 2 == 0
    copy = ctx.fresh("moved", ctx.shm if trial.index % 4 >= 2 else None) / "run"
    subprocess.run(["cp", "-a" if preserve else "-r", str(source), str(copy)], check=True)
    trial.figures["copy"] = ("cp -a" if preserve else "cp -r") + f" to {'/dev/shm' if ctx.shm in copy.parents else '/tmp'}"
    before = listing(source)
    last = copy / "checkpoints" / "last.ckpt"
    argv = command(copy, "--ckpt_path=last", "--trainer.max_steps=60", "--trainer.log_every_n_steps=5")
    with Run(argv, copy.parent / "resume.stderr") as run:
        code, stderr, trial.seconds = finish(run)
    trial.exit_code = code
    if code != 0:
        raise Failed(f"resume exit code {code}: {tail(stderr)}")
    restored = re.findall(r"Restored all states from the checkpoint at (\S+)", stderr)
    first = first_logged_step(copy)
    trial.figures.update(restored=restored, first_logged_step=first)
    trial.steps_lost = 0 if first is not None and first >= 40 else None
    if restored != [str(last)]:
        raise Failed(f"restored from {restored}, expected the copy's {last}")
    if first is None or first < 40:
        raise Failed(f"the resumed run logged step {first}: it did not start at step 40")
    if step_of(last) != 60 or versioned(copy):
        raise Failed(f"after the resume last.ckpt holds {step_of(last)}, versioned files {versioned(copy)}")
    if listing(source) != before:
        raise Failed("the original folder changed")
    with Run(command(copy, "--trainer.max_steps=30"), copy.parent / "rerun.stderr") as run:
        code, stderr, _ = finish(run)
    if code != 0:
        raise Failed(f"re-run exit code {code}: {tail(stderr)}")
    if step_of(last) != 30 or versioned(copy):
        raise Failed(f"after a re-run to step 30 last.ckpt holds {step_of(last)}, versioned {versioned(copy)}")


def first_logged_step(root: Path) -> int | None:
    """The first step in the newest version folder's metrics.csv (the resumed run's own log)."""
    versions = sorted(root.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    rows = (versions[-1] / "metrics.csv").read_text().splitlines() if versions else []
    if len(rows) < 2:
        return None
    column = rows[0].split(",").index("step")
    return min(int(float(r.split(",")[column])) for r in rows[1:] if r.split(",")[column])


def versioned(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("last-v*.ckpt"))


BAD_KINDS = ("random_bytes", "truncated", "empty", "directory", "missing", "other_architecture")


def bad_checkpoint(ctx: Context, kind: str, where: Path) -> Path:
    """A checkpoint file of ``kind`` in ``where`` (random size and cut from the RNG)."""
    path = where / "given.ckpt"
    if kind == "random_bytes":
        path.write_bytes(ctx.rng.randbytes(ctx.rng.randrange(1, 2_000_000)))
    elif kind == "truncated":
        real = (ctx.source("20", 20) / "checkpoints" / "last.ckpt").read_bytes()
        path.write_bytes(real[: int(len(real) * ctx.rng.uniform(0.3, 0.7))])
    elif kind == "empty":
        path.touch()
    elif kind == "directory":
        path.mkdir()
    elif kind == "other_architecture":
        shutil.copy(ctx.source("hidden64", 20, "--model.generator.init_args.hidden_dim=64") / "checkpoints"
                    / "last.ckpt", path)
    return path


def bad_checkpoint_trial(ctx: Context, trial: Trial, kind: str) -> None:
    """``--ckpt_path FILE`` with a bad file: exit 2, stderr one line ``lightning-gan: error: ...``, nothing written
    (into an empty run folder, or one that does not exist yet)."""
    where = ctx.fresh(f"bad-{kind}")
    given = bad_checkpoint(ctx, kind, where)
    root = where / "run"
    if trial.index % 2 == 0:
        root.mkdir()
    with Run(command(root, f"--ckpt_path={given}"), where / "stderr") as run:
        code, stderr, trial.seconds = finish(run)
    trial.exit_code = code
    lines = stderr.splitlines()
    trial.figures["stderr"] = lines[-1][:200] if lines else ""
    if code != 2:
        raise Failed(f"exit code {code}, expected 2: {tail(stderr)}")
    if len(lines) != 1 or not lines[0].startswith(f"{PROG}: error:"):
        raise Failed(f"stderr has {len(lines)} lines: {tail(stderr)}")
    written = listing(root)
    if written or (trial.index % 2 == 1 and root.exists()):
        raise Failed(f"wrote into the run folder: {sorted(written)[:5] or root}")


# -- the table ---------------------------------------------------------------------------------------------------------

@dataclass
class Fault:
    name: str
    title: str
    promise: str
    clock: str  # when the "time to exit" starts
    run: Callable[[Context, Trial], None]
    share: float = 1.0  # fraction of --trials it runs (slow faults)


FAULTS = [
    Fault("sigterm", "SIGTERM, 1 process", "exit 143 within 20 s; last.ckpt loads, written after the signal, step >= "
          "the step saved before it; stderr names the save; no process left", "from SIGTERM",
          lambda c, t: signal_trial(c, t, signal.SIGTERM, 1, 20.0)),
    Fault("sigterm_2ranks", "SIGTERM to rank 0, 2 processes", "rank 0 exits 143, both ranks gone within 30 s (no "
          "hang); last.ckpt loads, written after the signal", "from SIGTERM to both ranks gone",
          lambda c, t: signal_trial(c, t, signal.SIGTERM, 2, 30.0)),
    Fault("sigint", "Ctrl-C (SIGINT to the process group), 1 process", "exit 130 within 20 s; last.ckpt saved as for "
          "SIGTERM", "from SIGINT", lambda c, t: signal_trial(c, t, signal.SIGINT, 1, 20.0, whole_group=True)),
    Fault("diverge_now", "Divergence at once (Adam, lr 1e6)", "exit 3; last stderr line `lightning-gan: error: "
          "Diverged ...`; no traceback; every .ckpt finite", "from start", lambda c, t: divergence_trial(c, t, False)),
    Fault("diverge_later", f"Divergence after tens of iterations (SGD, lr {DELAYED_LR[0]}-{DELAYED_LR[1]})",
          "as above; steps lost = finite iterations not on disk", "from start",
          lambda c, t: divergence_trial(c, t, True)),
    Fault("kill9_writes", "kill -9 during checkpoint writes (run dir /dev/shm, TMPDIR /tmp, a save per iteration)",
          "last.ckpt loads (weights_only); $TMPDIR empty; `--ckpt_path last --trainer.max_steps S+5` exits 0 at S+5",
          "resume run, from start", kill_during_writes_trial),
    Fault("full_disk", "Full disk (3 MiB tmpfs run dir; random filler: even trials fill it at a checkpoint write, "
          "odd ones at a log write)", "exit 1; one `lightning-gan: error: no "
          "space left on device` line; no traceback; the previous last.ckpt loads", "from start", full_disk_trial),
    Fault("frozen_rank", "Frozen rank (SIGSTOP rank 1 of 2, --collective_timeout 5)", "rank 0 exits 4 within "
          "5+10+10 s; last stderr line names rank 1; the stopped rank ended", "from SIGSTOP",
          lambda c, t: frozen_rank_trial(c, t, 5.0)),
    # The same with a timeout longer than rank 1's start-up on a busy machine (the timeout also bounds the rendezvous).
    Fault("frozen_rank_15", "Frozen rank, --collective_timeout 15", "rank 0 exits 4 within 15+10+10 s; as above",
          "from SIGSTOP", lambda c, t: frozen_rank_trial(c, t, 15.0), share=0.5),
    Fault("moved_folder", "Copied run folder (cp -a / cp -r, /tmp and /dev/shm)", "`--ckpt_path last "
          "--trainer.max_steps 60` resumes the copy at 40, last.ckpt at 60, no last-v1.ckpt, original untouched; a "
          "re-run to 30 in the copy overwrites last.ckpt", "resume run, from start", moved_folder_trial, share=0.5),
    *[Fault(f"bad_ckpt_{kind}", f"`--ckpt_path` {kind.replace('_', ' ')}", "exit 2; stderr exactly one line "
            "`lightning-gan: error: ...`; nothing written in the run folder", "from start",
            lambda c, t, kind=kind: bad_checkpoint_trial(c, t, kind),
            share=1.0 if kind in ("random_bytes", "truncated") else 0.25) for kind in BAD_KINDS],
]


def run_trial(ctx: Context, fault: Fault, index: int) -> Trial:
    trial = Trial(fault.name, index)
    try:
        fault.run(ctx, trial)
        trial.met = True
    except Failed as failure:
        trial.reason = str(failure)
    except Exception as error:  # noqa: BLE001  (a broken trial is reported, not a reason to stop the others)
        trial.reason = f"trial error: {type(error).__name__}: {error}"
    run, Run.newest = Run.newest, None
    if not trial.met and run is not None and run.log.exists():
        trial.figures["stderr_tail"] = run.stderr().splitlines()[-25:]
        if trial.exit_code is None:
            trial.exit_code = run.proc.returncode
    return trial


def figure(values: list[float], digits: int = 1) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    return f"{statistics.median(values):.{digits}f} ({max(values):.{digits}f})"


def table(faults: list[Fault], trials: list[Trial]) -> str:
    header = ("| fault | trials | met | promise checked | time to exit, s: median (max) | steps lost: median (max) "
              "| notes |")
    rows = [header, "|---|---:|---:|---|---|---|---|"]
    for fault in faults:
        mine = [t for t in trials if t.fault == fault.name]
        if not mine:
            continue
        rows.append(f"| {fault.title} | {len(mine)} | {sum(t.met for t in mine)} | {fault.promise} | "
                    f"{figure([t.seconds for t in mine])} | {figure([t.steps_lost for t in mine])} | "
                    f"{notes(fault, mine)} |")
    return "\n".join(rows)


def notes(fault: Fault, trials: list[Trial]) -> str:
    said = [f"clock {fault.clock}"]
    if fault.name == "kill9_writes":
        said.append(f"{sum(bool(t.figures.get('tmp_left_in_run_dir')) for t in trials)} left a .tmp in the run dir "
                    f"(after resume: {sum(bool(t.figures.get('tmp_left_after_resume')) for t in trials)}); "
                    f"{sum(bool(t.figures.get('temp_seen_at_kill')) for t in trials)} killed while a temporary existed")
    if fault.name == "full_disk":
        named = sorted({Path(t.figures['named']).name for t in trials if t.figures.get("named")})
        said.append(f"files named: {', '.join(named) or '-'}")
    if fault.name.startswith("diverge"):
        said.append("diverged at iteration " + ", ".join(str(t.figures.get("diverged_at", "?")) for t in trials))
    started = sum("before last.ckpt appeared" in t.reason for t in trials)
    if started:
        said.append(f"{started} ended before training started")
    if fault.name.startswith(("sigterm", "sigint")):
        said.append("steps lost = iterations done at the signal (TensorBoard wall times) - step in last.ckpt; "
                    "saved after the signal: " + ", ".join(str(t.figures.get("saved_step", "?") -
                                                              (t.figures.get("done_at_signal") or 0)
                                                              if "saved_step" in t.figures else "?")
                                                          for t in trials))
    if fault.share < 1:
        said.append(f"{fault.share:g} x --trials (slow or deterministic)")
    return "; ".join(said)


def failures(trials: list[Trial]) -> str:
    lines = [f"- {t.fault} #{t.index} (exit {t.exit_code}): {t.reason}" for t in trials if not t.met]
    return "\n".join(lines) or "- none"


def main(argv: list[str] | None = None) -> list[Trial]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8, help="trials per fault (slow faults run a share of them)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random delays, sizes and cuts")
    parser.add_argument("--faults", nargs="+", choices=[f.name for f in FAULTS], help="default: all")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    parser.add_argument("--keep", action="store_true", help="keep the trial folders (printed) for a post-mortem")
    args = parser.parse_args(argv)
    faults = [f for f in FAULTS if not args.faults or f.name in args.faults]
    work = Path(tempfile.mkdtemp(prefix="fault_trials-"))
    shm = Path(tempfile.mkdtemp(prefix="fault_trials-", dir="/dev/shm"))
    ctx = Context(work, shm, random.Random(args.seed))
    started, trials = time.monotonic(), []
    try:
        for fault in faults:
            for index in range(max(1, round(args.trials * fault.share))):
                if fault.name == "full_disk" and os.geteuid() != 0:
                    trials.append(Trial(fault.name, index, reason="skipped: mounting a tmpfs needs root"))
                    continue
                trial = run_trial(ctx, fault, index)
                trials.append(trial)
                print(f"{fault.name} #{index}: {'met' if trial.met else 'NOT MET: ' + trial.reason}", flush=True)
    finally:
        if args.keep:
            print(f"trial folders kept: {work} {shm}")
        else:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(shm, ignore_errors=True)
    wall = time.monotonic() - started
    write(args, faults, trials, wall)
    return trials


def write(args: argparse.Namespace, faults: list[Fault], trials: list[Trial], wall: float) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, cwd=REPO, capture_output=True,
                            text=True)
    cmd = "python bench/fault_trials.py " + " ".join(sys.argv[1:])
    text = (f"{table(faults, trials)}\n\nNot met:\n{failures(trials)}\n\n`{cmd.strip()}`: {len(trials)} trials, "
            f"wall {wall / 60:.1f} min, seed {args.seed}, commit {commit.stdout.strip() or '?'}, torch "
            f"{torch.__version__}\n")
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fault_trials.md").write_text(text)
    (args.out / "fault_trials.json").write_text(json.dumps({
        "command": cmd.strip(), "seed": args.seed, "trials_per_fault": args.trials, "wall_s": round(wall, 1),
        "commit": commit.stdout.strip(), "faults": [{"name": f.name, "title": f.title, "promise": f.promise,
                                                      "clock": f.clock} for f in faults],
        "trials": [asdict(t) for t in trials]}, indent=1))


if __name__ == "__main__":
    main()
