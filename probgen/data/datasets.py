"""Image data sets, loaded to tensors through torchvision.

MNIST ships with probgen (the four IDX files, package data under
``probgen/data/_bundled/mnist`` with their attribution), so everything runs
offline. On first use they are unpacked into torchvision's raw layout in a
cache folder (``$PROBGEN_DATA`` or ``~/.cache/probgen``) and read with
``torchvision.datasets.MNIST``. Other torchvision data sets download as usual
when ``download=True`` and the machine is online.
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from probgen import checks, files
from probgen.data.preprocess import (
    check_binarize,
    dynamic_binarization,
    split_indices,
    static_binarize,
    to_unit_interval,
)
from probgen.data.tensors import TensorData
from probgen.errors import ConfigError, DataNotFoundError

BUNDLED_MNIST = Path(__file__).parent / "_bundled" / "mnist"
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def default_root() -> Path:
    """Where probgen keeps data sets: ``$PROBGEN_DATA`` or ``~/.cache/probgen``."""
    env = os.environ.get("PROBGEN_DATA")
    return Path(env) if env else Path.home() / ".cache" / "probgen"


def unpack_bundled_mnist(root: str | Path) -> Path:
    """Unpack the bundled MNIST into ``root/MNIST/raw`` (torchvision's layout) if missing."""
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        if not (raw / name).exists():
            # gunzipped to a temporary name, then renamed: a concurrent or killed unpack
            # never leaves a half-written file under the real name (torchvision's
            # extract_archive writes in place)
            with (
                files.replacing(raw / name, clean=False) as tmp,
                gzip.open(BUNDLED_MNIST / f"{name}.gz", "rb") as fin,
                open(tmp, "wb") as fout,
            ):
                shutil.copyfileobj(fin, fout)
    files.write_text(raw / "SOURCE.md", (BUNDLED_MNIST / "SOURCE.md").read_text(), clean=False)
    return raw


def _torchvision_class(name: str):
    import torchvision.datasets as tvd

    classes = {
        "mnist": tvd.MNIST,
        "fashion-mnist": tvd.FashionMNIST,
        "kmnist": tvd.KMNIST,
        "cifar10": tvd.CIFAR10,
    }
    if name not in classes:
        raise ConfigError(f"unknown data set {name!r}; choose one of {sorted(classes)}.")
    return classes[name]


def load_images(
    name: str = "mnist", train: bool = True, root: str | Path | None = None, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a torchvision image data set as ``(images uint8 (N, [C,] H, W), labels int64)``.

    Args:
        name: ``mnist`` (bundled), ``fashion-mnist``, ``kmnist`` or ``cifar10``.
        train: the training split if True, else the test split.
        root: data folder. ``None`` uses the cache folder and, for MNIST, the bundled copy.
        download: let torchvision download a missing data set (needs network).

    Raises:
        DataNotFoundError: the data set is not in ``root`` and ``download`` is False.
    """
    cls = _torchvision_class(name)
    if root is None:
        root = default_root()
        if name == "mnist":
            unpack_bundled_mnist(root)
    root = Path(root)
    try:
        ds = cls(str(root), train=train, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found. You can use download=True ..."
        hint = (
            "probgen ships MNIST: call without `root` (or with an empty folder of your "
            "choice via `probgen.data.unpack_bundled_mnist(root)`) to use the bundled copy"
            if name == "mnist"
            else "pass download=True on a machine with network access, or copy the files there"
        )
        raise DataNotFoundError(
            f"{name} was not found under {root} ({err}). This machine may be offline; {hint}."
        ) from None
    images, labels = ds.data, ds.targets
    if isinstance(images, np.ndarray):  # CIFAR-10: (N, H, W, C) numpy
        images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(labels, dtype=torch.int64)
    return images, labels


def image_splits(
    name: str = "mnist",
    *,
    val_size: int = 10000,
    binarize: str = "none",
    seed: int = 0,
    device: str | torch.device = "cpu",
    root: str | Path | None = None,
    download: bool = False,
    limit: int | None = None,
) -> dict[str, TensorData]:
    """Train / validation / test splits as device-resident :class:`TensorData` of (images, labels).

    Images are float32 ``(N, C, H, W)`` grey levels in [0, 1].

    Args:
        val_size: examples held out of the training set (seeded random split); 0 for none.
        binarize: ``none`` (grey levels), ``dynamic`` (resampled every time an image is
            drawn, i.e. every epoch; evaluation splits get one fixed draw) or ``static``
            (one fixed draw with ``seed`` for every split).
        seed: seed of the split and of static binarization.
        limit: keep only the first ``limit`` examples of each split (quick runs; at least 1).

    Raises:
        ConfigError: a negative ``val_size``, a ``limit`` below 1, a bad seed or
            binarization, an unknown data set.

    Each split records how it was made in ``TensorData.settings`` (data set, split,
    ``val_size``, ``binarize``, ``limit``, ``seed``); the fit loop keeps the training
    split's settings in its checkpoints, and a resumed run refuses other ones.
    """
    check_binarize(binarize)
    val_size = checks.nonnegative_int("val_size", val_size)
    if limit is not None:
        # a negative limit would be used as a slice (all but the last examples)
        limit = checks.positive_int("limit", limit, hint="give None for every example")
    seed = checks.seed("seed", seed)
    out = {}
    tr_images, tr_labels = load_images(name, True, root, download)
    te_images, te_labels = load_images(name, False, root, download)
    if val_size:
        tr_idx, va_idx = split_indices(len(tr_labels), val_size, seed)
        parts = {
            "train": (tr_images[tr_idx], tr_labels[tr_idx]),
            "val": (tr_images[va_idx], tr_labels[va_idx]),
            "test": (te_images, te_labels),
        }
    else:
        parts = {"train": (tr_images, tr_labels), "test": (te_images, te_labels)}
    for k, (images, labels) in parts.items():
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        x = to_unit_interval(images).to(device)
        y = labels.to(device)
        transform: Callable | None = None
        if binarize == "static" or (binarize == "dynamic" and k != "train"):
            x = static_binarize(x, seed + {"train": 0, "val": 1, "test": 2}[k])
        elif binarize == "dynamic":
            transform = dynamic_binarization
        settings = {
            "dataset": name,
            "split": k,
            "val_size": val_size,
            "binarize": binarize,
            "limit": limit,
            "seed": seed,
        }
        out[k] = TensorData(
            x, y, transform=transform, names=("images", "labels"), settings=settings
        )
    return out
