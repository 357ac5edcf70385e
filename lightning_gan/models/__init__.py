"""The players: generators map z of shape (N, latent_dim) to (N, *output_shape); discriminators
map (N, *shape) to one raw score per sample, shape (N,)."""

from lightning_gan.models.dcgan import DCGANDiscriminator, DCGANGenerator
from lightning_gan.models.mlp import Maxout, MLPDiscriminator, MLPGenerator
from lightning_gan.models.resnet import ResNetDiscriminator32, ResNetGenerator32

__all__ = [
    "DCGANDiscriminator",
    "DCGANGenerator",
    "MLPDiscriminator",
    "MLPGenerator",
    "Maxout",
    "ResNetDiscriminator32",
    "ResNetGenerator32",
]
