"""Corruptions of image batches: what a denoising or inpainting encoder sees.

A corruption maps clean images ``(B, C, H, W)`` (or flat ``(B, D)`` with an
``image_shape``) in [0, 1] to corrupted ones of the same shape; the model's
target stays the clean image. Picked by name from :data:`CORRUPTIONS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from probgen import checks
from probgen.data.draws import randint, randn_like
from probgen.errors import ConfigError
from probgen.registry import Registry

CORRUPTIONS: Registry = Registry("corruption")


@CORRUPTIONS.register("noise")
class GaussianNoise:
    """``clip(x + std * N(0, 1), 0, 1)`` (the denoising autoencoder's input)."""

    def __init__(self, std: float = 0.4, clip: bool = True):
        self.std, self.clip = checks.nonnegative_float("the noise std", std), clip

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        y = x + self.std * randn_like(x, generator)
        return y.clamp(0, 1) if self.clip else y

    def __repr__(self):
        return f"GaussianNoise(std={self.std}, clip={self.clip})"


@CORRUPTIONS.register("blocks")
class RandomBlocks:
    """Set ``count`` random ``size`` x ``size`` squares of each image to ``fill``.

    The square's position differs per image and per call, and nothing marks it:
    the encoder has to find the hole (the inpainting autoencoder's input).
    ``image_shape`` is needed for flat ``(B, D)`` inputs.
    """

    def __init__(
        self,
        size: int = 9,
        count: int = 1,
        fill: float = 0.0,
        image_shape: Sequence[int] | None = None,
    ):
        size = checks.positive_int("the block size", size)
        count = checks.positive_int("the block count", count)
        self.size, self.count, self.fill = size, count, float(fill)
        self.image_shape = tuple(image_shape) if image_shape is not None else None

    def mask(
        self,
        shape: torch.Size,
        device: torch.device | str | None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Boolean ``(B, 1, H, W)``: True inside a block."""
        b, h, w = shape[0], shape[-2], shape[-1]
        if self.size > min(h, w):
            raise ConfigError(f"a {self.size}x{self.size} block does not fit {h}x{w} images.")
        # drawn on the images' device (probgen.data.draws)
        top = randint(0, h - self.size + 1, (b, self.count), device, generator)
        left = randint(0, w - self.size + 1, (b, self.count), device, generator)
        rows = torch.arange(h, device=device).view(1, 1, h, 1)
        cols = torch.arange(w, device=device).view(1, 1, 1, w)
        top, left = top.view(b, self.count, 1, 1), left.view(b, self.count, 1, 1)
        inside = (
            (rows >= top) & (rows < top + self.size) & (cols >= left) & (cols < left + self.size)
        )
        return inside.any(1, keepdim=True)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        shape = x.shape
        if x.dim() == 2:
            if self.image_shape is None:
                raise ConfigError("RandomBlocks needs image_shape for flat (B, D) inputs.")
            x = x.reshape((shape[0],) + self.image_shape)
        m = self.mask(x.shape, x.device, generator)
        return x.masked_fill(m, self.fill).reshape(shape)

    def __repr__(self):
        return f"RandomBlocks(size={self.size}, count={self.count}, fill={self.fill})"


def make_corruption(
    name: str | None, image_shape: Sequence[int] | None = None, **kwargs: Any
) -> Callable[..., torch.Tensor] | None:
    """The corruption called ``name`` (``None`` -> no corruption); ``image_shape`` is the
    default shape of ``blocks`` (which needs it for flat inputs), ignored by the others."""
    if name == "blocks" and image_shape is not None:
        kwargs.setdefault("image_shape", tuple(image_shape))
    return None if name is None else CORRUPTIONS.get(name)(**kwargs)
