"""The default thread count (``torch_num_threads: null``): the cores of this process shared by the ranks of its node;
an explicit value or ``$OMP_NUM_THREADS`` wins; rank 0 logs one line saying what was chosen."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from lightning_gan.cli import GANCLI
from lightning_gan.threads import available_cores, choose_num_threads, default_num_threads, local_ranks

REPO = Path(__file__).resolve().parents[1]
TOY_RING_TINY = REPO / "tests" / "configs" / "toy_ring_tiny.yaml"

pytestmark = [
    pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning"),
    pytest.mark.filterwarnings("ignore:(?s).*skip_none parameter was deprecated"),
]


@pytest.mark.parametrize(("cores", "ranks", "threads"), [(2, 1, 2), (2, 2, 1), (2, 4, 1), (16, 4, 4), (16, 3, 5),
                                                          (1, 1, 1), (64, 0, 64)])
def test_default_is_cores_over_local_ranks_at_least_one(cores, ranks, threads):
    assert default_num_threads(cores, ranks) == threads


@pytest.mark.parametrize(("devices", "accelerator", "gpus", "ranks"), [
    ("auto", "auto", 0, 1), ("auto", "cpu", 0, 1), (1, "cpu", 0, 1), (4, "cpu", 0, 4), ("4", "cpu", 0, 4),
    ([0, 1], "gpu", 2, 2), ("0,1,3", "gpu", 4, 3), ("auto", "auto", 4, 4), ("auto", "gpu", 8, 8), (-1, "gpu", 8, 8),
    ("auto", "cpu", 4, 1), (None, "auto", 0, 1),
])
def test_local_ranks_from_the_trainer_devices(devices, accelerator, gpus, ranks):
    assert local_ranks(devices, accelerator, environ={}, gpus_available=gpus) == (ranks, "trainer.devices")


def test_a_launcher_names_the_local_ranks():
    assert local_ranks(1, "cpu", environ={"LOCAL_WORLD_SIZE": "4"}) == (4, "LOCAL_WORLD_SIZE")
    srun = {"SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4(x2)", "SLURM_JOB_NAME": "train"}
    assert local_ranks(1, "cpu", environ=srun) == (4, "SLURM_NTASKS_PER_NODE")
    # An interactive allocation is not srun-launched (Lightning's rule): the Trainer's devices count.
    assert local_ranks(2, "cpu", environ={**srun, "SLURM_JOB_NAME": "bash"}) == (2, "trainer.devices")


def test_choose_divides_the_available_cores_and_says_why():
    choice = choose_num_threads(4, "cpu", environ={}, cores=16)
    assert (choice.threads, choice.cores, choice.ranks, choice.source) == (4, 16, 4, "trainer.devices")
    assert choice.message() == ("torch_num_threads: 4 per process (16 available cores / 4 ranks on this node "
                                "(trainer.devices)); set --torch_num_threads to change")
    assert choose_num_threads(8, "cpu", environ={}, cores=2).threads == 1
    # srun --cpus-per-task: the task's own cores, not divided again by the tasks of the node.
    srun = {"SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4", "SLURM_CPUS_PER_TASK": "8", "SLURM_JOB_NAME": "t"}
    assert choose_num_threads(4, "gpu", environ=srun, cores=8, gpus_available=4).threads == 8
    assert choose_num_threads(4, "gpu", environ=srun, cores=32, gpus_available=4).threads == 8
    assert 1 <= available_cores()


def _cli(tmp_path, *args):
    return GANCLI(args=["--config", str(TOY_RING_TINY), f"--trainer.default_root_dir={tmp_path}",
                        "--trainer.accelerator=cpu", *args], run=False)


@pytest.mark.usefixtures("cli_process_state")
def test_the_cli_sets_and_logs_the_default_and_an_explicit_value_wins(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    _cli(tmp_path / "a", "--torch_num_threads=null", "--trainer.devices=2")
    expected = default_num_threads(available_cores(), 2)
    assert torch.get_num_threads() == expected
    err = caplog.text
    assert f"torch_num_threads: {expected} per process ({available_cores()} available core" in err, err
    assert "/ 2 ranks on this node (trainer.devices)" in err, err

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    caplog.clear()
    _cli(tmp_path / "b", "--torch_num_threads=3")
    assert torch.get_num_threads() == 3
    assert "torch_num_threads:" not in caplog.text  # nothing to explain

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's (or torchrun's) setting is kept
    torch.set_num_threads(1)
    caplog.clear()
    _cli(tmp_path / "c", "--torch_num_threads=null")
    assert torch.get_num_threads() == 1
    assert "torch_num_threads:" not in caplog.text
