"""Partly labelled data: the mark of an unlabelled example and a balanced labelled subset
(semi-supervised training, Makhzani et al. 2015, "Adversarial Autoencoders", section 5).

A semi-supervised data set keeps every example's label tensor, with :data:`UNLABELLED`
where the label is withheld; :func:`labelled_split` withholds all but a balanced few.

Examples:
    Two labelled examples of each of the three classes, the others marked unlabelled:

    >>> import torch
    >>> from probgen.data.labels import UNLABELLED, labelled_split
    >>> labels = torch.arange(3).repeat(5)
    >>> semi = labelled_split(labels, 6, num_classes=3, generator=torch.Generator().manual_seed(0))
    >>> torch.bincount(semi[semi != UNLABELLED]).tolist(), int((semi == UNLABELLED).sum())
    ([2, 2, 2], 9)
"""

from __future__ import annotations

import torch

from probgen import checks
from probgen.errors import DataError

UNLABELLED = -1
"""The label of an unlabelled example in a semi-supervised data set."""


def labelled_split(
    labels: torch.Tensor,
    num_labelled: int,
    num_classes: int = 10,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Labels with all but ``num_labelled`` examples set to :data:`UNLABELLED`.

    The same number of each class is kept (``num_labelled / num_classes``, the remainder to
    the first classes), drawn at random (Makhzani et al. 2015, section 5, keep a balanced
    subset).

    Args:
        labels: ``(N,)`` class indices in ``0..num_classes-1``.
        num_labelled: how many labels to keep, at least one per class.
        num_classes: the number of classes.
        generator: the random draws' generator (default: torch's global one).

    Returns:
        ``(N,)`` labels on ``labels``' device, :data:`UNLABELLED` where withheld.

    Raises:
        ConfigError: ``num_labelled`` or ``num_classes`` is not a positive integer.
        DataError: ``num_labelled`` is smaller than ``num_classes``, or a class has fewer
            examples than its share.
    """
    checks.positive_int("num_labelled", num_labelled)
    checks.positive_int("num_classes", num_classes)
    if num_labelled < num_classes:
        raise DataError(
            f"semi-supervised training needs at least one labelled example per "
            f"class: num_labelled={num_labelled!r} for {num_classes} classes."
        )
    if not torch.is_tensor(labels) or labels.dim() != 1:
        raise DataError("labels must be a 1-D tensor of class indices.")
    out = torch.full_like(labels, UNLABELLED)
    base, extra = divmod(num_labelled, num_classes)
    for c in range(num_classes):
        want = base + (1 if c < extra else 0)
        idx = (labels == c).nonzero().flatten()
        if idx.numel() < want:
            raise DataError(
                f"too few examples of class {c} to label {want} of them: the data "
                f"have {idx.numel()}; ask for fewer labelled examples."
            )
        pick = torch.randperm(idx.numel(), generator=generator)[:want].to(idx.device)
        out[idx[pick]] = c
    return out


__all__ = ["UNLABELLED", "labelled_split"]
