"""Throughput on one GPU: iterations/s and images/s per generator update of GANModule against the hand-written loop.

    python bench/gpu.py                                  # the full grid on one CUDA GPU, < 8 minutes (--budget-s)
    python bench/gpu.py --device cpu --quick --out /tmp/gpu   # tiny CPU version (the test suite's smoke test)

Grid: model (``dcgan32``: DCGAN 32x32x3, ``resnet32``: the SN-free ResNet of ``lightning_gan.models``, both on
CIFAR-shaped synthetic data in [-1, 1]) x scheme (simultaneous, extragradient, svre) x batch (64, 256, 1024) x
precision/layout variant (fp32, fp32 + channels_last, fp32 + compile, bf16, bf16 + channels_last, bf16 + compile).
bf16 rows train with ``trainer.precision bf16-mixed`` (autocast around the module's iteration) and the hand loop
under the same ``torch.autocast``.

Timing reuses ``bench/step_overhead.py``: :class:`PairedTimer` runs one iteration of :class:`HandLoop` (same
players, same batches, same optimizer math; here with its latents drawn on the device, and with channels_last or
compile whenever the module has them) next to each module iteration inside one ``trainer.fit``, and
:func:`make_module` builds the module (non-saturating loss, no penalty, so that ``compile`` is allowed). On CUDA every
timestamp is taken after ``torch.cuda.synchronize()``. Warm-up iterations (which absorb compilation) are excluded.
svre has no hand loop: the module alone runs, on a synthetic :class:`GameDataModule` (its snapshot pass needs one);
its snapshot fires at iteration 0 (warm-up) and exactly once inside the timed window, so the iterations/s include one
full pass over the data set per ``iterations`` timed iterations, and the pass's own seconds are reported apart.

Images/s per generator update = batch x generator updates/s (one generator update per iteration in all three
schemes; extragradient's extrapolation is not an update). Peak memory: ``torch.cuda.max_memory_allocated`` of a
separate short run of the module alone and of the hand loop alone (CUDA); "n/a" on CPU, where only the process's
peak RSS (``ru_maxrss``, whole process, all rows) is given in the header.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import platform
import resource
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import step_overhead as so

from lightning_gan.callbacks import SignalCheckpoint
from lightning_gan.data.base import GameDataModule, IndexedTensorDataset
from lightning_gan.models import (
    DCGANDiscriminator,
    DCGANGenerator,
    ResNetDiscriminator32,
    ResNetGenerator32,
)
from lightning_gan.module import GANModule
from lightning_gan.optim.factory import OptimizerConfig
from lightning_gan.variance_reduction import SVREConfig

MODELS = ("dcgan32", "resnet32")
SCHEMES = ("simultaneous", "extragradient", "svre")
BATCHES = (64, 256, 1024)
# (name, precision, channels_last, compile)
VARIANTS = {
    "fp32": ("fp32", False, False),
    "fp32+channels_last": ("fp32", True, False),
    "fp32+compile": ("fp32", False, True),
    "bf16": ("bf16", False, False),
    "bf16+channels_last": ("bf16", True, False),
    "bf16+compile": ("bf16", False, True),
}
TRAINER_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed"}
SHAPE = (3, 32, 32)
DRAWS = {"simultaneous": 1, "extragradient": 2, "svre": 2}


def make_players(model: str, width: int | None, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    if model == "dcgan32":
        w = width or 64
        return (DCGANGenerator(latent_dim=128, channels=3, image_size=32, base_width=w),
                DCGANDiscriminator(channels=3, image_size=32, base_width=w))
    if model == "resnet32":
        w = width or 128
        return ResNetGenerator32(latent_dim=128, channels=3, base_width=w), ResNetDiscriminator32(3, base_width=w)
    raise ValueError(f"Invalid model: {model!r}; expected one of {MODELS}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class DeviceHandLoop(so.HandLoop):
    """step_overhead's hand loop with its latents drawn on the players' device (its own seeded stream)."""

    def __init__(self, *args, device: torch.device, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.device = device
        self.z_gen = torch.Generator(device=device).manual_seed(0)

    def z(self) -> Tensor:
        return torch.randn(self.batch_size, self.G.latent_dim, generator=self.z_gen, device=self.device)


class AutocastHandLoop(DeviceHandLoop):
    """The hand loop with its whole iteration under ``torch.autocast(bfloat16)``, as Lightning runs the module's."""

    def step(self, real: Tensor) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            super().step(real)


