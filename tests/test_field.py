"""Specification of the game vector field F(w; xi) = (grad_theta L_G, grad_phi L_D)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lightning_gan.game.field import FieldValue, flat_norm, gan_field, trainable_parameters
from lightning_gan.game.losses import (
    LOSSES,
    GANLoss,
    HingeLoss,
    MinimaxLoss,
    NonSaturatingLoss,
    WGANGPLoss,
    WGANLoss,
)

Z_DIM, X_DIM, BATCH = 2, 3, 6


def _players(kind: str) -> tuple[nn.Module, nn.Module]:
    """Tiny G and D. "bn" puts BatchNorm in both, and D returns [N, 1] (accepted)."""
    torch.manual_seed(0)
    if kind == "mlp":
        g = nn.Sequential(nn.Linear(Z_DIM, 8), nn.ReLU(), nn.Linear(8, X_DIM))
        d = nn.Sequential(nn.Linear(X_DIM, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1), nn.Flatten(0))
        g.register_parameter("unused", nn.Parameter(torch.ones(2)))  # gets a zero gradient
        d[0].bias.requires_grad_(False)  # frozen: not part of F
    else:
        g = nn.Sequential(nn.Linear(Z_DIM, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, X_DIM))
        d = nn.Sequential(
            nn.Linear(X_DIM, 8), nn.BatchNorm1d(8), nn.LeakyReLU(0.2), nn.Linear(8, 1)
        )
        if kind == "bn_eval":
            for m in (*g, *d):  # non-trivial running statistics, then freeze them
                if isinstance(m, nn.BatchNorm1d):
                    m.running_mean.uniform_(-1, 1)
                    m.running_var.uniform_(0.5, 2)
            g.eval()
            d.eval()
    return g, d


def _sample() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, X_DIM, generator=gen) + 1, torch.randn(BATCH, Z_DIM, generator=gen)


def _rng() -> torch.Generator:
    return torch.Generator().manual_seed(123)


def reference_field(g, d, loss: GANLoss, real, z) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The textbook definition, with two plain ``.backward()`` passes on deep copies.

    D's gradient: fake detached, L_D (+ penalty) backward. G's gradient: D frozen,
    L_G backward through D. Both forwards of D see cat(real, fake), as gan_field's.
    """
    n = real.shape[0]

    g1, d1 = copy.deepcopy(g), copy.deepcopy(d)
    fake = g1(z).detach()
    scores = d1(torch.cat([real, fake])).reshape(-1)
    l_d = loss.discriminator_loss(scores[:n], scores[n:])
    penalty = loss.penalty(d1, real, fake, generator=_rng())
    (l_d if penalty is None else l_d + penalty).backward()
    d_grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in trainable_parameters(d1)]

    g2, d2 = copy.deepcopy(g), copy.deepcopy(d)
    d2.requires_grad_(False)
    scores = d2(torch.cat([real, g2(z)])).reshape(-1)
    loss.generator_loss(scores[n:]).backward()
    g_grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in trainable_parameters(g2)]
    return g_grads, d_grads


ALL_LOSSES = [
    *(cls() for cls in LOSSES.values()),
    NonSaturatingLoss(r1_gamma=2.0),
    WGANLoss(r1_gamma=1.0),
]


# The fast path only where it is allowed: zero-sum loss, no batch statistics in D.
CASES = [
    pytest.param(loss, kind, fast, id=f"{loss!r}-{kind}-{'fast' if fast else 'general'}")
    for loss in ALL_LOSSES
    for kind in ("mlp", "bn_train", "bn_eval")
    for fast in (False, True)
    if not fast or (loss.zero_sum and kind != "bn_train")
]


@pytest.mark.parametrize(("loss", "kind", "fast_zero_sum"), CASES)
def test_field_matches_textbook_reference(loss: GANLoss, kind: str, fast_zero_sum: bool) -> None:
    g, d = _players(kind)
    real, z = _sample()
    ref_g, ref_d = reference_field(g, d, loss, real, z)
    f = gan_field(g, d, loss, real, z, generator_rng=_rng(), fast_zero_sum=fast_zero_sum)
    assert len(f.generator_grads) == len(trainable_parameters(g))
    assert len(f.discriminator_grads) == len(trainable_parameters(d))
    for got, want in zip(f.grads, ref_g + ref_d):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    if kind == "mlp":
        names = [n for n, p in g.named_parameters() if p.requires_grad]
        assert torch.equal(f.generator_grads[names.index("unused")], torch.zeros(2))


