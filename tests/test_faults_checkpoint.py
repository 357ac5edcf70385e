"""Checkpoint faults lose nothing: a failed write leaves the previous ``last.ckpt`` whole, bad ``--ckpt_path`` files
fail in one line before anything is written, ``--ckpt_path last`` picks the highest loadable iteration, moved or
re-run folders keep writing ``last.ckpt``, and a resume refuses values that contradict the checkpoint."""

from __future__ import annotations

import builtins
import errno
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from lightning_gan import checkpointing
from lightning_gan.callbacks import FinalStepCheckpoint
from lightning_gan.callbacks.checkpoint import _rebased
from lightning_gan.checkpointing import AtomicCheckpointIO, atomic_save, keep_previous, with_atomic_checkpoint_io
from lightning_gan.cli import GANCLI, main
from lightning_gan.distributed import GameDDPStrategy
from lightning_gan.resume import parse_resume_allow

pytestmark = [
    pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning"),  # torchdata 0.11 on torch 2.14
    pytest.mark.filterwarnings("ignore:(?s).*skip_none parameter was deprecated"),  # Lightning's SaveConfigCallback
    pytest.mark.usefixtures("cli_process_state"),  # tests/conftest.py
]

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"




def tiny_fit(root: Path, max_steps: int, *extra: str) -> list[str]:
    """``fit`` of the quickstart, cut down to seconds (as in test_cli.py, without sample grids)."""
    return ["fit", "--config", str(QUICKSTART), f"--trainer.default_root_dir={root}",
            f"--trainer.max_steps={max_steps}", "--trainer.enable_progress_bar=false",
            "--data.init_args.num_samples=1024", "--data.init_args.batch_size=32",
            "--samples.every_n_steps=0", "--checkpoint.every_n_train_steps=5", *extra]


def step_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def temporaries(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("*") if ".tmp-" in p.name]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("lightning-gan: error:")]


def expect_refusal(args: list[str], capsys) -> str:
    """Run the CLI in-process; it must exit 2 with one error line and no traceback. Returns that line."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "Traceback" not in err, err
    return error_lines(err)[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One 5-iteration run (``checkpoints/last.ckpt`` at step 5), copied by the tests that change it."""
    root = tmp_path_factory.mktemp("trained")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(sys, "argv", ["lightning-gan"])
    environ = dict(os.environ)
    try:
        GANCLI(args=tiny_fit(root, 5))
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(environ)
        monkeypatch.undo()
    assert step_of(root / "checkpoints" / "last.ckpt") == 5
    return root


def copy_run(trained: Path, to: Path) -> Path:
    shutil.copytree(trained, to)
    return to


# -- atomic writes -----------------------------------------------------------------------------------


class _FailAfter:
    """A binary file that takes ``limit`` bytes and then fails like a full disk."""

    def __init__(self, file, limit: int) -> None:
        self.file, self.limit, self.written = file, limit, 0

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if self.written + len(data) > self.limit:
            self.file.write(data[: self.limit - self.written])
            self.file.flush()
            self.written = self.limit
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")
        self.written += len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def fail_writes_after(monkeypatch, limit: int) -> list[Path]:
    """Make checkpointing's file writes fail after ``limit`` bytes; returns the paths it opened for writing."""
    opened = []

    def failing_open(path, mode="r", *args, **kwargs):
        file = builtins.open(path, mode, *args, **kwargs)
        if "w" not in mode:
            return file
        opened.append(Path(path))
        return _FailAfter(file, limit)

    monkeypatch.setattr(checkpointing, "open", failing_open, raising=False)
    return opened


def test_a_write_failing_midway_leaves_the_previous_last_checkpoint_and_no_temporary(trained, tmp_path,
                                                                                     monkeypatch):
    root = copy_run(trained, tmp_path / "run")
    last = root / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    opened = fail_writes_after(monkeypatch, limit=20_000)

    with pytest.raises(OSError, match="No space left"):
        GANCLI(args=tiny_fit(root, 10, "--ckpt_path=last"))

    assert opened and all(p.parent == last.parent and p.name.startswith(".last.ckpt.tmp-") for p in opened)
    assert last.read_bytes() == before and step_of(last) == 5
    assert not temporaries(root)


def test_atomic_save_removes_the_temporary_on_failure_and_stale_ones_of_killed_writers(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    atomic_save({"global_step": 1}, target)
    stale = tmp_path / ".last.ckpt.tmp-99999"  # what a kill -9 during a write leaves
    stale.write_bytes(b"partial")
    fail_writes_after(monkeypatch, limit=10)
    with pytest.raises(OSError):
        atomic_save({"global_step": 2, "x": torch.zeros(1000)}, target)
    assert torch.load(target, weights_only=True) == {"global_step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


@pytest.mark.skipif(not os.access("/dev/shm", os.W_OK), reason="needs a writable /dev/shm (another file system)")
def test_run_directory_on_another_file_system_is_written_in_place_not_through_tmpdir(tmp_path, monkeypatch):
    """TMPDIR is made unwritable: Lightning's own writer (temporary in $TMPDIR, then a cross-device copy) fails."""
    locked = tmp_path / "tmpdir"
    locked.mkdir()
    monkeypatch.setenv("TMPDIR", str(locked))
    monkeypatch.setattr(tempfile, "tempdir", str(locked))
    root = Path(tempfile.mkdtemp(prefix="lightning-gan-test-", dir="/dev/shm"))
    locked.chmod(0o500)
    try:
        cli = GANCLI(args=tiny_fit(root, 5, "--checkpoint.every_n_train_steps=2", "--trainer.logger=false"))
        assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
        assert step_of(root / "checkpoints" / "last.ckpt") == 5
        assert step_of(root / "checkpoints" / "last-previous-1.ckpt") == 4
        assert not temporaries(root) and not list(locked.iterdir())
    finally:
        locked.chmod(0o700)
        shutil.rmtree(root, ignore_errors=True)


def test_the_cli_keeps_a_checkpoint_io_the_user_chose():
    chosen = checkpointing.TorchCheckpointIO()
    assert with_atomic_checkpoint_io([chosen]) is None
    assert with_atomic_checkpoint_io(None, GameDDPStrategy(checkpoint_io=chosen)) is None
    added = with_atomic_checkpoint_io(None, "game_ddp")
    assert len(added) == 1 and isinstance(added[0], AtomicCheckpointIO)


# -- last.ckpt and the states before it --------------------------------------------------------------


def test_keep_previous_shifts_last_into_numbered_previous_states(tmp_path):
    last = tmp_path / "last.ckpt"
    for step in range(1, 5):
        keep_previous(last, 2)
        atomic_save({"global_step": step}, last)
    assert [step_of(tmp_path / name) for name in ("last.ckpt", "last-previous-1.ckpt", "last-previous-2.ckpt")] \
        == [4, 3, 2]
    assert len(list(tmp_path.iterdir())) == 3


def test_keep_previous_must_be_a_count():
    with pytest.raises(ValueError, match="Invalid keep_previous: -1"):
        FinalStepCheckpoint(keep_previous=-1)


def test_a_moved_folder_rebases_the_callback_state_on_the_new_folder():
    state = {"dirpath": "/old/run/checkpoints", "last_model_path": "/old/run/checkpoints/last.ckpt",
             "best_model_path": "/elsewhere/x.ckpt", "best_k_models": {"/old/run/checkpoints/a.ckpt": 1.0}}
    moved = _rebased(state, "/new/run/checkpoints")
    assert moved["dirpath"] == "/new/run/checkpoints"
    assert moved["last_model_path"] == "/new/run/checkpoints/last.ckpt"
    assert moved["best_model_path"] == "/elsewhere/x.ckpt"
    assert moved["best_k_models"] == {"/new/run/checkpoints/a.ckpt": 1.0}


def test_a_copied_run_folder_resumes_from_its_highest_step_and_writes_last_ckpt(trained, tmp_path, recwarn):
    first = copy_run(trained, tmp_path / "first")
    GANCLI(args=tiny_fit(first, 10, "--ckpt_path=last"))
    second = copy_run(first, tmp_path / "second")  # holds last.ckpt (10) and last-previous-1.ckpt (5)
    checkpoints = second / "checkpoints"
    os.utime(checkpoints / "last-previous-1.ckpt")  # the older state now has the newer file time

    resumed = GANCLI(args=tiny_fit(second, 15, "--ckpt_path=last"))

    assert Path(resumed.trainer.ckpt_path) == (checkpoints / "last.ckpt").resolve()
    assert resumed.model.evaluations == 15 * 2  # resumed at 10, not at 5
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last-previous-1.ckpt", "last.ckpt"]
    assert step_of(checkpoints / "last.ckpt") == 15 and step_of(checkpoints / "last-previous-1.ckpt") == 10
    assert step_of(first / "checkpoints" / "last.ckpt") == 10  # the original is left alone
    assert not [w for w in recwarn if "dirpath has changed" in str(w.message)]
    states = torch.load(checkpoints / "last.ckpt", weights_only=True)["callbacks"]
    state = next(value for key, value in states.items() if "Checkpoint" in key and "dirpath" in value)
    assert state["dirpath"] == str(checkpoints.resolve())
    assert state["last_model_path"] == str((checkpoints / "last.ckpt").resolve())


def test_rerunning_a_config_in_the_same_folder_overwrites_last_ckpt(trained, tmp_path):
    root = copy_run(trained, tmp_path / "run")
    GANCLI(args=tiny_fit(root, 5, "--model.seed=7"))  # a fresh run, another seed
    checkpoints = root / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt"]  # same step: nothing to keep
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["hyper_parameters"]["seed"] == 7

    GANCLI(args=tiny_fit(root, 3, "--checkpoint.every_n_train_steps=100"))
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last-previous-1.ckpt", "last.ckpt"]
    assert step_of(checkpoints / "last.ckpt") == 3 and step_of(checkpoints / "last-previous-1.ckpt") == 5


# -- --ckpt_path last: highest loadable step ----------------------------------------------------------


def test_last_falls_back_past_a_corrupt_newest_checkpoint_saying_so(trained, tmp_path, capsys):
    root = copy_run(trained, tmp_path / "run")
    GANCLI(args=tiny_fit(root, 10, "--ckpt_path=last"))
    last = root / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.unlink()  # break the link to last-previous-1 before truncating
    last.write_bytes(data[: len(data) // 2])
    capsys.readouterr()

    resumed = GANCLI(args=tiny_fit(root, 12, "--ckpt_path=last"))

    warnings = [line for line in capsys.readouterr().err.splitlines() if "--ckpt_path last" in line]
    assert len(warnings) == 1 and str(last) in warnings[0] and "last-previous-1.ckpt (step 5)" in warnings[0]
    assert Path(resumed.trainer.ckpt_path).name == "last-previous-1.ckpt"
    assert resumed.model.evaluations == 12 * 2
    assert step_of(last) == 12
    # Saved at 10 over the torn file (not kept as a previous state), then at 12.
    assert step_of(root / "checkpoints" / "last-previous-1.ckpt") == 10


def test_last_prefers_the_highest_step_of_the_hpc_checkpoints_too(trained, tmp_path):
    root = copy_run(trained, tmp_path / "run")
    checkpoint = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["global_step"] = 7  # as if SLURMRequeue had saved later
    torch.save(checkpoint, root / "hpc_ckpt_1.ckpt")
    resumed = GANCLI(args=tiny_fit(root, 8, "--ckpt_path=last"))
    assert Path(resumed.trainer.ckpt_path).name == "hpc_ckpt_1.ckpt"
    assert step_of(root / "checkpoints" / "last.ckpt") == 8


def test_last_in_a_new_folder_starts_from_step_zero_saying_so(tmp_path, capsys):
    cli = GANCLI(args=tiny_fit(tmp_path, 5, "--ckpt_path=last"))
    assert cli.trainer.ckpt_path is None and cli.trainer.global_step == 5
    assert "--ckpt_path last: no checkpoint in" in capsys.readouterr().err


def test_last_without_any_loadable_checkpoint_fails_in_one_line(trained, tmp_path, capsys):
    root = copy_run(trained, tmp_path / "run")
    (root / "checkpoints" / "last.ckpt").write_bytes(b"\0" * 100)
    line = expect_refusal(tiny_fit(root, 10, "--ckpt_path=last"), capsys)
    assert "no checkpoint in" in line and "last.ckpt" in line
    assert step_of_or_none(root / "checkpoints" / "last.ckpt") is None


def step_of_or_none(path: Path):
    try:
        return step_of(path)
    except Exception:  # noqa: BLE001
        return None


# -- --ckpt_path FILE: the bad-checkpoint family ---------------------------------------------------


def _bad_checkpoint(kind: str, trained: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}.ckpt"
    good = (trained / "checkpoints" / "last.ckpt").read_bytes()
    if kind == "random-bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 3])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    elif kind == "not-gan":
        checkpoint = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
        del checkpoint["lightning_gan"]
        torch.save(checkpoint, path)
    return path  # "missing": never created


BAD = {
    "random-bytes": "does not load",
    "truncated": "does not load",
    "empty": "is empty",
    "directory": "is a directory",
    "missing": "does not exist",
    "not-gan": "not written by GANModule",
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_checkpoint_file_fails_in_one_line_before_anything_is_written(kind, trained, tmp_path, capsys):
    path = _bad_checkpoint(kind, trained, tmp_path / "bad")
    root = tmp_path / "run"
    line = expect_refusal(tiny_fit(root, 10, f"--ckpt_path={path}"), capsys)
    assert line.startswith(f"lightning-gan: error: Invalid ckpt_path: {path}: ") and BAD[kind] in line, line
    assert not root.exists()


@pytest.mark.parametrize("kind", ["random-bytes", "truncated", "not-gan"])
def test_a_bad_checkpoint_file_gives_exactly_one_stderr_line_from_the_command(kind, trained, tmp_path):
    path = _bad_checkpoint(kind, trained, tmp_path / "bad")
    root = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "lightning_gan", *tiny_fit(root, 10, f"--ckpt_path={path}")],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith(f"lightning-gan: error: Invalid ckpt_path: {path}: ")
    assert BAD[kind] in result.stderr and not root.exists()


def test_another_architecture_fails_in_one_line_before_anything_is_written(trained, tmp_path, capsys):
    root = tmp_path / "run"
    line = expect_refusal(tiny_fit(root, 10, f"--ckpt_path={trained / 'checkpoints' / 'last.ckpt'}",
                                   "--model.generator.init_args.hidden_dim=64"), capsys)
    assert line.startswith("lightning-gan: error: Invalid model.generator: the architecture differs"), line
    assert "generator.net.0.weight: [64, 2] here, [128, 2]" in line
    assert not root.exists()


# -- resume consistency: the checkpoint's values are the run's ----------------------------------------


@pytest.mark.parametrize("how", ["last", "file"])
def test_a_contradicting_step_size_is_refused_naming_both_values(how, trained, tmp_path, capsys):
    root = copy_run(trained, tmp_path / "run")
    ckpt = "last" if how == "last" else str(root / "checkpoints" / "last.ckpt")
    line = expect_refusal(tiny_fit(root, 10, f"--ckpt_path={ckpt}", "--model.g_optimizer.lr=0.0005"), capsys)
    assert "Invalid model.g_optimizer.lr: 0.0005 given" in line and "has 0.001" in line, line
    assert "--resume_allow g_optimizer.lr" in line
    assert not list(root.glob("version_1")) and step_of(root / "checkpoints" / "last.ckpt") == 5


def test_an_allowed_step_size_takes_effect_over_the_restored_optimizer_state(trained, tmp_path):
    root = copy_run(trained, tmp_path / "run")
    resumed = GANCLI(args=tiny_fit(root, 10, "--ckpt_path=last", "--model.g_optimizer.lr=0.0005",
                                   "--resume_allow=g_optimizer.lr"))
    generator, discriminator = resumed.model.optimizers(use_pl_optimizer=False)
    assert [g["lr"] for g in generator.param_groups] == [0.0005]
    assert [g["lr"] for g in discriminator.param_groups] == [0.001]
    saved = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["g_optimizer"]["lr"] == 0.0005
    assert saved["optimizer_states"][0]["param_groups"][0]["lr"] == 0.0005


def test_a_value_not_given_is_the_checkpoints(tmp_path):
    """Lightning's CLI did this for a FILE only; now for ``last`` too. seed is not in the quickstart config."""
    GANCLI(args=tiny_fit(tmp_path, 5, "--model.seed=7"))
    resumed = GANCLI(args=tiny_fit(tmp_path, 10, "--ckpt_path=last"))
    assert resumed.model.hparams.seed == 7


@pytest.mark.parametrize("allow", [[], ["--resume_allow=g_optimizer.lr,d_optimizer.lr"]])
def test_changing_the_scheme_is_always_refused(allow, trained, tmp_path, capsys):
    root = copy_run(trained, tmp_path / "run")
    line = expect_refusal(tiny_fit(root, 10, "--ckpt_path=last", "--model.scheme=optimistic", *allow), capsys)
    assert "Invalid model.scheme: 'optimistic' given" in line and "'extragradient'" in line
    assert "cannot change" in line


def test_only_step_sizes_and_world_size_may_be_allowed(trained, tmp_path, capsys):
    root = copy_run(trained, tmp_path / "run")
    line = expect_refusal(tiny_fit(root, 10, "--ckpt_path=last", "--resume_allow=scheme"), capsys)
    assert "Invalid resume_allow: scheme" in line
    assert parse_resume_allow(["g_optimizer.lr, world_size"]) == {"g_optimizer.lr", "world_size"}


def test_another_world_size_is_refused_unless_allowed_saying_what_changes(trained, tmp_path, capsys):
    root = copy_run(trained, tmp_path / "run")
    last = root / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["lightning_gan"]["world_size"] = 2  # as if written by 2 ranks
    torch.save(checkpoint, last)

    line = expect_refusal(tiny_fit(root, 10, "--ckpt_path=last"), capsys)
    assert "from 2 to 1 ranks" in line and "global batch changes from 64 to 32" in line, line
    assert "--resume_allow world_size" in line and step_of(last) == 5
    assert not (root / "version_1").exists()  # refused before the loggers' folder is made

    resumed = GANCLI(args=tiny_fit(root, 10, "--ckpt_path=last", "--resume_allow=world_size"))
    assert resumed.trainer.global_step == 10
    assert "global batch changes from 64 to 32" in capsys.readouterr().err


# -- two ranks --------------------------------------------------------------------------------------


def _command(root: Path, max_steps: int, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightning_gan", *tiny_fit(root, max_steps, *extra),
                           "--trainer.accelerator=cpu"], capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.mark.slow
def test_a_two_rank_checkpoint_resumes_on_one_rank_only_when_allowed(tmp_path):
    """2 ranks write last.ckpt atomically (rank 0, the other waiting in the save's barrier); resuming on 1 rank
    halves the global batch: refused in one line, then allowed with --resume_allow world_size."""
    first = _command(tmp_path, 5, "--trainer.devices=2")
    assert first.returncode == 0, first.stderr[-3000:]
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert step_of(last) == 5 and not temporaries(tmp_path)
    assert torch.load(last, weights_only=True)["lightning_gan"].get("world_size") == 2

    refused = _command(tmp_path, 10, "--trainer.devices=1", "--ckpt_path=last")
    assert refused.returncode == 2
    errors = error_lines(refused.stderr)
    assert len(errors) == 1 and "from 2 to 1 ranks" in errors[0] and "from 64 to 32" in errors[0], refused.stderr
    assert "Traceback" not in refused.stderr and step_of(last) == 5

    allowed = _command(tmp_path, 10, "--trainer.devices=1", "--ckpt_path=last", "--resume_allow=world_size")
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert step_of(last) == 10 and step_of(tmp_path / "checkpoints" / "last-previous-1.ckpt") == 5
