"""The game Jacobian's spectrum (lightning_gan.diagnostics): exact on toys, equal to a dense Jacobian on a small GAN,
and a callback that leaves training bit for bit as it was.

Closed forms. F = (grad_0 L_0, grad_1 L_1), J = dF/dw.

- ``min_x max_y x*y`` (Bilinear1D): F = (y, -x), J = [[0, 1], [-1, 0]], eigenvalues +-i.
- ``min_x max_y x^T A y`` (BilinearGame): J = [[0, A], [-A^T, 0]]; J^2 = -diag(A A^T, A^T A), so the eigenvalues are
  +-i sigma_j for the singular values sigma_j of A, and 0 (|len(x) - len(y)| times).
- Dirac-GAN, minimax loss, data at c (DiracGAN): F = (-psi s, -c sigma(-psi c) + theta s) with s = sigma(psi theta),
  s' = s (1 - s). So J = [[-psi^2 s', -s - psi theta s'], [s + psi theta s', c^2 sigma'(-psi c) + theta^2 s']],
  whose eigenvalues are tr/2 +- sqrt(tr^2/4 - det); at the equilibrium (c, 0) J = [[0, -1/2], [1/2, c^2/2]].
"""

from __future__ import annotations

import cmath
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from gan_fixtures import make_data, make_module, make_trainer, state_of
from torch import nn

from lightning_gan.diagnostics import (
    GameJacobian,
    SpectrumDiagnostics,
    game_jacobian_eigenvalues,
    isolated_estimate,
)
from lightning_gan.game.gan import GANGame
from lightning_gan.game.losses import get_loss
from lightning_gan.game.toys import Bilinear1D, BilinearGame, DiracGAN
from lightning_gan.models import MLPDiscriminator, MLPGenerator

DT = torch.float64
TOY_TOL = 1e-8


def _close(found, expected, tol) -> None:
    found, expected = np.asarray(found, dtype=complex), np.asarray(expected, dtype=complex)
    assert found.shape == expected.shape, (found, expected)
    assert np.max(np.abs(found - expected), initial=0.0) <= tol, (found, expected)


def _sorted(values) -> np.ndarray:
    values = np.asarray(values, dtype=complex)
    return values[np.lexsort((-values.imag, -np.abs(values)))]


# -- toys: closed forms --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 2])
def test_bilinear_1d_eigenvalues_are_plus_minus_i(k):
    spectrum = game_jacobian_eigenvalues(Bilinear1D(0.7, -1.3), None, k=k)
    assert spectrum.method == "dense"  # n = 2 <= k + 1: ARPACK cannot run
    _close(spectrum.top, [1j, -1j][:k], TOY_TOL)
    assert spectrum.summary()["eig_max_imag_ratio"] == math.inf  # purely imaginary: pure rotation


def test_bilinear_game_eigenvalues_are_i_times_the_singular_values_by_arpack():
    A = torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=DT)
    sigma = torch.linalg.svdvals(A).numpy()
    game = BilinearGame(A, torch.randn(6, dtype=DT), torch.randn(6, dtype=DT))
    spectrum = game_jacobian_eigenvalues(game, None, k=4)
    assert spectrum.method == "arpack" and spectrum.converged and spectrum.n == 12
    _close(spectrum.top, [1j * sigma[0], -1j * sigma[0], 1j * sigma[1], -1j * sigma[1]], TOY_TOL)
    assert np.all(np.abs(spectrum.rotational.real) <= TOY_TOL)  # every eigenvalue is rotational here


def test_rectangular_bilinear_game_has_all_its_eigenvalues_when_k_is_n():
    A = torch.randn(3, 5, generator=torch.Generator().manual_seed(1), dtype=DT)
    sigma = torch.linalg.svdvals(A).numpy()
    game = BilinearGame(A, torch.zeros(3, dtype=DT), torch.zeros(5, dtype=DT))
    spectrum = game_jacobian_eigenvalues(game, None, k=8)
    assert spectrum.method == "dense"
    _close(spectrum.top, _sorted(np.concatenate([1j * sigma, -1j * sigma, [0, 0]])), TOY_TOL)


