"""slurm/: the sbatch scripts parse, and train.sbatch runs unchanged on a real SLURM cluster (two slurmd "nodes" on
this machine, started by slurm/local-cluster.sh): 2 nodes x 1 rank on CPU (gloo) finish with a checkpoint, and a
job sent SIGUSR1 saves, requeues itself and resumes from the saved step.

The cluster needs SLURM, which slurm/local-cluster.sh installs with apt-get as root; where it cannot (no apt-get,
not root) the SLURM tests are skipped with that reason. Every wait has a deadline, and the daemons are stopped
(by their pid files) when the module ends, pass or fail.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lightning_gan.callbacks import SLURMRequeue
from lightning_gan.callbacks.requeue import in_slurm_batch_job
from lightning_gan.cli import GANCLI

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "slurm"
TINY = REPO / "tests" / "configs" / "toy_ring_tiny.yaml"
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}


@pytest.mark.parametrize("script", ["train.sbatch", "tune.sbatch", "local-cluster.sh"])
def test_scripts_pass_bash_n(script):
    result = subprocess.run(["bash", "-n", str(SLURM / script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


# -- the local cluster -------------------------------------------------------------------------------------------


def _free_port_block() -> int:
    """A base port p with p, p+1 (slurmctld, slurmd) and p+184, p+185 (the two nodes) free right now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + 185 > 65000:
            continue
        try:
            for port in (base, base + 1, base + 184, base + 185):
                with socket.socket() as s:
                    s.bind(("0.0.0.0", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free block of ports for the local SLURM cluster")


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    """Start the 2-node cluster (installing SLURM if needed); yield the environment that reaches it; stop it."""
    if shutil.which("sbatch") is None and (shutil.which("apt-get") is None or os.geteuid() != 0):
        pytest.skip("SLURM is not installed and cannot be installed here (needs apt-get and root)")
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "LOCAL_SLURM_PORT": str(_free_port_block())}
    # The job runs `lightning-gan` from PATH: make it this interpreter's, even if the venv is not activated.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("SLURM_JOB_ID", None)  # tests run inside a SLURM job must still submit, not run, train.sbatch
    script = str(SLURM / "local-cluster.sh")
    try:
        start = subprocess.run([script, "start", str(state)], env=env, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as error:
        subprocess.run([script, "stop", str(state)], env=env, timeout=120)
        pytest.fail(f"local-cluster.sh start timed out: {error.stderr}")
    if start.returncode == 3:
        pytest.skip(f"SLURM unavailable: {start.stderr.strip()}")
    try:
        assert start.returncode == 0, f"local-cluster.sh start failed:\n{start.stdout}\n{start.stderr}"
        env["SLURM_CONF"] = str(state / "slurm.conf")
        yield env
    finally:
        stop = subprocess.run([script, "stop", str(state)], env=env, capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0, stop.stderr


def _submit(env: dict, output: Path, run_dir: Path, max_steps: int, *options: str, script: str = "train.sbatch",
            **settings: str) -> str:
    """sbatch a script as it is, on the tiny ring config; its settings come from the environment."""
    job_env = {**env, "CONFIG": str(TINY), "RUN_DIR": str(run_dir),
               "EXTRA_ARGS": f"--trainer.max_steps {max_steps}", **settings}
    result = subprocess.run(["sbatch", "--parsable", "--time=5", f"--output={output}", *options, str(SLURM / script)],
                            cwd=REPO, env=job_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def _job(env: dict, job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True, text=True,
                         timeout=30).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def _wait(env: dict, job_id: str, output: Path, deadline_s: float, until=lambda job: False) -> dict[str, str]:
    """Poll until the job ends (or ``until(job)``); past the deadline cancel it and fail with its output."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        job = _job(env, job_id)
        if job.get("JobState") in FINAL_STATES or until(job):
            return job
        time.sleep(1)
    subprocess.run(["scancel", job_id], env=env, timeout=30)
    pytest.fail(f"job {job_id} still {_job(env, job_id).get('JobState')} after {deadline_s}s:\n{_read(output)}")


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else "(no output file)"


def _global_step(checkpoint: Path) -> int:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"]


# -- the tests ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_train_sbatch_trains_on_two_nodes_and_checkpoints(slurm_env, tmp_path):
    output, run_dir = tmp_path / "job.out", tmp_path / "run"
    job_id = _submit(slurm_env, output, run_dir, 100, "--nodes=2", "--ntasks-per-node=1")
    job = _wait(slurm_env, job_id, output, 180)
    log = _read(output)
    assert job["JobState"] == "COMPLETED", log
    assert job["NumNodes"] == "2" and job["NodeList"] == "n[1-2]", job
    # srun --label prefixes each line with the rank: both ranks joined one gloo group of 2.
    assert "0: Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2" in log, log
    assert "1: Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in log, log
    assert _global_step(run_dir / "checkpoints" / "last.ckpt") == 100


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigusr1_saves_requeues_and_resumes(slurm_env, tmp_path):
    output, run_dir, max_steps = tmp_path / "job.out", tmp_path / "run", 300
    job_id = _submit(slurm_env, output, run_dir, max_steps, "--nodes=2", "--ntasks-per-node=1")
    # The periodic checkpoint (every 50 iterations) proves training runs, so the handler is installed.
    last = run_dir / "checkpoints" / "last.ckpt"
    job = _wait(slurm_env, job_id, output, 120, until=lambda job: last.exists())
    assert job["JobState"] == "RUNNING", _read(output)
    # As `#SBATCH --signal=SIGUSR1@90` does before the time limit: the signal goes to every rank, not the shell.
    subprocess.run(["scancel", "--signal=USR1", job_id], env=slurm_env, check=True, timeout=30)
    job = _wait(slurm_env, job_id, output, 240)
    log = _read(output)
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1", log
    assert f"job {job_id} restart 1:" in log, log  # SLURM_RESTART_COUNT=1, echoed by train.sbatch
    saved = run_dir / "hpc_ckpt_1.ckpt"
    assert "SLURMRequeue: SIGUSR1 received; saving" in log and saved.exists(), log
    # train.sbatch resumes from the newest checkpoint: last.ckpt, written at the same step when that run ended.
    assert f"Restored all states from the checkpoint at {last}" in log, log
    step = _global_step(saved)
    assert 50 <= step < max_steps
    # The requeued run logs to version_1 and continues from that step instead of starting over.
    # The CSV's step column is the 0-based index of the logged iteration (the first row of a fresh run, after 10
    # iterations, says 9), so the first resumed iteration is index `step`: rows come at step .. step + 9.
    with open(run_dir / "version_1" / "metrics.csv") as f:
        first_logged = int(f.readlines()[1].split(",")[1])
    assert step <= first_logged < step + 10
    assert _global_step(last) == max_steps


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tune_sbatch_starts_ray_on_two_nodes_and_searches(slurm_env, tmp_path):
    output, storage = tmp_path / "job.out", tmp_path / "tune"
    job_id = _submit(slurm_env, output, tmp_path, 0, "--nodes=2", "--ntasks-per-node=1", script="tune.sbatch",
                     STORAGE=str(storage), RAY_START_TIMEOUT="90",
                     SEARCH_ARGS="--num-samples 2 --max-steps 100 --name ring --seed 0")
    job = _wait(slurm_env, job_id, output, 300)
    log = _read(output)
    assert job["JobState"] == "COMPLETED", log
    assert "Ray head on n1" in log and "Logical resource usage" in log, log
    with open(storage / "ring" / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(row["outcome"] != "error" for row in rows), rows
    assert (storage / "ring" / "best.yaml").is_file()
    assert not _ray_processes_of(job_id), "Ray processes outlived the job"


def _ray_processes_of(job_id: str) -> list[int]:
    """Pids of processes still running with this job's SLURM_JOB_ID in their environment."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"SLURM_JOB_ID={job_id}".encode() in environ:
            found.append(int(proc.name))
    return found


# -- the requeue callback without a cluster ------------------------------------------------------------------------


class _SendSignal(Callback):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_sigusr1_saves_at_an_iteration_boundary_and_stops(tmp_path, monkeypatch):
    """Outside SLURM, ``--requeue.enabled true`` saves hpc_ckpt_1.ckpt at the next check and stops; a late signal is
    ignored."""
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setattr(sys, "argv", ["lightning-gan"])
    previous, threads, omp = signal.getsignal(signal.SIGUSR1), torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    try:
        cli = GANCLI(args=["fit", "--config", str(TINY), f"--trainer.default_root_dir={tmp_path}",
                           "--trainer.strategy=auto", "--trainer.logger=false", "--requeue.enabled=true"],
                     trainer_defaults={"callbacks": [_SendSignal(7)]})
    finally:  # the tiny config sets torch_num_threads: 1 (and OMP_NUM_THREADS); leave no trace for other tests
        handler_after = signal.getsignal(signal.SIGUSR1)
        signal.signal(signal.SIGUSR1, previous)
        torch.set_num_threads(threads)
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp
    assert [c.active for c in cli.trainer.callbacks if isinstance(c, SLURMRequeue)] == [True]  # the CLI's own
    # The CLI's callbacks run before trainer_defaults' in each hook: the signal sent after iteration 7 is seen at the
    # check after iteration 8, which saves and stops there instead of running to 300.
    assert cli.trainer.global_step == 8
    assert _global_step(tmp_path / "hpc_ckpt_1.ckpt") == 8
    assert _global_step(tmp_path / "checkpoints" / "last.ckpt") == 8  # the final step, saved at train end too
    assert handler_after == signal.SIG_IGN


@pytest.mark.parametrize(("environ", "active"), [
    ({}, False),  # not under SLURM
    ({"SLURM_JOB_ID": "12", "SLURM_JOB_NAME": "lightning-gan"}, True),  # sbatch script and its srun steps
    ({"SLURM_JOB_ID": "12", "SLURM_JOB_NAME": "bash"}, False),  # srun --pty bash
    ({"SLURM_JOB_ID": "12", "SLURM_JOB_NAME": "interactive"}, False),  # salloc
], ids=["no-slurm", "batch-job", "srun-pty-bash", "salloc"])
def test_auto_enables_requeue_only_inside_a_slurm_batch_job(environ, active, monkeypatch):
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    assert in_slurm_batch_job() is active
    assert SLURMRequeue().active is active
    assert SLURMRequeue(enabled=True).active and not SLURMRequeue(enabled=False).active


def test_inactive_requeue_makes_no_collective(monkeypatch):
    """Outside a batch job the CLI's callback must not add its per-iteration all-reduce to ordinary runs."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("collective called")

    strategy = SimpleNamespace(reduce_boolean_decision=refuse, broadcast=refuse, barrier=refuse)
    trainer = SimpleNamespace(global_step=1, strategy=strategy)
    requeue = SLURMRequeue()
    requeue.received = True
    requeue.on_train_batch_end(trainer, None, None, None, 0)
    requeue.teardown(trainer, None, "fit")
    assert not requeue.active and requeue.saved is None


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"signal_name": "USR9"}, "Invalid signal_name: 'USR9'"),
    ({"check_every_n_steps": 0}, "Invalid check_every_n_steps: 0"),
    ({"enabled": "sometimes"}, "Invalid enabled: 'sometimes'; expected auto, true or false"),
])
def test_bad_requeue_settings_fail_naming_the_value(kwargs, named):
    with pytest.raises(ValueError, match=named):
        SLURMRequeue(**kwargs)
