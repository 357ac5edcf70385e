"""Multi-layer perceptron players for the 2-D mixture games and small images (e.g. 8x8 digits).

No BatchNorm by default: toy games are where we compare optimizers, and a batch-statistics layer would make F
depend on the batch composition. The mode-collapse protocol's reference players (PacGAN's code, github
fjxmlzn/PacGAN, ``synthetic_data_experiments/2D{Ring,Grid}_GAN&PacGAN/pacgan_task.py``, ``create_model_brick``,
lines 42-100) need two more layers, both off by default:

- ``MLPGenerator(batch_norm=True)``: every hidden layer is Linear (no bias) -> BatchNorm -> activation (the
  reference ``decoder``: ``MLP(..., use_bias=False)`` with ``Sequence([BatchNormalization(...).apply,
  Rectifier().apply])`` as each hidden activation, and a bias on the read-out only, lines 43-59 and 94). The
  BatchNorm has blocks' default ``epsilon=1e-4`` and a running-statistics momentum of 0.05
  (``bn_updates = [(p, m * 0.05 + p * 0.95) ...]``, line 149); in eval mode (sampling, scoring) it uses the
  running statistics, as the reference's sampler (the brick applied outside ``batch_normalization``) does.
- ``MLPDiscriminator(activation="maxout", maxout_pieces=5)``: every hidden layer is blocks' ``LinearMaxout``
  (lines 61-90): one Linear to ``hidden_dim * pieces`` units and the maximum over each unit's ``pieces``
  consecutive outputs (blocks' ``Maxout`` reshapes the last axis to ``(hidden_dim, pieces)``).
- ``init_std`` (both players): weights N(0, init_std^2), biases 0 (``weights_init=IsotropicGaussian(0.02)``,
  ``biases_init=Constant(0.0)``, config.py); null keeps PyTorch's default initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["MLPDiscriminator", "MLPGenerator", "Maxout"]

#: BatchNorm of the reference generator: blocks' ``BatchNormalization`` epsilon and the population update rate of
#: PacGAN's ``pacgan_task.py`` (``m * 0.05 + p * 0.95``).
REFERENCE_BATCH_NORM = {"eps": 1e-4, "momentum": 0.05}


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"Invalid {name}: {value}; expected an integer >= 1")


Activation = Literal["relu", "leaky_relu", "elu", "silu", "tanh"]
DiscriminatorActivation = Literal["relu", "leaky_relu", "elu", "silu", "tanh", "maxout"]
_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


def _activation(name: str, extra: tuple[str, ...] = ()) -> Callable[[], nn.Module] | None:
    """The activation's constructor; None for one of ``extra`` (a layer that is its own activation, i.e. maxout)."""
    if name in extra:
        return None
    if name not in _ACTIVATIONS:
        raise ValueError(f"Invalid activation: {name!r}; expected one of {', '.join((*_ACTIVATIONS, *extra))}")
    return _ACTIVATIONS[name]


def _check_init_std(init_std: float | None) -> None:
    if init_std is not None and (isinstance(init_std, bool) or not isinstance(init_std, (int, float))
                                 or not math.isfinite(init_std) or init_std <= 0):
        raise ValueError(f"Invalid init_std: {init_std!r}; expected a positive number, or null for PyTorch's default")


def _initialize(module: nn.Module, init_std: float | None) -> None:
    """Weights of every Linear ~ N(0, init_std^2), biases 0; None leaves PyTorch's default initialisation."""
    if init_std is None:
        return
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=init_std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class Maxout(nn.Module):
    """A maxout layer (Goodfellow et al. 2013) as blocks' ``LinearMaxout``: ``y_j = max_k (W x + b)[j * pieces + k]``.

    Args:
        in_features: Input width.
        out_features: Output width (maxout units).
        pieces: Linear pieces per unit, >= 2 (PacGAN's discriminator: 5).
    """

    def __init__(self, in_features: int, out_features: int, pieces: int) -> None:
        for name, value in [("in_features", in_features), ("out_features", out_features)]:
            _check_positive(name, value)
        _check_pieces(pieces)
        super().__init__()
        self.out_features, self.pieces = out_features, pieces
        self.linear = nn.Linear(in_features, out_features * pieces)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x).unflatten(-1, (self.out_features, self.pieces)).amax(-1)

    def extra_repr(self) -> str:
        return f"pieces={self.pieces}"


