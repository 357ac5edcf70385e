"""Sum-to-25: does a GAN concentrate its digit sums at 25 where a VAE of the same size does not?

    python bench/sum25.py                                             # ~20 min on a shared 2-core CPU
    python bench/sum25.py --gan-iterations 4 --num-samples 200 --out /tmp/sum25_smoke --png /tmp/sum25_smoke/h.png

The claim under test (Huang, Berard, Touati, Gidel, Vincent, Lacoste-Julien, "Parametric Adversarial Divergences
are Good Task Losses for Generative Modeling", 2017, and the talk built on it): trained on 5-tuples of MNIST digits
whose labels sum to 25 (:class:`~lightning_gan.data.Sum25DataModule`), GAN samples concentrate around sum 25 while
VAE samples spread out. Both models are trained here on the same data module and scored by the same code
(:func:`lightning_gan.metrics.sum25.score_tuples`: the shipped MNIST classifier reads the five digits).

- GAN: the project's own training, ``lightning-gan fit --config configs/sum25_wgangp_extraadam.yaml`` (DCGAN 28x28
  players with 5 channels, WGAN-GP, ExtraAdam; ``--gan-iterations`` iterations, each of 2 F-evaluations, i.e. 2
  batches) in a subprocess, with in-training samples and metrics switched off; scored from its ``last.ckpt``.
  Changed from the config for a CPU budget: base width 32 (config 64), Adam lr 2e-4 (config 1e-4), EMA decay 0.99
  (config 0.999: too long a memory for a few thousand iterations).
- VAE: a plain PyTorch loop in this file. Its decoder is the GAN's generator class (``DCGANGenerator``, same latent
  size and widths, tanh output read as Bernoulli means in [0, 1] after (x + 1) / 2) and its encoder the critic's
  class (``DCGANDiscriminator``) with a 2 x latent head (mean, log-variance); the latent is smaller than the GAN's
  (``--vae-latent-dim`` 32 vs 128), which keeps that head, and so the VAE, about the size of the GAN's two players.
  Loss: the negative ELBO with a Bernoulli likelihood (binary cross-entropy on pixels in [0, 1]); Adam lr 1e-3.
  Samples: decoder means at z ~ N(0, I) (no pixel noise), the usual way to show VAE samples.
- Budget: the same number of training tuples seen by both (default ``--vae-steps`` = 2 x ``--gan-iterations`` at the
  same batch size, since an ExtraAdam iteration draws two batches); wall times are reported for both.

Writes ``<out>/results.json``, ``<out>/table.md`` and the three sum histograms (data, GAN, VAE) into ``--png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "sum25_wgangp_extraadam.yaml"
DEFAULT_ROOT = "../shared/data/mnist"  # as the config: relative to the repository root


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=DEFAULT_ROOT, help="MNIST folder (relative: to the repository root)")
    p.add_argument("--gan-iterations", type=int, default=2400, help="ExtraAdam iterations (2 batches each)")
    p.add_argument("--vae-steps", type=int, help="VAE Adam steps (default: 2 x --gan-iterations: same tuples seen)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--latent-dim", type=int, default=128)
    p.add_argument("--base-width", type=int, default=32, help="DCGAN width of all players (config: 64; 32 for a CPU)")
    p.add_argument("--gan-lr", type=float, default=2e-4,
                   help="both players' Adam lr (config and reference: 1e-4, for 20k iterations)")
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-latent-dim", type=int, default=32,
                   help="VAE latent size (32: with the encoder's 2 x latent head, about the GAN's parameter count)")
    p.add_argument("--ema-decay", type=float, default=0.99, help="GAN EMA decay (config: 0.999, for 20k iterations)")
    p.add_argument("--num-samples", type=int, default=5000, help="tuples scored per model and for the data")
    p.add_argument("--threshold", type=float, default=0.9, help="max softmax of a confidently read digit")
    p.add_argument("--plot-generator", default="ema", choices=("live", "ema", "uniform"),
                   help="the GAN generator drawn in the figure (all are in the table)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared 2-core machine, 2 threads made these steps several x slower)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "sum25")
    p.add_argument("--png", type=Path, default=REPO / "docs" / "sum25_histograms.png")
    p.add_argument("--skip-gan", action="store_true", help="reuse <out>/gan/checkpoints/last.ckpt")
    args = p.parse_args(argv)
    if args.vae_steps is None:
        args.vae_steps = 2 * args.gan_iterations
    return args


def resolve_root(root: str) -> Path:
    path = Path(root).expanduser()
    return path if path.is_absolute() else (REPO / path).resolve()


# -- GAN: the library's own training ------------------------------------------------------------------

def train_gan(args: argparse.Namespace) -> tuple[Path, float]:
    """``lightning-gan fit`` with the sum-25 config, cut to the budget; returns (last.ckpt, wall seconds)."""
    run_dir = args.out / "gan"
    k = args.gan_iterations
    command = [sys.executable, "-m", "lightning_gan", "fit", "--config", str(CONFIG),
               f"--trainer.default_root_dir={run_dir}", f"--trainer.max_steps={k}", "--trainer.accelerator=cpu",
               "--trainer.devices=1", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
               f"--trainer.log_every_n_steps={max(1, min(50, k))}",
               f"--seed_everything={args.seed}", f"--torch_num_threads={args.threads}",
               f"--model.generator.init_args.latent_dim={args.latent_dim}",
               f"--model.generator.init_args.base_width={args.base_width}",
               f"--model.discriminator.init_args.base_width={args.base_width}",
               f"--model.g_optimizer.lr={args.gan_lr}", f"--model.d_optimizer.lr={args.gan_lr}",
               f"--model.ema_decay={args.ema_decay}",
               f"--data.init_args.root={resolve_root(args.root)}", f"--data.init_args.batch_size={args.batch_size}",
               f"--data.init_args.seed={args.seed}", "--data.init_args.num_val_samples=0",
               "--samples.every_n_steps=0", "--metrics.every_n_steps=0", f"--checkpoint.every_n_train_steps={k}"]
    print("GAN:", " ".join(command[2:]), flush=True)
    start = time.perf_counter()
    log = args.out / "gan_fit.log"
    with open(log, "w") as f:
        proc = subprocess.run(command, check=False, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"GAN training failed (exit {proc.returncode}); see {log}:\n" + log.read_text()[-3000:])
    return run_dir / "checkpoints" / "last.ckpt", seconds


def gan_samples(ckpt: Path, n: int, seed: int, which: str) -> Tensor:
    from lightning_gan.run_files import load_run, load_weights, read_checkpoint, run_config

    checkpoint = read_checkpoint(ckpt)
    config = run_config(ckpt, None, checkpoint)
    module, _ = load_run(ckpt, config)
    load_weights(module, ckpt, config, checkpoint)
    return module.sample(n, which, seed, batch_size=250).float().cpu()


# -- VAE baseline: plain PyTorch ------------------------------------------------------------------------

class ConvVAE(nn.Module):
    """Encoder: the critic's architecture with a (mean, log-variance) head; decoder: the generator's architecture."""

    def __init__(self, latent_dim: int = 128, base_width: int = 64, channels: int = 5) -> None:
        from lightning_gan.models import DCGANDiscriminator, DCGANGenerator

        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = DCGANDiscriminator(channels=channels, image_size=28, base_width=base_width)
        self.encoder.score = nn.Linear(self.encoder.score.in_features, 2 * latent_dim)
        self.decoder = DCGANGenerator(latent_dim=latent_dim, channels=channels, image_size=28, base_width=base_width)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.flatten(self.encoder.features(x), 1)
        mean, log_var = self.encoder.score(h).chunk(2, dim=1)
        return mean, log_var.clamp(-10, 10)

    def loss(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(negative ELBO, reconstruction, KL), per tuple, in nats; x in [-1, 1]."""
        mean, log_var = self.encode(x)
        z = mean + torch.randn_like(mean) * (0.5 * log_var).exp()
        p = (self.decoder(z) + 1) / 2
        target = (x + 1) / 2
        rec = F.binary_cross_entropy(p.clamp(1e-6, 1 - 1e-6), target, reduction="none").flatten(1).sum(1).mean()
        kl = 0.5 * (mean.square() + log_var.exp() - 1 - log_var).sum(1).mean()
        return rec + kl, rec, kl

    @torch.no_grad()
    def sample(self, n: int, seed: int, batch_size: int = 250) -> Tensor:
        generator = torch.Generator().manual_seed(seed)
        was_training = self.training
        self.eval()
        out = [self.decoder(torch.randn(min(batch_size, n - i), self.latent_dim, generator=generator))
               for i in range(0, n, batch_size)]
        self.train(was_training)
        return torch.cat(out)