@pytest.mark.parametrize("kind", ["mlp", "bn_eval"])
@pytest.mark.parametrize(
    "loss", [MinimaxLoss(), WGANLoss(), WGANGPLoss(), MinimaxLoss(r1_gamma=1.0)], ids=repr
)
def test_zero_sum_fast_path_equals_general_path(loss: GANLoss, kind: str) -> None:
    g, d = _players(kind)
    real, z = _sample()
    fast = gan_field(g, d, loss, real, z, generator_rng=_rng(), fast_zero_sum=True)
    g, d = _players(kind)  # fresh BatchNorm buffers
    slow = gan_field(g, d, loss, real, z, generator_rng=_rng(), fast_zero_sum=False)
    for a, b in zip(fast.grads, slow.grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert torch.equal(fast.discriminator_loss, slow.discriminator_loss)
    assert torch.equal(fast.generator_loss, slow.generator_loss)


def test_fast_path_is_refused_where_inexact() -> None:
    """With train-mode BatchNorm in D the real scores depend on the fakes, so
    grad_theta L_D != -grad_theta L_G even for a zero-sum loss: the shortcut is wrong.
    """
    g, d = _players("bn_train")
    real, z = _sample()
    loss = MinimaxLoss()
    ref_g, _ = reference_field(g, d, loss, real, z)
    g1, d1 = copy.deepcopy(g), copy.deepcopy(d)
    scores = d1(torch.cat([real, g1(z)])).reshape(-1)
    l_d = loss.discriminator_loss(scores[:BATCH], scores[BATCH:])
    shortcut = [-gr for gr in torch.autograd.grad(l_d, trainable_parameters(g1))]
    assert not all(torch.allclose(a, b, atol=1e-3) for a, b in zip(shortcut, ref_g))
    with pytest.raises(ValueError, match=r"BatchNorm on batch statistics in the discriminator \(1\)"):
        gan_field(g, d, loss, real, z, fast_zero_sum=True)
    no_stats = nn.Sequential(
        nn.Linear(X_DIM, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 1)
    ).eval()  # still batch statistics in eval mode
    with pytest.raises(ValueError, match=r"BatchNorm on batch statistics"):
        gan_field(g, no_stats, loss, real, z, fast_zero_sum=True)
    with pytest.raises(ValueError, match=r"Invalid fast_zero_sum=True for HingeLoss"):
        gan_field(*_players("mlp"), HingeLoss(), real, z, fast_zero_sum=True)


@pytest.mark.parametrize("fast_zero_sum", [True, False])
def test_field_leaves_parameters_and_grads_untouched(fast_zero_sum: bool) -> None:
    g, d = _players("bn_eval" if fast_zero_sum else "bn_train")
    params = [*g.parameters(), *d.parameters()]
    for i, p in enumerate(params):  # half with stale .grad, half with None
        p.grad = torch.randn_like(p) if i % 2 else None
    before = [(p.detach().clone(), None if p.grad is None else p.grad.clone()) for p in params]
    real, z = _sample()
    gan_field(g, d, WGANGPLoss(r1_gamma=1.0), real, z, fast_zero_sum=fast_zero_sum)
    for p, (value, grad) in zip(params, before):
        assert torch.equal(p, value)
        assert (p.grad is None) if grad is None else torch.equal(p.grad, grad)


def test_one_forward_of_each_player_with_d_on_the_joint_batch() -> None:
    g, d = _players("bn_train")
    calls: dict[str, list[int]] = {"g": [], "d": []}
    g.register_forward_hook(lambda m, i, o: calls["g"].append(i[0].shape[0]))
    d.register_forward_hook(lambda m, i, o: calls["d"].append(i[0].shape[0]))
    real, z = _sample()
    gan_field(g, d, HingeLoss(), real, z)
    assert calls == {"g": [BATCH], "d": [2 * BATCH]}
    assert d[1].num_batches_tracked.item() == 1 and g[1].num_batches_tracked.item() == 1


def test_field_values_for_logging_and_norm() -> None:
    g, d = _players("mlp")
    real, z = _sample()
    with torch.no_grad():  # F is still computed: gan_field enables grad itself
        f = gan_field(g, d, NonSaturatingLoss(), real, z)
    scores = d(torch.cat([real, g(z)])).detach()
    assert torch.equal(f.d_real, scores[:BATCH].mean())
    assert torch.equal(f.d_fake, scores[BATCH:].mean())
    assert f.penalty is None and not f.generator_loss.requires_grad
    flat = torch.cat([t.flatten() for t in f.grads])
    torch.testing.assert_close(f.norm(), flat.norm())


def test_flat_norm() -> None:
    assert flat_norm([torch.tensor([3.0]), torch.tensor([[4.0, 0.0]])]).item() == 5.0
    assert flat_norm([]).item() == 0.0


def test_bad_player_outputs_raise() -> None:
    g, d = _players("mlp")
    real, z = _sample()
    with pytest.raises(ValueError, match=r"Invalid discriminator output shape: \(12, 3\)"):
        gan_field(g, nn.Identity(), MinimaxLoss(), real, z)
    with pytest.raises(ValueError, match=r"Invalid generator output shape: \(6, 2\)"):
        gan_field(nn.Identity(), d, MinimaxLoss(), real, z)


# -- Dirac-GAN (Mescheder et al., 2018) ------------------------------------------------------


class DiracG(nn.Module):
    """G(z) = theta for every z: the generator's distribution is a Dirac at theta."""

    def __init__(self, theta: float) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(theta, dtype=torch.float64))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.theta.expand(z.shape[0], 1)


