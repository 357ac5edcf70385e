"""Distributed training for two-player games: a DDP strategy without the DDP wrapper, and all collectives.

This is the only module of lightning-gan that talks to ``torch.distributed``, so that every collective a rank can
block in is in one file. It holds:

* :class:`GameDDPStrategy` (registered as ``"game_ddp"``): Lightning's :class:`~lightning.pytorch.strategies.DDPStrategy`
  minus the :class:`~torch.nn.parallel.DistributedDataParallel` wrapper. Lightning still creates the process group
  (gloo on CPU, NCCL on GPU), reads the cluster environment (SLURM, torchelastic, ...), launches processes and adds
  the ``DistributedSampler``; at the start of fitting rank 0's parameters and buffers are broadcast once. Gradients
  are then synchronised by the LightningModule itself, one fused all-reduce per evaluation of the game vector field
  (one ``training_step`` is one game iteration, see :class:`lightning_gan.module.GANModule`), because DDP's reducer
  syncs in backward hooks once per forward: with two players and several backward passes per iteration (e.g.
  extragradient's extrapolation, then its update) it syncs the wrong gradients or fails with "unused parameters".
* Collective helpers: :func:`all_reduce_mean_`, :func:`all_reduce_sum_`, :func:`broadcast_tensors_`,
  :func:`sync_buffers_`, :func:`reduce_boolean_decision`, :func:`agree_max` and :func:`check_ddp_consistency`. Each
  sends one flat buffer per (device, dtype) group, never one message per parameter, and makes no collective call at
  all without a process group or with a world size of 1. The flat buffers of the all-reduces and broadcasts are
  allocated once per list of shapes and reused (:class:`_FlatBuffers`), not concatenated anew at every call.
* Lost ranks: the strategy's ``collective_timeout`` (the command's ``--collective_timeout``) bounds every collective
  once training runs (the rendezvous keeps the long ``timeout``: ranks may start minutes apart); gloo then raises on
  the waiting rank, :func:`is_collective_failure` tells that from other errors, and :func:`roll_call` names the ranks
  that no longer answer, through the rendezvous store. NCCL's watchdog ends the process at the timeout by default
  (``TORCH_NCCL_ASYNC_ERROR_HANDLING``); with ``TORCH_NCCL_BLOCKING_WAIT=1`` the timeout is an exception on the
  waiting rank, as on gloo.

Every helper is a collective: all ranks must call it in the same order, with tensors of the same shapes, dtypes
and order, or the job hangs or fails (use :func:`check_ddp_consistency` to find out which tensor went astray).

Traps the module using this strategy must handle (the module owns them, not the strategy):

* ``trainer.global_step``: with manual optimization it counts every ``step()`` of an optimizer obtained through
  ``self.optimizers()`` (the ``LightningOptimizer`` wrapper). Optimizers taken with
  ``self.optimizers(use_pl_optimizer=False)`` and stepped directly leave it at 0, so ``Trainer(max_steps=...)``
  never stops the run; stepped through the wrapper, every player half-step counts (extragradient: 4 per iteration).
  Count one global step per game iteration, e.g. by calling ``increment_ready()`` and ``increment_completed()`` on
  ``trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress`` once per iteration.
* BatchNorm: see :func:`convert_sync_batchnorm` for the policy.
* Gradient clipping, accumulation and LR schedules are not done by Lightning under manual optimization.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Literal, Optional, Union

import torch
import torch.distributed as dist
from lightning.fabric.plugins import CheckpointIO, ClusterEnvironment
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.fabric.strategies.registry import _StrategyRegistry
from lightning.pytorch.accelerators import Accelerator
from lightning.pytorch.overrides.distributed import _sync_module_states
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch._utils import _unflatten_dense_tensors
from typing_extensions import override

__all__ = [
    "STRATEGY_NAME",
    "GameDDPStrategy",
    "all_reduce_mean_",
    "all_reduce_mean_differentiable",
    "all_gather_differentiable",
    "all_reduce_sum_",
    "agree_max",
    "broadcast_tensors_",
    "check_ddp_consistency",
    "convert_sync_batchnorm",
    "is_collective_failure",
    "is_distributed",
    "rank",
    "reduce_boolean_decision",
    "roll_call",
    "sync_buffers_",
    "world_size",
]

log = logging.getLogger(__name__)

#: Name under which :class:`GameDDPStrategy` is registered: ``Trainer(strategy="game_ddp")``.
STRATEGY_NAME = "game_ddp"


# ----------------------------------------------------------------------------------------------------------------------
# Strategy


class GameDDPStrategy(DDPStrategy):
    """DDP for games: process group, samplers and cluster environment from Lightning, gradients synced by the module.

    The LightningModule is *not* wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`; ``strategy.model`` is
    the LightningModule itself, so ``training_step`` is called directly. At the start of ``fit`` the parameters and
    buffers of rank 0 are broadcast to all ranks (ranks may start from different initialisations). From then on the
    module keeps the ranks identical by averaging gradients with :func:`all_reduce_mean_` before every optimizer step
    (manual optimization, ``automatic_optimization = False``); buffers (BatchNorm statistics) are not synced on every
    forward as DDP does, see :func:`convert_sync_batchnorm`.

    Use it as ``Trainer(strategy="game_ddp", devices=N)`` or ``--trainer.strategy game_ddp``; the name is registered
    when :mod:`lightning_gan.distributed` is imported. The arguments mean what they mean for ``DDPStrategy``; its
    wrapper-only options (``find_unused_parameters``, ``static_graph``, communication hooks, post-local-SGD model
    averaging) do not exist here, since no DDP reducer is created.

    Args:
        accelerator: Lightning accelerator; filled in by the Trainer when ``None``.
        parallel_devices: devices of this node; filled in by the Trainer when ``None``.
        cluster_environment: e.g. ``SLURMEnvironment()``; auto-detected when ``None``. Pass one explicitly inside Ray
            trials (SLURM detection fails off the main thread).
        checkpoint_io: checkpoint plugin.
        precision_plugin: precision plugin.
        process_group_backend: ``"gloo"``, ``"nccl"``, ...; ``None`` picks gloo on CPU and NCCL on CUDA.
        timeout: timeout of the rendezvous and, unless ``collective_timeout`` is given, of every collective.
        collective_timeout: timeout of every collective from the start of training on (None: ``timeout``). Short
            enough to end a job whose rank froze within minutes; the rendezvous and the set-up before training keep
            ``timeout``, since ranks may start far apart (a busy node, a slow file system, srun's launch).
        start_method: how Lightning launches the other processes when it launches them itself: ``"popen"`` reruns
            the command line (the default, works with the CLI), ``"spawn"``, ``"fork"`` or ``"forkserver"``.
    """

    strategy_name = STRATEGY_NAME

    def __init__(
        self,
        accelerator: Optional[Accelerator] = None,
        parallel_devices: Optional[list[torch.device]] = None,
        cluster_environment: Optional[ClusterEnvironment] = None,
        checkpoint_io: Optional[CheckpointIO] = None,
        precision_plugin: Optional[Precision] = None,
        process_group_backend: Optional[str] = None,
        timeout: Optional[timedelta] = default_pg_timeout,
        start_method: Literal["popen", "spawn", "fork", "forkserver"] = "popen",
        collective_timeout: Optional[timedelta] = None,
    ) -> None:
        self.collective_timeout = collective_timeout
        super().__init__(
            accelerator=accelerator,
            parallel_devices=parallel_devices,
            cluster_environment=cluster_environment,
            checkpoint_io=checkpoint_io,
            precision_plugin=precision_plugin,
            process_group_backend=process_group_backend,
            timeout=timeout,
            start_method=start_method,
        )

    @override
    def configure_ddp(self) -> None:
        """Broadcast rank 0's parameters and buffers instead of wrapping the module (DDP's constructor does the same
        broadcast); ``_register_ddp_hooks`` is skipped, it asserts a DDP wrapper on CUDA.

        Raises:
            MisconfigurationException: the module uses automatic optimization, whose gradients nobody would sync, so
                the ranks would silently drift apart. Raised on every rank, before any collective.
        """
        module = self.lightning_module
        if module is not None and module.automatic_optimization:
            raise MisconfigurationException(
                f"`{type(self).__name__}` does not synchronise gradients, but {type(module).__name__} uses automatic"
                " optimization, so its ranks would drift apart. Set `self.automatic_optimization = False` and average"
                " the gradients with `lightning_gan.distributed.all_reduce_mean_`, or use `strategy='ddp'`."
            )
        log.debug(f"{type(self).__name__}: broadcasting rank 0's module states, no DistributedDataParallel wrapper")
        assert isinstance(self.model, nn.Module)
        _sync_module_states(self.model)

    @override
    def on_train_start(self) -> None:
        """From here on the ranks run in lockstep, so a collective that waits longer than ``collective_timeout``
        means a rank stopped answering."""
        super().on_train_start()
        if self.collective_timeout is not None and is_distributed():
            dist.set_timeout(self.collective_timeout)

    @override
    def _setup_model(self, model: nn.Module) -> nn.Module:
        """Return the module unwrapped, in case Lightning internals call this DDP-wrapping hook."""
        return model

    @override
    def on_exception(self, exception: BaseException) -> None:
        """Do not append DDPStrategy's "use ``find_unused_parameters=True``" advice: there is no DDP reducer here."""

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: _StrategyRegistry) -> None:
        """Register only ``"game_ddp"``; the inherited method would re-register every ``"ddp*"`` name to this class."""
        strategy_registry.register(
            STRATEGY_NAME,
            cls,
            description="DDP without the module wrapper: the LightningModule all-reduces its own gradients",
            override=True,  # re-importing (e.g. importlib.reload) must not fail
        )


GameDDPStrategy.register_strategies(StrategyRegistry)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Return ``module`` with every ``BatchNorm*D`` replaced by :class:`torch.nn.SyncBatchNorm` (torch's converter).

    BatchNorm policy of lightning-gan under :class:`GameDDPStrategy`, where no DDP wrapper re-broadcasts buffers on
    every forward:

    * SyncBatchNorm (this function, or ``Trainer(sync_batchnorm=True)``, which the strategy applies at ``fit``)
      normalises with statistics over the global batch, so the running statistics stay identical on all ranks. torch
      supports it on CUDA (and XPU/HPU) only: a CPU forward in training mode under a process group raises
      ``ValueError``. Every forward of a SyncBatchNorm layer is a collective, so all ranks must run the same forwards.
    * Otherwise each rank normalises with its own micro-batch statistics and running buffers drift apart; call
      :func:`sync_buffers_` (rank 0's buffers) before evaluation and checkpointing.
    * Prefer one discriminator forward on ``cat(real, fake)`` over two forwards per evaluation: real and fake are
      then normalised with the same statistics, and SyncBatchNorm makes one collective per evaluation, not two.
    """
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


# ----------------------------------------------------------------------------------------------------------------------
# Process group queries


def is_distributed() -> bool:
    """Whether a default process group exists (``torch.distributed`` available and initialised)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of ranks in the default process group; 1 without one."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Global rank of this process; 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def _collective_device() -> torch.device:
    """Device for small bookkeeping tensors: NCCL only moves CUDA tensors, gloo moves CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ----------------------------------------------------------------------------------------------------------------------
# Flat-buffer collectives


def _checked(tensors: Sequence[Tensor], caller: str, *, floating: bool = False) -> list[Tensor]:
    """Validate on every rank, with or without a process group, so that one-process runs catch the same mistakes."""
    if isinstance(tensors, Tensor):
        raise TypeError(f"{caller} expects a sequence of tensors, got a single Tensor of shape {tuple(tensors.shape)}")
    tensors = list(tensors)
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"{caller}: tensors[{i}] is {type(t).__name__}, expected a Tensor (a None gradient?)")
        if t.layout != torch.strided:
            raise TypeError(f"{caller}: tensors[{i}] has layout {t.layout}, only dense (strided) tensors are supported")
        if floating and not (t.is_floating_point() or t.is_complex()):
            raise TypeError(f"{caller}: tensors[{i}] has dtype {t.dtype}, a mean needs a floating point dtype")
    return tensors


def _groups(tensors: list[Tensor]) -> list[list[Tensor]]:
    """Split into (device, dtype) groups in order of first appearance; one flat buffer per group."""
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return list(groups.values())


class _FlatBuffers:
    """Persistent flat buffers of the collectives, one per (device, dtype, shapes) of a group of tensors.

    ``torch.cat`` (``_flatten_dense_tensors``) allocates a new buffer of the group's size at every call: a whole
    gradient's worth per evaluation of the field. Here the buffer of a list of shapes is allocated at its first use
    and reused: the tensors are copied into views of it (``torch._foreach_copy_``), the collective runs on it, and
    the results are copied back from the views; the same bytes move, so results are bit for bit those of the
    ``torch.cat`` path. A scheme asks for a few lists of shapes (both players, G alone, D alone, buffers), so the
    cache keeps the ``capacity`` most recently used and drops the oldest beyond that (memory: at most ``capacity``
    buffers, each the size of its group). A group of one contiguous tensor is sent as itself (a view, no copy).
    """

    def __init__(self, capacity: int = 8) -> None:
        self.capacity = capacity
        self._cache: dict[tuple, tuple[Tensor, list[Tensor]]] = {}
        self.allocations = 0  # buffers allocated so far (for tests and benchmarks)

    def clear(self) -> None:
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)

    def flat(self, group: list[Tensor]) -> tuple[Tensor, list[Tensor] | None]:
        """The group's values in one contiguous 1-D tensor, and the views of it to copy back from (None when the
        tensor is the group's only tensor itself, already contiguous: the collective then works in place)."""
        if len(group) == 1 and group[0].is_contiguous():
            return group[0].view(-1), None
        first = group[0]
        key = (first.device, first.dtype, tuple(tuple(t.shape) for t in group))
        entry = self._cache.pop(key, None)  # re-inserted below: the dict's order is the order of use
        if entry is None:
            buffer = torch.empty(sum(t.numel() for t in group), dtype=first.dtype, device=first.device)
            views = [v.view_as(t) for v, t in zip(buffer.split([t.numel() for t in group]), group)]
            entry = (buffer, views)
            self.allocations += 1
        self._cache[key] = entry
        while len(self._cache) > self.capacity:
            del self._cache[next(iter(self._cache))]
        buffer, views = entry
        torch._foreach_copy_(views, group)
        return buffer, views


#: The flat buffers of :func:`all_reduce_mean_`, :func:`all_reduce_sum_` and :func:`broadcast_tensors_`.
_FLAT_BUFFERS = _FlatBuffers()


@torch.no_grad()
def _all_reduce_flat_(tensors: list[Tensor], *, mean: bool) -> None:
    """Sum (then divide) each group through one flat buffer; groups are launched together and then waited for."""
    n = world_size()
    pending = []
    for group in _groups(tensors):
        flat, views = _FLAT_BUFFERS.flat(group)  # a persistent buffer per list of shapes (a view for one tensor)
        # SUM then divide: ReduceOp.AVG exists for NCCL only, not for gloo
        pending.append((group, flat, views, dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True)))
    for group, flat, views, work in pending:
        work.wait()
        if mean:
            flat.div_(n)
        if views is not None:
            torch._foreach_copy_(group, views)


def all_reduce_mean_(tensors: Sequence[Tensor]) -> None:
    """Replace each tensor by its mean over ranks, in place, with one ``all_reduce`` per (device, dtype) group.

    Typical use: the gradients of both players of one game-vector-field evaluation, as one list, so that the
    evaluation costs one collective. Tensors may differ in shape; all ranks must pass the same shapes in the same
    order. Without a process group or with one rank nothing is sent.

    Raises:
        TypeError: an entry is not a dense floating point (or complex) tensor, e.g. a ``None`` gradient.
    """
    tensors = _checked(tensors, "all_reduce_mean_", floating=True)
    if tensors and world_size() > 1:
        _all_reduce_flat_(tensors, mean=True)


def all_reduce_sum_(tensors: Sequence[Tensor]) -> None:
    """Replace each tensor by its sum over ranks, in place, with one ``all_reduce`` per (device, dtype) group.

    Use it for sums with counts, e.g. SVRE's full-data mean ``mu`` (local sums and the local sample count, reduced
    together, then divided by the global count). No collective without a process group or with one rank.

    Raises:
        TypeError: an entry is not a dense tensor.
    """
    tensors = _checked(tensors, "all_reduce_sum_")
    if tensors and world_size() > 1:
        _all_reduce_flat_(tensors, mean=False)


class _AllReduceSum(torch.autograd.Function):
    """y = sum_r x_r on every rank; backward: the cotangents' sum over ranks (the adjoint of a sum seen by all)."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return _AllReduceSum.apply(grad)


def all_reduce_mean_differentiable(tensor: Tensor) -> Tensor:
    """The mean over ranks of ``tensor`` as a new tensor that autograd can differentiate: one ``all_reduce`` forward
    and one in backward (the sum of the ranks' cotangents), as ``torch.distributed.nn.functional.all_reduce``, which
    torch 2.14 deprecates. Without a process group or with one rank it returns ``tensor`` itself (no collective).
    Used by unrolled GANs (:mod:`lightning_gan.game.unrolled`): pass one flat tensor, one collective per call.
    """
    size = world_size()
    if size == 1:
        return tensor
    return _AllReduceSum.apply(tensor) / size


class _AllGather(torch.autograd.Function):
    """y = cat(x_0, ..., x_{W-1}) on every rank; backward: this rank's rows of the cotangents' sum over ranks.

    Every rank uses y, so the adjoint of "rank r's x_r goes into rows r of every rank's y" is the sum over ranks of
    the cotangents of those rows: one all-reduce (SUM) of the whole cotangent, then this rank's slice. gloo has no
    reduce-scatter, which would move only a 1/W share; the backward goes through :class:`_AllReduceSum`, so a double
    backward (consensus) is differentiable too.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        tensor = tensor.contiguous()
        ctx.rows, ctx.rank = tensor.shape[0], dist.get_rank()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        total = _AllReduceSum.apply(grad.contiguous())
        return total[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def all_gather_differentiable(tensor: Tensor) -> Tensor:
    """The ranks' ``tensor`` s concatenated along dim 0 in rank order, differentiable: one ``all_gather`` forward and
    one ``all_reduce`` (SUM) of the full cotangent in each backward pass through it (rank r then keeps its rows), as
    ``torch.distributed.nn.functional.all_gather``, which torch 2.14 deprecates. Every rank must pass the same shape.
    Without a process group or with one rank it returns ``tensor`` itself (no collective). Used by the MMD loss
    (:class:`lightning_gan.game.losses.MMDLoss`) to score the global batch on every rank.
    """
    if world_size() == 1:
        return tensor
    return _AllGather.apply(tensor)


@torch.no_grad()
def broadcast_tensors_(tensors: Sequence[Tensor], src: int = 0) -> None:
    """Overwrite each tensor with rank ``src``'s copy, in place, with one ``broadcast`` per (device, dtype) group.

    No collective without a process group or with one rank.

    Raises:
        TypeError: an entry is not a dense tensor.
        ValueError: ``src`` is not a rank of the process group.
    """
    tensors = _checked(tensors, "broadcast_tensors_")
    n = world_size()
    if not 0 <= src < n:
        raise ValueError(f"Invalid src rank: {src} (world size {n})")
    if not tensors or n == 1:
        return
    pending = []
    for group in _groups(tensors):
        flat, views = _FLAT_BUFFERS.flat(group)
        pending.append((group, views, dist.broadcast(flat, src=src, async_op=True)))
    for group, views, work in pending:
        work.wait()
        if views is not None:
            torch._foreach_copy_(group, views)


def sync_buffers_(module: nn.Module, src: int = 0) -> None:
    """Broadcast ``module``'s buffers (e.g. BatchNorm running statistics) from rank ``src``: one flat broadcast.

    Part of the BatchNorm policy (see :func:`convert_sync_batchnorm`): without SyncBatchNorm each rank's running
    statistics drift; call this before evaluation and checkpointing so every rank evaluates and saves rank 0's.
    """
    broadcast_tensors_(list(module.buffers()), src=src)


def reduce_boolean_decision(flag: bool, all: bool = True) -> bool:  # noqa: A002 (same signature as Lightning's)
    """Agree on a decision across ranks: logical AND (``all=True``) or OR (``all=False``) with one ``all_reduce``.

    For stop/save/snapshot decisions that would hang the job if only some ranks took them (a collective or a save
    barrier that some ranks never enter waits until the timeout).
    """
    if world_size() == 1:
        return bool(flag)
    votes = torch.tensor([int(bool(flag))], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(votes, op=dist.ReduceOp.SUM)
    count = int(votes.item())  # a sync point
    return count == world_size() if all else count > 0


def agree_max(value: int) -> int:
    """The largest ``value`` over ranks, with one ``all_reduce`` of one integer (the value itself without a group).

    For decisions that carry a code, e.g. the number of the signal some rank received (0: none): every rank learns
    the same answer at the same iteration, so that all of them save and stop together.
    """
    if world_size() == 1:
        return int(value)
    votes = torch.tensor([int(value)], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(votes, op=dist.ReduceOp.MAX)
    return int(votes.item())


# ----------------------------------------------------------------------------------------------------------------------
# Lost ranks

#: Words of the errors that torch.distributed raises when a peer stops answering: gloo's timeouts and closed
#: connections, NCCL's watchdog timeouts (``DistBackendError``).
_COLLECTIVE_FAILURE_WORDS = ("timed out", "timeout", "connection reset by peer", "connection closed by peer",
                             "broken pipe", "pair closure", "gloo/transport")


def is_collective_failure(error: BaseException) -> bool:
    """Whether ``error`` says that a collective failed because another rank stopped answering (timeout or lost
    connection), as opposed to an error of this rank's own computation."""
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and any(word in message for word in _COLLECTIVE_FAILURE_WORDS)


ROLL_CALL_PREFIX = "lightning_gan/roll_call/"


def roll_call(wait: timedelta = timedelta(seconds=10)) -> list[int]:
    """After a collective failed: the ranks that do not answer within ``wait``, through the rendezvous store.

    A collective error does not say which rank is missing (gloo: "Timed out waiting 300000ms for recv operation";
    in a ring every rank waits on a neighbour). Every surviving rank writes its key into the job's key-value store
    (the TCPStore served by rank 0) and waits for the others' keys; the ranks whose keys never come are the ones
    that are frozen (SIGSTOP, a stuck file system, a dead GPU) or gone. When the store itself does not answer, the
    rank that serves it, rank 0, is the one missing. Made once per job, on the way out: the keys are never removed.
    """
    if not is_distributed():
        return []
    store = dist.distributed_c10d._get_default_store()
    store.set_timeout(wait)
    try:
        store.set(f"{ROLL_CALL_PREFIX}{rank()}", "here")
    except Exception:  # noqa: BLE001 (any store error means the same: rank 0's store is not there)
        return [0]
    keys = [f"{ROLL_CALL_PREFIX}{r}" for r in range(world_size())]
    deadline = time.monotonic() + wait.total_seconds()
    while True:
        try:
            present = [store.check([key]) for key in keys]
        except Exception:  # noqa: BLE001
            return [0]
        missing = [r for r, here in enumerate(present) if not here]
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(0.1)


# ----------------------------------------------------------------------------------------------------------------------
# Consistency check


def _named_tensors(
    module_or_tensors: Union[nn.Module, Mapping[str, Tensor], Sequence[Tensor]], name: str
) -> list[tuple[str, Tensor]]:
    """Parameters and buffers of a module, items of a mapping, or indexed entries of a sequence, with full names."""
    if isinstance(module_or_tensors, nn.Module):
        items = [*module_or_tensors.named_parameters(), *module_or_tensors.named_buffers()]
    elif isinstance(module_or_tensors, Mapping):
        items = [(str(k), v) for k, v in module_or_tensors.items()]
    elif isinstance(module_or_tensors, Sequence) and not isinstance(module_or_tensors, (str, Tensor)):
        items = [(f"[{i}]", t) for i, t in enumerate(module_or_tensors)]
    else:
        raise TypeError(
            "check_ddp_consistency expects a Module, a mapping of tensors or a sequence of tensors,"
            f" got {type(module_or_tensors).__name__}"
        )
    named = []
    for key, t in items:
        full = f"{name}.{key}" if name and not key.startswith("[") else f"{name}{key}"
        if not isinstance(t, Tensor):
            raise TypeError(f"check_ddp_consistency: {full!r} is {type(t).__name__}, expected a Tensor")
        named.append((full, t.detach()))
    return named


def _raw_bytes(t: Tensor) -> Tensor:
    """The tensor's bits as a flat uint8 tensor, so that comparisons are exact (NaN == NaN, -0.0 != 0.0)."""
    return t.reshape(-1).view(torch.uint8)


@torch.no_grad()
def check_ddp_consistency(
    module_or_tensors: Union[nn.Module, Mapping[str, Tensor], Sequence[Tensor]], name: str = ""
) -> None:
    """Raise on every rank if any parameter or buffer is not bit-identical to rank 0's copy.

    Run it before checkpoints and in DDP tests (stylegan2-ada's ``misc.check_ddp_consistency``). Costs one small
    ``all_reduce`` to compare the tensors' count and sizes (so that a structural mismatch raises instead of hanging),
    one ``broadcast`` of rank 0's raw bytes per device, and one ``all_reduce`` of per-tensor mismatch flags, so that
    all ranks agree and raise together. No collective without a process group or with one rank.

    Args:
        module_or_tensors: a module (its parameters and buffers), a mapping name -> tensor, or a sequence of tensors.
        name: prefix for the names in the error message, e.g. ``"generator"``.

    Raises:
        RuntimeError: naming the first tensor that differs, or saying that ranks hold different tensor layouts.
    """
    named = _named_tensors(module_or_tensors, name)
    n = world_size()
    if n == 1:
        return
    device = _collective_device()
    label = f" of {name!r}" if name else ""

    # 1. same number of tensors and bytes on every rank: max(x) == -max(-x) for every statistic
    nbytes = [t.numel() * t.element_size() for _, t in named]
    stats = torch.tensor(
        [len(named), sum(nbytes), sum((i + 1) * b for i, b in enumerate(nbytes))], dtype=torch.int64, device=device
    )
    both = torch.cat([stats, -stats])
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    if not torch.equal(both[:3], -both[3:]):
        raise RuntimeError(
            f"DDP consistency check{label} failed: ranks hold different numbers or sizes of tensors"
            f" (this rank {rank()}: {len(named)} tensors, {sum(nbytes)} bytes)"
        )

    # 2. compare every tensor's bits with rank 0's, one broadcast per device
    flags = torch.zeros(len(named), dtype=torch.int32, device=device)
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, t) in enumerate(named):
        by_device.setdefault(t.device, []).append(i)
    for indices in by_device.values():
        local = [_raw_bytes(named[i][1]) for i in indices]
        reference = torch.cat(local)
        dist.broadcast(reference, src=0)
        differs = [torch.ne(mine, ref).any() for mine, ref in zip(local, _unflatten_dense_tensors(reference, local))]
        flags[indices] = torch.stack(differs).to(device=device, dtype=torch.int32)
    dist.all_reduce(flags, op=dist.ReduceOp.SUM)

    bad = flags.nonzero().flatten().tolist()  # a sync point
    if bad:
        first, count = named[bad[0]][0], int(flags[bad[0]])
        raise RuntimeError(
            f"DDP consistency check{label} failed: {first!r} differs from rank 0's copy on {count} of {n - 1} other"
            f" rank(s); {len(bad)} of {len(named)} tensors differ in total"
        )
