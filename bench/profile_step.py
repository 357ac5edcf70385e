"""Allocations and time of one game iteration of GANModule on CPU: where the module allocates outside the players.

``--mode profile`` runs ``trainer.fit`` and profiles ``--iterations`` iterations after ``--warmup`` with
``torch.profiler`` (``record_shapes``, ``profile_memory``). The library's parts of an iteration are tagged with
``record_function`` regions from here (the library is not edited): ``field`` (the players' forwards and backwards,
:meth:`GANGame.field`), ``all_reduce`` (:func:`lightning_gan.distributed._all_reduce_flat_`), ``finite_record`` /
``finite_verdict`` (:class:`FiniteCheck`), ``optimizer`` (``step`` / ``extrapolation``), ``averages``
(:meth:`PlayerAverages.update`), ``latents`` (:meth:`GANModule.split_batch`), ``training_step`` (the rest of the
module's step) and ``lightning`` (everything outside ``training_step``). Every allocation event (bytes > 0) is
charged to its innermost region and to the outermost ``aten::`` op inside that region (the op Python called), and
the table gives allocations and bytes per iteration per (region, op).

``--mode ab --before TREE`` measures the changes of this tree's Adam rule and flat all-reduce buffers against their
previous implementation (``TREE``'s ``lightning_gan/optim/_rules.py``, and ``torch.cat`` buffers) within one fit:
iterations alternate between the two (``--parts adam flat`` chooses what is switched), the ratio of the median
iteration times is taken per fit, over ``--repeats`` fits (which side goes first alternates per fit). On a shared
machine this pairs far better than separate processes.

``--mode allreduce --ranks 2`` times :func:`lightning_gan.distributed.all_reduce_mean_` of both players' gradients
alone, alternating ``torch.cat`` buffers and the persistent ones (``--iterations`` calls each, a barrier before
each call).

``--mode time`` prints the median seconds per iteration (between consecutive ``on_train_batch_start`` calls) of
``--iterations`` iterations after ``--warmup``, one JSON line per case. ``--compare BEFORE AFTER`` runs ``--mode
time`` in subprocesses with ``PYTHONPATH`` set to one tree, then the other, alternating (the first tree of a round
alternates too), ``--rounds`` times, and prints the median ratio of iterations/s (AFTER / BEFORE) per case:

    python bench/profile_step.py --mode profile --cases mlp:simultaneous dcgan28:extragradient
    python bench/profile_step.py --mode profile --ranks 2 --cases mlp:simultaneous
    python bench/profile_step.py --compare /tmp/before /tmp/after --rounds 7 --ranks-list 1 2
    python bench/profile_step.py --mode ab --before /tmp/before --ranks 2 --cases dcgan28:simultaneous --parts flat

Cases are ``model:scheme``: ``mlp`` is the quickstart's players (MLP, hidden 128, 3 layers, non-saturating loss with
R1 0.1, Adam (0.5, 0.9), uniform + EMA 0.99 averages of G), ``dcgan28`` the players of configs/mnist_simultaneous.yaml
(DCGAN 28x28, base width 64, no BatchNorm in D, WGAN-GP weight 10, Adam (0.5, 0.9), uniform + EMA 0.999); schemes
``simultaneous``, ``extragradient`` (any scheme name of the module works). ``--batch`` is per rank (default 64 for
mlp, 16 for dcgan28). ``--ranks 2`` spawns two gloo processes (strategy ``game_ddp``); rank 0 reports.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

AB_PARTS = ("adam", "flat")  # --mode ab: the changes that can be switched back to their previous implementation
DEFAULT_CASES = ("mlp:simultaneous", "mlp:extragradient", "dcgan28:simultaneous", "dcgan28:extragradient")
REGIONS = ("field", "all_reduce", "finite_record", "finite_verdict", "optimizer", "averages", "latents",
           "training_step")


def make_case(case: str, batch: int | None):
    import torch

    from lightning_gan.models import (
        DCGANDiscriminator,
        DCGANGenerator,
        MLPDiscriminator,
        MLPGenerator,
    )
    from lightning_gan.module import GANModule
    from lightning_gan.optim.factory import OptimizerConfig
    from lightning_gan.schemes import make_scheme

    model, scheme = case.split(":")
    torch.manual_seed(0)
    if model == "mlp":
        g = MLPGenerator(latent_dim=2, output_dim=2, hidden_dim=128, num_layers=3)
        d = MLPDiscriminator(input_dim=2, hidden_dim=128, num_layers=3)
        shape, loss, lr, ema, batch = (2,), {"loss": "non_saturating", "r1_gamma": 0.1}, 1e-3, 0.99, batch or 64
    elif model == "dcgan28":
        g = DCGANGenerator(latent_dim=128, channels=1, image_size=28, base_width=64)
        d = DCGANDiscriminator(channels=1, image_size=28, base_width=64, batch_norm=False)
        shape, loss, lr, ema, batch = (1, 28, 28), {"loss": "wgan_gp", "gp_weight": 10.0}, 1e-4, 0.999, batch or 16
    else:
        raise ValueError(f"Invalid model: {model!r}; expected mlp or dcgan28")
    opt = OptimizerConfig(rule="adam", lr=lr, momentum=0.5, beta2=0.9)
    module = GANModule(g, d, scheme=scheme, g_optimizer=opt, d_optimizer=opt, uniform_average=True, ema_decay=ema,
                       seed=0, check_finite=True, **loss)
    rows = make_scheme(scheme).draws_per_step * batch
    gen = torch.Generator().manual_seed(1)
    batches = [torch.rand(rows, *shape, generator=gen).mul_(2).sub_(1) for _ in range(8)]
    return module, batches


def fit(module, batches, steps: int, ranks: int, callback) -> None:
    import lightning.pytorch as pl
    import torch

    from lightning_gan.callbacks import SignalCheckpoint

    # each rank takes every ranks-th batch (DistributedSampler): give it steps batches of its own
    loader = torch.utils.data.DataLoader([batches[i % len(batches)] for i in range(steps * ranks)], batch_size=None)
    trainer = pl.Trainer(accelerator="cpu", devices=ranks, strategy="game_ddp" if ranks > 1 else "auto",
                         max_steps=steps, logger=False, callbacks=[callback, SignalCheckpoint()],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == steps, (trainer.global_step, steps)


# ---------------------------------------------------------------------------------------------------------------
# Time


def time_case(case: str, batch: int | None, warmup: int, iterations: int, ranks: int) -> float:
    import lightning.pytorch as pl

    class Starts(pl.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_batch_start(self, *args) -> None:
            self.starts.append(time.perf_counter())

        def on_train_end(self, *args) -> None:
            self.starts.append(time.perf_counter())

    module, batches = make_case(case, batch)
    timer = Starts()
    fit(module, batches, warmup + iterations, ranks, timer)
    durations = [b - a for a, b in zip(timer.starts[warmup:], timer.starts[warmup + 1:])]
    return statistics.median(durations)


# ---------------------------------------------------------------------------------------------------------------
# A/B within one fit: the previous implementation of the changed functions against the current one


class _CatBuffers:
    """The collectives' previous flat buffers: ``torch.cat`` of the group at every call (``_flatten_dense_tensors``),
    the results copied back from views of it (``_unflatten_dense_tensors``)."""

    @staticmethod
    def flat(group):
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        flat = _flatten_dense_tensors(group)
        return flat, _unflatten_dense_tensors(flat, group)


def _ab_switch(before_tree: str, parts: Sequence[str] = AB_PARTS):
    """``switch(use_before)``: the previous Adam rule (``lightning_gan/optim/_rules.py`` of ``before_tree``) and/or
    the previous flat buffers (``parts``: ``adam``, ``flat``), or the current ones."""
    import importlib.util

    from lightning_gan import distributed
    from lightning_gan.optim import adam

    spec = importlib.util.spec_from_file_location("_rules_before", Path(before_tree) / "lightning_gan/optim/_rules.py")
    rules_before = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rules_before)
    current = (adam.adam_updates, distributed._FLAT_BUFFERS)
    previous = (rules_before.adam_updates if "adam" in parts else current[0],
                _CatBuffers() if "flat" in parts else current[1])

    def switch(use_before: bool) -> None:
        adam.adam_updates, distributed._FLAT_BUFFERS = previous if use_before else current

    return switch


def ab_case(case: str, batch: int | None, warmup: int, iterations: int, ranks: int, before_tree: str,
            repeats: int, parts: Sequence[str] = AB_PARTS) -> dict:
    """Iterations alternate between the previous and the current implementation within one fit (which one goes
    first alternates per repetition); per repetition the ratio of median iteration times, before / after (the
    ratio of iterations/s after / before)."""
    import lightning.pytorch as pl

    switch = _ab_switch(before_tree, parts)

    class Alternate(pl.Callback):
        def __init__(self, offset: int) -> None:
            self.offset, self.starts, self.modes = offset, [], []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            now = time.perf_counter()
            self.starts.append(now)
            use_before = (batch_idx + self.offset) % 2 == 0
            self.modes.append(use_before)
            switch(use_before)

        def on_train_end(self, *args) -> None:
            self.starts.append(time.perf_counter())
            switch(False)

    ratios, before_s, after_s = [], [], []
    for r in range(repeats):
        module, batches = make_case(case, batch)
        timer = Alternate(r % 2)
        fit(module, batches, warmup + 2 * iterations, ranks, timer)
        durations = [b - a for a, b in zip(timer.starts, timer.starts[1:])]
        b = statistics.median(d for d, m in zip(durations[warmup:], timer.modes[warmup:]) if m)
        a = statistics.median(d for d, m in zip(durations[warmup:], timer.modes[warmup:]) if not m)
        ratios.append(b / a)
        before_s.append(b)
        after_s.append(a)
    return {"case": case, "ranks": ranks, "parts": list(parts), "ratios": ratios, "before_s": before_s,
            "after_s": after_s}


def allreduce_case(case: str, calls: int) -> dict:
    """One ``all_reduce_mean_`` of both players' gradients (from one backward pass), alternating ``torch.cat``
    buffers and the persistent ones, ``calls`` times, a barrier before each; median seconds of each (rank 0's)."""
    import torch
    import torch.distributed as dist

    from lightning_gan import distributed

    module, _ = make_case(case, None)
    params = [*module.generator.parameters(), *module.discriminator.parameters()]
    z = torch.randn(4, module.generator.latent_dim)
    grads = list(torch.autograd.grad(module.discriminator(module.generator(z)).sum(), params))
    current, times = distributed._FLAT_BUFFERS, {True: [], False: []}
    try:
        for i in range(calls + 10):
            use_cat = i % 2 == 0
            distributed._FLAT_BUFFERS = _CatBuffers() if use_cat else current
            tensors = [g.clone() for g in grads]
            dist.barrier()
            t0 = time.perf_counter()
            distributed.all_reduce_mean_(tensors)
            if i >= 10:
                times[use_cat].append(time.perf_counter() - t0)
    finally:
        distributed._FLAT_BUFFERS = current
    before, after = statistics.median(times[True]), statistics.median(times[False])
    return {"case": case, "ranks": dist.get_world_size(), "before_s": before, "after_s": after,
            "ratio": before / after}


# ---------------------------------------------------------------------------------------------------------------
# Profile


def _tag_regions() -> None:
    """Wrap the library's parts of an iteration in record_function regions (this process only)."""
    from torch.profiler import record_function

    from lightning_gan import distributed
    from lightning_gan.averaging import PlayerAverages
    from lightning_gan.game.finite import FiniteCheck
    from lightning_gan.game.gan import GANGame
    from lightning_gan.module import GANModule
    from lightning_gan.optim.base import GameOptimizer
    from lightning_gan.optim.extragradient import Extragradient

    def wrap(owner, name: str, region: str) -> None:
        inner = getattr(owner, name)

        @functools.wraps(inner)
        def tagged(*args, **kwargs):
            with record_function(f"lg::{region}"):
                return inner(*args, **kwargs)

        setattr(owner, name, tagged)

    wrap(GANGame, "field", "field")
    wrap(distributed, "_all_reduce_flat_", "all_reduce")
    wrap(FiniteCheck, "record", "finite_record")
    wrap(FiniteCheck, "verdict", "finite_verdict")
    wrap(GameOptimizer, "step", "optimizer")
    wrap(Extragradient, "step", "optimizer")
    wrap(Extragradient, "extrapolation", "optimizer")
    wrap(PlayerAverages, "update", "averages")
    wrap(GANModule, "split_batch", "latents")
    wrap(GANModule, "training_step", "training_step")


def allocations(prof) -> dict[tuple[str, str], list[int]]:
    """(region, op) -> [allocation count, bytes] over the profiled window."""
    table: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])

    def walk(node, region: str, op: str | None) -> None:
        name = node.name
        if node.tag.name == "Allocation":
            size = node.typed[1].alloc_size
            if size > 0:
                entry = table[(region, op or "(python)")]
                entry[0] += 1
                entry[1] += size
            return
        if name.startswith("lg::"):
            region, op = name[4:], None
        elif op is None and node.tag.name == "TorchOp":
            op = name
        for child in node.children:
            walk(child, region, op)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root, "lightning", None)
    return table


