"""Masks for conditional completion tasks (the CVAE's quadrant task).

Convention (as in Pyro's CVAE example): a network input marks hidden pixels
with ``MISSING = -1``; visible pixels keep their grey level in [0, 1].
"""

from __future__ import annotations

import torch

from probgen import checks
from probgen.data.tensors import TensorData
from probgen.errors import DataError

MISSING = -1.0


def quadrant_mask(
    num_visible: int, height: int = 28, width: int = 28, device: torch.device | str | None = None
) -> torch.Tensor:
    """Boolean ``(height, width)`` mask of the visible pixels.

    1 quadrant: the bottom-left one is visible; 2: the left half; 3: all but the
    bottom-right one (the settings of Sohn et al. 2015 and Pyro's example).
    """
    num_visible = checks.int_in_range(
        "the number of visible quadrants", num_visible, 1, 3, hint="1, 2 or 3"
    )
    h, w = height // 2, width // 2
    visible = torch.zeros(height, width, dtype=torch.bool, device=device)
    visible[h:, :w] = True  # bottom left
    if num_visible >= 2:
        visible[:h, :w] = True  # top left
    if num_visible == 3:
        visible[:h, w:] = True  # top right
    return visible


def mask_inputs(images: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Images with the hidden pixels set to ``MISSING``."""
    if images.shape[-visible.dim() :] != visible.shape:
        raise DataError(
            f"images of shape {tuple(images.shape)} do not end in the mask's shape "
            f"{tuple(visible.shape)}."
        )
    return torch.where(visible.to(images.device), images, images.new_full((), MISSING))


def quadrant_task(data: TensorData, num_visible: int) -> TensorData:
    """Turn a data set of (images, ...) into one of (inputs, targets) for quadrant completion.

    ``inputs`` are the images with the hidden quadrants set to ``MISSING``;
    ``targets`` are the full images (a model scores only the hidden pixels).
    """
    images = data.tensors[0]
    if images.dim() != 4:
        raise DataError(f"quadrant_task needs images (N, C, H, W), got {tuple(images.shape)}.")
    visible = quadrant_mask(num_visible, images.shape[-2], images.shape[-1], device=images.device)

    def to_task(batch, generator=None):
        x = batch[0]
        return mask_inputs(x, visible), x

    return data.with_transform(to_task)