class SyncedTimer(so.PairedTimer):
    """PairedTimer with ``torch.cuda.synchronize`` before every timestamp (a no-op on CPU)."""

    def __init__(self, *args, device: torch.device, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.device = device

    def on_train_start(self, trainer, pl_module) -> None:
        inner = pl_module.training_step

        def timed_training_step(*args, **kwargs):
            sync(self.device)
            t0 = time.perf_counter()
            out = inner(*args, **kwargs)
            sync(self.device)
            self.steps.append(time.perf_counter() - t0)
            return out

        pl_module.training_step = timed_training_step

    def _baseline(self, batch_idx: int) -> None:
        if self.baseline is not None:
            sync(self.device)
            t0 = time.perf_counter()
            with torch.enable_grad():
                self.baseline.step(self.batches[batch_idx % len(self.batches)])
            sync(self.device)
            self.base.append((t0, time.perf_counter() - t0))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.before:
            self._baseline(batch_idx)
        sync(self.device)
        self.starts.append(time.perf_counter())


class SyntheticImages(GameDataModule):
    """CIFAR-shaped synthetic images in [-1, 1] (float32), for svre's snapshot pass."""

    def __init__(self, num_samples: int, batch_size: int, on_device: bool) -> None:
        super().__init__(batch_size=batch_size, on_device=on_device)
        self.num_samples = num_samples

    def _load(self) -> None:
        gen = torch.Generator().manual_seed(1)
        self.train_set = IndexedTensorDataset(torch.rand(self.num_samples, *SHAPE, generator=gen).mul_(2).sub_(1))


def make_svre_module(g: nn.Module, d: nn.Module, snapshot_every: int, channels_last: bool,
                     compile_: bool) -> GANModule:
    """The svre module with step_overhead.make_module's settings (non-saturating, Adam 2e-4 (0.5, 0.999), no
    averages, guards on)."""
    opt = OptimizerConfig(rule="adam", lr=so.LR_G, momentum=so.BETAS[0], beta2=so.BETAS[1])
    return GANModule(g, d, loss="non_saturating", scheme="svre", g_optimizer=opt,
                     d_optimizer=OptimizerConfig(rule="adam", lr=so.LR_D, momentum=so.BETAS[0], beta2=so.BETAS[1]),
                     svre=SVREConfig(snapshot_every=snapshot_every), seed=0, uniform_average=False, ema_decay=None,
                     channels_last=channels_last, compile=compile_)


def fit(module: GANModule, device: torch.device, iterations: int, *, batches: list[Tensor] | None = None,
        datamodule: GameDataModule | None = None, timer: pl.Callback | None = None, precision: str = "fp32") -> None:
    """``trainer.fit`` for exactly ``iterations`` game iterations on ``device`` (step_overhead.fit_module, on any
    accelerator): over the in-memory ``batches`` (already on the device) or the ``datamodule``."""
    trainer = pl.Trainer(accelerator=device.type, devices=1, max_steps=iterations, logger=False,
                         callbacks=([] if timer is None else [timer]) + [SignalCheckpoint()],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, precision=TRAINER_PRECISION[precision])
    if datamodule is None:
        loader = torch.utils.data.DataLoader([batches[i % len(batches)] for i in range(iterations)], batch_size=None)
        trainer.fit(module, train_dataloaders=loader)
    else:
        trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == iterations, (trainer.global_step, iterations)


@dataclass
class Row:
    model: str
    scheme: str
    batch: int
    variant: str
    precision: str
    channels_last: bool
    compile: bool
    status: str  # "ok", "not supported yet: ...", "skipped: ..."
    module_it_s: float | None = None
    module_img_s: float | None = None  # batch x generator updates/s
    module_ms: float | None = None
    module_step_ms: float | None = None
    hand_it_s: float | None = None
    hand_img_s: float | None = None
    hand_ms: float | None = None
    module_over_hand: float | None = None  # time per iteration, module / hand loop
    module_peak_mib: float | str | None = None
    hand_peak_mib: float | str | None = None
    svre_dataset_size: int | None = None
    svre_snapshot_pass_s: float | None = None  # one full pass (the snapshot step minus the median step)
    svre_it_s_without_pass: float | None = None  # module it/s with the pass's seconds taken out of the window
    wall_s: float | None = None
    warmup: int = 0
    iterations: int = 0
    g_updates_per_iteration: int = 1
    notes: list[str] = field(default_factory=list)


def _peak(device: torch.device, run) -> float | str:
    """Peak CUDA memory (MiB) of ``run()`` alone; "n/a" on CPU."""
    if device.type != "cuda":
        return "n/a"
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    run()
    sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def bench_row(model: str, scheme: str, batch: int, variant: str, *, device: torch.device, width: int | None,
              warmup: int, iterations: int, memory: bool, order: int) -> Row:
    precision, channels_last, compile_ = VARIANTS[variant]
    row = Row(model, scheme, batch, variant, precision, channels_last, compile_, "ok", warmup=warmup,
              iterations=iterations)
    start = time.perf_counter()
    if not memory:  # CPU: no per-row peak (the process's peak RSS is in the header)
        row.module_peak_mib = "n/a"
        row.hand_peak_mib = None if scheme == "svre" else "n/a"
    g0, d0 = make_players(model, width)
    g0, d0 = g0.to(device), d0.to(device)
    total = warmup + iterations + 1
    if scheme == "svre":
        every = warmup + iterations // 2  # fires at 0 (warm-up) and once in [warmup, warmup + iterations)
        size = 16 * DRAWS[scheme] * batch
        row.svre_dataset_size = size

        def run_module(steps: int, timer=None) -> None:
            module = make_svre_module(copy.deepcopy(g0), copy.deepcopy(d0), every, channels_last, compile_)
            fit(module, device, steps, timer=timer, precision=precision,
                datamodule=SyntheticImages(size, batch, on_device=device.type == "cuda"))

        timer = SyncedTimer(None, None, device=device)
        gc.collect()
        run_module(total, timer)
        _, per_iter, step = timer.per_iteration(warmup, iterations)
        steps = timer.steps[warmup: warmup + iterations]
        snap = every - warmup
        row.svre_snapshot_pass_s = steps[snap] - statistics.median(steps[:snap] + steps[snap + 1:])
        row.svre_it_s_without_pass = 1 / max(per_iter - row.svre_snapshot_pass_s / iterations, 1e-9)
        row.notes.append(f"1 snapshot pass over {size} samples in the {iterations} timed iterations")
        if memory:
            row.module_peak_mib = _peak(device, lambda: run_module(3))
    else:
        batches = [b.to(device) for b in so.make_batches(SHAPE, DRAWS[scheme] * batch, count=4)]
        hand_batches = [b.contiguous(memory_format=torch.channels_last) for b in batches] if channels_last \
            else batches

        def make_hand() -> so.HandLoop:
            g, d = copy.deepcopy(g0), copy.deepcopy(d0)
            for player in (g, d):
                if channels_last:
                    player.to(memory_format=torch.channels_last)
                if compile_:
                    player.compile()
            loop = AutocastHandLoop if precision == "bf16" else DeviceHandLoop
            return loop(g, d, scheme, batch_size=batch, device=device)

        module = so.make_module(copy.deepcopy(g0), copy.deepcopy(d0), scheme, False, channels_last=channels_last,
                                compile_=compile_)
        timer = SyncedTimer(make_hand(), hand_batches, before=order % 2 == 1, device=device)
        gc.collect()
        fit(module, device, total, batches=batches, timer=timer, precision=precision)
        hand, per_iter, step = timer.per_iteration(warmup, iterations)
        row.hand_ms, row.hand_it_s = 1e3 * hand, 1 / hand
        row.hand_img_s = batch * row.g_updates_per_iteration / hand
        row.module_over_hand = per_iter / hand
        del module, timer
        if memory:
            row.module_peak_mib = _peak(device, lambda: fit(
                so.make_module(copy.deepcopy(g0), copy.deepcopy(d0), scheme, False, channels_last=channels_last,
                               compile_=compile_), device, 3, batches=batches, precision=precision))

            def run_hand() -> None:
                loop = make_hand()
                for b in hand_batches[:3]:
                    loop.step(b)

            row.hand_peak_mib = _peak(device, run_hand)
    row.module_ms, row.module_step_ms, row.module_it_s = 1e3 * per_iter, 1e3 * step, 1 / per_iter
    row.module_img_s = batch * row.g_updates_per_iteration / per_iter
    row.wall_s = time.perf_counter() - start
    return row


def header_info(device: torch.device) -> dict:
    cuda = device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or platform.machine()}, "
                                                                   f"{torch.get_num_threads()} torch thread(s))",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "lightning": pl.__version__,
        "python": platform.python_version(),
    }