def _check_pieces(pieces: int) -> None:
    if isinstance(pieces, bool) or not isinstance(pieces, int) or pieces < 2:
        raise ValueError(f"Invalid maxout_pieces: {pieces!r}; expected an integer >= 2 (1 piece is a plain Linear)")


def _mlp(in_dim: int, hidden_dim: int, num_layers: int, out_dim: int,
         activation: Callable[[], nn.Module] | None, *, batch_norm: bool = False,
         maxout_pieces: int | None = None) -> nn.Sequential:
    """`num_layers` hidden layers, then one Linear read-out. A hidden layer is Linear + activation, Linear without
    bias + BatchNorm + activation (``batch_norm``), or :class:`Maxout` (``activation`` None)."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(num_layers):
        if activation is None:
            layers.append(Maxout(width, hidden_dim, maxout_pieces))
        elif batch_norm:
            layers += [nn.Linear(width, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim, **REFERENCE_BATCH_NORM),
                       activation()]
        else:
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
        batch_norm: Hidden layers are Linear without bias -> BatchNorm1d (eps 1e-4, momentum 0.05) -> activation,
            the PacGAN reference generator (module docstring). Off by default.
        init_std: Weights N(0, init_std^2) and biases 0 (the reference: 0.02); null: PyTorch's default.
    """

    def __init__(self, latent_dim: int = 2, output_dim: int = 2, hidden_dim: int = 128, num_layers: int = 3,
                 activation: Activation = "relu", image_shape: list[int] | None = None, batch_norm: bool = False,
                 init_std: float | None = None) -> None:
        if image_shape is not None:
            if len(image_shape) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                            for v in image_shape):
                raise ValueError(f"Invalid image_shape: {image_shape!r}; expected [C, H, W] of integers >= 1, or null")
            output_dim = math.prod(image_shape)
        for name, value in [("latent_dim", latent_dim), ("output_dim", output_dim), ("hidden_dim", hidden_dim),
                            ("num_layers", num_layers)]:
            _check_positive(name, value)
        if not isinstance(batch_norm, bool):
            # ValueError, as every other bad argument here
            raise ValueError(f"Invalid batch_norm: {batch_norm!r}; expected true or false")  # noqa: TRY004
        _check_init_std(init_std)
        super().__init__()
        self.latent_dim = latent_dim
        self.output_shape: tuple[int, ...] = tuple(image_shape) if image_shape is not None else (output_dim,)
        self.net = _mlp(latent_dim, hidden_dim, num_layers, output_dim, _activation(activation),
                        batch_norm=batch_norm)
        _initialize(self.net, init_std)

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
        num_layers: Number of hidden layers (each Linear + activation, or one :class:`Maxout` layer).
        activation: Hidden activation (``leaky_relu`` has slope 0.2); ``maxout``: every hidden layer is a
            maxout layer of ``hidden_dim`` units with ``maxout_pieces`` pieces (the PacGAN reference D).
        features: Outputs per sample: 1 gives one score, ``(N,)``; more give features ``(N, features)`` for a
            feature critic's loss (``loss: mmd``; 16 in Binkowski et al.'s MMD GAN).
        maxout_pieces: Linear pieces per maxout unit, >= 2 (reference: 5); used with ``activation: maxout`` only.
        init_std: Weights N(0, init_std^2) and biases 0 (the reference: 0.02); null: PyTorch's default.
    """

    def __init__(self, input_dim: int = 2, hidden_dim: int = 128, num_layers: int = 3,
                 activation: DiscriminatorActivation = "leaky_relu", features: int = 1, maxout_pieces: int = 5,
                 init_std: float | None = None) -> None:
        for name, value in [("input_dim", input_dim), ("hidden_dim", hidden_dim), ("num_layers", num_layers),
                            ("features", features)]:
            _check_positive(name, value)
        _check_pieces(maxout_pieces)
        _check_init_std(init_std)
        super().__init__()
        self.input_dim = input_dim
        self.features = features
        self.net = _mlp(input_dim, hidden_dim, num_layers, features, _activation(activation, ("maxout",)),
                        maxout_pieces=maxout_pieces)
        _initialize(self.net, init_std)

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(torch.flatten(x, 1))
        return out.squeeze(-1) if self.features == 1 else out
