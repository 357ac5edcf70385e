"""ResNet players for 32x32 images, in the style of the WGAN-GP and SNGAN CIFAR-10 ResNets.

G: Linear(z, 4*4*w) -> 3 up-blocks (4 -> 8 -> 16 -> 32) -> BN -> ReLU -> conv3x3 -> tanh.
D: optimized first block (32 -> 16) -> down-block (16 -> 8) -> 2 plain blocks -> ReLU
-> global mean pool -> Linear(w, 1). All blocks keep the width w (``base_width``, 128 in
both papers and in Gidel et al.'s ``ResNet32*``). No normalisation in D, as for WGAN-GP
and SNGAN without spectral norm. Up-sampling is nearest-neighbour + conv (SNGAN);
down-sampling is 2x2 average pooling. Init as the SNGAN reference: Xavier-uniform,
gain sqrt(2) on residual convolutions, 1 on shortcuts and linear layers.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

__all__ = ["ResNetDiscriminator32", "ResNetGenerator32"]


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"Invalid {name}: {value}; expected an integer >= 1")


def _conv3(c_in: int, c_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    nn.init.xavier_uniform_(conv.weight, math.sqrt(2.0))
    nn.init.zeros_(conv.bias)
    return conv


def _conv1(c_in: int, c_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 1)
    nn.init.xavier_uniform_(conv.weight, 1.0)
    nn.init.zeros_(conv.bias)
    return conv


def _output_conv(c_in: int, c_out: int) -> nn.Conv2d:
    """G's last conv: 3x3 with unit gain, as SNGAN's."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    nn.init.xavier_uniform_(conv.weight, 1.0)
    nn.init.zeros_(conv.bias)
    return conv


def _linear(d_in: int, d_out: int) -> nn.Linear:
    linear = nn.Linear(d_in, d_out)
    nn.init.xavier_uniform_(linear.weight, 1.0)
    nn.init.zeros_(linear.bias)
    return linear


class _UpBlock(nn.Module):
    """Pre-activation residual block that doubles the resolution; shortcut = upsample + conv1x1."""

    def __init__(self, width: int, batch_norm: bool) -> None:
        super().__init__()

        def norm() -> nn.Module:
            return nn.BatchNorm2d(width) if batch_norm else nn.Identity()

        self.residual = nn.Sequential(
            norm(), nn.ReLU(), nn.Upsample(scale_factor=2), _conv3(width, width),
            norm(), nn.ReLU(), _conv3(width, width),
        )
        self.shortcut = nn.Sequential(nn.Upsample(scale_factor=2), _conv1(width, width))

    def forward(self, x: Tensor) -> Tensor:
        return self.residual(x) + self.shortcut(x)


class _DownBlock(nn.Module):
    """Pre-activation residual block, optionally halving the resolution (conv1x1 shortcut only when it does)."""

    def __init__(self, width: int, downsample: bool) -> None:
        super().__init__()
        pool: list[nn.Module] = [nn.AvgPool2d(2)] if downsample else []
        self.residual = nn.Sequential(nn.ReLU(), _conv3(width, width), nn.ReLU(), _conv3(width, width), *pool)
        self.shortcut = nn.Sequential(_conv1(width, width), *pool) if downsample else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.residual(x) + self.shortcut(x)


class _OptimizedBlock(nn.Module):
    """First D block: no activation before the first conv (the input is an image); always halves."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(_conv3(channels, width), nn.ReLU(), _conv3(width, width), nn.AvgPool2d(2))
        self.shortcut = nn.Sequential(nn.AvgPool2d(2), _conv1(channels, width))

    def forward(self, x: Tensor) -> Tensor:
        return self.residual(x) + self.shortcut(x)


class ResNetGenerator32(nn.Module):
    """Residual generator for 32x32 images in [-1, 1].

    Args:
        latent_dim: Size of the latent vector z.
        channels: Image channels.
        base_width: Channels of every residual block.
        batch_norm: BatchNorm inside the blocks and before the output conv (standard; plain BatchNorm,
            the trainer may convert it to SyncBatchNorm).
    """

    def __init__(self, latent_dim: int = 128, channels: int = 3, base_width: int = 128,
                 batch_norm: bool = True) -> None:
        _check_positive(latent_dim=latent_dim, channels=channels, base_width=base_width)
        super().__init__()
        self.latent_dim = latent_dim
        self.output_shape: tuple[int, ...] = (channels, 32, 32)
        self.base_width = base_width
        self.project = _linear(latent_dim, 4 * 4 * base_width)
        self.blocks = nn.Sequential(*(_UpBlock(base_width, batch_norm) for _ in range(3)))
        self.to_image = nn.Sequential(
            nn.BatchNorm2d(base_width) if batch_norm else nn.Identity(),
            nn.ReLU(),
            _output_conv(base_width, channels),
            nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:
        x = self.project(z).view(-1, self.base_width, 4, 4)
        return self.to_image(self.blocks(x))


class ResNetDiscriminator32(nn.Module):
    """Residual critic for 32x32 images: one raw score per sample.

    Args:
        channels: Image channels.
        base_width: Channels of every residual block.
    """

    def __init__(self, channels: int = 3, base_width: int = 128) -> None:
        _check_positive(channels=channels, base_width=base_width)
        super().__init__()
        self.blocks = nn.Sequential(
            _OptimizedBlock(channels, base_width),
            _DownBlock(base_width, downsample=True),
            _DownBlock(base_width, downsample=False),
            _DownBlock(base_width, downsample=False),
            nn.ReLU(),
        )
        self.score = _linear(base_width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.score(self.blocks(x).mean(dim=(2, 3))).squeeze(-1)
