"""The players: shapes, ranges, argument validation, and the Gidel et al. CIFAR-10 DCGAN layout."""

from __future__ import annotations

import pytest
import torch
from jsonargparse import ArgumentParser
from torch import nn

from lightning_gan.models import (
    DCGANDiscriminator,
    DCGANGenerator,
    MLPDiscriminator,
    MLPGenerator,
    ResNetDiscriminator32,
    ResNetGenerator32,
)

PAIRS = [
    pytest.param(lambda: DCGANGenerator(latent_dim=16, channels=1, image_size=28, base_width=8),
                 lambda: DCGANDiscriminator(channels=1, image_size=28, base_width=8), id="dcgan-28-c1"),
    pytest.param(lambda: DCGANGenerator(latent_dim=16, channels=3, image_size=28, base_width=8),
                 lambda: DCGANDiscriminator(channels=3, image_size=28, base_width=8, batch_norm=True),
                 id="dcgan-28-c3"),
    pytest.param(lambda: DCGANGenerator(latent_dim=16, channels=1, image_size=32, base_width=8, batch_norm=False),
                 lambda: DCGANDiscriminator(channels=1, image_size=32, base_width=8), id="dcgan-32-c1"),
    pytest.param(lambda: DCGANGenerator(latent_dim=16, channels=3, image_size=32, base_width=8),
                 lambda: DCGANDiscriminator(channels=3, image_size=32, base_width=8), id="dcgan-32-c3"),
    pytest.param(lambda: ResNetGenerator32(latent_dim=16, channels=1, base_width=8),
                 lambda: ResNetDiscriminator32(channels=1, base_width=8), id="resnet-32-c1"),
    pytest.param(lambda: ResNetGenerator32(latent_dim=16, channels=3, base_width=8),
                 lambda: ResNetDiscriminator32(channels=3, base_width=8), id="resnet-32-c3"),
    pytest.param(lambda: MLPGenerator(), lambda: MLPDiscriminator(), id="mlp-2d"),
    pytest.param(lambda: MLPGenerator(hidden_dim=16, num_layers=4, batch_norm=True, init_std=0.02),
                 lambda: MLPDiscriminator(hidden_dim=8, activation="maxout", maxout_pieces=5, init_std=0.02),
                 id="mlp-2d-protocol-players"),
]


@pytest.mark.parametrize(("make_generator", "make_discriminator"), PAIRS)
def test_players_have_the_documented_shapes_and_ranges(make_generator, make_discriminator):
    torch.manual_seed(0)
    generator, discriminator = make_generator(), make_discriminator()
    z = torch.randn(5, generator.latent_dim)
    x = generator(z)
    assert x.shape == (5, *generator.output_shape)
    if not isinstance(generator, MLPGenerator):  # image generators end in tanh
        assert x.min() >= -1 and x.max() <= 1
    scores = discriminator(x)
    assert scores.shape == (5,)
    assert scores.dtype == torch.float32
    # Both players are differentiable end to end (the game field needs both gradients).
    scores.sum().backward()
    assert all(p.grad is not None for p in generator.parameters())
    assert all(p.grad is not None for p in discriminator.parameters())


@pytest.mark.parametrize("image_size", [28, 32])
@pytest.mark.parametrize("channels", [1, 3])
def test_dcgan_default_width_output_shape(image_size, channels):
    generator = DCGANGenerator(channels=channels, image_size=image_size)
    discriminator = DCGANDiscriminator(channels=channels, image_size=image_size)
    x = generator(torch.randn(2, 128))
    assert x.shape == (2, channels, image_size, image_size)
    assert discriminator(x).shape == (2,)


def test_resnet_default_width_output_shape():
    generator, discriminator = ResNetGenerator32(), ResNetDiscriminator32()
    x = generator(torch.randn(2, 128))
    assert x.shape == (2, 3, 32, 32) and generator.output_shape == (3, 32, 32)
    assert x.abs().max() <= 1
    assert discriminator(x).shape == (2,)


