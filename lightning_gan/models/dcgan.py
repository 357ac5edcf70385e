"""DCGAN players for 28x28 (MNIST-like) and 32x32 (CIFAR-like) images.

At ``image_size=32, channels=3, base_width=128`` these reproduce the CIFAR-10
DCGAN of Gidel et al., "A Variational Inequality Perspective on GANs" (ICLR 2019),
official code ``models/dcgan.py`` (``DCGAN32Generator`` / ``DCGAN32Discriminator``)
and ``utils.weight_init``. What the reference used:

- z ~ N(0, I_128); ``--num-filters-gen`` = ``--num-filters-dis`` = 128 (our ``base_width``;
  the default here is 64, so set 128 to reproduce).
- G: Linear(z, 4*4*4w) -> BatchNorm1d over those 4*4*4w features -> ReLU -> view (4w, 4, 4)
  -> [ConvTranspose 4x4 stride 2 pad 1 -> BatchNorm2d -> ReLU] x2 (4w -> 2w -> w)
  -> ConvTranspose 4x4/2/1 to 3 channels -> tanh. BN in G always on; all layers have biases.
- D: [Conv 4x4 stride 2 pad 1 -> LeakyReLU] x3 (3 -> w -> 2w -> 4w; 32 -> 16 -> 8 -> 4)
  -> Linear(4*4*4w, 1). BatchNorm on conv 2 and 3 only with ``--batchnorm-dis``, off by
  default. The activation is ``F.leaky_relu`` with PyTorch's default slope **0.01**
  (not the 0.2 of Radford et al.); we keep 0.01 as the default.
- Init: Linear/Conv/ConvTranspose weights ~ N(0, 0.02), biases 0; BatchNorm left at default.

The 28x28 variant follows the same recipe from a 7x7 start with two up-sampling stages.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["DCGANDiscriminator", "DCGANGenerator"]

# image_size -> (start resolution, number of x2 resampling stages)
_LAYOUTS: dict[int, tuple[int, int]] = {28: (7, 2), 32: (4, 3)}


def _check_args(image_size: int, **positive: float | None) -> tuple[int, int]:
    if image_size not in _LAYOUTS:
        raise ValueError(f"Invalid image_size: {image_size}; expected one of {sorted(_LAYOUTS)}")
    for name, value in positive.items():
        if value is not None and value <= 0:
            raise ValueError(f"Invalid {name}: {value}; expected a positive number")
    return _LAYOUTS[image_size]


def _init_normal(module: nn.Module, std: float | None) -> None:
    """The reference's N(0, std) weights and zero biases; ``None`` keeps PyTorch's default init."""
    if std is None:
        return
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """Linear projection to a small feature map, then stride-2 transposed convolutions up to the image.

    Args:
        latent_dim: Size of the latent vector z (reference: 128).
        channels: Image channels (1 for MNIST, 3 for CIFAR-10).
        image_size: Output resolution, 28 or 32.
        base_width: Channels of the last hidden feature map; earlier maps are 2x, 4x wider (reference: 128).
        batch_norm: BatchNorm after the projection and after each hidden transposed convolution
            (reference: on). Plain BatchNorm; the trainer may convert it to SyncBatchNorm.
        init_std: Std of the N(0, init_std) weight init with zero biases (reference: 0.02); None keeps
            PyTorch's default initialisation.
    """

    def __init__(self, latent_dim: int = 128, channels: int = 1, image_size: int = 28, base_width: int = 64,
                 batch_norm: bool = True, init_std: float | None = 0.02) -> None:
        start, stages = _check_args(image_size, latent_dim=latent_dim, channels=channels, base_width=base_width,
                                    init_std=init_std)
        super().__init__()
        self.latent_dim = latent_dim
        self.output_shape: tuple[int, ...] = (channels, image_size, image_size)
        width = base_width * 2 ** (stages - 1)
        self._start = (width, start, start)
        features = width * start * start
        self.project = nn.Sequential(
            nn.Linear(latent_dim, features),
            nn.BatchNorm1d(features) if batch_norm else nn.Identity(),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        for _ in range(stages - 1):
            layers += [
                nn.ConvTranspose2d(width, width // 2, 4, stride=2, padding=1),
                nn.BatchNorm2d(width // 2) if batch_norm else nn.Identity(),
                nn.ReLU(),
            ]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1), nn.Tanh()]
        self.upsample = nn.Sequential(*layers)
        _init_normal(self, init_std)

    def forward(self, z: Tensor) -> Tensor:
        return self.upsample(self.project(z).view(-1, *self._start))


class DCGANDiscriminator(nn.Module):
    """Stride-2 convolutions down to a small feature map, then one linear score per sample.

    Args:
        channels: Image channels (1 for MNIST, 3 for CIFAR-10).
        image_size: Input resolution, 28 or 32.
        base_width: Channels of the first convolution; later ones are 2x, 4x wider (reference: 128).
        batch_norm: BatchNorm after every convolution but the first (reference: off by default).
        negative_slope: LeakyReLU slope (reference: 0.01, PyTorch's ``F.leaky_relu`` default).
        init_std: Std of the N(0, init_std) weight init with zero biases (reference: 0.02); None keeps
            PyTorch's default initialisation.
        features: Outputs per sample: 1 gives one score, ``(N,)``; more give features ``(N, features)`` for a
            feature critic's loss (``loss: mmd``; 16 in Binkowski et al.'s MMD GAN).
    """

    def __init__(self, channels: int = 1, image_size: int = 28, base_width: int = 64, batch_norm: bool = False,
                 negative_slope: float = 0.01, init_std: float | None = 0.02, features: int = 1) -> None:
        start, stages = _check_args(image_size, channels=channels, base_width=base_width, init_std=init_std)
        if isinstance(features, bool) or not isinstance(features, int) or features < 1:
            raise ValueError(f"Invalid features: {features!r}; expected an integer >= 1")
        if negative_slope < 0:
            raise ValueError(f"Invalid negative_slope: {negative_slope}; expected a number >= 0")
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, base_width, 4, stride=2, padding=1),
                                   nn.LeakyReLU(negative_slope)]
        width = base_width
        for _ in range(stages - 1):
            layers += [
                nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
                nn.BatchNorm2d(2 * width) if batch_norm else nn.Identity(),
                nn.LeakyReLU(negative_slope),
            ]
            width *= 2
        self.features = nn.Sequential(*layers)
        self.score = nn.Linear(width * start * start, features)
        self.num_features = features
        _init_normal(self, init_std)

    def forward(self, x: Tensor) -> Tensor:
        out = self.score(torch.flatten(self.features(x), 1))
        return out.squeeze(-1) if self.num_features == 1 else out