def profile_case(case: str, batch: int | None, warmup: int, iterations: int, ranks: int) -> dict:
    import lightning.pytorch as pl
    import torch
    from torch.profiler import ProfilerActivity, profile

    class Window(pl.Callback):
        def __init__(self) -> None:
            self.prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True, profile_memory=True)
            self.seen = 0

        def on_train_batch_start(self, *args) -> None:
            if self.seen == warmup:
                self.prof.__enter__()
            self.seen += 1

        def on_train_batch_end(self, *args) -> None:
            if self.seen == warmup + iterations:
                self.prof.__exit__(None, None, None)

    module, batches = make_case(case, batch)
    window = Window()
    fit(module, batches, warmup + iterations, ranks, window)
    table = allocations(window.prof)
    rows = sorted(((region, op, count / iterations, size / iterations) for (region, op), (count, size)
                   in table.items()), key=lambda r: (r[0] != "field", r[0], -r[3]))
    return {"case": case, "ranks": ranks, "iterations": iterations, "torch": torch.__version__, "rows": rows}


def print_profile(result: dict) -> None:
    rows = result["rows"]
    print(f"\n## {result['case']}, {result['ranks']} rank(s): allocations per iteration "
          f"(mean of {result['iterations']} profiled iterations)\n")
    print("| region | op | allocations | bytes |\n|---|---|---:|---:|")
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for region, op, count, size in rows:
        totals[region][0] += count
        totals[region][1] += size
        print(f"| {region} | {op} | {count:g} | {size:,.0f} |")
    print("\n| region | allocations | bytes |\n|---|---:|---:|")
    for region, (count, size) in totals.items():
        print(f"| {region} | {count:g} | {size:,.0f} |")
    outside = [(c, s) for r, (c, s) in totals.items() if r not in ("field", "lightning")]
    print(f"| outside the players and Lightning | {sum(c for c, _ in outside):g} | {sum(s for _, s in outside):,.0f} |")