def _fmt(x, spec: str = ".1f") -> str:
    if x is None:
        return "-"
    return x if isinstance(x, str) else format(x, spec)


def markdown(rows: list[Row], info: dict, args: argparse.Namespace, memory_note: str) -> str:
    lines = [f"# GAN throughput: {info['device']}", "",
             (f"torch {info['torch']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}, lightning {info['lightning']}; "
             f"{args.warmup} warm-up + {args.iterations} timed iterations per row; images/s = batch x generator "
             f"updates/s; module/hand = time per iteration. {memory_note}"), "",
             ("| model | scheme | batch | variant | status | module it/s | module img/s | hand it/s | hand img/s "
             "| module/hand | module peak MiB | hand peak MiB | svre pass s | svre it/s w/o pass |"),
             "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.model} | {r.scheme} | {r.batch} | {r.variant} | {r.status} | {_fmt(r.module_it_s, '.2f')} "
                     f"| {_fmt(r.module_img_s, '.0f')} | {_fmt(r.hand_it_s, '.2f')} | {_fmt(r.hand_img_s, '.0f')} "
                     f"| {_fmt(r.module_over_hand, '.3f')} | {_fmt(r.module_peak_mib)} | {_fmt(r.hand_peak_mib)} "
                     f"| {_fmt(r.svre_snapshot_pass_s, '.3f')} | {_fmt(r.svre_it_s_without_pass, '.2f')} |")
    return "\n".join(lines) + "\n"


