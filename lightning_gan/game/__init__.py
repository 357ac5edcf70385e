"""The math of the game, free of Lightning: losses, the vector field, GANs and toy games as games."""

from lightning_gan.game.field import FieldValue, flat_norm, gan_field, trainable_parameters
from lightning_gan.game.gan import GANGame, LatentSampler
from lightning_gan.game.losses import (
    GANLoss,
    HingeLoss,
    MinimaxLoss,
    NonSaturatingLoss,
    WGANGPLoss,
    WGANLoss,
    clip_weights_,
    get_loss,
)
from lightning_gan.game.step import GameStep
from lightning_gan.game.toys import Bilinear1D, BilinearGame, DiracGAN, StochasticBilinear, ToyGame

__all__ = [
    "FieldValue", "flat_norm", "gan_field", "trainable_parameters",
    "GANGame", "LatentSampler", "GameStep",
    "GANLoss", "MinimaxLoss", "NonSaturatingLoss", "WGANLoss", "WGANGPLoss", "HingeLoss", "clip_weights_", "get_loss",
    "ToyGame", "Bilinear1D", "BilinearGame", "StochasticBilinear", "DiracGAN",
]
