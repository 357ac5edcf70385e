"""GAN losses as two objectives: L_D (minimised by D) and L_G (minimised by G).

D returns one raw score (a logit for the JS losses) per sample, ``Tensor[N]``; a loss
maps real and fake scores to the scalars that :func:`lightning_gan.game.field.gan_field`
differentiates. D-only regularisers (gradient penalty, R1) come via :meth:`GANLoss.penalty`.
Plain classes with typed ``__init__``: jsonargparse builds them from YAML.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "GANLoss", "MinimaxLoss", "NonSaturatingLoss", "WGANLoss", "WGANGPLoss", "HingeLoss",
    "R1Penalty", "GradientPenalty", "clip_weights_", "LOSSES", "get_loss",
]  # fmt: skip


def _check_non_negative(name: str, value: float) -> float:
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"Invalid {name}: {value}; expected >= 0")
    return float(value)


def _input_gradients(discriminator: nn.Module, x: Tensor) -> Tensor:
    """grad_x D(x) per sample, ``[N, -1]``, with a graph to D's parameters, none to x's origin (G).

    Per-sample only if D treats samples independently (no train-mode BatchNorm), as any GP assumes.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        scores = discriminator(x)
        (grad,) = torch.autograd.grad(scores.sum(), x, create_graph=True)
    return grad.flatten(1)


class R1Penalty:
    """R1 = gamma / 2 * E_real ||grad_x D(x)||^2 (Mescheder et al., 2018).

    Penalises D's gradient on the data only, so it never touches G: it keeps a
    zero-sum loss zero-sum. Makes GD converge locally on the Dirac-GAN.

    Args:
        gamma: penalty weight, ``>= 0``.
    """

    def __init__(self, gamma: float) -> None:
        self.gamma = _check_non_negative("gamma", gamma)

    def __call__(
        self,
        discriminator: nn.Module,
        real: Tensor,
        fake: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        grad = _input_gradients(discriminator, real)
        return 0.5 * self.gamma * grad.pow(2).sum(1).mean()

    def __repr__(self) -> str:
        return f"R1Penalty(gamma={self.gamma})"


class GradientPenalty:
    """GP = weight * E_xhat (||grad_x D(xhat)||_2 - 1)^2 (Gulrajani et al., 2017).

    ``xhat = alpha * real + (1 - alpha) * fake`` with one ``alpha ~ U[0, 1]``
    per sample, drawn from ``generator`` (or the global RNG when None) so that
    runs and ranks can be made reproducible. ``fake`` is detached: the penalty
    is D's regulariser and must not leak gradient into G.

    Args:
        weight: penalty weight, ``>= 0``.
    """

    def __init__(self, weight: float = 10.0) -> None:
        self.weight = _check_non_negative("weight", weight)

    def __call__(
        self,
        discriminator: nn.Module,
        real: Tensor,
        fake: Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        if real.shape != fake.shape:
            raise ValueError(
                f"Invalid shapes for the gradient penalty: real {tuple(real.shape)}, "
                f"fake {tuple(fake.shape)}; expected equal shapes"
            )
        shape = (real.shape[0],) + (1,) * (real.dim() - 1)
        # Draw on the RNG's own device, then move: same alphas on CPU and GPU.
        device = generator.device if generator is not None else real.device
        alpha = torch.rand(shape, generator=generator, device=device, dtype=real.dtype)
        alpha = alpha.to(real.device)
        xhat = torch.lerp(fake.detach(), real.detach(), alpha)
        norms = torch.linalg.vector_norm(_input_gradients(discriminator, xhat), dim=1)
        return self.weight * (norms - 1).pow(2).mean()

    def __repr__(self) -> str:
        return f"GradientPenalty(weight={self.weight})"


class GANLoss:
    """Base class: a pair of objectives (L_D, L_G) on D's scores, plus D's penalty.

    Subclasses implement :meth:`discriminator_loss` and :meth:`generator_loss`
    (means over the batch). ``zero_sum`` is True when L_G = -L_D up to terms
    that do not depend on G; :func:`~lightning_gan.game.field.gan_field` then
    gets both players' gradients from one backward pass. Penalties never
    depend on G (they detach ``fake``), so they keep a zero-sum loss zero-sum.

    Args:
        r1_gamma: weight of the R1 penalty on real data added to L_D,
            ``>= 0`` (0 disables it and its extra D forward).
    """

    zero_sum: ClassVar[bool] = False

    def __init__(self, *, r1_gamma: float = 0.0) -> None:
        self.r1_gamma = _check_non_negative("r1_gamma", r1_gamma)
        self._r1 = R1Penalty(self.r1_gamma) if self.r1_gamma > 0 else None

    def discriminator_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        raise NotImplementedError

    def generator_loss(self, d_fake: Tensor) -> Tensor:
        raise NotImplementedError

    def penalty(
        self,
        discriminator: nn.Module,
        real: Tensor,
        fake: Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor | None:
        """D's regulariser, added to L_D; None when there is none (no extra forward).

        It has a graph to D's parameters (``create_graph=True``) and none to G's.
        """
        if self._r1 is None:
            return None
        return self._r1(discriminator, real, fake, generator=generator)

    def _hparams(self) -> dict[str, float]:
        return {"r1_gamma": self.r1_gamma}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self._hparams().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        return self._hparams() == other._hparams()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), tuple(self._hparams().items())))


