"""The density-ratio estimate of AdaGAN: a classifier of training points against samples of the current mixture.

The reweighting needs h(x) = dP_mixture / dP_data at each training point. As the reference does (tolstikhin/adagan
``adagan.py``, ``AdaGan._get_prob_real_data``; ``gan.py``, ``ToyGan._train_mixture_discriminator_internal``), a
classifier with the discriminator's architecture (fresh weights) learns to tell the N training points from N samples
of the mixture, with the logistic loss on real (label 1) and fake (label 0) minibatches of ``batch_size`` each, for
``epochs`` epochs of N // batch_size steps; D(x) = sigmoid(logit) on every training point then gives
h = (1 - D) / (D + 1e-8) (:func:`~lightning_gan.adagan.weights.density_ratios`). Differences from the reference:
each epoch walks one random permutation of the real and of the fake points (the reference draws every minibatch anew
without replacement), and the optimizer is Adam with (lr, beta1) given here (the reference's shared ``ops.optimizer``).

Everything is seeded (one ``torch.Generator`` for the mixture's latents and the minibatch order, ``torch.manual_seed``
inside a forked RNG for the classifier's initialisation), so a resumed AdaGAN run that recomputes a reweighting gets
the same weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from lightning_gan.data.base import IndexedTensorDataset, to_unit_range

__all__ = ["ClassifierConfig", "mixture_samples", "prob_real", "training_rows"]


@dataclass(frozen=True)
class ClassifierConfig:
    """Settings of the real-vs-mixture classifier (the ``adagan.classifier_*`` options)."""

    epochs: int = 5
    batch_size: int | None = None  # None: the data's batch_size
    lr: float = 8e-4               # adagan_gmm.py: learning_rate 0.0008
    beta1: float = 0.5             # adagan_gmm.py: adam_beta1 0.5

    def validate(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"Invalid adagan.classifier_epochs: {self.epochs}; expected an integer >= 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"Invalid adagan.classifier_batch_size: {self.batch_size}; expected an integer >= 1")
        if not self.lr > 0:
            raise ValueError(f"Invalid adagan.classifier_lr: {self.lr}; expected a number > 0")
        if not -1 < self.beta1 < 1:
            raise ValueError(f"Invalid adagan.classifier_beta1: {self.beta1}; expected -1 < beta1 < 1")


def training_rows(dataset: Dataset, index: Tensor) -> Tensor:
    """The training samples ``index`` as a float tensor (uint8 images scaled to [-1, 1], as the loaders do)."""
    if isinstance(dataset, IndexedTensorDataset):
        x = dataset.data[index]
        return to_unit_range(x) if x.dtype == torch.uint8 else x
    return torch.stack([dataset[int(i)][0] for i in index])


@torch.no_grad()
def mixture_samples(generator: nn.Module, n: int, seed: int, batch_size: int = 1024,
                    device: torch.device | str = "cpu") -> Tensor:
    """``n`` samples of ``generator`` (eval mode) from latents of a generator seeded with ``seed``, on the CPU."""
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator.latent_dim, generator=rng)
    was_training = generator.training
    generator.eval()
    try:
        return torch.cat([generator(chunk.to(device)).float().cpu() for chunk in z.split(batch_size)])
    finally:
        generator.train(was_training)


def _reset(module: nn.Module) -> None:
    for layer in module.modules():
        if layer is not module and hasattr(layer, "reset_parameters"):
            layer.reset_parameters()


def prob_real(architecture: nn.Module, dataset: Dataset, fake: Tensor, config: ClassifierConfig, seed: int,
              default_batch_size: int, device: torch.device | str = "cpu") -> Tensor:
    """D(x_i), the probability of "real" of a classifier trained on ``dataset`` vs ``fake``, at every training point.

    Args:
        architecture: the run's discriminator; a deep copy with fresh weights is trained (it must give one logit per
            sample).
        fake: N samples of the current mixture (same shape per sample as the data).
    """
    config.validate()
    n_real, n_fake = len(dataset), len(fake)  # type: ignore[arg-type]
    batch = config.batch_size or default_batch_size
    batch = min(batch, n_real, n_fake)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = copy.deepcopy(architecture).to(device)
        _reset(classifier)
    classifier.train()
    optimizer = torch.optim.Adam(classifier.parameters(), lr=config.lr, betas=(config.beta1, 0.999))
    loss = nn.BCEWithLogitsLoss()
    rng = torch.Generator().manual_seed(seed + 1)
    steps = max(1, n_real // batch)
    for _ in range(config.epochs):
        real_order, fake_order = torch.randperm(n_real, generator=rng), torch.randperm(n_fake, generator=rng)
        for k in range(steps):
            real = training_rows(dataset, real_order[k * batch:(k + 1) * batch]).to(device)
            fake_batch = fake[fake_order[(k * batch) % n_fake:][:batch]].to(device)
            logits_real = _logits(classifier(real))
            logits_fake = _logits(classifier(fake_batch))
            value = loss(logits_real, torch.ones_like(logits_real)) + loss(logits_fake, torch.zeros_like(logits_fake))
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
    classifier.eval()
    out = []
    with torch.no_grad():
        for chunk in torch.arange(n_real).split(1024):
            out.append(torch.sigmoid(_logits(classifier(training_rows(dataset, chunk).to(device)))).double().cpu())
    return torch.cat(out)


def _logits(output: Tensor) -> Tensor:
    if output.dim() > 1 and output[0].numel() != 1:
        raise ValueError(f"Invalid model.discriminator for adagan: it gives {output[0].numel()} values per sample; the "
                         "real-vs-mixture classifier, built from its architecture, needs one logit per sample")
    return output.reshape(-1)
