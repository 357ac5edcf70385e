"""GAN losses as two objectives: L_D (minimised by D) and L_G (minimised by G).

D returns one raw score (a logit for the JS losses) per sample, ``Tensor[N]``; a loss
maps real and fake scores to the scalars that :func:`lightning_gan.game.field.gan_field`
differentiates. D-only regularisers (gradient penalty, R1, R2) come via :meth:`GANLoss.penalty`.
A relativistic loss (``rpgan``) pairs real and fake samples one to one, and its L_G needs the
real scores too (``relativistic = True``). A feature critic's loss (``mmd``, ``feature_critic = True``)
takes D's outputs as features ``Tensor[N, d]`` of the global batch (gathered across ranks).
Plain classes with typed ``__init__``: jsonargparse builds them from YAML.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_gan import distributed

__all__ = [
    "GANLoss", "MinimaxLoss", "NonSaturatingLoss", "WGANLoss", "WGANGPLoss", "HingeLoss", "RpGANLoss",
    "R1Penalty", "R2Penalty", "GradientPenalty", "clip_weights_", "LOSSES", "RELATIVISTIC_LOSSES", "get_loss",
    "MMDLoss", "FEATURE_LOSSES", "mixture_kernel", "mmd2_unbiased",
]  # fmt: skip


def _check_non_negative(name: str, value: float) -> float:
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"Invalid {name}: {value}; expected >= 0")
    return float(value)


def full_precision(t: Tensor) -> Tensor:
    """``t`` in float32 if autocast made it half (bfloat16 / float16), else ``t`` itself (float64 toys stay float64):
    losses and penalties are computed from D's outputs in full precision."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _input_gradients(discriminator: nn.Module, x: Tensor) -> Tensor:
    """grad_x D(x) per sample, ``[N, -1]``, with a graph to D's parameters, none to x's origin (G).

    Per-sample only if D treats samples independently (no train-mode BatchNorm), as any GP assumes.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        scores = full_precision(discriminator(x))
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


class R2Penalty(R1Penalty):
    """R2 = gamma / 2 * E_fake ||grad_x D(G(z))||^2 (Mescheder et al., 2018; with R1 in R3GAN).

    The same zero-centred penalty on the generated samples, detached: D's
    regulariser only, it never touches G.

    Args:
        gamma: penalty weight, ``>= 0``.
    """

    def __call__(
        self,
        discriminator: nn.Module,
        real: Tensor,
        fake: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        if fake is None:
            raise ValueError("Invalid fake: None; R2 is computed on the generated samples")
        return super().__call__(discriminator, fake, generator=generator)

    def __repr__(self) -> str:
        return f"R2Penalty(gamma={self.gamma})"


def _r1_plus_r2(discriminator: nn.Module, real: Tensor, fake: Tensor, r1_gamma: float, r2_gamma: float) -> Tensor:
    """R1 + R2 from one D forward and one double backward on cat(real, fake), not two of each.

    Exact when D scores samples independently; a train-mode BatchNorm in D then normalises real
    and fake together, as in the field's own forward.
    """
    squared = _input_gradients(discriminator, torch.cat([real, fake])).pow(2).sum(1)
    n = real.shape[0]
    return 0.5 * r1_gamma * squared[:n].mean() + 0.5 * r2_gamma * squared[n:].mean()


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
        xhat = torch.lerp(fake.detach().to(real.dtype), real.detach(), alpha)  # G's output is half under autocast
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

    ``relativistic`` losses pair the i-th real with the i-th fake sample, and their
    :meth:`generator_loss` takes the real scores as well: ``generator_loss(d_fake, d_real)``.
    ``feature_critic`` losses (:class:`MMDLoss`) get D's features of the global batch in place of
    scores, from :meth:`MMDLoss.split_features`; their L_G takes the real features too.

    Args:
        r1_gamma: weight of the R1 penalty on real data added to L_D,
            ``>= 0`` (0 disables it and its extra D forward).
        r2_gamma: weight of the R2 penalty on (detached) generated data added
            to L_D, ``>= 0`` (0 disables it). With both, one extra D forward
            on cat(real, fake) serves the two.
    """

    zero_sum: ClassVar[bool] = False
    relativistic: ClassVar[bool] = False
    feature_critic: ClassVar[bool] = False  # D outputs features [N, d]; see MMDLoss

    def __init__(self, *, r1_gamma: float = 0.0, r2_gamma: float = 0.0) -> None:
        self.r1_gamma = _check_non_negative("r1_gamma", r1_gamma)
        self.r2_gamma = _check_non_negative("r2_gamma", r2_gamma)
        self._r1 = R1Penalty(self.r1_gamma) if self.r1_gamma > 0 else None
        self._r2 = R2Penalty(self.r2_gamma) if self.r2_gamma > 0 else None

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
        if self._r1 is not None and self._r2 is not None:
            return _r1_plus_r2(discriminator, real, fake, self.r1_gamma, self.r2_gamma)
        if self._r1 is not None:
            return self._r1(discriminator, real, fake, generator=generator)
        if self._r2 is not None:
            return self._r2(discriminator, real, fake, generator=generator)
        return None

    def _hparams(self) -> dict[str, float]:
        # r2_gamma only when set: the reprs of R2-free losses (kept in checkpoints' hparams) stay as they were.
        return {"r1_gamma": self.r1_gamma, **({"r2_gamma": self.r2_gamma} if self.r2_gamma else {})}

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
        r2_gamma: optional R2 weight on top, ``>= 0``.
    """

    def __init__(self, gp_weight: float = 10.0, *, r1_gamma: float = 0.0, r2_gamma: float = 0.0) -> None:
        self.gp_weight = _check_non_negative("gp_weight", gp_weight)
        super().__init__(r1_gamma=r1_gamma, r2_gamma=r2_gamma)
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


def _check_paired(d_real: Tensor, d_fake: Tensor) -> None:
    if d_real.shape != d_fake.shape:
        raise ValueError(
            f"Invalid batch for loss rpgan: {d_real.numel()} real and {d_fake.numel()} fake samples; "
            "relativistic pairing needs one fake per real sample (latent_bank_factor: null or 1)"
        )


class RpGANLoss(GANLoss):
    """Relativistic pairing GAN (Jolicoeur-Martineau 2019), the loss of R3GAN (Huang et al., NeurIPS 2024).

    Each real sample is paired with the fake drawn beside it (same index in the micro-batch):
        L_D = E softplus(-(s_real - s_fake)),   L_G = E softplus(-(s_fake - s_real))
    as in R3GAN's ``R3GAN/Trainer.py``. For G's parameters s_real is a constant (it
    depends on G only through a train-mode BatchNorm in D, whose coupling the field keeps).
    Not zero-sum: L_G = L_D + E (s_real - s_fake). Huang et al. prove local convergence with
    R1 + R2 (``r1_gamma = r2_gamma`` in R3GAN); D's bias cancels in both losses.
    """

    relativistic: ClassVar[bool] = True

    def discriminator_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        _check_paired(d_real, d_fake)
        return F.softplus(-(d_real - d_fake)).mean()

    def generator_loss(self, d_fake: Tensor, d_real: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if d_real is None:
            raise ValueError("Invalid call: rpgan's generator_loss needs the paired real scores, d_real")
        _check_paired(d_real, d_fake)
        return F.softplus(-(d_fake - d_real)).mean()


#: Default scales of the kernel mixtures: the rational-quadratic alphas of Binkowski et al.'s experiments (2018) and the
#: Gaussian bandwidths of their code's ``_mix_rbf_kernel``.
MMD_KERNELS: dict[str, tuple[float, ...]] = {
    "rq": (0.2, 0.5, 1.0, 2.0, 5.0),
    "gaussian": (2.0, 5.0, 10.0, 20.0, 40.0, 80.0),
}


def mixture_kernel(x: Tensor, y: Tensor, kernel: str = "rq", scales: Sequence[float] | None = None) -> Tensor:
    """The kernel matrix ``K[i, j] = sum_s k_s(x_i, y_j)`` of a mixture with unit weights, ``[len(x), len(y)]``.

    ``rq``: ``k_a(x, y) = (1 + |x - y|^2 / (2 a))^(-a)`` for the alphas ``a`` (rational quadratic);
    ``gaussian``: ``k_s(x, y) = exp(-|x - y|^2 / (2 s^2))`` for the bandwidths ``s``. Squared distances as in the
    reference's ``_mix_rq_kernel``: ``|x|^2 + |y|^2 - 2 x.y`` clamped at 0, and ``exp(-a log(1 + d / (2 a)))``.
    """
    scales = MMD_KERNELS[kernel] if scales is None else tuple(scales)
    dot = x @ y.transpose(0, 1)
    d2 = (x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0) - 2 * dot).clamp_min(0)
    if kernel == "rq":
        # log(1 + u) as the reference; this torch's CPU log1p is ~4x slower than log
        return sum(torch.exp(-a * torch.log(1 + d2 / (2 * a))) for a in scales)  # type: ignore[return-value]
    return sum(torch.exp(-d2 / (2 * s * s)) for s in scales)  # type: ignore[return-value]


def _off_diagonal_sum(k: Tensor) -> Tensor:
    return k.masked_fill(torch.eye(k.shape[0], dtype=torch.bool, device=k.device), 0).sum()


def mmd2_unbiased(x: Tensor, y: Tensor, kernel: str = "rq", scales: Sequence[float] | None = None) -> Tensor:
    """The unbiased estimator of MMD^2 between the samples ``x`` ([m, d]) and ``y`` ([n, d]) (Gretton et al. 2012):

        MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
                  - 2 sum_{i, j} k(x_i, y_j) / (m n),

    the reference's ``mmd2(K, biased=False)`` (there the diagonal is subtracted as the constant sum of the weights;
    here it is left out of the sums). Needs m, n >= 2.
    """
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"Invalid batch for loss mmd: {m} real and {n} fake samples; the unbiased MMD^2 needs "
                         "at least 2 of each")
    return (_off_diagonal_sum(mixture_kernel(x, x, kernel, scales)) / (m * (m - 1))
            + _off_diagonal_sum(mixture_kernel(y, y, kernel, scales)) / (n * (n - 1))
            - 2 * mixture_kernel(x, y, kernel, scales).sum() / (m * n))


class MMDLoss(GANLoss):
    """MMD GAN (Li et al. 2017; Binkowski, Sutherland, Arbel & Gretton, ICLR 2018, "Demystifying MMD GANs").

    D is a feature map h: x -> R^d (``feature_critic = True``: it outputs ``[N, d]``, e.g. ``features: 16`` on the
    MLP/DCGAN discriminators). With a fixed kernel mixture k on the features,

        L_G = MMD^2_u(h(real), h(fake)),   L_D = -MMD^2_u(h(real), h(fake)) + gp_weight * GP,

    zero-sum up to the penalty. GP is the reference's penalty on the witness function of the batch,
    ``f(x) = mean_j k(h(x), h(real_j)) - mean_j k(h(x), h(fake_j))``:
    ``GP = mean_i (sqrt(|grad_x f(xhat_i)|^2 + 1e-5) - 1)^2`` at ``xhat_i = real_i + alpha_i (fake_i - real_i)``,
    ``alpha_i ~ U[0, 1]``; weight 1 as in the reference's scripts.

    Followed: ``mbinkowski/MMD-GAN`` ``gan/core/mmd.py`` (``_mix_rq_kernel``, ``_mix_rbf_kernel``, ``_mmd2``),
    ``gan/core/model.py`` (``set_loss``: g_loss = mmd2(kernel(G, images)), d_loss = -g_loss; ``add_gradient_penalty``),
    ``mnist.sh`` / ``cifar10.sh`` (``--gradient_penalty=1.``). Deviations: the default RQ alphas are the paper's
    {0.2, 0.5, 1, 2, 5} (the code's default is {0.1, 1, 10} and its scripts add a linear kernel, ``mix_rq_1dot``);
    the GP norm is the per-sample norm over all input dimensions (the code's ``safer_norm(gradients, axis=1)`` on
    NHWC images sums over rows only; on flat inputs the two agree); no L2 penalty on D's features and no
    3-sample-test learning-rate schedule.

    Global batch: :meth:`split_features` all-gathers D's outputs across ranks (differentiably), so every rank
    computes the same MMD^2_u of the *global* batch, in the order of a one-rank run (rank r holds rows r::W). Rank r's
    backward gives ``J_r^T sum_s dl_s/dH_r`` (the gather's backward sums the cotangents of r's rows over ranks), where
    ``l_s = -MMD^2_u(H) + gp_s`` is rank s's loss on the gathered features H and gp_s its local penalty mean; the
    field's mean over ranks is then ``(1/W) sum_r [J_r^T sum_s dl_s/dH_r + direct_r] = d/dphi (1/W) sum_s l_s`` =
    the one-rank gradient on the gathered batch, since ``(1/W) sum_s l_s = -MMD^2_u(H) + GP(global)``. The same holds
    for G. Penalty interpolation weights are drawn for the global batch and rank r keeps rows r::W.

    Not a mean over samples: MMD^2_u is a U-statistic over pairs, so micro-batch accumulation (a mean of per-micro-batch
    fields) and SVRE (a snapshot mean of per-batch fields) would not estimate its gradient; GANModule refuses both.
    The penalty's witness uses the batch's features, so L_D depends on G through h(fake) (as in the reference): the
    loss is not declared zero-sum (no ``fast_zero_sum``).

    Args:
        kernel: ``rq`` (rational-quadratic mixture) or ``gaussian``.
        scales: the mixture's alphas (``rq``) or bandwidths (``gaussian``), each ``> 0``; None for the defaults
            :data:`MMD_KERNELS`.
        gp_weight: weight of the witness gradient penalty, ``>= 0`` (0 disables it and its extra D forward).
    """

    feature_critic: ClassVar[bool] = True

    def __init__(self, kernel: str = "rq", scales: Sequence[float] | None = None, gp_weight: float = 1.0, *,
                 r1_gamma: float = 0.0, r2_gamma: float = 0.0) -> None:
        if kernel not in MMD_KERNELS:
            raise ValueError(f"Invalid mmd_kernel: {kernel!r}; expected one of {', '.join(MMD_KERNELS)}")
        if scales is not None:
            bad = isinstance(scales, (str, bytes)) or len(scales) == 0 or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not v > 0
                for v in scales)
            if bad:
                raise ValueError(f"Invalid mmd_scales: {scales!r}; expected a non-empty list of numbers > 0 "
                                 "(rq: alphas, gaussian: bandwidths), or null for the defaults")
        if r1_gamma or r2_gamma:
            name, value = ("r1_gamma", r1_gamma) if r1_gamma else ("r2_gamma", r2_gamma)
            raise ValueError(f"Invalid {name}: {value} with loss mmd; R1/R2 need one score per sample and MMD's "
                             "critic outputs features; expected 0 (mmd has its own penalty, mmd_gp_weight)")
        self.kernel = kernel
        self.scales = tuple(float(v) for v in (MMD_KERNELS[kernel] if scales is None else scales))
        self.gp_weight = _check_non_negative("mmd_gp_weight", gp_weight)
        super().__init__()

    def split_features(self, outputs: Tensor, n_real: int) -> tuple[Tensor, Tensor]:
        """D's outputs on this rank's ``cat([real, fake])`` -> the global batch's (real, fake) features.

        One differentiable all-gather across ranks (none on one rank); rows are put in the one-rank order
        (global row ``j W + r`` is rank r's local row j).
        """
        if outputs.dim() != 2:
            raise ValueError(f"Invalid discriminator output shape: {tuple(outputs.shape)} for loss mmd; expected "
                             "features (N, d), e.g. the discriminator's `features: 16`")
        n, d = outputs.shape
        gathered = distributed.all_gather_differentiable(outputs)
        world = gathered.shape[0] // n
        if world == 1:
            return gathered[:n_real], gathered[n_real:]
        gathered = gathered.view(world, n, d)
        return (gathered[:, :n_real].transpose(0, 1).reshape(-1, d),
                gathered[:, n_real:].transpose(0, 1).reshape(-1, d))

    def discriminator_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return -mmd2_unbiased(d_real, d_fake, self.kernel, self.scales)

    def generator_loss(self, d_fake: Tensor, d_real: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if d_real is None:
            raise ValueError("Invalid call: mmd's generator_loss needs the real features, d_real")
        return mmd2_unbiased(d_real, d_fake, self.kernel, self.scales)

    def penalty(
        self,
        discriminator: nn.Module,
        real: Tensor,
        fake: Tensor,
        *,
        generator: torch.Generator | None = None,
        features: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor | None:
        """gp_weight * mean over this rank's pairs of (|grad_x f(xhat)| - 1)^2, f the witness of the global batch.

        ``features``: the global (real, fake) features from :meth:`split_features` (the witness's mean embeddings).
        """
        if self.gp_weight == 0:
            return None
        if features is None:
            raise ValueError("Invalid call: mmd's penalty needs the batch's features (features=(real, fake))")
        h_real, h_fake = features
        n = min(real.shape[0], fake.shape[0])
        real, fake = real[:n].detach(), fake[:n].detach()
        world, rank = distributed.world_size(), distributed.rank()
        device = generator.device if generator is not None else real.device
        alpha = torch.rand(n * world, generator=generator, device=device, dtype=real.dtype)[rank::world]
        alpha = alpha.to(real.device).view((n,) + (1,) * (real.dim() - 1))
        with torch.enable_grad():
            xhat = (real + alpha * (fake - real)).requires_grad_(True)
            h = discriminator(xhat)
            if h.dim() != 2:
                raise ValueError(f"Invalid discriminator output shape: {tuple(h.shape)} for loss mmd; expected "
                                 "features (N, d), e.g. the discriminator's `features: 16`")
            witness = (mixture_kernel(h, h_real, self.kernel, self.scales).mean(1)
                       - mixture_kernel(h, h_fake, self.kernel, self.scales).mean(1))
            (grad,) = torch.autograd.grad(witness.sum(), xhat, create_graph=True)
        norms = torch.sqrt(grad.flatten(1).pow(2).sum(1) + 1e-5)  # the reference's safer_norm
        return self.gp_weight * (norms - 1).pow(2).mean()

    def _hparams(self) -> dict[str, float]:
        return {"kernel": self.kernel, "scales": self.scales, "gp_weight": self.gp_weight}  # type: ignore[dict-item]


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


#: Losses whose L_G is a function of the fake scores alone: ``generator_loss(d_fake)``.
LOSSES: dict[str, type[GANLoss]] = {
    "minimax": MinimaxLoss,
    "non_saturating": NonSaturatingLoss,
    "wgan": WGANLoss,
    "wgan_gp": WGANGPLoss,
    "hinge": HingeLoss,
}
#: Losses on paired (real, fake) scores: ``generator_loss(d_fake, d_real)``.
RELATIVISTIC_LOSSES: dict[str, type[GANLoss]] = {"rpgan": RpGANLoss}
#: Losses on D's features of the global batch: ``generator_loss(d_fake, d_real)`` on ``[N, d]`` features.
FEATURE_LOSSES: dict[str, type[GANLoss]] = {"mmd": MMDLoss}


def get_loss(name: str, **kwargs: float) -> GANLoss:
    """Build a loss by short name, e.g. ``get_loss("wgan_gp", gp_weight=10.0)``."""
    losses = {**LOSSES, **RELATIVISTIC_LOSSES, **FEATURE_LOSSES}
    if name not in losses:
        raise ValueError(f"Unknown loss: {name!r}; expected one of {sorted(losses)}")
    return losses[name](**kwargs)
