"""AdaGAN (Tolstikhin et al., "AdaGAN: Boosting Generative Models", NeurIPS 2017): a mixture of GANs trained one after
another, each on the training data reweighted towards what the mixture so far misses.

One module per job:

- :mod:`~lightning_gan.adagan.weights`: the paper's mixture weight beta_t and data weights (pure functions, float64);
- :mod:`~lightning_gan.adagan.sampler`: weighted minibatches, rank-consistent and resumable;
- :mod:`~lightning_gan.adagan.mixture`: :class:`MixtureGenerator`, the mixture as one generator module;
- :mod:`~lightning_gan.adagan.classifier`: the real-vs-mixture classifier that estimates the density ratios;
- :mod:`~lightning_gan.adagan.component`: one component = one ordinary ``fit`` run (GANCLI) on weighted data;
- :mod:`~lightning_gan.adagan.monitor`: the mode metrics of the mixture so far, logged while a component trains;
- :mod:`~lightning_gan.adagan.run`: the resumable outer loop and the ``lightning-gan adagan`` command.
"""

from lightning_gan.adagan.mixture import MixtureGenerator
from lightning_gan.adagan.sampler import WeightedGameSampler
from lightning_gan.adagan.weights import mixture_weights_after, next_mixture_weight, theory_star_weights

__all__ = ["MixtureGenerator", "WeightedGameSampler", "mixture_weights_after", "next_mixture_weight",
           "theory_star_weights"]
