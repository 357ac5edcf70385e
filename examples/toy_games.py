"""Trajectories of game optimizers on toy games, in the spirit of Gidel et al. (ICLR 2019), Fig. 1.

Draws, for the 1-D bilinear game x*y, Dirac-GAN (Mescheder et al., 2018) and the non-convex
Dirac-GAN with target -2, the paths of simultaneous, alternating, averaged (uniform average of the
alternating iterates), extragradient and optimistic gradient methods, each driven through
``lightning_gan.optim`` exactly as a GAN's players would be (``.grad`` set from the game's field,
one optimizer per player). Writes two PNGs: the paths in the plane, and the distance to the
equilibrium per iteration.

    python examples/toy_games.py --out examples/out --steps 400
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.optim.swa_utils import AveragedModel  # noqa: E402

from lightning_gan import optim  # noqa: E402
from lightning_gan.game.toys import Bilinear1D, DiracGAN, ToyGame  # noqa: E402

METHODS = ("simultaneous", "alternating", "averaged", "extragradient", "optimistic")
STYLE = {
    "simultaneous": dict(color="tab:red", label="simultaneous GD"),
    "alternating": dict(color="tab:orange", label="alternating GD"),
    "averaged": dict(color="tab:purple", label="uniform average of alternating"),
    "extragradient": dict(color="tab:blue", label="extragradient"),
    "optimistic": dict(color="tab:green", ls="--", label="optimistic GD"),
}


def _set_grads(game: ToyGame, players: tuple[int, ...] = (0, 1)) -> None:
    field = game.field()
    for i in players:
        for p, g in zip(game.players[i].parameters(), field[i]):
            p.grad = g


def trajectory(make_game: Callable[[], ToyGame], method: str, lr: float, steps: int) -> torch.Tensor:
    """The points (player 0, player 1) visited by ``method``, shape (steps + 1, 2)."""
    game = make_game()
    opt_cls = {"extragradient": optim.ExtraSGD, "optimistic": optim.OptimisticSGD}.get(method, optim.SGD)
    opts = [opt_cls(player.parameters(), lr=lr) for player in game.players]
    average = AveragedModel(game) if method == "averaged" else None
    points = [game.flat_point()]
    for _ in range(steps):
        if method in ("simultaneous", "optimistic"):
            _set_grads(game)
            for opt in opts:
                opt.step()
        elif method in ("alternating", "averaged"):
            for i, opt in enumerate(opts):
                _set_grads(game, (i,))
                opt.step()
        elif method == "extragradient":
            _set_grads(game)
            for opt in opts:
                opt.extrapolation()
            _set_grads(game)
            for opt in opts:
                opt.step()
        if average is not None:
            average.update_parameters(game)
            points.append(average.module.flat_point())
        else:
            points.append(game.flat_point())
    return torch.stack(points)


# (title, game factory, lr, axis labels, half-width of the view around the equilibrium or None)
GAMES: list[tuple[str, Callable[[], ToyGame], float, tuple[str, str], float | None]] = [
    ("bilinear  min_x max_y  x*y", lambda: Bilinear1D(1.0, 1.0), 0.1, ("x", "y"), 2.5),
    ("Dirac-GAN (minimax, data at 0)", lambda: DiracGAN(1.0, 1.0, "minimax", c=0.0), 0.3,
     (r"generator $\theta$", r"discriminator $\psi$"), None),
    ("non-convex Dirac-GAN (minimax, data at -2)", lambda: DiracGAN.nonconvex(1.0, 1.0), 0.3,
     (r"generator $\theta$", r"discriminator $\psi$"), None),
]


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("examples/out"), help="output folder")
    parser.add_argument("--steps", type=int, default=400, help="iterations per method")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    paths_fig, paths_axes = plt.subplots(1, len(GAMES), figsize=(6 * len(GAMES), 5.6))
    dist_fig, dist_axes = plt.subplots(1, len(GAMES), figsize=(6 * len(GAMES), 4.2))
    for (title, make_game, lr, (xlabel, ylabel), view), ax, dax in zip(GAMES, paths_axes, dist_axes):
        equilibrium = torch.cat([t.reshape(-1) for ts in make_game().equilibrium for t in ts])
        start = make_game().flat_point()
        for method in METHODS:
            pts = trajectory(make_game, method, lr, args.steps)
            ax.plot(pts[:, 0], pts[:, 1], lw=1.2, **STYLE[method])
            ax.plot(pts[-1, 0], pts[-1, 1], "o", ms=4, color=STYLE[method]["color"])
            dist = (pts - equilibrium).norm(dim=1).clamp_min(1e-16)
            dax.semilogy(dist, lw=1.2, **STYLE[method])
        ax.plot(*equilibrium.tolist(), marker="*", ms=16, color="black", ls="none", label="equilibrium")
        ax.plot(*start.tolist(), marker="s", ms=7, color="gray", ls="none", label="start")
        ax.set(title=f"{title}\nlr = {lr}, {args.steps} steps", xlabel=xlabel, ylabel=ylabel)
        if view is not None:  # simultaneous GD leaves the frame: keep the others legible
            ax.set_xlim(equilibrium[0] - view, equilibrium[0] + view)
            ax.set_ylim(equilibrium[1] - view, equilibrium[1] + view)
            ax.set_aspect("equal")
        else:
            ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
        dax.set(title=title, xlabel="iteration", ylabel="distance to equilibrium")
        dax.grid(alpha=0.3, which="both")
    for fig, axes in ((paths_fig, paths_axes), (dist_fig, dist_axes)):
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
        fig.tight_layout(rect=(0, 0.07, 1, 1))
    written = [args.out / "toy_trajectories.png", args.out / "toy_distances.png"]
    paths_fig.savefig(written[0], dpi=110)
    dist_fig.savefig(written[1], dpi=110)
    plt.close("all")
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
