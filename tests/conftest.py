"""Shared pytest setup: make the helpers in tests/ (e.g. ``ddp_harness``) importable as top-level modules."""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

import torch  # noqa: E402

# The test players are tiny: one intra-op thread is fastest, and two threads spinning against the
# other test processes on a 2-core machine made a small MLP step ~100x slower.
torch.set_num_threads(1)

import os  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_environment():
    """In-process Lightning runs write MASTER_PORT & co. into os.environ; later tests must not inherit them."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def cli_process_state(monkeypatch):
    """For tests that run ``lightning-gan`` in this process: sys.argv as a console script sees it (the CLI gets its
    arguments from ``args`` only); the threads the config sets and the 1-rank process group game_ddp opens do not
    leak into the next test (os.environ, MASTER_ADDR/PORT included, is restored by ``_restore_environment``)."""
    import torch.distributed as dist

    monkeypatch.setattr(sys, "argv", ["lightning-gan"])
    threads = torch.get_num_threads()
    yield
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    torch.set_num_threads(threads)


@pytest.fixture
def offline_and_clean(monkeypatch, tmp_path):
    """For tests that evaluate: no network, a fresh torch home (fidelity cache, hub cache) and no Inception variable;
    sys.argv as a console script would see it (the CLI reads its arguments from `args` only)."""
    import urllib.request

    from lightning_gan.metrics import ENV_INCEPTION_WEIGHTS

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:1]}")
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(ENV_INCEPTION_WEIGHTS, raising=False)
    monkeypatch.setattr(sys, "argv", ["lightning-gan"])
