"""The AdaGAN mixture as one generator module, so that every command that takes a generator takes the mixture.

The reference samples its mixture by drawing a component index from the mixture weights for each sample, then a
stored sample of that component (tolstikhin/adagan ``adagan.py``, ``AdaGan.sample_mixture``). Here the components are
kept (an ``nn.ModuleList``) and the choice is a function of the latent itself: the mixture's latent has one more
coordinate than a component's, and its last coordinate u ~ N(0, 1) picks component k where Phi(u) falls in
[c_{k-1}, c_k), c the cumulative mixture weights. Since z ~ N(0, I), Phi(u) is uniform on (0, 1) and independent of
the component's latent z[:, :-1], so component k is picked with probability w_k, and the samples are a deterministic
function of z: the same on every rank, in every batch split, and under ``GANModule.sample``'s fixed latent stream.
A mixture of one component has no extra coordinate: it is that component, latents and samples included (so T = 1
evaluates exactly as the plain run).
So ``GANModule(generator=MixtureGenerator(...))`` checkpoints load in ``lightning-gan evaluate`` and ``sample`` as any
run's (``lightning_gan.adagan.run`` writes ``<run folder>/mixture.ckpt`` that way).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

__all__ = ["MixtureGenerator", "component_index", "mix"]


def component_index(u: Tensor, weights: Tensor) -> Tensor:
    """The component each row picks: k with c_{k-1} <= Phi(u) < c_k (float64; the last one for Phi(u) = 1)."""
    p = 0.5 * (1.0 + torch.erf(u.to(torch.float64) / math.sqrt(2.0)))
    cumulative = torch.cumsum(weights.to(torch.float64), 0)
    cumulative = cumulative / cumulative[-1]
    index = torch.searchsorted(cumulative.to(p.device), p, right=True)
    return index.clamp_(max=weights.numel() - 1)


class MixtureGenerator(nn.Module):
    """A mixture of generators with weights: ``z`` (N, d + 1) -> component ``k(z[:, -1])`` applied to ``z[:, :-1]``;
    with one component, ``z`` (N, d) -> the component of ``z``.

    Args:
        component: the components' architecture (each component is a deep copy; load their weights afterwards,
            e.g. with ``load_state_dict``). It needs an integer ``latent_dim``.
        weights: mixture weights, one per component, >= 0 and not all 0 (normalised here; stored as a float64 buffer).
    """

    def __init__(self, component: nn.Module, weights: list[float]) -> None:
        super().__init__()
        latent_dim = getattr(component, "latent_dim", None)
        if not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"Invalid component: {type(component).__name__} has no integer `latent_dim` attribute")
        values = torch.as_tensor(list(weights), dtype=torch.float64)
        if values.numel() < 1 or not bool(torch.isfinite(values).all()) or bool((values < 0).any()) \
                or not float(values.sum()) > 0:
            raise ValueError(f"Invalid mixture weights: {list(weights)}; expected one or more numbers >= 0, not all 0")
        self.components = nn.ModuleList([component] + [copy.deepcopy(component) for _ in range(values.numel() - 1)])
        self.register_buffer("weights", values / values.sum())
        self.component_latent_dim = latent_dim
        self.latent_dim = latent_dim + 1 if len(self.components) > 1 else latent_dim

    def forward(self, z: Tensor) -> Tensor:
        if len(self.components) == 1:
            return self.components[0](z)
        return mix(list(self.components), self.weights, z)


def mix(components: list[nn.Module], weights: Tensor, z: Tensor) -> Tensor:
    """Row i: component ``k(z[i, -1])`` (:func:`component_index`) applied to ``z[i, :-1]``, one forward per component
    used (so a batch costs about one component's forward)."""
    index = component_index(z[:, -1], weights)
    latent = z[:, :-1]
    used = torch.unique(index).tolist()
    if len(used) == 1:  # one component: one forward on the whole batch
        return components[used[0]](latent)
    parts = {k: components[k](latent[index == k]) for k in used}
    first = next(iter(parts.values()))
    out = first.new_empty((z.shape[0], *first.shape[1:]))
    for k, part in parts.items():
        out[index == k] = part
    return out