def _dirac_jacobian(theta: float, psi: float, c: float) -> np.ndarray:
    sig = lambda t: 1 / (1 + math.exp(-t))
    s = sig(psi * theta)
    ds = s * (1 - s)
    return np.array([[-psi ** 2 * ds, -s - psi * theta * ds],
                     [s + psi * theta * ds, c ** 2 * sig(-psi * c) * (1 - sig(-psi * c)) + theta ** 2 * ds]])


def _eig2(J: np.ndarray) -> list[complex]:
    tr, det = J[0, 0] + J[1, 1], J[0, 0] * J[1, 1] - J[0, 1] * J[1, 0]
    root = cmath.sqrt(tr * tr / 4 - det)
    return [tr / 2 + root, tr / 2 - root]


@pytest.mark.parametrize("theta, psi, c", [(1.5, 0.0, 1.5), (0.0, 0.0, 0.0), (0.8, -0.6, 1.0), (-2.0, 0.4, -2.0)])
def test_dirac_gan_eigenvalues_and_hessians_match_the_closed_form(theta, psi, c):
    game = DiracGAN(theta, psi, loss="minimax", c=c)
    J = _dirac_jacobian(theta, psi, c)
    if psi == 0 and theta == c:
        np.testing.assert_allclose(J, [[0, -0.5], [0.5, c * c / 2]], atol=1e-15)  # the docstring's equilibrium
    spectrum = game_jacobian_eigenvalues(game, None, k=2, hessians=True)
    _close(spectrum.top, _sorted(_eig2(J)), TOY_TOL)
    # each player's own Hessian is its diagonal entry of J
    assert abs(spectrum.hessians[0][0] - J[0, 0]) <= TOY_TOL and abs(spectrum.hessians[1][0] - J[1, 1]) <= TOY_TOL


def test_dirac_wgan_is_a_pure_rotation():
    spectrum = game_jacobian_eigenvalues(DiracGAN(0.3, 0.2, loss="wgan", c=1.0), None, k=2)
    _close(spectrum.top, [1j, -1j], TOY_TOL)


# -- a small MLP GAN: equal to the dense Jacobian ------------------------------------------------------------------

def _mlp_gan(r1_gamma: float = 0.0):
    torch.manual_seed(0)
    generator = MLPGenerator(latent_dim=2, hidden_dim=6, num_layers=1, activation="tanh").to(DT)
    discriminator = MLPDiscriminator(hidden_dim=6, num_layers=1, activation="tanh").to(DT)
    loss = get_loss("non_saturating", r1_gamma=r1_gamma)
    gen = torch.Generator().manual_seed(3)
    real = torch.randn(16, 2, generator=gen, dtype=DT)
    z = torch.randn(16, 2, generator=gen, dtype=DT)
    return generator, discriminator, loss, real, z