# ---------------------------------------------------------------------------------------------------------------
# Processes


def run_cases(rank: int, args: argparse.Namespace) -> list[dict]:
    import torch

    torch.set_num_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    if args.mode == "profile":
        _tag_regions()
    results = []
    for case in args.cases:
        if args.mode == "profile":
            results.append(profile_case(case, args.batch, args.warmup, args.iterations, args.ranks))
        elif args.mode == "allreduce":
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo")
            results.append(allreduce_case(case, args.iterations))
        elif args.mode == "ab":
            results.append(ab_case(case, args.batch, args.warmup, args.iterations, args.ranks, args.before,
                                   args.repeats, args.parts))
        else:
            seconds = time_case(case, args.batch, args.warmup, args.iterations, args.ranks)
            results.append({"case": case, "ranks": args.ranks, "seconds": seconds})
    return results


def _rank_main(rank: int, args: argparse.Namespace, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(args.ranks), RANK=str(rank),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(args.ranks), NODE_RANK="0", GROUP_RANK="0")
    results = run_cases(rank, args)
    if rank == 0:
        queue.put(results)


def run(args: argparse.Namespace) -> list[dict]:
    if args.ranks == 1:
        return run_cases(0, args)
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    processes = [ctx.Process(target=_rank_main, args=(r, args, port, queue)) for r in range(args.ranks)]
    for p in processes:
        p.start()
    results = queue.get(timeout=1800)
    for p in processes:
        p.join()
    return results


