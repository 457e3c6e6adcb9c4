"""Preprocessing of image tensors: scaling, binarization, validation splits."""

from __future__ import annotations

import torch

from probgen import checks
from probgen.data.draws import rand_like
from probgen.errors import ConfigError, DataError

BINARIZE_CHOICES = ("none", "dynamic", "static")


def to_unit_interval(images: torch.Tensor) -> torch.Tensor:
    """uint8 images ``(N, H, W)`` or ``(N, C, H, W)`` -> float32 ``(N, C, H, W)`` in [0, 1]."""
    if images.dtype != torch.uint8:
        raise DataError(f"expected uint8 images, got {images.dtype}.")
    if images.dim() == 3:
        images = images.unsqueeze(1)
    elif images.dim() != 4:
        raise DataError(
            f"expected images of shape (N, H, W) or (N, C, H, W), got {tuple(images.shape)}."
        )
    return images.float().div_(255.0)


def binarize_sample(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw x_bin ~ Bernoulli(x) for grey levels x in [0, 1] (on ``x``'s device: a CPU
    generator drives CPU tensors, an accelerator its own stream; :mod:`probgen.data.draws`)."""
    return (rand_like(x, generator) < x).to(x.dtype)


def dynamic_binarization(batch: tuple, generator: torch.Generator | None = None) -> tuple:
    """Batch transform: resample the binarization of the first tensor (the images) each draw.

    Every draw is binary whatever the data, so checking one draw of the transformed data
    checks them all (``one_draw_checks``: a fit loop may check the data so once instead
    of every batch)."""
    return (binarize_sample(batch[0], generator),) + tuple(batch[1:])


dynamic_binarization.one_draw_checks = True


def static_binarize(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """One fixed binarization of ``images`` (the same for a given seed)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    u = torch.rand(images.shape, generator=g).to(images.device)
    return (u < images).to(images.dtype)


def check_binarize(binarize: str) -> str:
    return checks.choice("binarize", binarize, BINARIZE_CHOICES)


def split_indices(n: int, val_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``range(n)`` into (train, validation) index tensors."""
    if not 0 <= val_size < n:
        raise ConfigError(f"val_size must be in [0, {n}), got {val_size}.")
    g = torch.Generator(device="cpu").manual_seed(seed)
    order = torch.randperm(n, generator=g)
    return order[val_size:].sort().values, order[:val_size].sort().values
