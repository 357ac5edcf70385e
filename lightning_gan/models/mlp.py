"""Multi-layer perceptron players for the 2-D mixture games and small images (e.g. 8x8 digits).

No BatchNorm on purpose: toy games are where we compare optimizers, and a
batch-statistics layer would make F depend on the batch composition.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["MLPDiscriminator", "MLPGenerator"]


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"Invalid {name}: {value}; expected an integer >= 1")


Activation = Literal["relu", "leaky_relu", "elu", "silu", "tanh"]
_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


def _activation(name: str) -> Callable[[], nn.Module]:
    if name not in _ACTIVATIONS:
        raise ValueError(f"Invalid activation: {name!r}; expected one of {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def _mlp(in_dim: int, hidden_dim: int, num_layers: int, out_dim: int,
         activation: Callable[[], nn.Module]) -> nn.Sequential:
    """`num_layers` hidden Linear+activation layers, then one Linear read-out."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(num_layers):
        layers += [nn.Linear(width, hidden_dim), activation()]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class MLPGenerator(nn.Module):
    """Maps z in R^latent_dim to a point in R^output_dim (unbounded output), or to an image in [-1, 1].

    Args:
        latent_dim: Size of the latent vector z.
        output_dim: Size of one generated sample (2 for the mixtures); ignored when ``image_shape`` is given.
        hidden_dim: Width of every hidden layer.
        num_layers: Number of hidden layers (each Linear + activation).
        activation: Hidden activation. Smooth ones (``silu``, ``elu``, ``tanh``) make F continuous in the
            parameters: with ReLU kinks, float rounding alone can flip a unit's derivative.
        image_shape: ``[C, H, W]``: emit images of that shape through a tanh, in the data modules' [-1, 1]
            range (e.g. ``[1, 8, 8]`` for the 8x8 digits); null emits flat, unbounded vectors.
    """

    def __init__(self, latent_dim: int = 2, output_dim: int = 2, hidden_dim: int = 128, num_layers: int = 3,
                 activation: Activation = "relu", image_shape: list[int] | None = None) -> None:
        if image_shape is not None:
            if len(image_shape) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                            for v in image_shape):
                raise ValueError(f"Invalid image_shape: {image_shape!r}; expected [C, H, W] of integers >= 1, or null")
            output_dim = math.prod(image_shape)
        for name, value in [("latent_dim", latent_dim), ("output_dim", output_dim), ("hidden_dim", hidden_dim),
                            ("num_layers", num_layers)]:
            _check_positive(name, value)
        super().__init__()
        self.latent_dim = latent_dim
        self.output_shape: tuple[int, ...] = tuple(image_shape) if image_shape is not None else (output_dim,)
        self.net = _mlp(latent_dim, hidden_dim, num_layers, output_dim, _activation(activation))

    def forward(self, z: Tensor) -> Tensor:
        out = self.net(z)
        if len(self.output_shape) == 1:
            return out
        return torch.tanh(out).view(-1, *self.output_shape)


class MLPDiscriminator(nn.Module):
    """Scores samples with one raw logit each; inputs are flattened, so (N, 1, 8, 8) works with input_dim=64.

    Args:
        input_dim: Number of features of one (flattened) sample.
        hidden_dim: Width of every hidden layer.
        num_layers: Number of hidden layers (each Linear + activation).
        activation: Hidden activation (``leaky_relu`` has slope 0.2).
        features: Outputs per sample: 1 gives one score, ``(N,)``; more give features ``(N, features)`` for a
            feature critic's loss (``loss: mmd``; 16 in Binkowski et al.'s MMD GAN).
    """

    def __init__(self, input_dim: int = 2, hidden_dim: int = 128, num_layers: int = 3,
                 activation: Activation = "leaky_relu", features: int = 1) -> None:
        for name, value in [("input_dim", input_dim), ("hidden_dim", hidden_dim), ("num_layers", num_layers),
                            ("features", features)]:
            _check_positive(name, value)
        super().__init__()
        self.input_dim = input_dim
        self.features = features
        self.net = _mlp(input_dim, hidden_dim, num_layers, features, _activation(activation))

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(torch.flatten(x, 1))
        return out.squeeze(-1) if self.features == 1 else out