def grid(args: argparse.Namespace) -> list[tuple[str, str, int, str]]:
    cells = []
    for variant in args.variants:  # cheapest first: the budget guard then cuts compile rows, not fp32 ones
        for model in args.models:
            for scheme in args.schemes:
                for batch in args.batches:
                    if (model, scheme, batch) in args.skip:
                        continue
                    cells.append((model, scheme, batch, variant))
    return cells


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default, one GPU) or cpu")
    parser.add_argument("--quick", action="store_true",
                        help="tiny grid: dcgan32 at width 8, batch 8, all three schemes, fp32 and fp32+channels_last "
                             "bf16 and bf16+channels_last, 1 warm-up + 3 timed iterations")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=None)
    parser.add_argument("--schemes", nargs="+", choices=SCHEMES, default=None)
    parser.add_argument("--batches", nargs="+", type=int, default=None)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None)
    parser.add_argument("--width", type=int, default=None, help="players' base width (default: the model's)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations per row (default 5, quick 1)")
    parser.add_argument("--iterations", type=int, default=None, help="timed iterations per row (default 30, quick 3)")
    parser.add_argument("--budget-s", type=float, default=400.0,
                        help="stop starting rows after this many seconds; later rows are marked skipped")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU default: 1)")
    parser.add_argument("--no-memory", action="store_true", help="skip the separate peak-memory runs (CUDA)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "gpu")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (use --device cpu --quick for the CPU smoke run)")
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 1)  # 2 threads on a shared 2-core box make small steps much slower
    elif args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        defaults = {"models": ["dcgan32"], "schemes": list(SCHEMES), "batches": [8],
                    "variants": ["fp32", "fp32+channels_last", "bf16", "bf16+channels_last"], "width": 8,
                    "warmup": 1, "iterations": 3}
    else:
        defaults = {"models": list(MODELS), "schemes": list(SCHEMES), "batches": list(BATCHES),
                    "variants": list(VARIANTS), "width": None, "warmup": 5, "iterations": 30}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.warmup < 1 or args.iterations < 2:
        parser.error("--warmup must be >= 1 and --iterations >= 2 (svre's snapshot lands in the timed window)")
    args.skip = set() if args.quick else {("resnet32", "svre", 1024)}  # 4 F-evals + a 32k-image pass: too long

    info = header_info(device)
    print(f"device: {info['device']} | torch {info['torch']} | CUDA {info['cuda']} | cuDNN {info['cudnn']}",
          flush=True)
    cells = grid(args)
    estimate = len(cells) * (3.0 if args.quick else 7.0)
    print(f"{len(cells)} rows, {args.warmup} + {args.iterations} iterations each; estimate ~{estimate:.0f} s "
          f"(budget {args.budget_s:.0f} s: rows past it are skipped)", flush=True)
    memory = device.type == "cuda" and not args.no_memory

    rows: list[Row] = []
    start = time.perf_counter()
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="lightning")
            warnings.filterwarnings("ignore", module="torchdata")  # "'set_vital' is deprecated"
            for i, (model, scheme, batch, variant) in enumerate(cells):
                precision, channels_last, compile_ = VARIANTS[variant]
                if compile_ and device.type == "cpu" and args.quick:
                    rows.append(Row(model, scheme, batch, variant, precision, channels_last, compile_,
                                    "skipped: compile not in --quick"))
                    continue
                elapsed = time.perf_counter() - start
                if elapsed > args.budget_s:
                    rows.append(Row(model, scheme, batch, variant, precision, channels_last, compile_,
                                    f"skipped: time budget ({args.budget_s:.0f} s) spent"))
                    continue
                try:
                    row = bench_row(model, scheme, batch, variant, device=device, width=args.width,
                                    warmup=args.warmup, iterations=args.iterations, memory=memory, order=i)
                except torch.cuda.OutOfMemoryError as error:
                    row = Row(model, scheme, batch, variant, precision, channels_last, compile_,
                              f"out of memory: {str(error).splitlines()[0][:80]}")
                    gc.collect()
                    torch.cuda.empty_cache()
                rows.append(row)
                hand = f"hand {row.hand_it_s:8.2f} it/s  module/hand {row.module_over_hand:.3f}" \
                    if row.hand_it_s else ""
                module = f"{row.module_it_s:8.2f} it/s {row.module_img_s:9.0f} img/s" if row.module_it_s else row.status
                print(f"[{time.perf_counter() - start:6.1f} s] {model:8s} {scheme:13s} b{batch:<5d} {variant:19s} "
                      f"module {module}  {hand}", flush=True)
    finally:
        lightning_log.setLevel(level)

    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    memory_note = ("Peak memory: torch.cuda.max_memory_allocated of separate 3-iteration runs of the module alone and "
                   "of the hand loop alone." if memory else
                   f"Peak memory per row: n/a ({device.type}); process peak RSS (ru_maxrss, whole run): "
                   f"{rss_mib:.0f} MiB.")
    report = {"info": info, "command": [sys.executable, *sys.argv] if argv is None else ["bench/gpu.py", *argv],
              "quick": args.quick, "warmup": args.warmup, "iterations": args.iterations,
              "wall_s": time.perf_counter() - start, "process_peak_rss_mib": rss_mib, "memory_note": memory_note,
              "rows": [asdict(r) for r in rows]}
    table = markdown(rows, info, args, memory_note)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(report, indent=1))
    (args.out / "gpu.md").write_text(table)
    print(table)
    print(f"wrote {args.out / 'gpu.json'} and {args.out / 'gpu.md'} ({report['wall_s']:.1f} s)")
    return report


if __name__ == "__main__":
    main()
