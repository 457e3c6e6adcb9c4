"""Image-space metrics: reconstruction error, PSNR, ROC-AUC of anomaly scores, PCA.

ROC-AUC and PCA are written here in a few lines of torch rather than taken
from scikit-learn, which probgen does not otherwise need; both are checked
against closed forms in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from probgen.errors import DataError


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def mse_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each image, ``(B,)``."""
    if pred.shape != target.shape:
        raise DataError(
            f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape."
        )
    return (_flat(pred) - _flat(target)).pow(2).mean(1)


def psnr(pred: torch.Tensor, target: torch.Tensor, max_value: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio of each image in dB, ``10 log10(max^2 / MSE)``: ``(B,)``.

    Examples:
        Every tenfold drop of the error is 20 dB more:

        >>> import torch
        >>> from probgen.metrics import psnr
        >>> clean = torch.zeros(2, 1, 28, 28)
        >>> psnr(clean + torch.tensor([0.1, 0.01]).view(2, 1, 1, 1), clean)
        tensor([20., 40.])
    """
    mse = mse_per_image(pred, target).clamp(min=1e-12)
    return 10.0 * torch.log10(max_value**2 / mse)


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` (higher = more likely positive).

    Computed as the Mann-Whitney statistic: the probability that a random
    positive scores above a random negative, ties counting one half.

    Examples:
        Three of the four (positive, negative) pairs are in order; with every score tied
        the ranking is a coin toss:

        >>> import torch
        >>> from probgen.metrics import roc_auc
        >>> roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        0.75
        >>> roc_auc(torch.full((4,), 0.5), torch.tensor([0, 0, 1, 1]))
        0.5
    """
    scores = scores.detach().double().flatten().cpu()
    positive = positive.detach().flatten().cpu().bool()
    if scores.shape != positive.shape:
        raise DataError(f"{scores.numel()} scores but {positive.numel()} labels.")
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        raise DataError("ROC-AUC needs both positive and negative examples.")
    order = scores.argsort()
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, scores.numel() + 1, dtype=scores.dtype)
    # average ranks over ties
    _uniq, inverse, counts = torch.unique_consecutive(
        sorted_scores, return_inverse=True, return_counts=True
    )
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks[order] = mean_rank[inverse]
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def pca(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Principal components of ``(N, ...)`` data.

    Returns ``(mean (D,), components (D, D) as rows, explained_variance_ratio (D,))``,
    components ordered by decreasing variance.

    Examples:
        Four points spread four times more along x than along y (variances 8/3 and
        2/3); the first component alone keeps their x:

        >>> import torch
        >>> from probgen.metrics import pca, pca_reconstruction
        >>> x = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
        >>> mean, components, explained = pca(x)
        >>> explained
        tensor([0.8000, 0.2000], dtype=torch.float64)
        >>> pca_reconstruction(x, mean, components, k=1)
        tensor([[ 2.,  0.],
                [-2.,  0.],
                [ 0.,  0.],
                [ 0.,  0.]])
    """
    flat = _flat(x).double()
    mean = flat.mean(0)
    cov = (flat - mean).T @ (flat - mean) / (flat.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov)
    evals, evecs = evals.flip(0).clamp(min=0), evecs.flip(1)
    return mean, evecs.T, evals / evals.sum()


def pca_reconstruction(
    x: torch.Tensor, mean: torch.Tensor, components: torch.Tensor, k: int
) -> torch.Tensor:
    """Project ``x`` on the first ``k`` components and back; same shape as ``x``."""
    flat = _flat(x).double() - mean
    w = components[:k]
    return ((flat @ w.T) @ w + mean).to(x.dtype).reshape(x.shape)


@torch.no_grad()
def restoration_psnr(
    restore: Callable[[torch.Tensor], torch.Tensor],
    clean: torch.Tensor,
    corrupted: torch.Tensor,
    region: torch.Tensor | None = None,
) -> dict:
    """Mean PSNR (dB) of the corrupted images and of ``restore(corrupted)`` against the
    clean ones; with a boolean ``region`` (same shape), also the MSE and the PSNR of
    the pixels inside it (pooled over the images)."""
    restored = restore(corrupted).reshape(clean.shape)
    out = {
        "psnr_before": float(psnr(corrupted, clean).mean()),
        "psnr_after": float(psnr(restored, clean).mean()),
    }
    if region is not None:
        r = region.expand_as(clean).to(clean.dtype)
        n = r.sum().clamp(min=1)
        out["region_mse_before"] = float(((corrupted - clean).pow(2) * r).sum() / n)
        out["region_mse_after"] = float(((restored - clean).pow(2) * r).sum() / n)
        # PSNR of the region's pixels pooled (images in [0, 1])
        for k in ("before", "after"):
            out[f"region_psnr_{k}"] = 10.0 * math.log10(1.0 / max(out[f"region_mse_{k}"], 1e-12))
    return out