class MinimaxLoss(GANLoss):
    """The original saturating minimax GAN (Goodfellow et al., 2014); zero-sum.

    With scores s (logits) and softplus(t) = log(1 + e^t):
        L_D = E softplus(-s_real) + E softplus(s_fake)
            = -E log sigmoid(s_real) - E log(1 - sigmoid(s_fake))
        L_G = -E softplus(s_fake) = E log(1 - sigmoid(s_fake))
    dL_G/ds_fake = -sigmoid(s_fake) / N vanishes as s_fake -> -inf: G's
    gradient saturates when D confidently rejects its samples.
    """

    zero_sum: ClassVar[bool] = True

    def discriminator_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()

    def generator_loss(self, d_fake: Tensor) -> Tensor:
        return -F.softplus(d_fake).mean()


class NonSaturatingLoss(GANLoss):
    """Non-saturating GAN: same L_D as minimax, G maximises log D(G(z)).

        L_D = E softplus(-s_real) + E softplus(s_fake)
        L_G = E softplus(-s_fake) = -E log sigmoid(s_fake)
    dL_G/ds_fake = -sigmoid(-s_fake) / N -> -1 / N as s_fake -> -inf: strong
    gradient exactly where minimax saturates; same sign, not zero-sum.
    """

    def discriminator_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()

    def generator_loss(self, d_fake: Tensor) -> Tensor:
        return F.softplus(-d_fake).mean()


class WGANLoss(GANLoss):
    """Wasserstein GAN (Arjovsky et al., 2017); zero-sum.

        L_D = E s_fake - E s_real,   L_G = -E s_fake
    D must be kept Lipschitz: by weight clipping (:func:`clip_weights_`, a
    projection the trainer applies after each parameter move, not a loss term)
    or by a penalty (:class:`WGANGPLoss`).
    """

    zero_sum: ClassVar[bool] = True

    def discriminator_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return d_fake.mean() - d_real.mean()

    def generator_loss(self, d_fake: Tensor) -> Tensor:
        return -d_fake.mean()


class WGANGPLoss(WGANLoss):
    """WGAN with gradient penalty: L_D = E s_fake - E s_real + GP (see :class:`GradientPenalty`).

    Still zero-sum for the field: GP is computed on detached fakes.

    Args:
        gp_weight: weight of the gradient penalty, ``>= 0`` (10 in the paper).
        r1_gamma: optional R1 weight on top, ``>= 0``.
    """

    def __init__(self, gp_weight: float = 10.0, *, r1_gamma: float = 0.0) -> None:
        self.gp_weight = _check_non_negative("gp_weight", gp_weight)
        super().__init__(r1_gamma=r1_gamma)
        self._gp = GradientPenalty(self.gp_weight) if self.gp_weight > 0 else None

    def penalty(
        self,
        discriminator: nn.Module,
        real: Tensor,
        fake: Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor | None:
        r1 = super().penalty(discriminator, real, fake, generator=generator)
        if self._gp is None:
            return r1
        gp = self._gp(discriminator, real, fake, generator=generator)
        return gp if r1 is None else gp + r1

    def _hparams(self) -> dict[str, float]:
        return {"gp_weight": self.gp_weight, **super()._hparams()}


class HingeLoss(GANLoss):
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018, SN-GAN); not zero-sum.

        L_D = E relu(1 - s_real) + E relu(1 + s_fake),   L_G = -E s_fake
    """

    def discriminator_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()

    def generator_loss(self, d_fake: Tensor) -> Tensor:
        return -d_fake.mean()


@torch.no_grad()
def clip_weights_(module: nn.Module, clip: float) -> None:
    """Project ``module``'s trainable parameters onto the box [-clip, clip], in place.

    WGAN's weight clipping is a projection, not a loss term: the trainer calls
    it after every move of D's parameters (extrapolations included), so every
    point where the field is evaluated is feasible. Frozen parameters
    (``requires_grad=False``) never move and are left alone.

    Args:
        module: the discriminator (or any module).
        clip: half-width of the box, ``> 0`` (0.01 in the WGAN paper).
    """
    if not clip > 0:
        raise ValueError(f"Invalid clip: {clip}; expected > 0")
    params = [p for p in module.parameters() if p.requires_grad]
    if params:
        torch._foreach_clamp_min_(params, -clip)
        torch._foreach_clamp_max_(params, clip)


LOSSES: dict[str, type[GANLoss]] = {
    "minimax": MinimaxLoss,
    "non_saturating": NonSaturatingLoss,
    "wgan": WGANLoss,
    "wgan_gp": WGANGPLoss,
    "hinge": HingeLoss,
}


def get_loss(name: str, **kwargs: float) -> GANLoss:
    """Build a loss by short name, e.g. ``get_loss("wgan_gp", gp_weight=10.0)``."""
    if name not in LOSSES:
        raise ValueError(f"Unknown loss: {name!r}; expected one of {sorted(LOSSES)}")
    return LOSSES[name](**kwargs)
