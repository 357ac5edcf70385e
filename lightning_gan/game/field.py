"""The game vector field F(w; xi) = (grad_theta L_G, grad_phi L_D) of a GAN at one point.

Every scheme (simultaneous, alternating, extragradient, optimistic, SVRE) is a
way of calling :func:`gan_field` and moving the players; this module only
evaluates. Both players' gradients come from the same point w = (theta, phi)
and the same sample xi = (real, z), before anything moves, via
``torch.autograd.grad``: parameters and their ``.grad`` are never written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_gan.game.losses import GANLoss, full_precision

__all__ = ["FieldValue", "gan_field", "flat_norm", "full_precision", "trainable_parameters"]


@dataclass(frozen=True)
class FieldValue:
    """F at one point on one sample, plus detached scalars for logging.

    Gradient lists follow :func:`trainable_parameters` order and hold zeros
    (never None) for parameters the loss does not reach.
    """

    generator_grads: list[Tensor]
    discriminator_grads: list[Tensor]
    generator_loss: Tensor | None  # L_G, detached; None when only D's gradient was asked for
    discriminator_loss: Tensor | None  # L_D including the penalty, detached; None when only G's was asked for
    d_real: Tensor | None  # mean score on real samples, detached; None when D did not see them
    d_fake: Tensor  # mean score on fake samples, detached
    penalty: Tensor | None = None  # D's penalty alone, detached; None without one

    @property
    def grads(self) -> list[Tensor]:
        """The stacked field: generator's gradients, then the discriminator's."""
        return self.generator_grads + self.discriminator_grads

    def norm(self) -> Tensor:
        """||F||, the Euclidean norm of both players' gradients together."""
        return flat_norm(self.grads)


def trainable_parameters(module: nn.Module) -> list[Tensor]:
    """``[p for p in module.parameters() if p.requires_grad]``: the order of F's entries."""
    return [p for p in module.parameters() if p.requires_grad]


def flat_norm(tensors: Iterable[Tensor]) -> Tensor:
    """Euclidean norm of a list of tensors seen as one flat vector (0 for an empty list)."""
    tensors = list(tensors)
    if not tensors:
        return torch.zeros(())
    device = tensors[0].device
    norms = [torch.linalg.vector_norm(t).to(device) for t in tensors]
    return torch.linalg.vector_norm(torch.stack(norms))


def _grad(output: Tensor, params: Sequence[Tensor], *, retain_graph: bool, create_graph: bool = False,
          scale: float = 1.0) -> list[Tensor]:
    """d output / d params, with zeros where ``output`` does not depend on a parameter.

    ``create_graph`` keeps the gradients differentiable (for J^T v products, see
    :mod:`lightning_gan.game.consensus`); it then also retains the forward graph. ``scale`` (a power of two, float16's
    loss scale, see :mod:`lightning_gan.precision`) differentiates ``scale * output`` and divides the gradients by it:
    the same gradients, without float16's underflow in the backward pass.
    """
    if not params:
        return []
    if not output.requires_grad:  # e.g. D's scores do not depend on G at all
        return [torch.zeros_like(p) for p in params]
    grads = torch.autograd.grad(output * scale if scale != 1.0 else output, params,
                                retain_graph=retain_graph or create_graph, create_graph=create_graph,
                                allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    if scale != 1.0:
        torch._foreach_mul_(grads, 1.0 / scale)
    return grads


def _split_scores(scores: Tensor, n_real: int, n_total: int) -> tuple[Tensor, Tensor]:
    if scores.numel() != n_total or scores.dim() > 2:
        raise ValueError(
            f"Invalid discriminator output shape: {tuple(scores.shape)}; "
            f"expected one score per sample, ({n_total},) or ({n_total}, 1)"
        )
    scores = scores.reshape(n_total)
    return scores[:n_real], scores[n_real:]


def _split_outputs(loss: GANLoss, outputs: Tensor, n_real: int, n_total: int) -> tuple[Tensor, Tensor]:
    """D's outputs on ``cat([real, fake])`` -> (real, fake) scores, or the global batch's features for a feature
    critic (:meth:`lightning_gan.game.losses.MMDLoss.split_features`, one all-gather across ranks)."""
    if getattr(loss, "feature_critic", False):
        if outputs.shape[0] != n_total:
            raise ValueError(f"Invalid discriminator output shape: {tuple(outputs.shape)}; expected features "
                             f"for each of the {n_total} samples, ({n_total}, d)")
        return loss.split_features(outputs, n_real)  # type: ignore[attr-defined]
    return _split_scores(outputs, n_real, n_total)


def _penalty(loss: GANLoss, discriminator: nn.Module, real: Tensor, fake: Tensor, d_real: Tensor, d_fake: Tensor,
             generator_rng: torch.Generator | None) -> Tensor | None:
    """D's penalty; a feature critic's also gets the batch's features (MMD's witness)."""
    if getattr(loss, "feature_critic", False):
        return loss.penalty(discriminator, real, fake, generator=generator_rng,  # type: ignore[call-arg]
                            features=(d_real, d_fake))
    return loss.penalty(discriminator, real, fake, generator=generator_rng)


def uses_batch_statistics(module: nn.Module) -> list[str]:
    """Names of the BatchNorm layers of ``module`` that normalise with batch statistics right now."""
    return [
        name
        for name, m in module.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None)
    ]


