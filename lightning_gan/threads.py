"""The default number of PyTorch CPU threads of a run: the cores this process may use, shared by the ranks on its node.

PyTorch's own default is one intra-op thread per physical core of the machine, in every process: four CPU ranks on a
4-core node then run 16 threads that spin against each other. Lightning corrects this only for the ranks it launches
itself, from ``os.cpu_count()`` (all cores, not those a container or ``taskset`` leaves to the process). The CLI
(``torch_num_threads: null``) uses :func:`default_num_threads` instead, per process:

- the cores this process may run on (``os.sched_getaffinity``, else ``os.cpu_count()``),
- divided by the number of ranks on this node: ``LOCAL_WORLD_SIZE`` (torchrun), ``SLURM_NTASKS_PER_NODE`` (srun),
  else the Trainer's devices on this node (CPU ranks Lightning launches; one process per GPU),
- at least 1. Under srun with ``--cpus-per-task`` the task's own cores are known: ``min(cores, SLURM_CPUS_PER_TASK)``,
  not divided again (srun may already have bound the task to them).

An explicit ``torch_num_threads`` wins. On a machine shared with other jobs one thread is often faster still (several
threads of small players wait for each other when a core is taken); the configs for tiny players say 1.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ThreadChoice", "available_cores", "choose_num_threads", "default_num_threads", "local_ranks"]


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform has one), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def default_num_threads(cores: int, ranks: int) -> int:
    """``cores // ranks``, at least 1: the threads of one of ``ranks`` processes sharing ``cores`` cores."""
    return max(1, int(cores) // max(1, int(ranks)))


def _first_int(value: str | None) -> int | None:
    """The first integer of an environment value (``SLURM_NTASKS_PER_NODE`` may read ``2(x3),1``), or None."""
    match = re.match(r"\s*(\d+)", value or "")
    return int(match.group(1)) if match and int(match.group(1)) > 0 else None


def _under_srun(environ: Mapping[str, str]) -> bool:
    """Lightning's test for a SLURM-managed process (``SLURMEnvironment.detect``)."""
    return "SLURM_NTASKS" in environ and environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def _trainer_devices(devices: Any, accelerator: Any, gpus_available: int) -> int:
    """Processes a Trainer with these ``devices`` / ``accelerator`` settings runs on one node."""
    if isinstance(devices, (list, tuple)):
        return max(1, len(devices))
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:  # "0,1": device indices
            return max(1, len([d for d in text.split(",") if d.strip()]))
        if text.lstrip("-").isdigit():
            devices = int(text)
    on_gpu = str(accelerator).lower() in ("gpu", "cuda", "auto", "none") and gpus_available > 0
    if isinstance(devices, int) and not isinstance(devices, bool):
        if devices > 0:
            return devices
        return gpus_available if on_gpu and devices == -1 else 1
    return gpus_available if on_gpu else 1  # "auto": every GPU, or one CPU process


def local_ranks(devices: Any = "auto", accelerator: Any = "auto", environ: Mapping[str, str] | None = None,
                gpus_available: int = 0) -> tuple[int, str]:
    """The number of ranks on this node and where it comes from: ``LOCAL_WORLD_SIZE`` (torchrun),
    ``SLURM_NTASKS_PER_NODE`` (srun), else the Trainer's ``devices`` (``accelerator``, ``gpus_available`` decide what
    ``auto`` and -1 mean)."""
    environ = os.environ if environ is None else environ
    count = _first_int(environ.get("LOCAL_WORLD_SIZE"))
    if count is not None:
        return count, "LOCAL_WORLD_SIZE"
    if _under_srun(environ):
        count = _first_int(environ.get("SLURM_NTASKS_PER_NODE"))
        if count is not None:
            return count, "SLURM_NTASKS_PER_NODE"
    return _trainer_devices(devices, accelerator, gpus_available), "trainer.devices"


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    cores: int
    ranks: int
    source: str  # where `ranks` comes from, or "SLURM_CPUS_PER_TASK"

    def message(self) -> str:
        """The line the CLI logs (rank 0)."""
        if self.source == "SLURM_CPUS_PER_TASK":
            why = f"SLURM_CPUS_PER_TASK of {self.cores} available cores"
        else:
            why = f"{self.cores} available core{'s' if self.cores != 1 else ''} / {self.ranks} " \
                  f"rank{'s' if self.ranks != 1 else ''} on this node ({self.source})"
        return f"torch_num_threads: {self.threads} per process ({why}); set --torch_num_threads to change"


def choose_num_threads(devices: Any = "auto", accelerator: Any = "auto", environ: Mapping[str, str] | None = None,
                       cores: int | None = None, gpus_available: int = 0) -> ThreadChoice:
    """The default thread count of this process (see the module's docstring); ``cores`` defaults to
    :func:`available_cores`."""
    environ = os.environ if environ is None else environ
    cores = available_cores() if cores is None else max(1, int(cores))
    if _under_srun(environ):
        per_task = _first_int(environ.get("SLURM_CPUS_PER_TASK"))
        if per_task is not None:
            return ThreadChoice(min(cores, per_task), cores, 1, "SLURM_CPUS_PER_TASK")
    ranks, source = local_ranks(devices, accelerator, environ, gpus_available)
    return ThreadChoice(default_num_threads(cores, ranks), cores, ranks, source)
