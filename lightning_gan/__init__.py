"""lightning-gan: GAN training as a two-player game, on one GPU or many."""

__version__ = "0.1.0"