def _check_fast_path(loss: GANLoss, discriminator: nn.Module) -> None:
    if not loss.zero_sum:
        raise ValueError(
            f"Invalid fast_zero_sum=True for {loss!r}: it is not zero-sum; "
            "expected fast_zero_sum=False or a zero-sum loss (minimax, WGAN)"
        )
    coupled = uses_batch_statistics(discriminator)
    if coupled:
        raise ValueError(
            f"Invalid fast_zero_sum=True with BatchNorm on batch statistics in the discriminator "
            f"({', '.join(coupled)}): batch statistics couple real and fake scores; "
            "expected fast_zero_sum=False, eval mode or a D without BatchNorm"
        )


def gan_field(
    generator: nn.Module,
    discriminator: nn.Module,
    loss: GANLoss,
    real: Tensor,
    z: Tensor,
    *,
    generator_rng: torch.Generator | None = None,
    fast_zero_sum: bool = False,
    players: Sequence[int] = (0, 1),
    create_graph: bool = False,
    loss_scale: float = 1.0,
) -> FieldValue:
    """Evaluate F(w; xi) = (grad_theta L_G, grad_phi L_D) at the players' current parameters.

    Cost: one forward of G on ``z``; one forward of D on ``cat([real, fake])``
    (so a train-mode BatchNorm in D normalises one batch holding both, and its
    running statistics move once); then two backward passes, one per player
    (L_D to phi, L_G to theta through D). A penalty (GP, R1, R2, R1 + R2) adds one D
    forward on its own inputs and a double backward through D.

    ``fast_zero_sum=True`` makes it one backward pass for a zero-sum loss: the
    gradient of L_D with respect to (theta, phi), whose theta part is then
    -grad L_G. That holds only if D scores each sample independently: with a
    train-mode BatchNorm (or minibatch statistics) in D, the real samples'
    scores depend on the fakes, L_D's real term depends on theta, and the
    shortcut gives a different (wrong) G gradient. Hence opt-in; BatchNorm on
    batch statistics in D is refused. Penalties are detached from G: no effect.

    ``players`` asks for one player's gradient only (alternating steps): for D alone, G runs without
    a graph; for G alone, D scores the fakes alone (no real batch, no penalty) unless a BatchNorm on
    batch statistics in D couples them to the real samples, or the loss is relativistic (its L_G
    needs the paired real scores) or a feature critic's (MMD). The other player's list is then empty.

    A feature critic's loss (``loss.feature_critic``, :class:`~lightning_gan.game.losses.MMDLoss`) takes D's
    outputs as features ``[N, d]`` of the global batch, gathered across ranks with one differentiable all-gather
    per D forward on ``cat([real, fake])`` (and one all-reduce in each backward pass through it).

    Nothing is written: no parameter moves, ``.grad`` is neither read nor
    written (``torch.autograd.grad``, not ``.backward()``), so any scheme may
    call this at any point, e.g. at an extrapolated one. Buffers (BatchNorm
    running statistics) do update as in any train-mode forward (the
    penalty's D forward included).

    Args:
        generator: G, maps ``z`` to samples shaped like ``real``.
        discriminator: D, maps samples to one raw score each, ``Tensor[N]``
            (``[N, 1]`` is accepted).
        loss: the pair of objectives and D's penalty.
        real: a batch of data.
        z: a batch of latent vectors.
        generator_rng: ``torch.Generator`` for the penalty's randomness
            (WGAN-GP interpolation weights); None draws from the global RNG.
        fast_zero_sum: use the single-backward path (see above); needs
            ``loss.zero_sum`` and a D that scores samples independently.
        players: whose gradients to compute, 0 (G) and/or 1 (D).
        create_graph: return gradients that are differentiable in (theta, phi) (both players only), so that
            a J^T v product can follow (consensus optimization); off, the path is unchanged.
        loss_scale: float16's loss scale (a power of two; 1 off): the losses are scaled before each backward pass
            and the gradients unscaled after it (see :mod:`lightning_gan.precision`); not with ``create_graph``.

    Returns:
        The field and detached losses and mean scores, as a :class:`FieldValue`.
    """
    need_g, need_d = 0 in players, 1 in players
    if not (need_g or need_d) or any(p not in (0, 1) for p in players):
        raise ValueError(f"Invalid players: {tuple(players)!r}; expected a non-empty subset of (0, 1)")
    if create_graph and not (need_g and need_d):
        raise ValueError(f"Invalid players: {tuple(players)!r} with create_graph=True; expected both (0, 1)")
    if create_graph and loss_scale != 1.0:
        raise ValueError(f"Invalid loss_scale: {loss_scale!r} with create_graph=True; expected 1 (no loss scaling of "
                         "differentiable fields)")
    if not (need_g and need_d):
        return _one_player_field(generator, discriminator, loss, real, z, need_g, generator_rng, loss_scale)
    if fast_zero_sum:
        _check_fast_path(loss, discriminator)
    g_params = trainable_parameters(generator)
    d_params = trainable_parameters(discriminator)
    with torch.enable_grad():
        fake = generator(z)
        _check_fake(fake, real)
        n_real = real.shape[0]
        scores = full_precision(discriminator(torch.cat([real, fake])))  # losses in float32 under autocast
        d_real, d_fake = _split_outputs(loss, scores, n_real, n_real + fake.shape[0])

        loss_d = loss.discriminator_loss(d_real, d_fake)
        penalty = _penalty(loss, discriminator, real, fake, d_real, d_fake, generator_rng)
        if penalty is not None:
            loss_d = loss_d + penalty
        loss_g = _generator_loss(loss, d_real, d_fake)

        if fast_zero_sum:
            grads = _grad(loss_d, d_params + g_params, retain_graph=False, create_graph=create_graph,
                          scale=loss_scale)
            d_grads = grads[: len(d_params)]
            g_grads = [g.neg() for g in grads[len(d_params) :]]
        else:
            # L_D to phi only: autograd prunes G's graph, so G is not traversed here.
            d_grads = _grad(loss_d, d_params, retain_graph=True, create_graph=create_graph, scale=loss_scale)
            g_grads = _grad(loss_g, g_params, retain_graph=False, create_graph=create_graph, scale=loss_scale)

    return FieldValue(
        generator_grads=g_grads,
        discriminator_grads=d_grads,
        generator_loss=loss_g.detach(),
        discriminator_loss=loss_d.detach(),
        d_real=d_real.detach().mean(),
        d_fake=d_fake.detach().mean(),
        penalty=None if penalty is None else penalty.detach(),
    )


