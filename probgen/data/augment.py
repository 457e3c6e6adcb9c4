"""Data augmentation of image batches: per-batch transforms for :class:`TensorData`.

Unlike a corruption (:mod:`probgen.data.corrupt`), which the encoder sees while the
target stays clean, an augmentation replaces the example itself: the encoder's input and
the reconstruction target move together, and a labelled image keeps its label.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from probgen import checks
from probgen.data.draws import randint
from probgen.errors import ConfigError


class RandomShift:
    """Translate every image of a batch by its own random whole-pixel offset.

    Each image moves by ``(dy, dx)`` drawn uniformly from ``{-max_shift, ..., max_shift}``
    (independently per image and per call); pixels that enter from outside are ``fill``.
    Small translations are the classic augmentation of MNIST (Simard et al. 2003, "Best
    Practices for Convolutional Neural Networks Applied to Visual Document Analysis").

    Used as a :class:`~probgen.data.TensorData` transform (``data.with_transform(shift)``)
    it moves the batch's first tensor and passes the others (labels) through; with
    ``only_labelled`` it moves only the images whose label (the batch's second tensor) is
    not negative, so that in a semi-supervised set (unlabelled images carry -1, see
    :func:`probgen.data.labels.labelled_split`) the few labelled images are augmented and
    the unlabelled ones stay as they are.

    It is written here rather than taken from torchvision because torchvision's random
    affine transforms draw one offset per call from the global generator, where a batch
    needs one offset per image drawn from the loader's generator (checkpointed, so a
    resumed run sees the same offsets; on a GPU, the device's stream, see
    :mod:`probgen.data.draws`).

    Args:
        max_shift: the largest offset in pixels, per axis (0: the identity).
        image_shape: ``(C, H, W)``, needed for flat ``(B, D)`` images.
        fill: the value of the pixels shifted in.
        only_labelled: shift only the images of non-negative label.
    """

    def __init__(
        self,
        max_shift: int = 2,
        image_shape: Sequence[int] | None = None,
        fill: float = 0.0,
        only_labelled: bool = False,
    ):
        max_shift = checks.nonnegative_int("max_shift", max_shift, hint="a whole number of pixels")
        self.max_shift, self.fill = max_shift, float(fill)
        self.only_labelled = bool(only_labelled)
        self.image_shape = tuple(image_shape) if image_shape is not None else None

    def __repr__(self):
        return f"RandomShift(max_shift={self.max_shift}, fill={self.fill}" + (
            ", only_labelled=True)" if self.only_labelled else ")"
        )

    def shift(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The images ``x`` (``(B, C, H, W)``, or flat with ``image_shape``) shifted."""
        if self.max_shift == 0 or x.shape[0] == 0:
            return x
        shape = x.shape
        if x.dim() == 2:
            if self.image_shape is None:
                raise ConfigError("RandomShift needs image_shape for flat (B, D) images.")
            x = x.reshape((shape[0],) + self.image_shape)
        if x.dim() != 4:
            raise ConfigError(f"RandomShift shifts (B, C, H, W) images, got shape {tuple(shape)}.")
        b, c, h, w = x.shape
        s = self.max_shift
        if s >= min(h, w):
            raise ConfigError(f"max_shift={s} moves {h}x{w} images out of the frame; use less.")
        # the offsets are drawn on the images' device: from the loader's CPU generator for
        # CPU images (reproducible, checkpointed), else the device's (probgen.data.draws)
        dy, dx = randint(-s, s + 1, (2, b), x.device, generator)
        padded = torch.nn.functional.pad(x, (s, s, s, s), value=self.fill)
        # output pixel (i, j) reads padded pixel (i + s - dy, j + s - dx)
        rows = torch.arange(h, device=x.device).view(1, h) + s - dy.view(b, 1)
        cols = torch.arange(w, device=x.device).view(1, w) + s - dx.view(b, 1)
        bi = torch.arange(b, device=x.device).view(b, 1, 1, 1)
        ci = torch.arange(c, device=x.device).view(1, c, 1, 1)
        out = padded[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]
        return out.reshape(shape)

    def __call__(self, batch, generator: torch.Generator | None = None):
        if self.only_labelled:
            if torch.is_tensor(batch) or len(batch) < 2:
                raise ConfigError(
                    "RandomShift(only_labelled=True) needs (images, labels, ...) "
                    "batches: the labels say which images to shift."
                )
            x, y = batch[0], batch[1]
            keep = y >= 0
            if x.device.type != "cpu":
                # Selecting the labelled images would read the mask back to the host (a
                # synchronisation per batch): on an accelerator every image is shifted and
                # the unlabelled ones are kept as they were.
                moved = self.shift(x, generator)
                keep = keep.reshape((-1,) + (1,) * (x.dim() - 1))
                return (torch.where(keep, moved, x),) + tuple(batch[1:])
            x = x.clone()
            x[keep] = self.shift(x[keep], generator)
            return (x,) + tuple(batch[1:])
        if torch.is_tensor(batch):
            return self.shift(batch, generator)
        return (self.shift(batch[0], generator),) + tuple(batch[1:])
