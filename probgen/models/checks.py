"""Input checks shared by the image models (VAE, AAE): one wording for one mistake."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from probgen.errors import DataError


def flat_images(x, image_shape: Sequence[int], what: str = "images") -> torch.Tensor:
    """``x`` of shape ``(B, *image_shape)`` or ``(B, D)`` as ``(B, D)``; a clear error else
    (``what`` names the argument in it)."""
    dim = int(torch.Size(image_shape).numel())
    if not torch.is_tensor(x):
        raise DataError(f"{what} must be a tensor, got {type(x).__name__}.")
    if x.dim() < 2 or math.prod(x.shape[1:]) != dim:   # (x[0].numel() would cost an op)
        raise DataError(
            f"{what} of shape {tuple(x.shape)} do not fit this model, which takes images of "
            f"shape {tuple(image_shape)} (batch first: (B, {', '.join(map(str, image_shape))})"
            f" or (B, {dim})).")
    if x.shape[0] == 0:
        raise DataError(f"{what}: got a batch of 0 images; pass at least one.")
    return x.reshape(x.shape[0], dim)


def checked_labels(labels, n: int, num_labels: int) -> Optional[torch.Tensor]:
    """One integer label in ``0..num_labels-1`` per image (``None`` when the model takes
    no labels); a clear error naming what is wrong otherwise."""
    if num_labels == 0:
        return None
    if labels is None:
        raise DataError(f"this model is conditioned on {num_labels} classes; pass labels (B,) "
                        f"with the images (a data set of (images, labels)).")
    if not torch.is_tensor(labels) or labels.dim() != 1 or labels.shape[0] != n:
        shape = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
        raise DataError(f"got {n} images but labels of shape {shape}: pass one integer label "
                        f"per image, shape ({n},).")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DataError(f"labels must be integers, got {labels.dtype}.")
    if not torch.jit.is_tracing() and bool(((labels < 0) | (labels >= num_labels)).any()):
        raise DataError(f"labels must lie in 0..{num_labels - 1}; found "
                        f"{labels.min().item()}..{labels.max().item()}.")
    return labels
