"""Training of the MNIST classifier whose penultimate layer is the feature space of probgen's
sample-quality metrics (:mod:`probgen.metrics.quality`), and its retraining command.

The network and its weights file live in :mod:`probgen.nn.classifier`; here it is trained
by :func:`probgen.fit` (a :class:`~probgen.train.LossStep` of the cross-entropy) on MNIST
with random shifts of up to two pixels (:class:`~probgen.data.RandomShift`), Adam and a
one-cycle learning rate (Smith & Topin 2019, "Super-Convergence"). The shipped weights
(``probgen/metrics/_weights/mnist_classifier.pt``, SHA-256 in ``SHA256SUMS`` beside them)
are retrained by::

    OMP_NUM_THREADS=1 python -m probgen.metrics.classifier_training \
        --out probgen/metrics/_weights/mnist_classifier.pt

which trains on the 60,000 bundled MNIST training images (fixed seed; the test set is used
only for the accuracy printed at the end) and writes the weights and their SHA-256. (The
shipped file was made by the same recipe written as a plain PyTorch loop, which drew its
shuffles and shifts in another order: a retrained file has other weights of the same
accuracy, and another SHA-256.)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from probgen import checks
from probgen.data import RandomShift, TensorData, image_splits
from probgen.metrics.report import seeded
from probgen.nn.classifier import MNISTClassifier, save_classifier
from probgen.train import LossStep, fit


def _cross_entropy(net, x, y):
    return F.cross_entropy(net(x), y)


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int = 5,
    batch_size: int = 128,
    lr: float = 3e-3,
    max_shift: int = 2,
    seed: int = 0,
    log=print,
) -> MNISTClassifier:
    """Train :class:`~probgen.nn.classifier.MNISTClassifier` on ``images`` ``(N, 1, 28, 28)``
    in [0, 1] and ``labels`` with :func:`probgen.fit`.

    Adam with a one-cycle learning-rate schedule peaking at ``lr``, random shifts of up to
    ``max_shift`` pixels drawn per batch. Initialisation, shuffling, shifts and dropout all
    follow ``seed``, in a forked random state: the caller's generators are left as they
    were. ``log`` gets one line per epoch. Returns the network, in eval mode, where the
    images are.
    """
    epochs = checks.positive_int("epochs", epochs)
    batch_size = checks.positive_int("batch_size", batch_size)
    with seeded(seed, images.device):
        net = MNISTClassifier().to(images.device)
        data = TensorData(images, labels)
        if max_shift:
            data = data.with_transform(RandomShift(max_shift, images.shape[1:]))

        def report(entry):
            log(
                f"epoch {entry['epoch'] + 1}/{epochs}: train loss {entry['train_loss']:.4f} "
                f"({entry['seconds']:.0f} s)"
            )

        # seed=None: fit draws its loader's seed from the (forked, seeded) global stream
        fit(
            LossStep(net, _cross_entropy),
            data,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            lr_schedule="onecycle",
            device=str(images.device),
            seed=None,
            patience=None,
            restore_best=False,
            progress=False,
            verbose=False,
            callbacks=[report],
        )
    return net.eval()


@torch.no_grad()
def accuracy(
    net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 100
) -> float:
    """Fraction of ``images`` whose arg-max class is ``labels`` (``net`` in eval mode, its
    mode given back)."""
    batch_size = checks.positive_int("batch_size", batch_size)
    was_training = net.training
    net.eval()
    correct = 0
    try:
        for i in range(0, len(images), batch_size):
            correct += int(
                (net(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum()
            )
    finally:
        net.train(was_training)
    return correct / len(images)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m probgen.metrics.classifier_training",
        description="Train the MNIST classifier behind probgen's FID/KID (MNIST-classifier "
        "features).",
    )
    parser.add_argument(
        "--out", required=True, help="weights file to write (SHA256SUMS goes beside it)"
    )
    positive = checks.arg(checks.positive_int)
    parser.add_argument("--epochs", type=positive, default=5)
    parser.add_argument("--batch-size", type=positive, default=128)
    parser.add_argument("--lr", type=checks.arg(checks.positive_float), default=3e-3)
    parser.add_argument("--max-shift", type=checks.arg(checks.nonnegative_int), default=2)
    parser.add_argument("--seed", type=checks.arg(checks.seed), default=0)
    parser.add_argument("--threads", type=positive, default=1)
    parser.add_argument(
        "--limit", type=positive, default=None, help="train on the first N images (quick runs)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    splits = image_splits("mnist", val_size=0, limit=args.limit)
    train_x, train_y = splits["train"].tensors
    test_x, test_y = splits["test"].tensors
    start = time.perf_counter()
    net = train_classifier(
        train_x,
        train_y,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        max_shift=args.max_shift,
        seed=args.seed,
    )
    seconds = time.perf_counter() - start
    acc = accuracy(net, test_x, test_y)
    digest = save_classifier(
        net,
        args.out,
        meta={
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "max_shift": args.max_shift,
            "seed": args.seed,
            "train_images": len(train_x),
            "train_seconds": round(seconds, 1),
            "test_accuracy": acc,
            "torch": str(torch.__version__),
        },
    )
    print(
        f"trained in {seconds:.0f} s on {len(train_x)} images; test accuracy {acc:.4f} "
        f"({len(test_x)} images)"
    )
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KiB), SHA-256 {digest}")


if __name__ == "__main__":
    main()


__all__ = ["accuracy", "main", "train_classifier"]