def _dense_reference(generator, discriminator, loss, real, z, r1_gamma: float) -> np.ndarray:
    """J by torch.autograd.functional.jacobian of the flattened field, written here from the losses' formulas."""
    from torch.func import functional_call

    g_named = dict(generator.named_parameters())
    d_named = dict(discriminator.named_parameters())
    shapes = [(name, p.shape) for name, p in (*g_named.items(), *d_named.items())]
    n_g = sum(p.numel() for p in g_named.values())

    def field(flat: torch.Tensor) -> torch.Tensor:
        tensors, offset = [], 0
        for _, shape in shapes:
            size = math.prod(shape)
            tensors.append(flat[offset:offset + size].reshape(shape))
            offset += size
        g_params = dict(zip(g_named, tensors[:len(g_named)]))
        d_params = dict(zip(d_named, tensors[len(g_named):]))
        fake = functional_call(generator, g_params, (z,))
        scores = functional_call(discriminator, d_params, (torch.cat([real, fake]),)).reshape(-1)
        d_real, d_fake = scores[:len(real)], scores[len(real):]
        loss_d = loss.discriminator_loss(d_real, d_fake)
        if r1_gamma:
            x = real.detach().requires_grad_(True)
            (grad_x,) = torch.autograd.grad(functional_call(discriminator, d_params, (x,)).sum(), x, create_graph=True)
            loss_d = loss_d + 0.5 * r1_gamma * grad_x.pow(2).sum(1).mean()
        loss_g = loss.generator_loss(d_fake)
        grads_g = torch.autograd.grad(loss_g, list(g_params.values()), create_graph=True)
        grads_d = torch.autograd.grad(loss_d, list(d_params.values()), create_graph=True)
        return torch.cat([g.reshape(-1) for g in (*grads_g, *grads_d)])

    flat = torch.cat([p.detach().reshape(-1) for p in (*g_named.values(), *d_named.values())])
    J = torch.autograd.functional.jacobian(field, flat).numpy()
    assert J.shape == (len(flat), len(flat)) and n_g < len(flat)
    return J


@pytest.mark.parametrize("r1_gamma", [0.0, 0.5])
def test_mlp_gan_eigenvalues_equal_the_dense_jacobians(r1_gamma):
    generator, discriminator, loss, real, z = _mlp_gan(r1_gamma)
    J = _dense_reference(generator, discriminator, loss, real, z, r1_gamma)
    reference = _sorted(np.linalg.eigvals(J))
    n_g = sum(p.numel() for p in generator.parameters())
    k = next(k for k in range(6, len(reference)) if abs(reference[k - 1]) - abs(reference[k]) > 1e-6)  # no tie cut
    game = GANGame(generator, discriminator, loss)
    spectrum = game_jacobian_eigenvalues(game, [(real, z)], k=k, hessians=True)
    assert spectrum.method == "arpack" and spectrum.converged
    _close(spectrum.top, reference[:k], 1e-6)
    # the rotational set: eigenvalues of J, and the largest imaginary part among them is J's
    for value in spectrum.rotational:
        assert np.min(np.abs(reference - value)) <= 1e-6
    assert abs(np.max(np.abs(spectrum.rotational.imag)) - np.max(np.abs(reference.imag))) <= 1e-6
    # the players' own Hessians are J's diagonal blocks
    for player, block in enumerate((J[:n_g, :n_g], J[n_g:, n_g:])):
        np.testing.assert_allclose(block, block.T, atol=1e-10)
        values = np.linalg.eigvalsh(block)
        top = values[np.argsort(-np.abs(values))][:k]
        np.testing.assert_allclose(spectrum.hessians[player], top, rtol=0, atol=1e-6)
    # the matrix-free J is the dense one, column for column
    np.testing.assert_allclose(GameJacobian(game, [(real, z)]).dense(), J, rtol=0, atol=1e-10)


def test_request_checks_name_the_field():
    with pytest.raises(ValueError, match=r"^Invalid k: 3; the game has only 2 parameters"):
        game_jacobian_eigenvalues(Bilinear1D(), None, k=3)
    with pytest.raises(ValueError, match=r"^Invalid k: 0;"):
        game_jacobian_eigenvalues(Bilinear1D(), None, k=0)
    with pytest.raises(ValueError, match=r"^Invalid diagnostics.every_n_steps: 0;"):
        SpectrumDiagnostics(every_n_steps=0)
    with pytest.raises(ValueError, match=r"^Invalid diagnostics.k: 0;"):
        SpectrumDiagnostics(every_n_steps=1, k=0)


# -- side effects --------------------------------------------------------------------------------------------------

class _BNGenerator(nn.Module):
    def __init__(self, latent_dim: int = 4) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.net = nn.Sequential(nn.Linear(latent_dim, 16), nn.BatchNorm1d(16), nn.SiLU(), nn.Linear(16, 2))

    def forward(self, z):
        return self.net(z)


