"""Input checks shared by the models: one wording for one mistake, and one rule for when a
check reads the data.

A check that looks at values (labels in range, pixels in [0, 1]) reads a flag back to the
host: on a GPU, a synchronisation that stalls the queue of kernels. The fit loop checks a
whole data set once before the first step (:meth:`probgen.train.Step.check_data`) and says
so in its step context; inside those steps the per-batch value checks are skipped
(:func:`loop_checked`). Outside the loop (a user's call, Pyro's own ``SVI``,
``Predictive``) every check runs and fails with a clear :class:`~probgen.errors.DataError`.

Value checks are written as "is anything bad?" (:func:`found`): one read per check, and
NaN counts as bad.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from probgen import checks
from probgen.errors import ConfigError, DataError
from probgen.infer.context import current_step
from probgen.infer.steps import LossStep, PhasedStep


def loop_checked() -> bool:
    """True inside the fit loop's steps when the loop has checked every example they read
    (the per-batch value checks are then skipped: each would be a host-device sync)."""
    step = current_step()
    return step is not None and step.data_checked


def found(bad: torch.Tensor) -> bool:
    """Whether any element of the boolean tensor ``bad`` is set (one host read)."""
    return not torch.jit.is_tracing() and bool(bad.any())


def outside_unit_interval(x: torch.Tensor) -> torch.Tensor:
    """Elementwise: ``x`` not in [0, 1] (NaN included)."""
    return ~((x >= 0) & (x <= 1))


def flat_images(x, image_shape: Sequence[int], what: str = "images") -> torch.Tensor:
    """``x`` of shape ``(B, *image_shape)`` or ``(B, D)`` as ``(B, D)``; a clear error else
    (``what`` names the argument in it)."""
    dim = int(torch.Size(image_shape).numel())
    if not torch.is_tensor(x):
        raise DataError(f"{what} must be a tensor, got {type(x).__name__}.")
    if x.dim() < 2 or math.prod(x.shape[1:]) != dim:  # (x[0].numel() would cost an op)
        raise DataError(
            f"{what} of shape {tuple(x.shape)} do not fit this model, which takes images of "
            f"shape {tuple(image_shape)} (batch first: (B, {', '.join(map(str, image_shape))})"
            f" or (B, {dim}))."
        )
    if x.shape[0] == 0:
        raise DataError(f"{what}: got a batch of 0 images; pass at least one.")
    return x.reshape(x.shape[0], dim)


def checked_labels(
    labels, n: int, num_labels: int, unlabelled: int | None = None
) -> torch.Tensor | None:
    """One integer label in ``0..num_labels-1`` per image (``None`` when the model takes
    no labels); a clear error naming what is wrong otherwise. With ``unlabelled`` (a
    semi-supervised model's mark, -1), that value is taken too, and ``None`` means no
    labels at all. The range is not read inside the fit loop's steps over data it checked
    (:func:`loop_checked`)."""
    if num_labels == 0 or (labels is None and unlabelled is not None):
        return None
    if labels is None:
        raise DataError(
            f"this model is conditioned on {num_labels} classes; pass labels (B,) "
            f"with the images (a data set of (images, labels))."
        )
    mark = "" if unlabelled is None else f" ({unlabelled} for an unlabelled one)"
    if not torch.is_tensor(labels) or labels.dim() != 1 or labels.shape[0] != n:
        shape = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
        raise DataError(
            f"got {n} images but labels of shape {shape}: pass one integer label "
            f"per image{mark}, shape ({n},)."
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DataError(f"labels must be integers, got {labels.dtype}.")
    low = 0 if unlabelled is None else min(0, unlabelled)
    if not loop_checked() and found((labels < low) | (labels >= num_labels)):
        also = "" if unlabelled is None else f", or be {unlabelled} for an unlabelled example"
        raise DataError(
            f"labels must lie in 0..{num_labels - 1}{also}; found "
            f"{labels.min().item()}..{labels.max().item()}."
        )
    return labels


def generated_count(labels: torch.Tensor | None, size: int | None) -> int:
    """How many images a model's ``model(None, labels, size)`` generates: one per label,
    else ``size``; a clear error when neither is given."""
    if labels is None and size is None:
        raise ConfigError("to generate, pass labels or size (how many images).")
    return labels.shape[0] if labels is not None else checks.positive_int("size", size)


class CheckedStep(PhasedStep):
    """A :class:`~probgen.train.PhasedStep` that checks a whole data set once before the
    first step, so that its model skips the per-batch value checks inside the fit loop.

    Args:
        module: as for :class:`~probgen.train.PhasedStep`.
        phases: as for :class:`~probgen.train.PhasedStep`.
        eval_loss: as for :class:`~probgen.train.PhasedStep`.
        check: ``check(*tensors)`` raising :class:`~probgen.errors.DataError` on bad data
            (default: the module's ``check_data``).
    """

    def __init__(
        self,
        module: torch.nn.Module | None,
        phases: Iterable,
        eval_loss: Callable | None = None,
        check: Callable | None = None,
        **kwargs: Any,
    ):
        super().__init__(module, phases, eval_loss=eval_loss, **kwargs)
        self._check = check

    def check_data(self, tensors) -> bool:
        check = self._check if self._check is not None else self.module.check_data
        check(*tensors)
        return True


class CheckedLossStep(LossStep):
    """A :class:`~probgen.train.LossStep` whose module checks a whole data set once
    (``module.check_data(*tensors)``) before the first step."""

    def check_data(self, tensors) -> bool:
        self.module.check_data(*tensors)
        return True


__all__ = [
    "CheckedLossStep",
    "CheckedStep",
    "checked_labels",
    "flat_images",
    "found",
    "generated_count",
    "loop_checked",
    "outside_unit_interval",
]