def test_mlp_discriminator_flattens_images():
    discriminator = MLPDiscriminator(input_dim=64, hidden_dim=16, num_layers=2)
    assert discriminator(torch.randn(3, 1, 8, 8)).shape == (3,)


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_dcgan32_matches_the_variational_inequality_gan_reference_layout():
    """Gidel et al. (ICLR 2019) CIFAR-10 DCGAN: z 128, 128 filters, BN in G only, every layer with bias."""
    w, c = 128, 3
    generator = DCGANGenerator(latent_dim=128, channels=c, image_size=32, base_width=w)
    discriminator = DCGANDiscriminator(channels=c, image_size=32, base_width=w)
    reference_g = (
        (128 * 4 * 4 * 4 * w + 4 * 4 * 4 * w) + 2 * 4 * 4 * 4 * w  # Linear + BatchNorm1d
        + (4 * w * 2 * w * 16 + 2 * w) + 2 * 2 * w                  # ConvT 4w->2w + BN
        + (2 * w * w * 16 + w) + 2 * w                              # ConvT 2w->w + BN
        + (w * c * 16 + c)                                          # ConvT w->3
    )
    reference_d = (c * w * 16 + w) + (w * 2 * w * 16 + 2 * w) + (2 * w * 4 * w * 16 + 4 * w) + (4 * 4 * 4 * w + 1)
    assert _param_count(generator) == reference_g
    assert _param_count(discriminator) == reference_d
    assert isinstance(generator.project[1], nn.BatchNorm1d)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in discriminator.modules())
    slopes = {m.negative_slope for m in discriminator.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.01}
    weights = torch.cat([m.weight.flatten() for m in generator.modules() if isinstance(m, nn.ConvTranspose2d)])
    assert abs(weights.std().item() - 0.02) < 0.002  # N(0, 0.02) init as utils.weight_init


def test_no_sync_batchnorm_and_batch_norm_flag_is_respected():
    players = [DCGANGenerator(), DCGANDiscriminator(batch_norm=True), ResNetGenerator32(base_width=8)]
    assert not any(isinstance(m, nn.SyncBatchNorm) for p in players for m in p.modules())
    plain = DCGANGenerator(batch_norm=False)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in plain.modules())
    mlps = [MLPGenerator(), MLPDiscriminator()]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for p in mlps for m in p.modules())


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: DCGANGenerator(image_size=64), "image_size"),
        (lambda: DCGANDiscriminator(image_size=16), "image_size"),
        (lambda: DCGANGenerator(latent_dim=0), "latent_dim"),
        (lambda: DCGANGenerator(base_width=0), "base_width"),
        (lambda: DCGANDiscriminator(channels=0), "channels"),
        (lambda: DCGANDiscriminator(negative_slope=-0.1), "negative_slope"),
        (lambda: DCGANGenerator(init_std=0.0), "init_std"),
        (lambda: ResNetGenerator32(latent_dim=-1), "latent_dim"),
        (lambda: ResNetDiscriminator32(base_width=0), "base_width"),
        (lambda: MLPGenerator(num_layers=0), "num_layers"),
        (lambda: MLPGenerator(output_dim=0), "output_dim"),
        (lambda: MLPDiscriminator(input_dim=0), "input_dim"),
        (lambda: MLPDiscriminator(hidden_dim=0), "hidden_dim"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(make, name):
    with pytest.raises(ValueError, match=f"Invalid {name}: "):
        make()


def test_image_size_error_lists_allowed_values():
    with pytest.raises(ValueError, match=r"expected one of \[28, 32\]"):
        DCGANGenerator(image_size=64)


@pytest.mark.parametrize(
    "cls", [MLPGenerator, MLPDiscriminator, DCGANGenerator, DCGANDiscriminator, ResNetGenerator32,
            ResNetDiscriminator32],
)
def test_players_are_configurable_from_yaml(cls):
    """LightningCLI builds players with jsonargparse from the typed, documented __init__."""
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "player")
    help_text = parser.format_help()
    assert "base_width" in help_text or "hidden_dim" in help_text
    override = "hidden_dim: 8" if cls.__name__.startswith("MLP") else "base_width: 8"
    config = parser.parse_string(f"player:\n  {override}\n")
    player = parser.instantiate(config).player
    assert isinstance(player, cls)


def test_mlp_activation_is_a_choice_named_in_errors():
    from lightning_gan.models import MLPDiscriminator, MLPGenerator

    assert isinstance(MLPGenerator(activation="silu").net[1], torch.nn.SiLU)
    assert isinstance(MLPDiscriminator(activation="elu").net[1], torch.nn.ELU)
    with pytest.raises(ValueError, match="Invalid activation: 'gelu'; expected one of relu, leaky_relu"):
        MLPGenerator(activation="gelu")


def test_mlp_generator_emits_images_in_the_data_range_when_given_a_shape():
    generator = MLPGenerator(latent_dim=4, hidden_dim=8, num_layers=1, image_shape=[1, 8, 8])
    images = generator(10 * torch.randn(5, 4))
    assert images.shape == (5, 1, 8, 8) and generator.output_shape == (1, 8, 8)
    assert images.abs().max() <= 1.0  # tanh: the data modules' [-1, 1]
    with pytest.raises(ValueError, match=r"Invalid image_shape: \[8, 8\]; expected \[C, H, W\]"):
        MLPGenerator(image_shape=[8, 8])
