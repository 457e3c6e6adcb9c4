"""Figures of posteriors: several posteriors of one image's code overlaid in a pair plot.

Built on ``az.plot_pair`` (one call per posterior, on shared axes) inside a
:class:`matplotlib.figure.Figure` made without pyplot, as every probgen figure is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from probgen.errors import ConfigError
from probgen.inspect.arviz import InferenceData, arviz

if TYPE_CHECKING:
    from matplotlib.figure import Figure
else:  # matplotlib is imported when a figure is drawn; at run time the hint reads Any
    Figure = Any

COLOURS = ("black", "tab:orange", "tab:blue", "tab:green", "tab:red", "tab:purple")


def informative_latents(idata: InferenceData, example: Any, count: int = 3, var: str = "z") -> list:
    """The ``count`` latent dimensions whose posterior sd (over all chains and draws) is
    smallest for this example: where the image pins its code down (under a standard
    normal prior the others keep sd near 1)."""
    sd = idata.posterior[var].sel(example=example).std(("chain", "draw")).values
    return [int(i) for i in np.argsort(sd)[:count]]


def pair_overlay(
    posteriors: Mapping[str, InferenceData],
    example: Any,
    latents: Sequence[int],
    var: str = "z",
    max_points: int = 400,
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """A pair plot of ``latents`` of one example's code, each posterior in its colour.

    Args:
        posteriors: ``{label: InferenceData}`` (e.g. ``{"NUTS": ..., "diagonal q": ...,
            "IAF q": ...}``) with a ``var`` of dims ``(chain, draw, example, latent)``;
            the first is drawn first (underneath).
        example: the coordinate value of the image on the ``example`` axis.
        latents: two or more latent dimensions.
        max_points: draws shown per posterior (thinned evenly).

    Returns the :class:`~matplotlib.figure.Figure` (saved to ``path`` when given).
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    az = arviz()
    latents = [int(i) for i in latents]
    if len(latents) < 2:
        raise ConfigError(f"a pair plot needs at least two latent dimensions, got {latents}.")
    k = len(latents)
    fig = Figure(figsize=(2.6 * (k - 1) + 1.2, 2.6 * (k - 1) + 0.6))
    axes = np.atleast_2d(fig.subplots(k - 1, k - 1, squeeze=False))
    handles = []
    for (label, idata), colour in zip(posteriors.items(), COLOURS):
        post = idata.posterior[var].sel(example=example, latent=latents)
        n = post.sizes["chain"] * post.sizes["draw"]
        step = max(1, n // max_points)
        thinned = post.stack(sample=("chain", "draw")).isel(sample=slice(None, None, step))
        data = {f"{var}[{d}]": thinned.sel(latent=d).values[None, :] for d in latents}
        az.plot_pair(
            data,
            kind="scatter",
            ax=axes,
            marginals=False,
            textsize=9,
            scatter_kwargs={"color": colour, "alpha": 0.45, "s": 10},
            backend_kwargs={},
        )
        handles.append(Line2D([], [], marker="o", linestyle="", color=colour, label=label))
    fig.legend(handles=handles, loc="upper right", frameon=False)
    if title:
        fig.suptitle(title)
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig
