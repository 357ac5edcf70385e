"""Bad input fails before training (issue 17, point 6): exit status 2, exactly one stderr line ``lightning-gan: error:
...`` naming the value and what is allowed, no log line before it, nothing written. A full disk ends a run in one
line with exit status 1.

Most cases run in-process (Lightning's log records reach ``caplog``, our error line ``capsys``); a few run as
``python -m lightning_gan`` to show that stderr really is that one line."""

from __future__ import annotations

import errno
import gzip
import logging
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_gan.cli import main
from lightning_gan.cli_errors import full_disk_ends_run
from lightning_gan.data import ImageFolderDataModule

pytestmark = [
    pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning"),  # torchdata 0.11 on torch 2.14
    pytest.mark.filterwarnings("ignore:(?s).*skip_none parameter was deprecated"),  # Lightning's SaveConfigCallback
    pytest.mark.usefixtures("cli_process_state"),  # tests/conftest.py
]

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
ERROR = "lightning-gan: error: "




@pytest.fixture
def lightning_records(monkeypatch, caplog):
    """Lightning's log records as caplog sees them, whether or not Lightning installed its own stderr handler."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
        monkeypatch.setattr(logging.getLogger(name), "handlers", [])
    caplog.set_level(logging.INFO)
    return lambda: [r.getMessage() for r in caplog.records if r.name.startswith("lightning.")]


def fit_args(root: Path, *extra: str, data: tuple[str, ...] = ("--data.init_args.num_samples=1024",
                                                                   "--data.init_args.batch_size=32")) -> list[str]:
    """``fit`` of the quickstart cut down to seconds, as ``tiny_fit`` in test_cli."""
    return ["fit", "--config", str(QUICKSTART), f"--trainer.default_root_dir={root}", "--trainer.max_steps=5",
            "--trainer.enable_progress_bar=false", *data, "--samples.every_n_steps=0", "--samples.num_samples=64",
            "--checkpoint.every_n_train_steps=5", *extra]


# -- corrupt data on disk (small copies in tmp_path) ----------------------------------------------------------------
def write_idx(path: Path, array: np.ndarray) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    raw = np.array([magic, *array.shape], dtype=">u4").tobytes() + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw, mtime=0))


def write_mnist(folder: Path, n: int = 64) -> None:
    """Four IDX files of digit-like images (mostly zeros, so deflate codes them and a flipped bit breaks the codes)."""
    folder.mkdir(parents=True)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, 8:20, 10:18] = (np.arange(n) * 3)[:, None, None]
    for prefix in ("train", "t10k"):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def corrupt_mnist(tmp_path: Path, how: str) -> Path:
    folder = tmp_path / f"mnist-{how}"
    write_mnist(folder)
    path = folder / "train-images-idx3-ubyte.gz"
    raw = bytearray(path.read_bytes())
    if how == "bit-flipped":
        raw[10] ^= 0x01  # first byte of the deflate stream: the block header
        with pytest.raises(zlib.error):  # what read_idx used to let through as a traceback
            gzip.decompress(bytes(raw))
    elif how == "truncated":
        raw = raw[: len(raw) // 2]
    elif how == "empty":
        raw = bytearray()
    path.write_bytes(bytes(raw))
    return folder


def image_folder(tmp_path: Path, bad: str | None) -> Path:
    folder = tmp_path / f"images-{bad}"
    (folder / "sub").mkdir(parents=True)
    for i in range(8):
        Image.new("RGB", (12, 12), (30 * i, 0, 0)).save(folder / "sub" / f"ok{i}.png")
    if bad == "garbage":
        (folder / "sub" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    elif bad == "truncated-jpeg":
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "bad.jpg")
        raw = (folder / "bad.jpg").read_bytes()
        (folder / "bad.jpg").write_bytes(raw[: len(raw) // 2])  # the header is intact: Image.open alone passes it
    return folder


def data_args(kind: str, tmp_path: Path) -> tuple[str, ...]:
    if kind.startswith("mnist-"):
        folder = corrupt_mnist(tmp_path, kind.removeprefix("mnist-"))
        return "--data=lightning_gan.data.MNISTDataModule", f"--data.init_args.root={folder}"
    folder = image_folder(tmp_path, kind.removeprefix("folder-"))
    return "--data=lightning_gan.data.ImageFolderDataModule", f"--data.init_args.root={folder}"


# -- the table -------------------------------------------------------------------------------------------------------
# (id, extra arguments or a data kind, text the one error line must contain)
CASES = [
    ("abbreviated-model-key", ["--model.schem=optimistic"], "unrecognized arguments: --model.schem=optimistic"),
    ("abbreviated-trainer-key", ["--trainer.max_step=3"], "--trainer.max_step=3"),
    ("abbreviated-top-level-key", ["--torch_num=2"], "--torch_num=2"),
    ("unknown-key", ["--model.frobnicate=1"], "--model.frobnicate=1"),
    ("strategy-ddp", ["--trainer.strategy=ddp"], "Invalid trainer.strategy: 'ddp'"),
    ("strategy-unknown", ["--trainer.strategy=warp"], "strategy='warp'"),
    ("max_steps-0", ["--trainer.max_steps=0"], "Invalid trainer.max_steps: 0; expected an integer >= 1"),
    ("max_steps-negative", ["--trainer.max_steps=-5"], "You passed in -5"),
    ("max_steps-not-an-int", ["--trainer.max_steps=ten"], "Got value: ten"),
    ("batch_size-0", ["--data.init_args.batch_size=0"], "Invalid batch_size: 0; expected an integer >= 1"),
    ("batch_size-above-data", ["--data.init_args.batch_size=5000"], "Invalid batch_size: 5000; "),
    ("unknown-scheme", ["--model.scheme=sideways"], "Invalid scheme: 'sideways'; expected one of"),
    ("unknown-loss", ["--model.loss=hinge2"], "'hinge2'; expected one of"),
    ("lr-0", ["--model.g_optimizer.lr=0"], "Invalid lr: 0.0; expected a finite number > 0"),
    ("lr-not-a-number", ["--model.d_optimizer.lr=fast"], "Got value: fast"),
    ("devices-0", ["--trainer.devices=0"], "devices='0'"),
    ("devices-negative", ["--trainer.devices=-2"], "Invalid trainer.devices: '-2'"),
    ("accelerator-unknown", ["--trainer.accelerator=quantum"], "accelerator='quantum'"),
    ("num_nodes-0", ["--trainer.num_nodes=0"], "`num_nodes` must be a positive integer, but got 0"),
    ("torch_num_threads-0", ["--torch_num_threads=0"], "Invalid torch_num_threads: 0"),
    ("run-dir-is-a-file", "run-dir-is-a-file", "is a file, expected a folder"),
    ("unknown-data-class", ["--data=lightning_gan.data.NoSuchModule"], "lightning_gan.data.NoSuchModule"),
    ("mnist-missing", ["--data=lightning_gan.data.MNISTDataModule", "--data.init_args.root=/nonexistent/mnist"],
     "MNIST folder /nonexistent/mnist does not exist"),
    ("mnist-bit-flipped", "mnist-bit-flipped", "train-images-idx3-ubyte.gz: cannot decompress it (error: "),
    ("mnist-truncated", "mnist-truncated", "train-images-idx3-ubyte.gz: cannot decompress it (EOFError: "),
    ("mnist-empty-file", "mnist-empty", "train-images-idx3-ubyte.gz: 0 bytes, shorter than its 16-byte header"),
    ("folder-undecodable-image", "folder-garbage", "Undecodable image "),
    ("folder-truncated-jpeg", "folder-truncated-jpeg", "bad.jpg: OSError: image file is truncated"),
]


def case_args(extra: list[str] | str, root: Path, tmp_path: Path) -> list[str]:
    if extra == "run-dir-is-a-file":
        root.write_text("not a folder")
        return fit_args(root)
    if isinstance(extra, str):
        return fit_args(root, data=data_args(extra, tmp_path))
    return fit_args(root, *extra)


def written(tmp_path: Path, inputs: set[Path]) -> list[Path]:
    return sorted(p for p in tmp_path.rglob("*") if p not in inputs and not any(i in p.parents for i in inputs))


@pytest.mark.parametrize(("extra", "named"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_value_is_one_error_line_before_anything_is_logged_or_written(extra, named, tmp_path, monkeypatch,
                                                                          capsys, lightning_records):
    monkeypatch.chdir(tmp_path)
    args = case_args(extra, tmp_path / "run", tmp_path)
    inputs = set(tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(ERROR) and named in err[0], err
    assert lightning_records() == []  # no "Seed set to 0", no "GPU available: ..." before the error
    assert written(tmp_path, inputs) == []


@pytest.mark.parametrize(("content", "named"), [
    (None, "File does not exist: "),
    ("trainer:\n  max_steps: 5\n model: [\n", "Invalid config file run.yaml: while parsing a block mapping"),
    ("- trainer\n- model\n", "Invalid config file run.yaml: not a mapping of keys; expected top-level keys"),
], ids=["missing", "yaml-syntax-error", "not-a-mapping"])
def test_bad_config_file_is_one_error_line_naming_it(content, named, tmp_path, monkeypatch, capsys,
                                                     lightning_records):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "run.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(path), f"--trainer.default_root_dir={tmp_path / 'run'}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(ERROR) and named in err[0] and "run.yaml" in err[0], err
    assert lightning_records() == []
    assert [p.name for p in tmp_path.iterdir()] == ([] if content is None else ["run.yaml"])


# -- image folders: every file decodes at setup, or is named ---------------------------------------------------------
def test_image_folder_names_the_undecodable_file_and_the_count(tmp_path):
    folder = image_folder(tmp_path, "garbage")
    (folder / "sub" / "ok3.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"Undecodable image .*sub/bad\.png: UnidentifiedImageError: cannot identify "
                                         r"image file it; 2 of the 9 image files in .* do not decode"):
        ImageFolderDataModule(root=str(folder), image_size=8).setup()


def test_image_folder_without_verification_names_the_file_when_it_is_drawn(tmp_path):
    folder = image_folder(tmp_path, "truncated-jpeg")
    dm = ImageFolderDataModule(root=str(folder), image_size=8, verify_images=False)
    dm.setup()
    assert len(dm.train_set) == 9
    bad = [p.name for p in dm.train_set.paths].index("bad.jpg")
    with pytest.raises(ValueError, match=r"Undecodable image .*bad\.jpg: OSError: image file is truncated"):
        dm.train_set[bad]


# -- a full disk -----------------------------------------------------------------------------------------------------
def test_full_disk_while_writing_a_checkpoint_ends_the_run_in_one_line(tmp_path, monkeypatch, capsys,
                                                                      lightning_records):
    save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "state_dict" in obj:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() raises it: no file name
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    root = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main(fit_args(root))
    assert exit_.value.code == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"{ERROR}no space left on device writing {root / 'checkpoints'}"), err
    assert err[0].startswith(f"{ERROR}no space left on device writing {root / 'checkpoints' / 'last.ckpt'} "), err
    logged = lightning_records()  # an accepted run still logs the seed and the devices, in that order, once
    seed = [i for i, m in enumerate(logged) if m.endswith("Seed set to 0")]
    gpu = [i for i, m in enumerate(logged) if m.startswith("GPU available")]
    assert len(seed) == 1 and len(gpu) == 1 and seed[0] < gpu[0], logged


def test_full_disk_names_the_file_of_a_failed_flush_and_other_errors_pass(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    target = tmp_path / "grid.png"
    target.symlink_to("/dev/full")
    with pytest.raises(SystemExit) as exit_, full_disk_ends_run():
        with open(target, "wb") as f:
            f.write(b"x" * 10)
    assert exit_.value.code == 1
    for error in (OSError(errno.EIO, "Input/output error"), PermissionError(errno.EACCES, "denied", "x"),
                  RuntimeError("not a disk")):
        with pytest.raises(type(error)), full_disk_ends_run():
            raise error



def test_a_full_disk_in_a_writer_thread_is_kept_quiet_and_names_the_file(tmp_path, capsys):
    """TensorBoard's writer thread meets ENOSPC first: no thread traceback, and its file names the main error."""
    import threading

    def writer(filename: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")  # `filename` is in the traceback's locals

    before = threading.excepthook
    with pytest.raises(SystemExit) as exit_, full_disk_ends_run():
        thread = threading.Thread(target=writer, args=(str(tmp_path / "events.out.tfevents.1"),))
        thread.start()
        thread.join()
        raise OSError(errno.ENOSPC, "No space left on device")  # the main thread's later write, no file named
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception in thread" not in err
    assert err.splitlines() == [err.strip()] and "events.out.tfevents.1" in err
    assert threading.excepthook is before


# -- the real command: stderr is the one line ------------------------------------------------------------------------
@pytest.mark.parametrize(("extra", "named"), [
    ("mnist-bit-flipped", "cannot decompress it"),  # refused at data set-up, after seeding
    (["--trainer.strategy=ddp"], "Invalid trainer.strategy: 'ddp'"),  # refused once the Trainer (and its logs) exist
], ids=["mnist-bit-flipped", "strategy-ddp"])
def test_command_line_prints_only_the_error_and_writes_nothing(extra, named, tmp_path):
    args = case_args(extra, tmp_path / "run", tmp_path)
    inputs = set(tmp_path.iterdir())
    result = subprocess.run([sys.executable, "-m", "lightning_gan", *args], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR) and named in lines[0], result.stderr[-2000:]
    assert written(tmp_path, inputs) == []


def test_command_line_full_disk_is_one_line_after_the_run_logs(tmp_path):
    """A real ENOSPC (the sample grid is written through a link to /dev/full): exit 1, no traceback."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    root = tmp_path / "run"
    (root / "samples").mkdir(parents=True)  # with trainer.logger false, sample grids go to <root>/samples
    (root / "samples" / "live_step5.png").symlink_to("/dev/full")
    args = fit_args(root, "--trainer.logger=false", "--samples.every_n_steps=5")
    result = subprocess.run([sys.executable, "-m", "lightning_gan", *args], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in lines if line.startswith(ERROR)]
    assert errors == [lines[-1]], result.stderr[-3000:]
    assert errors[0].startswith(f"{ERROR}no space left on device writing {root / 'samples' / 'live_step5.png'}")
    assert lines[0] == "Seed set to 0" and lines[1].startswith("GPU available")  # logged once the run is accepted
