"""Matplotlib figures of images: grids, rows, completion panels.

Every figure function of :mod:`probgen.viz` builds a :class:`matplotlib.figure.Figure`
directly, never through ``pyplot``: it neither selects nor switches the user's
backend (a notebook's inline figures keep working), adds nothing to pyplot's list
of open figures, and saves headless. With a ``path`` the figure is written there;
either way it is returned (the last expression of a notebook cell shows it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from probgen import checks
from probgen.data.masks import MISSING
from probgen.train.distributed import is_main_process

if TYPE_CHECKING:
    from matplotlib.figure import Figure
else:  # matplotlib is imported when a figure is drawn; at run time the hint reads Any
    Figure = Any


def module_place(fn):
    """``(device, dtype)`` of the first floating parameter or buffer of the module ``fn``
    is or is a bound method of (a model's ``decode``, a flow's ``log_prob``); ``(None,
    None)`` otherwise. Figure functions make their inputs (grids of codes or points) there,
    so that a model trained on a GPU is drawn without moving it."""
    for obj in (fn, getattr(fn, "__self__", None)):
        if isinstance(obj, torch.nn.Module):
            for t in list(obj.parameters()) + list(obj.buffers()):
                if t.is_floating_point():
                    return t.device, t.dtype
            break
    return None, None


def new_figure(nrows: int = 1, ncols: int = 1, figsize=(6, 4), squeeze: bool = True):
    """``(figure, axes)`` like ``pyplot.subplots``, without pyplot: the figure belongs
    to no backend and no pyplot state, and :func:`save` writes it."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def _to_rgb(images: torch.Tensor, hidden_colour=(0.85, 0.35, 0.2)) -> np.ndarray:
    """(N, 1|3, H, W) in [0, 1] (MISSING allowed) -> (N, H, W, 3) with hidden pixels tinted."""
    x = images.detach().float().cpu()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    missing = (x == MISSING).all(1, keepdim=True)
    x = x.clamp(0, 1)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    colour = torch.tensor(hidden_colour).view(1, 3, 1, 1)
    x = torch.where(missing, colour.expand_as(x), x)
    return x.permute(0, 2, 3, 1).numpy()


def image_row(images: torch.Tensor, pad: int = 1) -> np.ndarray:
    """Images side by side, ``pad`` white pixels between them: ``(H, W, 3)`` RGB in [0, 1].

    Examples:
        >>> import torch
        >>> from probgen.viz import image_row
        >>> image_row(torch.zeros(3, 1, 28, 28)).shape
        (28, 86, 3)
    """
    pad = checks.nonnegative_int("pad", pad)
    rgb = _to_rgb(images)
    n, h, w, _ = rgb.shape
    out = np.ones((h, n * (w + pad) - pad, 3))
    for i in range(n):
        out[:, i * (w + pad) : i * (w + pad) + w] = rgb[i]
    return out


def image_grid(images: torch.Tensor, nrow: int = 8, pad: int = 1) -> np.ndarray:
    """A grid of images with ``nrow`` images per row: an ``(H, W, 3)`` RGB array in
    [0, 1], ``pad`` white pixels between the images (a short last row is padded white).

    Examples:
        Sixteen 28 x 28 digits, eight a row: two rows of 28 pixels and one spacer, eight
        columns and seven spacers:

        >>> import torch
        >>> from probgen.viz import image_grid
        >>> image_grid(torch.zeros(16, 1, 28, 28), nrow=8).shape
        (57, 231, 3)
    """
    nrow = checks.positive_int("nrow", nrow)
    pad = checks.nonnegative_int("pad", pad)
    rows = [image_row(images[i : i + nrow], pad) for i in range(0, images.shape[0], nrow)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=1) for r in rows]
    spacer = np.ones((pad, width, 3))
    return np.concatenate([part for r in rows for part in (r, spacer)][:-1], 0)


def rows_figure(
    rows: dict[str, torch.Tensor], path: str | Path | None = None, title: str | None = None
) -> Figure:
    """One labelled row of images per entry of ``rows`` (label -> ``(B, C, H, W)``)."""
    n = max(r.shape[0] for r in rows.values())
    fig, axes = new_figure(
        len(rows), 1, figsize=(0.6 * n + 1.2, 0.62 * len(rows) + 0.4), squeeze=False
    )
    for ax, (label, imgs) in zip(axes[:, 0], rows.items()):
        ax.imshow(image_row(imgs), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        for s in ax.spines.values():
            s.set_visible(False)
    top = 1.0
    if title:
        fig.suptitle(title, fontsize=10)
        top = 1.0 - 0.3 / fig.get_figheight()  # room for the title (tight_layout ignores it)
    fig.tight_layout(pad=0.3, h_pad=0.1, rect=(0, 0, 1, top))
    return save(fig, path)


def grid_figure(
    images: torch.Tensor,
    nrow: int = 10,
    path: str | Path | None = None,
    title: str | None = None,
    size: float = 0.5,
) -> Figure:
    """A grid of images, ``nrow`` per row."""
    grid = image_grid(images, nrow=nrow)
    rows = (images.shape[0] + nrow - 1) // nrow
    fig, ax = new_figure(figsize=(size * nrow + 0.4, size * rows + (0.5 if title else 0.2)))
    ax.imshow(grid, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout(pad=0.2)
    return save(fig, path)


def save(fig: Figure, path: str | Path | None, dpi: int = 120) -> Figure:
    """Write ``fig`` to ``path`` (folders made) and return it; without a path just return it.

    A figure that pyplot manages (a user's own ``plt.subplots``) is closed after
    writing, as pyplot would otherwise keep it open; probgen's own figures are not
    pyplot's and need no closing.
    """
    if path is None:
        return fig
    if not is_main_process():  # under torchrun, rank 0 alone writes files
        return fig
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # "tight": a long row label or a suptitle that tight_layout left outside the canvas
    # is kept (rows_figure's labels sit left of the axes).
    fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.05)
    if getattr(fig.canvas, "manager", None) is not None:
        import matplotlib.pyplot as plt  # already imported by whoever made the figure

        plt.close(fig)
    return fig


def completion_figure(
    inputs: torch.Tensor,
    truth: torch.Tensor,
    predictions: dict[str, torch.Tensor],
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Rows: inputs (hidden pixels tinted), truth, then one row per prediction.

    ``predictions`` maps a row label to ``(B, C, H, W)`` images, or to
    ``(S, B, C, H, W)`` samples, which become S rows.
    """
    rows = {"input": inputs, "truth": truth}
    for label, pred in predictions.items():
        if pred.dim() == inputs.dim() + 1:
            for s in range(pred.shape[0]):
                rows[f"{label} {s + 1}" if pred.shape[0] > 1 else label] = pred[s]
        else:
            rows[label] = pred
    return rows_figure(rows, path, title)


def progression_figure(
    truth: torch.Tensor,
    producers: dict[str, Callable],
    level: int = 0,
    n: int = 3,
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Edits of an attribute against its true progression: for each of the first ``n``
    identities of ``truth`` ``(N, K, C, H, W)``, the true images at every level, then
    each producer's ``produce(x, level)`` of the image at ``level`` (``(1, K, C, H, W)``,
    NaN where it cannot go, drawn black)."""
    rows = {}
    for i in range(min(n, truth.shape[0])):
        rows[f"#{i} truth"] = truth[i]
        for name, produce in producers.items():
            row = produce(truth[i : i + 1, level], level)[0]
            rows[f"#{i} {name}"] = torch.nan_to_num(row, nan=0.0).clamp(0, 1)
    return rows_figure(rows, path, title)
