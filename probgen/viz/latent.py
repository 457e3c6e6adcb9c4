"""Figures of latent spaces: scatter by class, the decoded manifold, interpolation,
PCA against an autoencoder, anomaly scores."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from probgen import checks
from probgen.metrics.images import pca
from probgen.metrics.report import AAEReport, seeded
from probgen.models.aae import AAE
from probgen.models.vae import VAE
from probgen.viz.images import grid_figure, image_grid, module_place, new_figure, rows_figure, save

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
else:  # matplotlib is imported when a figure is drawn; at run time these hints read Any
    Axes = Figure = Any

PathLike = str | Path | None


def _project_2d(z: torch.Tensor, projection: str = "pca") -> torch.Tensor:
    """2-D coordinates of codes: their first two principal axes (``"pca"``, for codes of
    more than two dimensions) or their first two coordinates (``"first"``)."""
    if z.shape[1] <= 2 or projection == "first":
        return z[:, :2]
    mean, components, _ = pca(z)
    return ((z.double() - mean) @ components[:2].T).to(z.dtype)


def latent_scatter(
    codes: dict[str, torch.Tensor],
    labels: torch.Tensor | dict[str, torch.Tensor | None],
    path: PathLike = None,
    max_points: int | None = 5000,
    title: str | None = None,
    *,
    projection: str = "pca",
    prior_circle: bool = True,
    shared_frame: bool = False,
) -> Figure:
    """Side-by-side scatter plots of codes (one panel per entry), coloured by class.

    Args:
        codes: panel title -> ``(N, z_dim)`` codes (or prior draws).
        labels: the classes of every panel's points, or panel title -> classes (``None``:
            the points in grey).
        max_points: the first this many points of each panel (``None``: all).
        projection: codes of more than two dimensions on their first two principal axes
            (``"pca"``) or on their first two coordinates (``"first"``; the title says
            which).
        prior_circle: a dashed circle at two standard deviations of the N(0, I) prior.
        shared_frame: one square frame for every panel (codes next to prior draws).
    """
    fig, axes = new_figure(1, len(codes), figsize=(4.6 * len(codes) + 0.8, 4.4), squeeze=False)
    sc = None
    for ax, (name, z) in zip(axes[0], codes.items()):
        lab = labels.get(name) if isinstance(labels, dict) else labels
        z2 = _project_2d(z[:max_points].detach().float().cpu(), projection).numpy()
        if lab is None:
            ax.scatter(z2[:, 0], z2[:, 1], s=3, alpha=0.5, color="0.4")
        else:
            sc = ax.scatter(
                z2[:, 0],
                z2[:, 1],
                c=lab[:max_points].cpu().numpy(),
                cmap="tab10",
                s=3,
                alpha=0.7,
                vmin=-0.5,
                vmax=9.5,
            )
        if prior_circle:
            t = np.linspace(0, 2 * np.pi, 200)
            ax.plot(2 * np.cos(t), 2 * np.sin(t), "k--", lw=0.8, alpha=0.6)
        extra = (
            ""
            if z.shape[1] <= 2
            else (" (first 2 PCs)" if projection == "pca" else " (first 2 coordinates)")
        )
        ax.set_title(name + extra, fontsize=10)
        ax.set_xlabel("z1")
        ax.set_ylabel("z2")
        ax.set_aspect("equal", adjustable="box" if shared_frame else "datalim")
    if shared_frame:
        lo = min(min(a.get_xlim()[0], a.get_ylim()[0]) for a in axes[0])
        hi = max(max(a.get_xlim()[1], a.get_ylim()[1]) for a in axes[0])
        for a in axes[0]:
            a.set_xlim(lo, hi)
            a.set_ylim(lo, hi)
    if sc is not None:
        cb = fig.colorbar(sc, ax=axes[0].tolist(), ticks=range(10), shrink=0.85)
        cb.set_label("digit")
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path)


def manifold_codes(
    n: int = 15,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    around: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ``(n * n, 2)`` codes of :func:`manifold_grids`, on ``device`` (row-major:
    ``z2`` falls down the rows, ``z1`` grows along them): at the standard normal's
    quantiles, or with ``around`` (draws of another prior) evenly over the central 98% of
    those draws' first two coordinates.

    Examples:
        A 2 x 2 grid at the standard normal's quartiles, top row first:

        >>> from probgen.viz import manifold_codes
        >>> manifold_codes(2)
        tensor([[-0.6745,  0.6745],
                [ 0.6745,  0.6745],
                [-0.6745, -0.6745],
                [ 0.6745, -0.6745]])
    """
    n = checks.positive_int("n", n)
    if around is not None:
        lo = torch.quantile(around[:, :2].float().cpu(), 0.01, dim=0)
        hi = torch.quantile(around[:, :2].float().cpu(), 0.99, dim=0)
        xs = torch.linspace(float(lo[0]), float(hi[0]), n, device=device, dtype=dtype)
        ys = torch.linspace(float(hi[1]), float(lo[1]), n, device=device, dtype=dtype)
        zy, zx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([zx.flatten(), zy.flatten()], 1)
    u = torch.linspace(0.5 / n, 1 - 0.5 / n, n, device=device, dtype=dtype)
    q = torch.distributions.Normal(u.new_zeros(()), u.new_ones(())).icdf(u)
    zy, zx = torch.meshgrid(q.flip(0), q, indexing="ij")
    return torch.stack([zx.flatten(), zy.flatten()], 1)


