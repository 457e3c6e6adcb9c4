"""Figures of latent spaces: scatter by class, the decoded manifold, interpolation,
PCA against an autoencoder, anomaly scores."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Union

import numpy as np
import torch

from probgen.viz.images import image_grid, module_place, new_figure, save

PathLike = Union[str, Path, None]


def _project_2d(z: torch.Tensor) -> torch.Tensor:
    """Codes with more than two dimensions are shown on their first two principal axes."""
    if z.shape[1] <= 2:
        return z
    zc = z - z.mean(0)
    _, _, v = torch.linalg.svd(zc, full_matrices=False)
    return zc @ v[:2].T


def latent_scatter(codes: Dict[str, torch.Tensor], labels: torch.Tensor, path: PathLike = None,
                   max_points: int = 5000, title: Optional[str] = None):
    """Side-by-side scatter plots of 2-D codes (one panel per entry), coloured by class.

    Codes of more than two dimensions are projected on their first two principal axes.
    A dashed circle marks two standard deviations of the N(0, I) prior.
    """
    fig, axes = new_figure(1, len(codes), figsize=(4.6 * len(codes) + 0.8, 4.4), squeeze=False)
    lab = labels[:max_points].cpu().numpy()
    sc = None
    for ax, (name, z) in zip(axes[0], codes.items()):
        z2 = _project_2d(z[:max_points].detach().float().cpu()).numpy()
        sc = ax.scatter(z2[:, 0], z2[:, 1], c=lab, cmap="tab10", s=3, alpha=0.7,
                        vmin=-0.5, vmax=9.5)
        t = np.linspace(0, 2 * np.pi, 200)
        ax.plot(2 * np.cos(t), 2 * np.sin(t), "k--", lw=0.8, alpha=0.6)
        ax.set_title(name + ("" if z.shape[1] <= 2 else " (first 2 PCs)"), fontsize=10)
        ax.set_xlabel("z1")
        ax.set_ylabel("z2")
        ax.set_aspect("equal", adjustable="datalim")
    if sc is not None:
        cb = fig.colorbar(sc, ax=axes[0].tolist(), ticks=range(10), shrink=0.85)
        cb.set_label("digit")
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path)


def manifold_codes(n: int = 15, device=None, dtype=None) -> torch.Tensor:
    """The ``(n * n, 2)`` codes of :func:`manifold_grids`, on ``device`` (row-major:
    ``z2`` falls down the rows, ``z1`` grows along them)."""
    u = torch.linspace(0.5 / n, 1 - 0.5 / n, n, device=device, dtype=dtype)
    q = torch.distributions.Normal(u.new_zeros(()), u.new_ones(())).icdf(u)
    zy, zx = torch.meshgrid(q.flip(0), q, indexing="ij")
    return torch.stack([zx.flatten(), zy.flatten()], 1)


@torch.no_grad()
def manifold_images(decode: Callable[[torch.Tensor], torch.Tensor], n: int = 15,
                    device=None) -> torch.Tensor:
    """``decode`` of the :func:`manifold_codes` grid, ``(n * n, C, H, W)``; the codes are
    made on ``device``, by default where ``decode``'s module lives (a model's bound
    ``decode``), else on the CPU."""
    where, dtype = module_place(decode)
    return decode(manifold_codes(n, device if device is not None else where, dtype))


def manifold_grids(decoders: Dict[str, Callable[[torch.Tensor], torch.Tensor]], n: int = 15,
                   path: PathLike = None, title: Optional[str] = None, device=None):
    """Decode an ``n x n`` grid of 2-D codes placed at the normal quantiles.

    Grid point ``(i, j)`` is ``(Phi^-1(u_j), Phi^-1(u_i))`` with ``u`` evenly spaced in
    (0, 1), so equal areas of the figure hold equal prior mass. One panel per
    decoder (``z (n*n, 2) -> images (n*n, C, H, W)``). The codes are made on ``device``,
    by default where the decoder's module lives (a model's bound ``decode``), else on
    the CPU.
    """
    fig, axes = new_figure(1, len(decoders), figsize=(5 * len(decoders), 5.3), squeeze=False)
    for ax, (name, decode) in zip(axes[0], decoders.items()):
        imgs = manifold_images(decode, n, device)
        ax.imshow(image_grid(imgs.cpu(), nrow=n, pad=0), interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def interpolation_figure(rows: Dict[str, torch.Tensor], path: PathLike = None,
                         title: Optional[str] = None):
    """Rows of images along a path between two codes (label -> ``(steps, C, H, W)``)."""
    from probgen.viz.images import rows_figure

    return rows_figure(rows, path, title)


def pca_vs_autoencoder(explained: torch.Tensor, pca_errors: Dict[int, float],
                       ae_errors: Dict[int, float], path: PathLike = None):
    """Left: PCA's cumulative explained variance; right: reconstruction error (MSE per
    pixel) of PCA and of an autoencoder at the same code sizes."""
    fig, (a, b) = new_figure(1, 2, figsize=(10, 4))
    cum = explained.cumsum(0).cpu().numpy()
    a.plot(np.arange(1, len(cum) + 1), cum, "C0")
    k90 = int(np.searchsorted(cum, 0.9) + 1)
    a.axhline(0.9, color="grey", ls=":", lw=0.8)
    a.axvline(k90, color="grey", ls=":", lw=0.8)
    a.annotate(f"90% at {k90} components", (k90, 0.9), xytext=(k90 + 40, 0.75),
               arrowprops=dict(arrowstyle="->", lw=0.8), fontsize=9)
    a.set_xscale("log")
    a.set_xlabel("principal components")
    a.set_ylabel("explained variance (cumulative)")
    a.grid(alpha=0.3)
    ks = sorted(pca_errors)
    b.plot(ks, [pca_errors[k] for k in ks], "o-", label="PCA")
    ka = sorted(ae_errors)
    b.plot(ka, [ae_errors[k] for k in ka], "s-", label="autoencoder")
    b.set_xscale("log")
    b.set_xlabel("code size")
    b.set_ylabel("test reconstruction MSE per pixel")
    b.legend()
    b.grid(alpha=0.3)
    fig.tight_layout()
    return save(fig, path)


def anomaly_figure(scores: torch.Tensor, is_anomaly: torch.Tensor, auc: float,
                   label: str = "held-out class", path: PathLike = None):
    """Histograms of anomaly scores (-ELBO) of normal and anomalous test images."""
    fig, ax = new_figure(figsize=(6, 4))
    s = scores.detach().cpu().numpy()
    m = is_anomaly.cpu().numpy().astype(bool)
    bins = np.linspace(np.percentile(s, 0.5), np.percentile(s, 99.5), 60)
    ax.hist(s[~m], bins=bins, alpha=0.6, density=True, label="normal digits")
    ax.hist(s[m], bins=bins, alpha=0.6, density=True, label=label)
    ax.set_xlabel("anomaly score: -ELBO (nats)")
    ax.set_ylabel("density")
    ax.set_title(f"ROC-AUC {auc:.3f}", fontsize=10)
    ax.legend()
    fig.tight_layout()
    return save(fig, path)


__all__ = ["anomaly_figure", "interpolation_figure", "latent_scatter", "manifold_codes",
           "manifold_grids", "manifold_images", "pca_vs_autoencoder"]