def compare(args: argparse.Namespace) -> None:
    """Alternate subprocesses on the two trees; ratio of iterations/s (after / before) per case and round."""
    before, after = (str(Path(t).resolve()) for t in args.compare)
    seconds: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for round_ in range(args.rounds):
        for ranks in args.ranks_list:
            order = [before, after] if round_ % 2 == 0 else [after, before]
            for tree in order:
                env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": str(args.threads)}
                cmd = [sys.executable, __file__, "--mode", "time", "--ranks", str(ranks), "--warmup",
                       str(args.warmup), "--iterations", str(args.iterations), "--threads", str(args.threads),
                       "--cases", *args.cases, "--check-tree", tree]
                if args.batch:
                    cmd += ["--batch", str(args.batch)]
                out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
                for line in out.splitlines():
                    if line.startswith("{"):
                        r = json.loads(line)
                        seconds[(r["case"], ranks, tree)].append(r["seconds"])
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print("| case | ranks | before ms/iter | after ms/iter | after/before it/s: median (min-max) |")
    print("|---|---:|---:|---:|---|")
    summary = []
    for case in args.cases:
        for ranks in args.ranks_list:
            b, a = seconds[(case, ranks, before)], seconds[(case, ranks, after)]
            ratios = [sb / sa for sb, sa in zip(b, a)]  # iterations/s after / before, paired per round
            print(f"| {case} | {ranks} | {1e3 * statistics.median(b):.2f} | {1e3 * statistics.median(a):.2f} | "
                  f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |")
            summary.append({"case": case, "ranks": ranks, "before_s": b, "after_s": a, "ratios": ratios})
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("profile", "time", "ab", "allreduce"), default="profile")
    parser.add_argument("--before", default=None, help="--mode ab: the source tree of the previous implementation")
    parser.add_argument("--repeats", type=int, default=3, help="--mode ab: fits per case")
    parser.add_argument("--parts", nargs="+", choices=AB_PARTS, default=list(AB_PARTS),
                        help="--mode ab: which changes to switch back (default: all)")
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES))
    parser.add_argument("--batch", type=int, default=None, help="per rank; default 64 (mlp), 16 (dcgan28)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=None, help="default: profile 5, time 100 (mlp) / 20")
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--ranks-list", type=int, nargs="+", default=None, help="--compare: rank counts to run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=None, help="JSON of the results")
    parser.add_argument("--check-tree", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.iterations is None:
        args.iterations = {"profile": 5, "allreduce": 200}.get(args.mode, 30)
    if args.check_tree is not None:
        import lightning_gan

        assert str(Path(lightning_gan.__file__).resolve()).startswith(args.check_tree), lightning_gan.__file__
    if args.compare:
        args.ranks_list = args.ranks_list or [args.ranks]
        compare(args)
        return
    results = run(args)
    if args.mode == "allreduce":
        print("| players | ranks | torch.cat ms/call | persistent buffer ms/call | ratio of calls/s |\n"
              "|---|---:|---:|---:|---|")
    if args.mode == "ab":
        print(f"| case | ranks | before ms/iter | after ms/iter | after/before it/s ({' + '.join(args.parts)}): "
              "median (min-max) |\n|---|---:|---:|---:|---|")
    for result in results:
        if args.mode == "profile":
            print_profile(result)
        elif args.mode == "allreduce":
            print(f"| {result['case'].split(':')[0]} | {result['ranks']} | {1e3 * result['before_s']:.3f} | "
                  f"{1e3 * result['after_s']:.3f} | {result['ratio']:.3f} |", flush=True)
        elif args.mode == "ab":
            ratios = result["ratios"]
            print(f"| {result['case']} | {result['ranks']} | {1e3 * statistics.median(result['before_s']):.2f} | "
                  f"{1e3 * statistics.median(result['after_s']):.2f} | {statistics.median(ratios):.3f} "
                  f"({min(ratios):.3f}-{max(ratios):.3f}) |", flush=True)
        else:
            print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