class LinearD(nn.Module):
    """D(x) = psi * x."""

    def __init__(self, psi: float) -> None:
        super().__init__()
        self.psi = nn.Parameter(torch.tensor(psi, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.psi * x[:, 0]


def _dirac_field(theta: float, psi: float, c: float, loss: GANLoss) -> tuple[float, float]:
    real = torch.full((4, 1), c, dtype=torch.float64)
    f = gan_field(DiracG(theta), LinearD(psi), loss, real, torch.zeros(4, 1))
    return f.generator_grads[0].item(), f.discriminator_grads[0].item()


@pytest.mark.parametrize("c", [0.0, 1.5])
@pytest.mark.parametrize(("theta", "psi"), [(0.7, -1.3), (-2.0, 0.4), (0.0, 0.0)])
def test_dirac_gan_field_closed_form(theta: float, psi: float, c: float) -> None:
    """Data at c, G a Dirac at theta, D(x) = psi x, sigma the logistic function.

    Minimax: L_D = softplus(-psi c) + softplus(psi theta), L_G = -softplus(psi theta), so
        F_theta = dL_G/dtheta = -psi sigma(psi theta)
        F_psi   = dL_D/dpsi   = -c sigma(-psi c) + theta sigma(psi theta).
    Non-saturating: L_G = softplus(-psi theta), so F_theta = -psi sigma(-psi theta), same F_psi.
    """
    sig = lambda t: 1.0 / (1.0 + math.exp(-t))  # noqa: E731
    f_psi = -c * sig(-psi * c) + theta * sig(psi * theta)
    mm = _dirac_field(theta, psi, c, MinimaxLoss())
    ns = _dirac_field(theta, psi, c, NonSaturatingLoss())
    assert mm == pytest.approx((-psi * sig(psi * theta), f_psi), abs=1e-12)
    assert ns == pytest.approx((-psi * sig(-psi * theta), f_psi), abs=1e-12)


def test_dirac_gan_jacobian_at_equilibrium_is_a_rotation() -> None:
    """With c = 0, (theta, psi) = (0, 0) is the equilibrium and the Jacobian of F there is
    [[0, -1/2], [1/2, 0]]: eigenvalues +-i/2, purely imaginary, so simultaneous GD spirals out.
    """
    h = 1e-5
    loss = MinimaxLoss()
    assert _dirac_field(0.0, 0.0, 0.0, loss) == (0.0, 0.0)
    cols = []
    for dt, dp in ((h, 0.0), (0.0, h)):
        plus, minus = _dirac_field(dt, dp, 0.0, loss), _dirac_field(-dt, -dp, 0.0, loss)
        cols.append([(a - b) / (2 * h) for a, b in zip(plus, minus)])
    jac = [[cols[0][0], cols[1][0]], [cols[0][1], cols[1][1]]]
    zero = pytest.approx(0.0, abs=1e-9)
    assert jac == [[zero, pytest.approx(-0.5)], [pytest.approx(0.5), zero]]


def test_field_value_is_frozen() -> None:
    f = FieldValue([], [], torch.zeros(()), torch.zeros(()), torch.zeros(()), torch.zeros(()))
    with pytest.raises(AttributeError):
        f.penalty = torch.ones(())  # type: ignore[misc]


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("loss_name", ["non_saturating", "wgan_gp"])
def test_one_player_evaluation_gives_that_players_part_of_the_field(batch_norm, loss_name):
    """Alternating steps ask for one player's gradient; it must equal that part of the full field."""
    from lightning_gan.game.losses import get_loss

    torch.manual_seed(0)
    generator = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 4))
    layers = [nn.Linear(4, 8)] + ([nn.BatchNorm1d(8)] if batch_norm else []) + [nn.Tanh(), nn.Linear(8, 1)]
    discriminator = nn.Sequential(*layers)
    loss = get_loss(loss_name)
    real, z = torch.randn(6, 4), torch.randn(6, 3)

    def field(players):
        return gan_field(generator, discriminator, loss, real, z, players=players,
                         generator_rng=torch.Generator().manual_seed(1))

    both, g_only, d_only = field((0, 1)), field((0,)), field((1,))
    assert d_only.generator_grads == [] and g_only.discriminator_grads == []
    for a, b in zip(g_only.generator_grads, both.generator_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(d_only.discriminator_grads, both.discriminator_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert g_only.discriminator_loss is None and d_only.generator_loss is None


def test_invalid_players_are_named():
    generator, discriminator = nn.Linear(3, 4), nn.Linear(4, 1)
    with pytest.raises(ValueError, match=r"Invalid players: \(\)"):
        gan_field(generator, discriminator, NonSaturatingLoss(), torch.randn(2, 4), torch.randn(2, 3), players=())
