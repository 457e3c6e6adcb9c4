"""Decomposition quality of object-wise models: adjusted Rand index, entity counts.

The adjusted Rand index (Hubert & Arabie 1985, "Comparing partitions") of two
labellings of the same points, from their contingency table ``n_ij`` (points with
true label ``i`` and predicted label ``j``), row sums ``a_i`` and column sums ``b_j``::

    index    = sum_ij C(n_ij, 2)
    expected = sum_i C(a_i, 2) * sum_j C(b_j, 2) / C(n, 2)
    maximum  = (sum_i C(a_i, 2) + sum_j C(b_j, 2)) / 2
    ARI      = (index - expected) / (maximum - expected)

It is 1 for the same partition (whatever the label names), about 0 for
independent ones, and is defined as 1 when the denominator vanishes (both
labellings put every point in one cluster, or every point in its own), as
scikit-learn's ``adjusted_rand_score`` does. Written here (a few lines on a batched
contingency table) because scikit-learn is not a dependency and torchmetrics'
version scores one pair of labellings at a time without a mask; this one scores
a batch of scenes at once, on the pixels a mask selects (the foreground).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from probgen.data.tensors import TensorData
from probgen.errors import DataError


def _comb2(n: torch.Tensor) -> torch.Tensor:
    return n * (n - 1) / 2


def adjusted_rand_index(
    labels_true: torch.Tensor, labels_pred: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Adjusted Rand index of two labellings; batched over a leading dimension.

    Args:
        labels_true: non-negative integer labels, ``(P,)`` for one labelling or
            ``(B, ...)`` for ``B`` of them (trailing dimensions, e.g. pixels, are
            flattened).
        labels_pred: the labels to score, of the same shape.
        mask: which points count, same shape (``None``: all of them).

    Returns:
        A scalar for ``(P,)`` inputs, else ``(B,)``; float64.

    Examples:
        The same partition under other label names scores 1; one that splits every
        true cluster in two, worse than chance, scores below 0:

        >>> import torch
        >>> from probgen.metrics.segmentation import adjusted_rand_index
        >>> truth = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
        >>> adjusted_rand_index(truth, torch.tensor([[1, 1, 0, 0], [0, 1, 0, 1]]))
        tensor([ 1.0000, -0.5000], dtype=torch.float64)
    """
    if labels_true.shape != labels_pred.shape:
        raise DataError(
            f"the two labellings must have one shape, got {tuple(labels_true.shape)} "
            f"and {tuple(labels_pred.shape)}."
        )
    for name, t in (("labels_true", labels_true), ("labels_pred", labels_pred)):
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise DataError(f"{name} must hold integer labels, got {t.dtype}.")
        if t.numel() and int(t.min()) < 0:
            raise DataError(f"{name} must be non-negative, found {int(t.min())}.")
    single = labels_true.dim() == 1
    t = labels_true.reshape(1 if single else labels_true.shape[0], -1).long()
    p = labels_pred.reshape(t.shape).long()
    if mask is None:
        w = torch.ones(t.shape, dtype=torch.float64, device=t.device)
    else:
        if mask.shape != labels_true.shape:
            raise DataError(
                f"mask must have the labels' shape {tuple(labels_true.shape)}, got "
                f"{tuple(mask.shape)}."
            )
        w = mask.reshape(t.shape).to(torch.float64)
    ct = int(t.max()) + 1 if t.numel() else 1
    cp = int(p.max()) + 1 if p.numel() else 1
    a = F.one_hot(t, ct).to(torch.float64) * w.unsqueeze(-1)
    b = F.one_hot(p, cp).to(torch.float64)
    table = a.transpose(1, 2) @ b  # (B, ct, cp) contingency
    n = table.sum((1, 2))
    index = _comb2(table).sum((1, 2))
    sum_a = _comb2(table.sum(2)).sum(1)
    sum_b = _comb2(table.sum(1)).sum(1)
    pairs = _comb2(n)
    expected = torch.where(pairs > 0, sum_a * sum_b / pairs.clamp(min=1), torch.zeros_like(n))
    maximum = (sum_a + sum_b) / 2
    denom = maximum - expected
    ari = torch.where(
        denom != 0, (index - expected) / torch.where(denom != 0, denom, 1.0), torch.ones_like(n)
    )
    return ari[0] if single else ari