@torch.no_grad()
def manifold_images(
    decode: Callable[[torch.Tensor], torch.Tensor],
    n: int = 15,
    device=None,
    around: torch.Tensor | None = None,
) -> torch.Tensor:
    """``decode`` of the :func:`manifold_codes` grid, ``(n * n, C, H, W)``; the codes are
    made on ``device``, by default where ``decode``'s module lives (a model's bound
    ``decode``), else on the CPU."""
    where, dtype = module_place(decode)
    return decode(manifold_codes(n, device if device is not None else where, dtype, around))


def manifold_grids(
    decoders: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    n: int = 15,
    path: PathLike = None,
    title: str | None = None,
    device: torch.device | str | None = None,
    around: torch.Tensor | None = None,
) -> Figure:
    """Decode an ``n x n`` grid of 2-D codes placed at the normal quantiles.

    Grid point ``(i, j)`` is ``(Phi^-1(u_j), Phi^-1(u_i))`` with ``u`` evenly spaced in
    (0, 1), so equal areas of the figure hold equal prior mass. With ``around`` (draws
    of a prior that is no standard normal: a mixture, a swiss roll) the grid spans the
    central 98% of the draws evenly instead. One panel per decoder (``z (n*n, 2) ->
    images (n*n, C, H, W)``). The codes are made on ``device``, by default where the
    decoder's module lives (a model's bound ``decode``), else on the CPU.
    """
    fig, axes = new_figure(1, len(decoders), figsize=(5 * len(decoders), 5.3), squeeze=False)
    for ax, (name, decode) in zip(axes[0], decoders.items()):
        imgs = manifold_images(decode, n, device, around)
        ax.imshow(image_grid(imgs.cpu(), nrow=n, pad=0), interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def interpolation_figure(
    rows: dict[str, torch.Tensor], path: PathLike = None, title: str | None = None
) -> Figure:
    """Rows of images along a path between two codes (label -> ``(steps, C, H, W)``)."""
    return rows_figure(rows, path, title)


def pca_vs_autoencoder(
    explained: torch.Tensor,
    pca_errors: dict[int, float],
    ae_errors: dict[int, float],
    path: PathLike = None,
) -> Figure:
    """Left: PCA's cumulative explained variance; right: reconstruction error (MSE per
    pixel) of PCA and of an autoencoder at the same code sizes."""
    fig, (a, b) = new_figure(1, 2, figsize=(10, 4))
    cum = explained.cumsum(0).cpu().numpy()
    a.plot(np.arange(1, len(cum) + 1), cum, "C0")
    k90 = int(np.searchsorted(cum, 0.9) + 1)
    a.axhline(0.9, color="grey", ls=":", lw=0.8)
    a.axvline(k90, color="grey", ls=":", lw=0.8)
    a.annotate(
        f"90% at {k90} components",
        (k90, 0.9),
        xytext=(k90 + 40, 0.75),
        arrowprops=dict(arrowstyle="->", lw=0.8),
        fontsize=9,
    )
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


def style_codes(
    model: torch.nn.Module, styles: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(styles * classes, z_dim)`` prior draws of a label-conditional autoencoder and
    their labels: row ``s`` holds style ``s`` for every class. A style is a set of random
    numbers (seeded with ``seed + s`` in a forked random state, so the caller's stream is
    left alone): each class's code is drawn with the same ones, so with the label at the
    prior it sits at the same place of that class's part (a mixture component rotated,
    the same share of a swiss-roll segment), and without it it is the same code for every
    class. ``model``: ``num_classes`` (or ``num_labels``), ``device`` and
    ``prior_sample(n, labels)``."""
    styles = checks.positive_int("styles", styles)
    seed = checks.seed("seed", seed)
    classes = getattr(model, "num_classes", None) or model.num_labels
    z, labels = [], []
    for s in range(styles):
        for c in range(classes):
            label = torch.tensor([c], device=model.device)
            with seeded(seed + s, model.device):
                z.append(model.prior_sample(1, label))
            labels.append(label)
    return torch.cat(z), torch.cat(labels)


@torch.no_grad()
def style_figure(
    model: torch.nn.Module, path: PathLike = None, styles: int = 8, seed: int = 0
) -> Figure:
    """What a label-conditional decoder does with the label: rows, one style each
    (:func:`style_codes`); columns, the label given to the decoder (``model.decode(z,
    labels)``)."""
    z, labels = style_codes(model, styles, seed)
    images = model.decode(z, labels).cpu()
    return grid_figure(
        images,
        nrow=labels.numel() // styles,
        path=path,
        title="style z fixed along each row, label 0-9 along the columns",
    )


def aae_figures(
    model: AAE, report: AAEReport, folder: str | Path, tag: str, seed: int = 0
) -> dict[str, Figure]:
    """The figures of an autoencoder with a prior from its
    :class:`~probgen.metrics.report.AAEReport`, written to ``folder``:

    * ``codes_<tag>.png``: the test codes coloured by digit next to as many prior draws (a
      code of more than two values on its first two), one frame (:func:`latent_scatter`);
    * ``manifold_<tag>.png`` (2-D codes, unconditional decoder): decoded codes on a grid
      over the central 98% of the prior draws (:func:`manifold_grids`);
    * ``style_<tag>.png`` (a decoder that takes the label, or a semi-supervised model's
      class code): :func:`style_figure`, its styles seeded with ``seed``;
    * ``samples_<tag>.png``: the report's decoded prior draws.

    The titles name ``model.encoder_kind`` and ``model.prior_name`` where the model has
    them. Returns the figures by name."""
    folder = Path(folder)
    semi = hasattr(model, "predict")  # a class code next to the style code
    kind = getattr(model, "encoder_kind", "vae")
    prior = getattr(model, "prior_name", "normal")
    to_decoder = getattr(model, "label_to_decoder", False)
    figs = {}
    if model.z_dim >= 2:
        names = ("codes of test digits, z ~ q(z|x)", "prior draws, z ~ p(z)")
        figs["codes"] = latent_scatter(
            dict(zip(names, (report.codes, report.prior_draws))),
            dict(zip(names, (report.labels, report.prior_labels))),
            folder / f"codes_{tag}.png",
            max_points=None,
            projection="first",
            prior_circle=False,
            shared_frame=True,
            title=f"{kind} encoder, {prior} prior" + (" (the style code)" if semi else ""),
        )
        if model.z_dim == 2 and not to_decoder and not semi:
            figs["manifold"] = manifold_grids(
                {f"decoded 2-D codes ({kind}, {prior})": model.decode},
                path=folder / f"manifold_{tag}.png",
                around=report.prior_draws,
            )
    if to_decoder or semi:  # the decoder takes the label (the class code)
        figs["style"] = style_figure(model, folder / f"style_{tag}.png", seed=seed)
    figs["samples"] = grid_figure(
        report.samples,
        nrow=10,
        path=folder / f"samples_{tag}.png",
        title="decoded z ~ p(z)" + (" (one row per digit)" if to_decoder else ""),
    )
    return figs


@torch.no_grad()
def vae_figures(
    model: VAE, images: torch.Tensor, labels: torch.Tensor, folder: str | Path, tag: str = ""
) -> dict[str, Figure]:
    """The figures of a model of the VAE family (:class:`probgen.models.VAE`), written to
    ``folder``: ``reconstructions<tag>.png`` (twelve of ``images`` above their
    reconstructions), ``samples<tag>.png`` (decoded ``z ~ N(0, I)``: 80, or eight of each
    label for a label-conditional model, one row per label) and ``latent<tag>.png`` (the
    encoder means of ``images``, coloured by ``labels``; :func:`latent_scatter`). The
    samples are drawn from the global random stream. Returns the figures by name."""
    folder = Path(folder)
    figs = {
        "reconstructions": rows_figure(
            {"data": images[:12], "reconstruction": model.reconstruct(images[:12], labels[:12])},
            path=folder / f"reconstructions{tag}.png",
            title="test digits",
        )
    }
    rows = torch.arange(10, device=images.device).repeat_interleave(8) if model.num_labels else None
    figs["samples"] = grid_figure(
        model.sample(80) if rows is None else model.sample(labels=rows),
        nrow=10 if rows is None else 8,
        path=folder / f"samples{tag}.png",
        title="decoded z ~ N(0, I)",
    )
    figs["latent"] = latent_scatter(
        {"encoder mean": model.encode(images, labels)[0]}, labels, path=folder / f"latent{tag}.png"
    )
    return figs


def anomaly_figure(
    scores: torch.Tensor,
    is_anomaly: torch.Tensor,
    auc: float,
    label: str = "held-out class",
    path: PathLike = None,
) -> Figure:
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


__all__ = [
    "aae_figures",
    "anomaly_figure",
    "interpolation_figure",
    "latent_scatter",
    "manifold_codes",
    "manifold_grids",
    "manifold_images",
    "pca_vs_autoencoder",
    "style_codes",
    "style_figure",
    "vae_figures",
]