def train_vae(args: argparse.Namespace, datamodule) -> tuple[ConvVAE, float, list[dict]]:
    """Adam on the negative ELBO for ``--vae-steps`` batches of the data module's training tuples."""
    from torch.utils.data import DataLoader

    torch.manual_seed(args.seed)
    vae = ConvVAE(args.vae_latent_dim, args.base_width)
    optimizer = torch.optim.Adam(vae.parameters(), lr=args.vae_lr)
    loader = DataLoader(datamodule.train_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(args.seed))
    log, step = [], 0
    start = time.perf_counter()
    vae.train()
    while step < args.vae_steps:
        for x, _ in loader:
            loss, rec, kl = vae.loss(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % max(1, args.vae_steps // 10) == 0 or step == args.vae_steps:
                loss, rec, kl = loss.item(), rec.item(), kl.item()
                log.append({"step": step, "loss": loss, "reconstruction": rec, "kl": kl,
                            "seconds": time.perf_counter() - start})
                print(f"VAE step {step}/{args.vae_steps}: -ELBO {loss:.1f} (rec {rec:.1f}, KL {kl:.1f})  "
                      f"{time.perf_counter() - start:.0f} s", flush=True)
            if step >= args.vae_steps:
                break
    return vae, time.perf_counter() - start, log


# -- scoring and report ------------------------------------------------------------------------------------

def parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def table(rows: list[dict]) -> str:
    lines = ["| samples | sum = 25 | sum = 25, all digits confident | train combos | held-out combos | neither | "
             "held-out / sum-25 | mean abs(sum - 25) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        v = r["values"]
        ratio = v["heldout_combos"] / v["sum25"] if v["sum25"] > 0 else float("nan")
        lines.append(f"| {r['name']} | {100 * v['sum25']:.1f}% | {100 * v['sum25_confident']:.1f}% | "
                     f"{100 * v['train_combos']:.1f}% | {100 * v['heldout_combos']:.1f}% | {100 * v['neither']:.1f}% "
                     f"| {ratio:.2f} | {r['mean_abs_deviation']:.2f} |")
    return "\n".join(lines)


def chance_line() -> str:
    """What five independent, uniformly drawn digits give: the level of a model that learned digits but not the sum."""
    from lightning_gan.data import Sum25DataModule

    datamodule = Sum25DataModule(root=".")
    train, heldout = len(datamodule.train_combinations), len(datamodule.heldout_combinations)
    return (f"Chance level (five independent uniform digits): sum = 25 {100 * (train + heldout) / 1e5:.1f}%, train "
            f"combos {100 * train / 1e5:.1f}%, held-out combos {100 * heldout / 1e5:.1f}%, mean abs(sum - 25) "
            f"{sum(abs(sum(map(int, f'{c:05d}')) - 25) for c in range(100_000)) / 1e5:.2f}.")


def figure_title(args: argparse.Namespace) -> str:
    return (f"N={args.num_samples} each; GAN {args.gan_iterations} ExtraAdam it., VAE {args.vae_steps} steps "
            f"({args.vae_steps * args.batch_size:,} tuples each)")


def mean_abs_deviation(histogram: list[int]) -> float:
    total = sum(histogram)
    return sum(abs(s - 25) * c for s, c in enumerate(histogram)) / max(1, total)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    from lightning_gan.data import Sum25DataModule
    from lightning_gan.metrics.sum25 import digit_extractor, plot_sum_histograms, score_tuples

    total_start = time.perf_counter()
    # GAN first (its own process), then the VAE on the data module the GAN config builds (same tuples, same seed).
    ckpt = args.out / "gan" / "checkpoints" / "last.ckpt"
    gan_seconds = float("nan")
    if not args.skip_gan:
        ckpt, gan_seconds = train_gan(args)
    print(f"GAN: {args.gan_iterations} iterations in {gan_seconds:.0f} s -> {ckpt}", flush=True)

    datamodule = Sum25DataModule(root=str(resolve_root(args.root)), batch_size=args.batch_size, seed=args.seed,
                                 num_val_samples=args.num_samples)
    datamodule.setup("fit")
    vae, vae_seconds, vae_log = train_vae(args, datamodule)
    print(f"VAE: {args.vae_steps} steps in {vae_seconds:.0f} s", flush=True)

    extractor = digit_extractor()
    score_start = time.perf_counter()
    n = args.num_samples
    samples = {"data (training tuples)": datamodule.sample_real(n, "train"),
               "data (held-out tuples)": datamodule.sample_real(n, "test")}
    for which in ("live", "ema", "uniform"):
        samples[f"GAN ({which})"] = gan_samples(ckpt, n, args.seed, which)
    samples["VAE"] = vae.sample(n, args.seed)
    rows, histograms = [], {}
    for name, images in samples.items():
        values, histogram = score_tuples(images, datamodule.train_combinations, datamodule.heldout_combinations,
                                         extractor, args.threshold)
        rows.append({"name": name, "values": values, "histogram": histogram,
                     "mean_abs_deviation": mean_abs_deviation(histogram)})
        histograms[name] = histogram
    score_seconds = time.perf_counter() - score_start
    plot = {"data": histograms["data (training tuples)"], f"GAN ({args.plot_generator})":
            histograms[f"GAN ({args.plot_generator})"], "VAE": histograms["VAE"]}
    images_seen = args.vae_steps * args.batch_size
    png = plot_sum_histograms(plot, args.png, figure_title(args))
    total_seconds = time.perf_counter() - total_start

    gan_params = None
    if ckpt.is_file():
        from lightning_gan.models import DCGANDiscriminator, DCGANGenerator
        gan_params = (parameters(DCGANGenerator(args.latent_dim, 5, 28, args.base_width))
                      + parameters(DCGANDiscriminator(5, 28, args.base_width)))
    markdown = table(rows) + "\n\n" + chance_line()
    report = {
        "command": "python bench/sum25.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "gan_seconds": gan_seconds, "vae_seconds": vae_seconds, "score_seconds": score_seconds,
        "total_seconds": total_seconds, "tuples_seen_each": images_seen,
        "gan_parameters": gan_params, "vae_parameters": parameters(vae),
        "threads": args.threads, "load_average": os.getloadavg(),
        "rows": rows, "vae_log": vae_log, "png": str(png), "table": markdown,
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "table.md").write_text(markdown + "\n")
    print(markdown)
    print(f"GAN {gan_seconds:.0f} s, VAE {vae_seconds:.0f} s, scoring {score_seconds:.0f} s, total "
          f"{total_seconds:.0f} s ({total_seconds / 60:.1f} min); GAN parameters {gan_params}, VAE parameters "
          f"{parameters(vae)}; wrote {png} and {args.out / 'results.json'}", flush=True)
    if not all(math.isfinite(r["values"]["sum25"]) for r in rows):
        sys.exit("non-finite values")
    return report


if __name__ == "__main__":
    main()
