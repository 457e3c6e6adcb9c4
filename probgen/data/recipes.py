"""Data recipes: the training sets that several examples (and users) build from the splits.

Each recipe returns a :class:`~probgen.data.TensorData` that records how it was made in
its ``settings`` (:func:`with_settings`): the fit loop keeps the training data's settings
in its checkpoints, and a resumed run refuses data made otherwise.
"""

from __future__ import annotations

from typing import Any

import torch

from probgen import checks
from probgen.data.augment import RandomShift
from probgen.data.datasets import image_splits
from probgen.data.dequantize import dequantized
from probgen.data.labels import labelled_split
from probgen.data.tensors import TensorData
from probgen.errors import DataError, DataNotFoundError

#: the 1-D toy of a GAN's first test (:func:`toy1d`): N(-1, 1)
TOY1D_MEAN = -1.0
TOY1D_STD = 1.0


def with_settings(data, base: dict[str, Any] | None = None, **settings):
    """``data`` (a :class:`~probgen.data.TensorData`) recording how it was made: ``base``
    (another split's ``settings``) updated by ``settings``. The fit loop keeps the training
    data's settings in its checkpoints and ``--resume`` refuses other ones; data that a
    script derives (a subset, a task, precomputed inputs) says so here. Returns ``data``.

    Examples:
        >>> import torch
        >>> from probgen.data import TensorData
        >>> from probgen.data.recipes import with_settings
        >>> base = {"dataset": "mnist", "seed": 0}
        >>> with_settings(TensorData(torch.zeros(10, 784)), base, limit=10).settings
        {'dataset': 'mnist', 'seed': 0, 'limit': 10}
    """
    data.settings = {**(base or {}), **settings}
    return data


def download_splits(
    name: str, *, root: str | None = None, download: bool = True, **kwargs
) -> dict[str, TensorData]:
    """:func:`~probgen.data.image_splits` of a data set that may have to be downloaded
    (CIFAR-10 through torchvision): a download that cannot reach the network, or files
    that are missing, is one :class:`~probgen.errors.DataNotFoundError` that says where to
    put them."""
    try:
        return image_splits(name, root=root, download=download, **kwargs)
    except OSError as err:  # a download that could not reach the network
        raise DataNotFoundError(
            f"{name} is not under {root or 'the cache folder'} and could "
            f"not be downloaded ({err}); copy the files there, or run "
            f"where the network is reachable."
        ) from None


def toy1d(size: int, seed: int = 0, device=None) -> TensorData:
    """``size`` points of N(-1, 1), ``(size, 1)``, drawn from a generator seeded with
    ``seed`` (the global random state is left alone): the 1-D toy on which a GAN's
    generator must learn a mean and a spread (Goodfellow et al. 2014, "Generative
    Adversarial Nets", Figure 1).

    Examples:
        >>> from probgen.data.recipes import toy1d
        >>> data = toy1d(1000, seed=0)
        >>> x = data.tensors[0]
        >>> x.shape, round(x.mean().item(), 2), round(x.std().item(), 2), data.settings
        (torch.Size([1000, 1]), -0.97, 1.03, {'dataset': 'toy1d', 'size': 1000, 'seed': 0})
    """
    size, seed = checks.positive_int("size", size), checks.seed("seed", seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 1, generator=g) * TOY1D_STD + TOY1D_MEAN
    return with_settings(TensorData(x.to(device)), dataset="toy1d", size=size, seed=seed)


