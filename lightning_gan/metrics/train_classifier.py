"""Train (or test) the digit classifier whose features the digit FID / KID / IS use.

    python -m lightning_gan.metrics.train_classifier --dataset mnist --root ../shared/data/mnist \
        --out lightning_gan/metrics/weights/classifier_mnist.pt
    python -m lightning_gan.metrics.train_classifier --dataset digits --out classifier_digits.pt
    python -m lightning_gan.metrics.train_classifier --dataset mnist --root ../shared/data/mnist --test-only \
        --out lightning_gan/metrics/weights/classifier_mnist.pt

The data come from the project's data modules (local IDX files, or scikit-learn's digits), scaled to
[-1, 1] exactly as the GAN sees them; the test split is MNIST's 10k test set, or DigitsDataModule's
held-out 10 % (seed 0). Plain PyTorch loop: a classifier needs no game machinery. On a busy machine
``--threads 1`` is often the fastest (small convolutions; the shipped files were trained that way).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_gan.metrics.classifier import DATASETS, DigitClassifier, load_classifier, save_classifier

__all__ = ["TrainingConfig", "accuracy", "load_split", "main", "train_classifier"]


@dataclass(frozen=True)
class TrainingConfig:
    """Adam with a cosine learning-rate decay over ``epochs`` passes; defaults per data set in ``_DEFAULTS``."""

    epochs: int = 3
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    num_features: int = 128
    seed: int = 0


_DEFAULTS = {
    "mnist": TrainingConfig(),
    "fashion-mnist": TrainingConfig(epochs=5),
    "digits": TrainingConfig(epochs=30, batch_size=64, num_features=64),
}


def load_split(dataset: str, root: str | None, split: str) -> tuple[Tensor, Tensor]:
    """Images (N, 1, S, S) in [-1, 1] and labels of the ``"train"`` or ``"test"`` split."""
    if split not in ("train", "test"):
        raise ValueError(f"Invalid split: {split!r}; expected 'train' or 'test'")
    if dataset == "digits":
        from lightning_gan.data import DigitsDataModule

        dm = DigitsDataModule()
    elif dataset in ("mnist", "fashion-mnist"):
        if root is None:
            raise ValueError(f"Invalid root: None; {dataset} needs --root, the folder of its four IDX files")
        from lightning_gan.data import MNISTDataModule

        dm = MNISTDataModule(root=root, dataset=dataset)  # type: ignore[arg-type]
    else:
        raise ValueError(f"Invalid dataset: {dataset!r}; expected one of {sorted(DATASETS)}")
    dm.setup("fit")
    data = dm.train_set if split == "train" else dm.val_set
    labels = dm.train_labels if split == "train" else dm.val_labels
    x = data.data  # type: ignore[union-attr]
    x = x.float().div(127.5).sub(1.0) if x.dtype == torch.uint8 else x.float()
    return x, labels  # type: ignore[return-value]


@torch.no_grad()
def accuracy(classifier: DigitClassifier, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``images`` whose arg-max logit is the label (eval mode)."""
    was_training = classifier.training
    classifier.eval()
    correct = sum(int((classifier(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
                  for i in range(0, len(images), batch_size))
    classifier.train(was_training)
    return correct / len(images)


def train_classifier(images: Tensor, labels: Tensor, config: TrainingConfig = TrainingConfig(),
                     log: bool = False) -> DigitClassifier:
    """A :class:`DigitClassifier` for ``images`` (N, 1, S, S) in [-1, 1], deterministic given ``config.seed``."""
    if images.dim() != 4 or images.shape[1] != 1 or images.shape[-1] not in (28, 8):
        raise ValueError(f"Invalid images: shape {tuple(images.shape)}; expected (N, 1, 28, 28) or (N, 1, 8, 8)")
    if config.epochs < 1:
        raise ValueError(f"Invalid epochs: {config.epochs}; expected an integer >= 1")
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)  # initialisation and dropout
    classifier = DigitClassifier(input_size=images.shape[-1], num_features=config.num_features,
                                 num_classes=int(labels.max()) + 1)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * (len(images) // config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    classifier.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(order) - config.batch_size + 1, config.batch_size):
            batch = order[start:start + config.batch_size]
            loss = F.cross_entropy(classifier(images[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.detach().item() * len(batch)
        if log:
            print(f"epoch {epoch + 1}/{config.epochs}: train loss {total / len(order):.4f}", flush=True)
    return classifier.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lightning_gan.metrics.train_classifier", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    parser.add_argument("--root", help="folder of the four IDX files (mnist, fashion-mnist); a relative one is "
                        "relative to the repository root")
    parser.add_argument("--out", required=True, help="weights file to write (or to test with --test-only)")
    parser.add_argument("--epochs", type=int, help="passes over the training split (default per data set)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice, one per core)")
    parser.add_argument("--test-only", action="store_true", help="only report the test accuracy of --out")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"Invalid threads: {args.threads}; expected an integer >= 1")
        torch.set_num_threads(args.threads)

    test_x, test_y = load_split(args.dataset, args.root, "test")
    if args.test_only:
        classifier, meta = load_classifier(args.out, args.dataset)
        print(f"{args.dataset}: test accuracy {accuracy(classifier, test_x, test_y):.4f} on {len(test_y)} images "
              f"({args.out}; stored: {meta['info'].get('test_accuracy')})")
        return
    train_x, train_y = load_split(args.dataset, args.root, "train")
    defaults = _DEFAULTS[args.dataset]
    config = TrainingConfig(**{**defaults.__dict__, "seed": args.seed,
                               **({"epochs": args.epochs} if args.epochs is not None else {})})
    began = time.perf_counter()
    classifier = train_classifier(train_x, train_y, config, log=True)
    seconds = time.perf_counter() - began
    test_accuracy = accuracy(classifier, test_x, test_y)
    save_classifier(classifier, args.out, args.dataset, test_accuracy=test_accuracy, test_size=len(test_y),
                    train_seconds=round(seconds, 1), threads=torch.get_num_threads(), **config.__dict__)
    print(f"{args.dataset}: test accuracy {test_accuracy:.4f} on {len(test_y)} images, trained in {seconds:.0f} s "
          f"on {torch.get_num_threads()} threads; wrote {args.out}")


if __name__ == "__main__":
    main()
