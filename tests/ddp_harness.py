"""Run a function on several CPU processes that look externally launched, as under torchrun or SLURM's srun.

    from ddp_harness import run_distributed

    def _child(rank, scale):             # module level: the children import it by name ("spawn")
        dist.init_process_group("gloo")  # reads MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE from the environment
        ...
        return some_tensor               # must be picklable

    @pytest.mark.slow
    def test_something():
        results = run_distributed(_child, 2, 3.0)   # [rank 0's return value, rank 1's]

Each child gets ``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``NODE_RANK=0`` and ``GROUP_RANK=0``. ``LOCAL_RANK`` is what makes Lightning's
``LightningEnvironment`` treat the processes as created externally, so a
``Trainer(accelerator="cpu", devices=world_size, strategy="game_ddp")`` built *inside* ``fn`` joins the group instead
of launching more processes. Scheduler variables inherited from the parent (``SLURM_*``, ``TORCHELASTIC_*``, LSF's
``LSB_*``/``JSM_*``) are removed so that Lightning does not pick a different cluster environment when the tests
themselves run inside a SLURM job.

``fn`` must be importable by the children: a module-level function of an importable module (a test module is fine;
the children inherit the parent's ``sys.path``), not a lambda, closure or nested function. Its arguments and return
value travel with ``pickle`` (tensors are copied, not shared).
"""

from __future__ import annotations

import os
import pickle
import queue
import socket
import time
import traceback
from typing import Any, Callable

import torch
import torch.distributed
import torch.multiprocessing as mp

__all__ = ["DistributedRankError", "free_port", "run_distributed"]

_SCHEDULER_PREFIXES = ("SLURM_", "TORCHELASTIC_", "LSB_", "JSM_")


class DistributedRankError(RuntimeError):
    """A rank raised; the message carries that rank's traceback text."""


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1 (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_environment(rank: int, world_size: int, port: int) -> None:
    """Make this process look like one rank of an externally launched single-node job."""
    for key in [k for k in os.environ if k.startswith(_SCHEDULER_PREFIXES)]:
        del os.environ[key]
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world_size),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        NODE_RANK="0",
        GROUP_RANK="0",
    )


def _worker(rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple, results: Any) -> None:
    """Child entry point: run ``fn(rank, *args)`` and report ``("ok", value)`` or ``("error", traceback)``."""
    _child_environment(rank, world_size, port)
    # share the cores instead of oversubscribing them (each rank would default to all cores)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    try:
        value = fn(rank, *args)
        payload = ("ok", pickle.dumps(value))  # plain pickle copies tensor data: no shared memory outlives the child
    except BaseException:  # noqa: BLE001 - report everything, including SystemExit from a failing assertion helper
        payload = ("error", traceback.format_exc())
    results.put((rank, *payload))  # report first: tearing down after a failure may block on the peers
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _stop(processes: list, grace: float) -> None:
    """Give the children ``grace`` seconds to exit, then terminate, then kill, and reap them all."""
    deadline = time.monotonic() + grace
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in processes:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 5
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def run_distributed(fn: Callable[..., Any], world_size: int = 2, *args: Any, timeout: float = 120) -> list:
    """Run ``fn(rank, *args)`` on ``world_size`` spawned processes and return their results ordered by rank.

    Raises:
        ValueError: ``world_size`` is below 1.
        DistributedRankError: a rank raised (the first report; its traceback text is in the message) or died
            without reporting (e.g. a crash); the other ranks are then stopped.
        TimeoutError: not every rank reported within ``timeout`` seconds; all children are killed.
    """
    if world_size < 1:
        raise ValueError(f"Invalid world_size: {world_size}")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    # not daemonic, so that `fn` may start DataLoader workers; they are always stopped in `finally`
    processes = [
        ctx.Process(target=_worker, args=(r, world_size, port, fn, args, results), name=f"rank{r}")
        for r in range(world_size)
    ]
    for p in processes:
        p.start()
    values: dict[int, Any] = {}
    grace = 0.0  # on failure stop the others at once: they may be blocked in a collective with the failed rank
    deadline = time.monotonic() + timeout
    try:
        while len(values) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(world_size)) - set(values))
                raise TimeoutError(f"run_distributed({fn.__name__}): ranks {missing} did not finish in {timeout} s")
            try:
                rank, status, payload = results.get(timeout=min(1.0, remaining))
            except queue.Empty:
                dead = [p for r, p in enumerate(processes) if r not in values and p.exitcode not in (None, 0)]
                if dead:  # a crash (segfault, os._exit) that never reported; give the queue a moment first
                    try:
                        rank, status, payload = results.get(timeout=2.0)
                    except queue.Empty:
                        raise DistributedRankError(
                            f"{dead[0].name} of {fn.__name__} died with exit code {dead[0].exitcode} without reporting"
                        ) from None
                else:
                    continue
            if status == "error":
                raise DistributedRankError(f"rank {rank} of {fn.__name__} raised:\n{payload}")
            values[rank] = pickle.loads(payload)
        grace = 10.0  # all reported: let them finish their teardown
    finally:
        _stop(processes, grace)
        results.close()
    return [values[r] for r in range(world_size)]
