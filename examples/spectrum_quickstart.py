"""The game Jacobian's spectrum of the quickstart GAN at the start and at the end of training (docs/spectrum_quickstart.png).

Trains ``configs/quickstart.yaml`` with the ``diagnostics`` callback on at the first and the last iteration, then
draws both estimates side by side in the complex plane (and the players' Hessians below).

    python examples/spectrum_quickstart.py --out docs/spectrum_quickstart.png       # trains (~1-2 min on 2 cores)
    python examples/spectrum_quickstart.py --jsonl runs/.../spectrum/eigenvalues.jsonl --out docs/...png   # draw only
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def train(root: Path, k: int, steps: int) -> Path:
    import sys

    from lightning_gan.cli import main

    sys.argv = sys.argv[:1]  # LightningCLI warns when it gets args while sys.argv holds this script's options
    main(["fit", "--config", str(REPO / "configs" / "quickstart.yaml"), f"--trainer.default_root_dir={root}",
          f"--trainer.max_steps={steps}", f"--diagnostics.every_n_steps={steps}", f"--diagnostics.k={k}",
          "--diagnostics.hessians=true", "--samples.every_n_steps=0", "--checkpoint.every_n_train_steps=100000"])
    return max(root.glob("version_*/spectrum/eigenvalues.jsonl"))


def draw(records: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lightning_gan.diagnostics import plot_spectrum

    chosen = [records[0], records[-1]]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), dpi=110, gridspec_kw={"height_ratios": [3, 1.3]})
    for column, (record, when) in enumerate(zip(chosen, ("start", "end"))):
        top = np.array([complex(*v) for v in record["top"]])
        rotational = np.array([complex(*v) for v in record["rotational"]])
        rotational = rotational[rotational.imag != 0]  # (runs before the filter was added kept real ones too)
        plot_spectrum(axes[0, column], top, rotational,
                      f"quickstart GAN, {when} of training (step {record['step']})\n"
                      f"top {len(top)} by |λ|; max |Im/Re| = {record['diagnostics/eig_max_imag_ratio']:.3g}")
        ax = axes[1, column]
        if record.get("hessians"):
            for row, values in enumerate(record["hessians"]):
                ax.scatter(values, np.full(len(values), row), s=16)
            ax.axvline(0.0, color="0.7", lw=0.8)
            ax.set_yticks([0, 1], ["G's Hessian", "D's Hessian"])
            ax.set_ylim(-0.6, 1.6)
            ax.set_xlabel("eigenvalue (top |λ| of each player's own Hessian)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "spectrum_quickstart.png")
    parser.add_argument("--jsonl", type=Path, default=None, help="draw from this eigenvalues.jsonl, do not train")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args(argv)
    jsonl = args.jsonl
    if jsonl is None:
        jsonl = train(Path(tempfile.mkdtemp(prefix="spectrum_quickstart_")), args.k, args.steps)
    records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    draw(records, args.out)
    for record in (records[0], records[-1]):
        print(json.dumps({key: value for key, value in record.items() if key.startswith("diagnostics/") or key in (
            "step", "matvecs", "converged", "n")}))
    print(f"wrote {args.out} (from {jsonl})")


if __name__ == "__main__":
    main()
