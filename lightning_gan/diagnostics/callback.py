"""SpectrumDiagnostics: the game Jacobian's top eigenvalues during training, logged and drawn in the complex plane.

Off by default (``every_n_steps: null``). On, it estimates them before the first iteration, every ``every_n_steps``
game iterations, and after the last one, on one fixed evaluation batch, with
:func:`~lightning_gan.diagnostics.spectrum.game_jacobian_eigenvalues`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_gan.callbacks.samples import save_figure
from lightning_gan.diagnostics.spectrum import (
    Spectrum,
    check_spectrum_request,
    eigenvalues_as_lists,
    game_jacobian_eigenvalues,
)

__all__ = ["SpectrumDiagnostics", "plot_spectrum"]


class SpectrumDiagnostics(Callback):
    """Every ``every_n_steps`` game iterations (and at the start and end of training), the top-k eigenvalues of the
    game Jacobian J = dF/dw at the current point.

    What is computed: the k eigenvalues of J of largest modulus (ARPACK's Arnoldi, ``scipy.sparse.linalg.eigs`` on
    Jacobian-vector products, ``which='LM'``) and, with ``rotation``, the k with the largest |Im|/|Re| among those and
    ARPACK's k of largest imaginary part (``which='LI'``); with ``hessians``, each player's own Hessian's k
    eigenvalues of largest magnitude (Lanczos, ``eigsh``): a negative one means that player is not at a local minimum
    of its loss (Berard et al., ICLR 2020). F is the training field, penalty included, on one fixed batch: the first
    ``batch_size`` samples of ``datamodule.sample_real`` (seeded by the data module's seed, so the same batch after a
    resume) and z drawn from ``seed``. The players' precision (float32) limits the eigenvalues to ~1e-4 relative
    (ARPACK's tolerance then, see ``tol``).

    Written: ``diagnostics/eig_max_abs``, ``eig_max_real``, ``eig_min_real``, ``eig_max_imag_ratio`` (and
    ``hessian_<player>_max|min``) to every logger; ``<log dir>/spectrum/step_<7 digits>.png``, a scatter in the complex
    plane (also the TensorBoard image ``diagnostics/spectrum``); ``<log dir>/spectrum/eigenvalues.jsonl``, one line per
    estimate with every eigenvalue.

    Side effects: none on training. Parameters, ``.grad``, optimizer state, the module's random streams and the global
    RNG are untouched, BatchNorm buffers are restored after the estimate: a run with the callback is bit-identical to
    one without. Under DDP every rank computes the same estimate at the same iteration (the players are identical
    on every rank, and so is the seeded evaluation batch), with no collective, and rank 0 alone writes it: no rank
    waits for another at the next gradient all-reduce, so an estimate longer than ``collective_timeout`` does not end
    the job (the ranks would otherwise sit idle for it anyway). With SyncBatchNorm on several ranks the estimate is skipped (its forward would need the
    other ranks). J v needs one derivative order more than F: a penalty (R1, GP) through a BatchNorm discriminator
    needs a third derivative of batch_norm, which PyTorch lacks; such estimates are skipped with a warning.

    Args:
        every_n_steps: estimate every this many game iterations (>= 1), plus at the start and end; null: off.
        k: eigenvalues per set, 1 <= k <= the number of parameters of both players.
        rotation: also run ARPACK for the eigenvalues of largest imaginary part (a second run, often slower to
            converge than the first).
        hessians: also each player's own Hessian's top-k eigenvalues by magnitude.
        batch_size: real samples (and latents) of the evaluation batch; null: the data module's batch_size.
        seed: seed of the evaluation latents and of ARPACK's start vector.
        tol: ARPACK's relative tolerance; null: 1e-4 for float32 players, machine precision for float64.
        maxiter: ARPACK's maximum number of restarts; null: scipy's default.

    Raises:
        ValueError: a value is out of range (one line naming the field).
    """

    def __init__(self, every_n_steps: int | None = None, k: int = 6, rotation: bool = True, hessians: bool = False,
                 batch_size: int | None = None, seed: int = 1234, tol: float | None = None,
                 maxiter: int | None = None) -> None:
        if every_n_steps is not None and (isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int)
                                          or every_n_steps < 1):
            raise ValueError(f"Invalid diagnostics.every_n_steps: {every_n_steps!r}; expected an integer >= 1, "
                             "or null for off")
        check_spectrum_request(k, 2 ** 63, "diagnostics.k")  # k >= 1 now; k <= n once the players are known
        if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
            raise ValueError(f"Invalid diagnostics.batch_size: {batch_size!r}; expected an integer >= 1, or null "
                             "for the data module's batch_size")
        if tol is not None and not tol >= 0:
            raise ValueError(f"Invalid diagnostics.tol: {tol!r}; expected a number >= 0, or null for the default")
        if maxiter is not None and maxiter < 1:
            raise ValueError(f"Invalid diagnostics.maxiter: {maxiter!r}; expected an integer >= 1, or null")
        self.every_n_steps, self.k, self.rotation, self.hessians = every_n_steps, k, rotation, hessians
        self.batch_size, self.seed, self.tol, self.maxiter = batch_size, seed, tol, maxiter
        self.dirpath: Path | None = None
        self.history: list[dict[str, Any]] = []
        self._last_step: int | None = None
        self._real: Tensor | None = None  # the evaluation batch when the data module has no sample_real
        self._real_from_batch = False
        self._first_batch: Tensor | None = None
        self._fit_started = False
        self._warned_sync_bn = False
        self._warned_failure = False

    @property
    def enabled(self) -> bool:
        return self.every_n_steps is not None

    def check(self, pl_module: nn.Module) -> None:
        """Refuse k > the number of parameters (one line naming diagnostics.k), and compiled players; the CLI calls it
        before training."""
        if not self.enabled:
            return
        if getattr(pl_module, "compile_players", False):
            raise ValueError("Invalid diagnostics.every_n_steps: the spectrum needs a double backward through the "
                             "players, which compiled players (model compile: true) do not support; set "
                             "compile: false or diagnostics.every_n_steps: null")
        n = sum(p.numel() for player in (pl_module.generator, pl_module.discriminator)  # type: ignore[union-attr]
                for p in player.parameters() if p.requires_grad)
        check_spectrum_request(self.k, n, "diagnostics.k")

    # -- hooks -------------------------------------------------------------------------------------------------

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # trainer.log_dir broadcasts from rank 0, so every rank must read it here, never on rank 0 alone.
        self.dirpath = Path(trainer.log_dir or trainer.default_root_dir) / "spectrum"
        self.check(pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_started = False

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if not self.enabled or self._fit_started:
            return
        self._fit_started = True
        self._remember_batch(batch)
        if self._last_step != trainer.global_step:  # not already done at this step (before a resume)
            self.estimate(trainer, pl_module)  # the start of this fit: before its first iteration

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.enabled and step % self.every_n_steps == 0 and self._last_step != step:  # type: ignore[operator]
            self.estimate(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled and self._last_step != trainer.global_step:
            self.estimate(trainer, pl_module)

    @override
    def state_dict(self) -> dict[str, Any]:
        if not self.enabled:
            return {}  # off (the default): nothing in the checkpoint
        state: dict[str, Any] = {"last_step": self._last_step}
        if self._real_from_batch and self._real is not None:
            state["real"] = self._real  # the data module could not redraw it: keep it for the resumed run
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = state_dict.get("last_step")
        if state_dict.get("real") is not None:
            self._real, self._real_from_batch = state_dict["real"], True

    # -- the estimate ------------------------------------------------------------------------------------------

    def _remember_batch(self, batch: Any) -> None:
        if self._real is None:
            real = batch[0] if isinstance(batch, (tuple, list)) else batch
            self._first_batch = real.detach().cpu().clone()

    def evaluation_sample(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[tuple[Tensor, Tensor]]:
        """[(real, z)]: the fixed evaluation batch, on the players' device."""
        device = next(pl_module.generator.parameters()).device  # type: ignore[union-attr]
        if self._real is None:
            datamodule = getattr(trainer, "datamodule", None)
            n = self.batch_size or getattr(datamodule, "batch_size", None)
            if datamodule is not None and hasattr(datamodule, "sample_real") and n:
                self._real = datamodule.sample_real(n)
            else:  # no seeded sampler: the first training batch of the run (kept in checkpoints)
                first = self._first_batch
                assert first is not None, "on_train_batch_start keeps the first batch"
                self._real, self._real_from_batch = first[: self.batch_size or len(first)].cpu(), True
        real = self._real.to(device)
        latent_dim = pl_module.generator.latent_dim  # type: ignore[union-attr]
        z = torch.randn(real.shape[0], latent_dim, generator=torch.Generator().manual_seed(self.seed))
        return [(real, z.to(device=device, dtype=real.dtype if real.is_floating_point() else z.dtype))]

    def estimate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Spectrum | None:
        """One estimate at the current point, on every rank (written by rank 0; None when skipped)."""
        step = trainer.global_step
        self._last_step = step
        players = (pl_module.generator, pl_module.discriminator)  # type: ignore[union-attr]
        if trainer.world_size > 1 and any(isinstance(m, nn.SyncBatchNorm) for p in players for m in p.modules()):
            if not self._warned_sync_bn:
                rank_zero_warn("SpectrumDiagnostics: skipped, SyncBatchNorm's forward needs every rank "
                               "(use sync_batchnorm: false, or one device)")
                self._warned_sync_bn = True
            return None
        try:
            spectrum = isolated_estimate(players, pl_module.loss,  # type: ignore[arg-type]
                                         self.evaluation_sample(trainer, pl_module), k=self.k, rotation=self.rotation,
                                         hessians=self.hessians, tol=self.tol, maxiter=self.maxiter, seed=self.seed)
        except RuntimeError as error:  # e.g. "batch_norm does not support 3rd+ order derivatives": a penalty's
            if not self._warned_failure:  # double backward through a BatchNorm D; training goes on regardless
                rank_zero_warn(f"SpectrumDiagnostics: skipped at step {step}, autograd cannot compute J v for these "
                               f"players: {str(error).splitlines()[0]}")
                self._warned_failure = True
            return None
        if trainer.is_global_zero:
            self._write(trainer, step, spectrum)
        return spectrum

    def _write(self, trainer: pl.Trainer, step: int, spectrum: Spectrum) -> None:
        values = {f"diagnostics/{name}": value for name, value in spectrum.summary().items()}
        record = {"step": step, "top": eigenvalues_as_lists(spectrum.top),
                  "rotational": eigenvalues_as_lists(spectrum.rotational),
                  "hessians": None if spectrum.hessians is None else [h.tolist() for h in spectrum.hessians],
                  "method": spectrum.method, "n": spectrum.n, "matvecs": spectrum.matvecs,
                  "matvecs_per_run": spectrum.extra.get("matvecs"),
                  "converged": spectrum.converged, **values}
        self.history.append(record)
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)
        assert self.dirpath is not None, "setup() sets dirpath"
        self.dirpath.mkdir(parents=True, exist_ok=True)
        with open(self.dirpath / "eigenvalues.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        image = save_spectrum_png(spectrum, self.dirpath / f"step_{step:07d}.png", f"game Jacobian, step {step}")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("diagnostics/spectrum", image, global_step=step)


def isolated_estimate(players: tuple[nn.Module, nn.Module], loss: Any, sample: list[tuple[Tensor, Tensor]],
                      **kwargs: Any) -> Spectrum:
    """:func:`game_jacobian_eigenvalues` of the GAN (players, loss) on ``sample``, leaving no trace: the players'
    buffers are restored, the global RNG is forked, the penalty draws from its own generator (seeded by ``seed``)."""
    from lightning_gan.game.gan import GANGame

    buffers = [b.detach().clone() for p in players for b in p.buffers()]
    device = next(players[0].parameters()).device
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.inference_mode(False), torch.enable_grad():
            game = GANGame(*players, loss, penalty_rng=torch.Generator().manual_seed(kwargs.get("seed", 0)))
            return game_jacobian_eigenvalues(game, [(r.clone(), z.clone()) for r, z in sample], **kwargs)
    finally:
        with torch.no_grad():
            for b, saved in zip((b for p in players for b in p.buffers()), buffers):
                b.copy_(saved)


# -- drawing ---------------------------------------------------------------------------------------------------

def plot_spectrum(ax: Any, top: np.ndarray, rotational: np.ndarray, title: str) -> None:
    """Scatter the eigenvalues in the complex plane on a matplotlib axis."""
    ax.axhline(0.0, color="0.7", lw=0.8, zorder=0)
    ax.axvline(0.0, color="0.7", lw=0.8, zorder=0)
    if len(rotational):
        ax.scatter(np.real(rotational), np.imag(rotational), s=70, facecolors="none", edgecolors="tab:orange",
                   label="largest |Im/Re|", zorder=2)
    ax.scatter(np.real(top), np.imag(top), s=18, c="tab:blue", label="largest |λ|", zorder=3)
    ax.set_xlabel("Re λ")
    ax.set_ylabel("Im λ")
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")


def save_spectrum_png(spectrum: Spectrum, path: Path, title: str) -> Tensor:
    """Save the complex-plane scatter (and the Hessians' eigenvalues, when computed); returns it as (3, H, W) in
    [0, 1] for TensorBoard."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if spectrum.hessians is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 4), dpi=100, squeeze=False)
    try:
        plot_spectrum(axes[0, 0], spectrum.top, spectrum.rotational, title)
        if spectrum.hessians is not None:
            ax = axes[0, 1]
            for row, (name, values) in enumerate(zip(("G: ∇²θ L_G", "D: ∇²φ L_D"), spectrum.hessians)):
                ax.scatter(values, np.full(len(values), row), s=18)
            ax.axvline(0.0, color="0.7", lw=0.8)
            ax.set_yticks([0, 1], ["G: ∇²θ L_G", "D: ∇²φ L_D"])
            ax.set_ylim(-0.5, 1.5)
            ax.set_xlabel("eigenvalue")
            ax.set_title("players' own Hessians (top |λ|)")
        return save_figure(fig, path)
    finally:
        plt.close(fig)