class _BNDiscriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.BatchNorm1d(16), nn.SiLU(), nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x).reshape(-1)


def test_an_estimate_leaves_parameters_grads_buffers_and_rngs_alone():
    torch.manual_seed(0)
    players = (_BNGenerator(), _BNDiscriminator())
    before = [t.detach().clone() for p in players for t in (*p.parameters(), *p.buffers())]
    rng = torch.get_rng_state()
    gen = torch.Generator().manual_seed(0)
    sample = [(torch.randn(8, 2, generator=gen), torch.randn(8, 4, generator=gen))]
    spectrum = isolated_estimate(players, get_loss("non_saturating"), sample, k=3, hessians=True)
    assert spectrum.top.shape == (3,) and np.all(np.isfinite(spectrum.top))
    after = [t.detach() for p in players for t in (*p.parameters(), *p.buffers())]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert all(p.grad is None for player in players for p in player.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def _bn_module(**kwargs):
    from lightning_gan.module import GANModule
    from lightning_gan.optim.factory import OptimizerConfig

    torch.manual_seed(0)
    return GANModule(_BNGenerator(), _BNDiscriminator(), scheme="extragradient", loss="non_saturating",
                     g_optimizer=OptimizerConfig(rule="adam", lr=1e-3, momentum=0.5, beta2=0.9),
                     d_optimizer=OptimizerConfig(rule="adam", lr=1e-3, momentum=0.5, beta2=0.9), **kwargs)


def test_training_with_the_callback_is_bit_identical_to_training_without(tmp_path):
    steps = 5
    plain = _bn_module()
    make_trainer(steps, default_root_dir=tmp_path / "plain").fit(plain, make_data())
    watched, callback = _bn_module(), SpectrumDiagnostics(every_n_steps=2, k=3, hessians=True)
    make_trainer(steps, default_root_dir=tmp_path / "watched", callbacks=[callback]).fit(watched, make_data())
    assert [r["step"] for r in callback.history] == [0, 2, 4, 5]
    a, b = state_of(plain), state_of(watched)
    assert a.keys() == b.keys() and any("running_mean" in key for key in a)
    assert all(torch.equal(a[key], b[key]) for key in a), [key for key in a if not torch.equal(a[key], b[key])]
    assert torch.equal(plain.latents.generator.get_state(), watched.latents.generator.get_state())


def test_a_penalty_through_a_batchnorm_discriminator_is_skipped_with_a_warning(tmp_path):
    """J v would need batch_norm's third derivative (R1's double backward through D, then one more)."""
    callback = SpectrumDiagnostics(every_n_steps=1, k=2)
    with pytest.warns(UserWarning, match="batch_norm does not support 3rd"):
        make_trainer(2, default_root_dir=tmp_path, callbacks=[callback]).fit(_bn_module(r1_gamma=0.1), make_data())
    assert callback.history == []


# -- the callback's files and logs ---------------------------------------------------------------------------------

def test_callback_writes_pngs_jsonl_and_logs(tmp_path):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers = [TensorBoardLogger(tmp_path, name="", version=0), CSVLogger(tmp_path, name="", version=0)]
    callback = SpectrumDiagnostics(every_n_steps=3, k=4)
    make_trainer(4, logger=loggers, callbacks=[callback]).fit(make_module(), make_data())
    folder = Path(tmp_path) / "version_0" / "spectrum"
    assert sorted(p.name for p in folder.glob("*.png")) == ["step_0000000.png", "step_0000003.png",
                                                           "step_0000004.png"]
    records = [json.loads(line) for line in (folder / "eigenvalues.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 3, 4]
    assert all(len(r["top"]) == 4 and r["method"] == "arpack" for r in records)
    metrics = (Path(tmp_path) / "version_0" / "metrics.csv").read_text()
    for name in ("eig_max_abs", "eig_max_real", "eig_min_real", "eig_max_imag_ratio"):
        assert f"diagnostics/{name}" in metrics
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(tmp_path) / "version_0"), size_guidance={"images": 0})
    events.Reload()
    assert len(events.Images("diagnostics/spectrum")) == 3


def test_a_resumed_run_estimates_on_the_same_batch_and_skips_the_step_it_had(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    uninterrupted = SpectrumDiagnostics(every_n_steps=2, k=3)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1, save_last=False)
    make_trainer(4, default_root_dir=tmp_path / "a", callbacks=[uninterrupted, checkpoint],
                 enable_checkpointing=True).fit(make_module(), make_data())
    (saved,) = sorted(tmp_path.glob("*step=2.ckpt"))
    resumed = SpectrumDiagnostics(every_n_steps=2, k=3)
    make_trainer(4, default_root_dir=tmp_path / "b", callbacks=[resumed]).fit(make_module(init_seed=5), make_data(),
                                                                              ckpt_path=saved)
    assert [r["step"] for r in uninterrupted.history] == [0, 2, 4]
    assert [r["step"] for r in resumed.history] == [4]  # step 2 was estimated before the checkpoint
    assert resumed.history[0]["top"] == uninterrupted.history[-1]["top"]  # same point, same batch, same z


def test_callback_off_by_default_does_nothing(tmp_path):
    callback = SpectrumDiagnostics()
    make_trainer(2, default_root_dir=tmp_path, callbacks=[callback]).fit(make_module(), make_data())
    assert callback.history == [] and not list(Path(tmp_path).rglob("spectrum"))


# -- the command line ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, field", [
    ("--diagnostics.every_n_steps=0", "diagnostics.every_n_steps"),
    ("--diagnostics.k=0", "diagnostics.k"),
    ("--diagnostics.k=100000000", "diagnostics.k"),  # more than the quickstart's parameters
])
def test_bad_diagnostics_through_the_cli_exit_2(override, field, tmp_path, capsys, cli_process_state):
    from lightning_gan.cli import main

    extra = ["--diagnostics.every_n_steps=10"] if "every_n_steps" not in override else []
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", "configs/quickstart.yaml", f"--trainer.default_root_dir={tmp_path}", *extra,
              override])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("lightning-gan: error:")]
    assert len(errors) == 1 and field in errors[0], err
    assert not list(Path(tmp_path).rglob("version_*"))  # refused before anything is written