def entity_labels(renders: torch.Tensor) -> torch.Tensor:
    """Each pixel's entity: the argmax over the entity dimension of ``(B, K, H, W)``
    renders (each entity's ink probability) -> ``(B, H, W)``.

    Examples:
        Two entities on a 2 x 2 scene, one owning the top row, the other the bottom
        row:

        >>> import torch
        >>> from probgen.metrics.segmentation import active_entities, entity_labels
        >>> renders = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.9, 0.9]]]])
        >>> entity_labels(renders)
        tensor([[[0, 0],
                 [1, 1]]])
        >>> active_entities(renders, min_ink=1.9)   # 2 and 1.8 pixels' worth of ink
        tensor([[ True, False]])
    """
    return renders.argmax(1)


def active_entities(renders: torch.Tensor, min_ink: float = 20.0) -> torch.Tensor:
    """Entities whose render holds at least ``min_ink`` pixels' worth of ink
    (the sum of its ink probabilities): bool ``(B, K)``."""
    return renders.flatten(2).sum(-1) >= min_ink


def decomposition_scores(
    renders: torch.Tensor, segmentation: torch.Tensor, counts: torch.Tensor, min_ink: float = 20.0
) -> dict[str, torch.Tensor]:
    """Per-scene decomposition quality of entity renders against ground truth.

    Args:
        renders: ``(B, K, H, W)`` each entity's ink probability.
        segmentation: ``(B, H, W)`` true owner of each pixel, 0 on background,
            ``i + 1`` for digit ``i`` (:func:`probgen.data.scenes.make_scenes`).
        counts: ``(B,)`` true number of objects.
        min_ink: an entity is active when its render holds this much ink.

    Returns:
        ``ari`` ``(B,)`` on the foreground pixels (``segmentation > 0``), each pixel
        labelled by the entity with the most ink there; ``active`` ``(B,)`` the
        number of active entities; ``count_correct`` ``(B,)`` bool.
    """
    if renders.dim() != 4 or segmentation.shape != (renders.shape[0],) + renders.shape[2:]:
        raise DataError(
            f"renders must be (B, K, H, W) and segmentation (B, H, W) of the same "
            f"scenes, got {tuple(renders.shape)} and {tuple(segmentation.shape)}."
        )
    pred = entity_labels(renders)
    ari = adjusted_rand_index(segmentation.long(), pred, mask=segmentation > 0)
    active = active_entities(renders, min_ink).sum(1)
    return {"ari": ari, "active": active, "count_correct": active == counts.to(active.device)}


@torch.no_grad()
def decomposition_report(
    decompose: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    data: TensorData,
    segmentation: torch.Tensor,
    counts: torch.Tensor,
    min_ink: float = 20.0,
    batch_size: int = 200,
) -> dict[str, Any]:
    """:func:`decomposition_scores` of a whole test set, overall and by object count.

    Args:
        decompose: scenes ``(B, 1, H, W)`` -> a dict with ``ink`` ``(B, K, H, W)`` (a
            :class:`probgen.models.MEVAE`'s ``decompose``).
        data: the scenes, a :class:`~probgen.data.TensorData` whose first tensor they are,
            in the order of ``segmentation`` and ``counts``.
        segmentation: ``(N, H, W)`` the true owner of each pixel
            (:func:`decomposition_scores`).
        counts: ``(N,)`` the true number of objects of each scene.
        min_ink: an entity is active when its render holds this much ink.
        batch_size: scenes per call of ``decompose``.

    Returns:
        ``ari`` and ``count_accuracy`` (means over the scenes) and ``by_count``: one dict
        per object count ``digits`` with its ``scenes``, ``ari``, ``count_accuracy`` and
        ``mean_active`` (active entities).
    """
    scores: dict[str, list] = {"ari": [], "active": [], "count_correct": []}
    for (xb, *_), segb, cb in zip(
        data.batches(batch_size), segmentation.split(batch_size), counts.split(batch_size)
    ):
        for k, v in decomposition_scores(decompose(xb)["ink"], segb, cb, min_ink).items():
            scores[k].append(v.cpu())
    s = {k: torch.cat(v) for k, v in scores.items()}
    cnt = counts.cpu()
    by_count = [
        {
            "digits": c,
            "scenes": int((cnt == c).sum()),
            "ari": float(s["ari"][cnt == c].mean()),
            "count_accuracy": float(s["count_correct"][cnt == c].float().mean()),
            "mean_active": float(s["active"][cnt == c].float().mean()),
        }
        for c in cnt.unique().tolist()
    ]
    return {
        "ari": float(s["ari"].mean()),
        "count_accuracy": float(s["count_correct"].float().mean()),
        "by_count": by_count,
    }