def semi_supervised(
    train: TensorData,
    labels: torch.Tensor | int,
    labelled_share: float,
    *,
    num_classes: int = 10,
    seed: int = 0,
) -> tuple[TensorData, int]:
    """The training images with the partial ``labels`` (-1: unlabelled), the labelled
    images repeated to make about ``labelled_share`` of the set, so that most batches hold
    some (Makhzani et al. 2015, "Adversarial Autoencoders", section 5, train on labelled
    and unlabelled mini-batches alike).

    Args:
        train: the training images, with their true labels as second tensor when
            ``labels`` is a count.
        labels: ``(N,)`` partial labels, or how many of the true ones to keep: as many of
            each of the ``num_classes`` classes, drawn with ``seed``
            (:func:`probgen.data.labels.labelled_split`).
        labelled_share: about this share of the returned set is labelled images.
        num_classes: the classes of a count's draw.
        seed: the seed of a count's draw (a generator of its own: torch's global one is
            left alone).

    Returns:
        ``(data, repeats)``: the unlabelled images, then the labelled ones ``repeats``
        times; the settings record ``num_labelled`` and ``labelled_share``.

    Examples:
        Two labelled images of ten, to make about half of the set: five copies of each
        beside the eight unlabelled ones:

        >>> import torch
        >>> from probgen.data import TensorData
        >>> from probgen.data.recipes import semi_supervised
        >>> labels = torch.tensor([3, 7] + [-1] * 8)
        >>> data, repeats = semi_supervised(TensorData(torch.zeros(10, 784)), labels, 0.5)
        >>> repeats, len(data), data.tensors[1][6:].tolist()
        (5, 18, [-1, -1, 3, 7, 3, 7, 3, 7, 3, 7, 3, 7])
    """
    x = train.tensors[0]
    if isinstance(labels, int) and not isinstance(labels, bool):
        if len(train.tensors) < 2:
            raise DataError(
                "semi_supervised draws its labelled images from the true labels: "
                "give train as (images, labels)."
            )
        labels = labelled_split(
            train.tensors[1].cpu(), labels, num_classes, torch.Generator().manual_seed(seed)
        )
    if not torch.is_tensor(labels) or labels.shape != (x.shape[0],):
        raise DataError(
            f"semi_supervised needs one label per training image "
            f"({x.shape[0]}), got {getattr(labels, 'shape', type(labels))}."
        )
    labelled_share = checks.fraction("labelled_share", labelled_share)
    labels = labels.to(x.device)
    keep = labels >= 0
    n_lab = int(keep.sum())
    if n_lab == 0:
        raise DataError("semi_supervised needs some labelled images (labels >= 0), got none.")
    repeats = max(1, round(labelled_share * x.shape[0] / ((1 - labelled_share) * n_lab)))
    xs = torch.cat([x[~keep]] + [x[keep]] * repeats)
    ys = torch.cat([labels[~keep]] + [labels[keep]] * repeats)
    data = with_settings(
        TensorData(xs, ys, transform=train.transform),
        getattr(train, "settings", None),
        num_labelled=n_lab,
        labelled_share=labelled_share,
    )
    return data, repeats


def shifted(train: TensorData, max_shift: int, only_labelled: bool = False) -> TensorData:
    """The training images moved by a random offset of up to ``max_shift`` pixels per
    axis, drawn per batch (:class:`~probgen.data.RandomShift`; with ``only_labelled``, only
    the images of label >= 0); ``train`` itself when ``max_shift`` is 0."""
    if not checks.nonnegative_int("max_shift", max_shift):
        return train
    shift = RandomShift(max_shift, train.tensors[0].shape[1:], only_labelled=only_labelled)
    return with_settings(
        train.with_transform(shift),
        getattr(train, "settings", None),
        augment_shift=max_shift,
        augment_which="labelled" if only_labelled else "all",
    )


def dequantized_splits(
    splits: dict[str, TensorData], seed: int = 0, eval_size: int | None = None
) -> dict[str, Any]:
    """Image splits for a density model of continuous data: ``train`` dequantized afresh
    at every draw, ``val`` and ``test`` once each with the seeds ``seed + 1`` and ``seed +
    2`` (comparable runs; ``val`` is ``None`` without a validation split), ``test`` cut to
    its first ``eval_size`` images; and ``test_images``, those images as they were (for
    an FID)."""
    seed = checks.seed("seed", seed)
    eval_size = checks.optional(
        checks.positive_int, "eval_size", eval_size, hint="or None for every test image"
    )
    test = splits["test"]
    if eval_size is not None:
        test = test.subset(slice(0, eval_size))
    val = splits.get("val")
    return {
        "train": dequantized(splits["train"]),
        "val": dequantized(val, seed=seed + 1) if val is not None and len(val) else None,
        "test": dequantized(test, seed=seed + 2),
        "test_images": test.tensors[0],
    }


def balanced_labels(num_classes: int, n: int, device=None) -> torch.Tensor:
    """``n`` labels, ``ceil(n / num_classes)`` of each class in turn (the last one short):
    the labels of a class-conditional model's samples.

    Examples:
        >>> from probgen.data.recipes import balanced_labels
        >>> balanced_labels(3, 7)
        tensor([0, 0, 0, 1, 1, 1, 2])
    """
    num_classes = checks.positive_int("num_classes", num_classes)
    n = checks.nonnegative_int("n", n)
    return torch.arange(num_classes, device=device).repeat_interleave(-(-n // num_classes))[:n]


__all__ = [
    "TOY1D_MEAN",
    "TOY1D_STD",
    "balanced_labels",
    "dequantized_splits",
    "download_splits",
    "semi_supervised",
    "shifted",
    "toy1d",
    "with_settings",
]