def test_bench_spectrum_cost_smoke():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "spectrum_cost.py"
    spec = importlib.util.spec_from_file_location("spectrum_cost", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        row = module.main(["--quick", "--threads", "1", "--k", "3", "--batch-size", "8"])
    finally:
        torch.set_num_threads(threads)
    assert row["converged"] and row["matvecs"] > 0 and row["wall_s"] >= 0


def _spectrum_on_two_ranks(rank, root):
    """Both ranks estimate at every second iteration (no collective, same batch); rank 0 writes."""
    callback = SpectrumDiagnostics(every_n_steps=2, k=3)
    module = make_module("simultaneous", init_seed=rank, ema_decay=0.9)
    make_trainer(4, devices=2, strategy="game_ddp", default_root_dir=root, callbacks=[callback]).fit(
        module, make_data(batch_size=8))
    return {"state": state_of(module), "history": callback.history}


@pytest.mark.slow
def test_every_rank_estimates_and_rank_0_alone_writes(tmp_path):
    from ddp_harness import run_distributed

    rank0, rank1 = run_distributed(_spectrum_on_two_ranks, 2, str(tmp_path), timeout=600)
    assert [r["step"] for r in rank0["history"]] == [0, 2, 4] and rank1["history"] == []
    assert all(torch.equal(rank0["state"][key], rank1["state"][key]) for key in rank0["state"])
    assert len(list(tmp_path.rglob("spectrum/step_*.png"))) == 3
