"""Image-space metrics: reconstruction error, PSNR, ROC-AUC of anomaly scores, PCA.

ROC-AUC and PCA are written here in a few lines of torch rather than taken
from scikit-learn, which probgen does not otherwise need; both are checked
against closed forms in the tests.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch

from probgen.errors import DataError


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def mse_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each image, ``(B,)``."""
    if pred.shape != target.shape:
        raise DataError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ "
                        f"in shape.")
    return (_flat(pred) - _flat(target)).pow(2).mean(1)


def psnr(pred: torch.Tensor, target: torch.Tensor, max_value: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio of each image in dB, ``10 log10(max^2 / MSE)``: ``(B,)``."""
    mse = mse_per_image(pred, target).clamp(min=1e-12)
    return 10.0 * torch.log10(max_value ** 2 / mse)


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` (higher = more likely positive).

    Computed as the Mann-Whitney statistic: the probability that a random
    positive scores above a random negative, ties counting one half.
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
    uniq, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True,
                                                     return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks[order] = mean_rank[inverse]
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def pca(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Principal components of ``(N, ...)`` data.

    Returns ``(mean (D,), components (D, D) as rows, explained_variance_ratio (D,))``,
    components ordered by decreasing variance.
    """
    flat = _flat(x).double()
    mean = flat.mean(0)
    cov = (flat - mean).T @ (flat - mean) / (flat.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov)
    evals, evecs = evals.flip(0).clamp(min=0), evecs.flip(1)
    return mean, evecs.T, evals / evals.sum()


def pca_reconstruction(x: torch.Tensor, mean: torch.Tensor, components: torch.Tensor,
                       k: int) -> torch.Tensor:
    """Project ``x`` on the first ``k`` components and back; same shape as ``x``."""
    flat = _flat(x).double() - mean
    w = components[:k]
    return ((flat @ w.T) @ w + mean).to(x.dtype).reshape(x.shape)


@torch.no_grad()
def restoration_psnr(restore, clean: torch.Tensor, corrupted: torch.Tensor,
                     region: "torch.Tensor | None" = None) -> dict:
    """Mean PSNR (dB) of the corrupted images and of ``restore(corrupted)`` against the
    clean ones; with a boolean ``region`` (same shape), also the MSE and the PSNR of
    the pixels inside it (pooled over the images)."""
    restored = restore(corrupted).reshape(clean.shape)
    out = {"psnr_before": float(psnr(corrupted, clean).mean()),
           "psnr_after": float(psnr(restored, clean).mean())}
    if region is not None:
        r = region.expand_as(clean).to(clean.dtype)
        n = r.sum().clamp(min=1)
        out["region_mse_before"] = float(((corrupted - clean).pow(2) * r).sum() / n)
        out["region_mse_after"] = float(((restored - clean).pow(2) * r).sum() / n)
        # PSNR of the region's pixels pooled (images in [0, 1])
        for k in ("before", "after"):
            out[f"region_psnr_{k}"] = 10.0 * math.log10(1.0 / max(out[f"region_mse_{k}"], 1e-12))
    return out
