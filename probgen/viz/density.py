"""Figures of density models: 2-D densities on a grid, samples at several temperatures."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from probgen import checks
from probgen.models.gan import GAN
from probgen.viz.images import image_grid, module_place, new_figure, save

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
else:  # matplotlib is imported when a figure is drawn; at run time these hints read Any
    Axes = Figure = Any

Extent = tuple[float, float, float, float]


@torch.no_grad()
def density_on_grid(
    log_prob_fn: Callable[[torch.Tensor], torch.Tensor],
    extent: Extent = (-4, 4, -4, 4),
    resolution: int = 200,
    batch_size: int = 10000,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[np.ndarray, float]:
    """Evaluate ``exp(log_prob_fn(points))`` on a ``resolution`` x ``resolution`` grid.

    The points are made on ``device`` in ``dtype``; by default where ``log_prob_fn``'s
    module lives (a flow's bound ``log_prob``), else on the CPU in the default dtype.

    Returns:
        ``(density (R, R) numpy array, cell area)``; row ``i`` is ``y = y_i``, so
        ``imshow(density, origin="lower", extent=extent)`` draws it.

    Examples:
        The standard normal in 2-D: its peak is ``1 / (2 pi)`` and the grid holds
        nearly all of its mass:

        >>> import torch
        >>> from probgen.viz import density_on_grid
        >>> normal = torch.distributions.Normal(0.0, 1.0)
        >>> density, area = density_on_grid(lambda p: normal.log_prob(p).sum(-1),
        ...                                 resolution=101)
        >>> density.shape, round(float(density.max()), 4), round(float(density.sum() * area), 3)
        ((101, 101), 0.1592, 1.0)
    """
    resolution = checks.integer("resolution", resolution, low=2)
    batch_size = checks.positive_int("batch_size", batch_size)
    x0, x1, y0, y1 = extent
    xs = torch.linspace(x0, x1, resolution, dtype=torch.float64)
    ys = torch.linspace(y0, y1, resolution, dtype=torch.float64)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    where, kind = module_place(log_prob_fn)
    pts = pts.to(
        device=device if device is not None else where,
        dtype=dtype or kind or torch.get_default_dtype(),
    )
    out = [
        log_prob_fn(pts[i : i + batch_size]).double().cpu()
        for i in range(0, pts.shape[0], batch_size)
    ]
    logp = torch.cat(out).reshape(resolution, resolution)
    area = float((xs[1] - xs[0]) * (ys[1] - ys[0]))
    return torch.exp(logp).numpy(), area


def _style(ax, extent, title=None):
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def _save(fig, path, top: float = 1.0):
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, top))
    return save(fig, path, dpi=110)


def toy_density_figure(
    data: Mapping[str, torch.Tensor],
    densities: Mapping[str, Mapping[str, np.ndarray]],
    path: str | Path | None = None,
    extent: Extent = (-4, 4, -4, 4),
    titles: Mapping[tuple[str, str], str] | None = None,
) -> Figure:
    """Rows: data sets; columns: a 2-D histogram of the data, then each model's density.

    Args:
        data: data set name -> points ``(N, 2)``.
        densities: data set name -> {model name -> density grid from :func:`density_on_grid`}.
        titles: optional ``(data set, model) -> panel title`` (e.g. with the test NLL).
    """
    models = list(dict.fromkeys(m for d in densities.values() for m in d))
    rows = list(data)
    fig, axes = new_figure(
        len(rows),
        1 + len(models),
        figsize=(1.9 * (1 + len(models)), 1.9 * len(rows)),
        squeeze=False,
    )
    for r, name in enumerate(rows):
        pts = data[name].detach().double().cpu().numpy()
        ax = axes[r, 0]
        ax.hist2d(pts[:, 0], pts[:, 1], bins=120, range=[extent[:2], extent[2:]], cmap="viridis")
        _style(ax, extent, f"{name}: data")
        for c, model in enumerate(models, start=1):
            ax = axes[r, c]
            grid = densities.get(name, {}).get(model)
            if grid is not None:
                # a robust colour scale: a few noisy grid points (DenseFlow's estimate is
                # stochastic) must not dim the rest
                vmax = float(np.quantile(grid, 0.995)) or None
                ax.imshow(
                    grid,
                    origin="lower",
                    extent=extent,
                    cmap="viridis",
                    aspect="equal",
                    vmin=0,
                    vmax=vmax,
                )
            title = (titles or {}).get((name, model), model)
            _style(ax, extent, title)
    return _save(fig, path)


def toy_samples_figure(
    samples: Mapping[str, Mapping[float, torch.Tensor]],
    path: str | Path | None = None,
    extent: Extent = (-4, 4, -4, 4),
    title: str | None = None,
) -> Figure:
    """Rows: models; columns: temperatures; scatter plots of 2-D samples."""
    rows = list(samples)
    temps = sorted({t for s in samples.values() for t in s})
    fig, axes = new_figure(
        len(rows), len(temps), figsize=(1.9 * len(temps), 1.9 * len(rows)), squeeze=False
    )
    for r, model in enumerate(rows):
        for c, t in enumerate(temps):
            ax = axes[r, c]
            pts = samples[model].get(t)
            if pts is not None:
                pts = pts.detach().double().cpu().numpy()
                ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4)
            _style(ax, extent, f"{model}, T={t:g}")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path, top=1 - 0.3 / (1.9 * len(rows)) if title else 1.0)


def temperature_grid_figure(
    samples: Mapping[float, torch.Tensor],
    path: str | Path | None = None,
    nrow: int = 8,
    title: str | None = None,
) -> Figure:
    """Image samples side by side, one grid per temperature (``{T: (N, C, H, W)}`` in [0, 1])."""
    temps = sorted(samples)
    grids = [image_grid(samples[t].clamp(0, 1), nrow=nrow) for t in temps]
    width = 3.4
    height = width * grids[0].shape[0] / grids[0].shape[1] + 0.35
    fig, axes = new_figure(1, len(temps), figsize=(width * len(temps), height + 0.3), squeeze=False)
    for ax, t, grid in zip(axes[0], temps, grids):
        ax.imshow(grid, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"T = {t:g}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path, top=1 - 0.3 / (height + 0.3) if title else 1.0)


@torch.no_grad()
def discriminator_snapshot(
    gan: GAN, n: int, seed: int = 0, grid: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """A GAN at one point of training, as :func:`discriminator_figure` and
    :func:`~probgen.viz.rows_figure` draw it (a
    :class:`~probgen.train.callbacks.Snapshots` ``take``).

    Args:
        gan: a :class:`probgen.models.GAN` (``sample(n, generator=...)``, ``discriminate``).
        n: samples to draw.
        seed: of the samples' own generator: the same noise at every snapshot, and the
            training's random stream left alone.
        grid: points ``(G,)`` of a 1-D GAN's data space where to record the
            discriminator (``None``: not recorded).

    Returns:
        ``samples``, ``(n, ...)`` on the CPU; with a ``grid``, ``d``, ``D(grid)`` ``(G,)``: a
        probability, or a critic's values rescaled to [0, 1] to draw.
    """
    n, seed = checks.positive_int("n", n), checks.seed("seed", seed)
    shot = {"samples": gan.sample(n, generator=torch.Generator().manual_seed(seed)).cpu()}
    if grid is not None:
        d = gan.discriminate(grid[:, None]).cpu()
        shot["d"] = (
            d if gan.spec.probability else (d - d.min()) / (d.max() - d.min()).clamp_min(1e-12)
        )
    return shot


def discriminator_figure(
    shots: Mapping[str, Mapping[str, torch.Tensor]],
    grid: torch.Tensor,
    target: torch.Tensor,
    path: str | Path | None = None,
    title: str | None = None,
    target_label: str = "target",
    xlim: tuple[float, float] = (-5.0, 5.0),
) -> Figure:
    """A 1-D GAN over training: one panel per snapshot (``label -> {"samples": G(z),
    "d": D(grid) in [0, 1]}``, as :class:`~probgen.train.callbacks.Snapshots` keeps them),
    the histogram of the samples over the ``target`` density (its values on ``grid``) and
    the discriminator's values on ``grid`` in red, with the samples' mean and standard
    deviation in each title."""
    n = len(shots)
    grid, target = grid.detach().cpu(), target.detach().cpu()
    fig, axes = new_figure(1, n, figsize=(3.2 * n, 3.0), squeeze=False)
    for ax, (label, shot) in zip(axes[0], shots.items()):
        x = shot["samples"].detach().cpu().reshape(-1)
        ax.hist(
            x.clamp(*xlim).numpy(),
            bins=80,
            range=xlim,
            density=True,
            alpha=0.5,
            color="C0",
            label="G(z)",
        )
        ax.plot(grid.numpy(), target.numpy(), color="k", lw=1, label=target_label)
        ax.plot(grid.numpy(), shot["d"].detach().cpu().numpy(), color="C3", lw=1.2, label="D(x)")
        ax.axhline(0.5, color="C3", lw=0.6, ls=":")
        ax.set_xlim(*xlim)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{label}: mean {x.mean():.3f}, std {x.std():.3f}", fontsize=8)
        ax.set_xlabel("x")
    axes[0][0].legend(fontsize=7, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)