def _generator_loss(loss: GANLoss, d_real: Tensor | None, d_fake: Tensor) -> Tensor:
    """L_G; a relativistic loss also gets the paired real scores (a constant for G without BatchNorm in D), a
    feature critic's the real features."""
    if loss.relativistic or getattr(loss, "feature_critic", False):
        return loss.generator_loss(d_fake, d_real)  # type: ignore[call-arg]
    return loss.generator_loss(d_fake)


def _check_fake(fake: Tensor, real: Tensor) -> None:
    if fake.shape[1:] != real.shape[1:]:
        raise ValueError(
            f"Invalid generator output shape: {tuple(fake.shape)}; expected "
            f"samples shaped like the real batch, (N, {', '.join(map(str, real.shape[1:]))})"
        )


def _one_player_field(generator: nn.Module, discriminator: nn.Module, loss: GANLoss, real: Tensor, z: Tensor,
                      generator_only: bool, generator_rng: torch.Generator | None,
                      loss_scale: float = 1.0) -> FieldValue:
    """One player's half of F, at the cost of that player's textbook step."""
    with torch.enable_grad():
        if generator_only:
            fake = generator(z)
            _check_fake(fake, real)
            d_real = None
            # L_G sees the real batch: coupled by BatchNorm, paired (rpgan), or features (mmd)
            if uses_batch_statistics(discriminator) or loss.relativistic or getattr(loss, "feature_critic", False):
                scores = full_precision(discriminator(torch.cat([real, fake])))
                d_real, d_fake = _split_outputs(loss, scores, real.shape[0], real.shape[0] + fake.shape[0])
            else:
                d_fake = _split_scores(full_precision(discriminator(fake)), 0, fake.shape[0])[1]
            loss_g = _generator_loss(loss, d_real, d_fake)
            grads = _grad(loss_g, trainable_parameters(generator), retain_graph=False, scale=loss_scale)
            return FieldValue(grads, [], loss_g.detach(), None, None, d_fake.detach().mean())
        with torch.no_grad():
            fake = generator(z)
        _check_fake(fake, real)
        n_real = real.shape[0]
        scores = full_precision(discriminator(torch.cat([real, fake])))
        d_real, d_fake = _split_outputs(loss, scores, n_real, n_real + fake.shape[0])
        loss_d = loss.discriminator_loss(d_real, d_fake)
        penalty = _penalty(loss, discriminator, real, fake, d_real, d_fake, generator_rng)
        if penalty is not None:
            loss_d = loss_d + penalty
        grads = _grad(loss_d, trainable_parameters(discriminator), retain_graph=False, scale=loss_scale)
    return FieldValue([], grads, None, loss_d.detach(), d_real.detach().mean(), d_fake.detach().mean(),
                      None if penalty is None else penalty.detach())
