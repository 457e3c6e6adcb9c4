"""Figures of object-wise models (the multi-entity VAE): entities in their own colours, the
candidate grid a guide chose from."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from probgen.viz.images import new_figure, save

if TYPE_CHECKING:
    from matplotlib.figure import Figure
else:  # matplotlib is imported when a figure is drawn; at run time the hint reads Any
    Figure = Any

#: one colour per entity (RGB in [0, 1]), repeated beyond eight entities
ENTITY_COLOURS = torch.tensor(
    [
        [0.95, 0.25, 0.2],
        [0.2, 0.6, 1.0],
        [0.3, 0.85, 0.3],
        [1.0, 0.8, 0.1],
        [0.8, 0.35, 0.95],
        [0.1, 0.9, 0.9],
        [1.0, 0.5, 0.0],
        [0.9, 0.9, 0.9],
    ]
)


def entity_colour(k: int) -> torch.Tensor:
    """Entity ``k``'s colour, ``(3,)``."""
    return ENTITY_COLOURS[k % len(ENTITY_COLOURS)]


def colourize(ink: torch.Tensor) -> torch.Tensor:
    """``(B, K, H, W)`` entity inks -> ``(B, 3, H, W)``, each entity in its own colour
    (summed where they overlap, clipped to [0, 1]).

    Examples:
        Two entities, one pixel each, in the first two colours of
        :data:`ENTITY_COLOURS` (red, blue):

        >>> import torch
        >>> from probgen.viz import colourize
        >>> ink = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])     # (1, 2, 1, 2)
        >>> colourize(ink)[0, :, 0].T                              # RGB of each pixel
        tensor([[0.9500, 0.2500, 0.2000],
                [0.2000, 0.6000, 1.0000]])
    """
    k = ink.shape[1]
    colours = ENTITY_COLOURS.to(ink)[torch.arange(k, device=ink.device) % len(ENTITY_COLOURS)]
    return torch.einsum("bkhw,kc->bchw", ink, colours).clamp(0, 1)


def one_colour(ink: torch.Tensor, k: int) -> torch.Tensor:
    """One entity's ink ``(B, H, W)`` in entity ``k``'s colour, ``(B, 3, H, W)``."""
    return ink.unsqueeze(1) * entity_colour(k).to(ink).view(1, 3, 1, 1)


def kl_map_figure(
    x: torch.Tensor,
    parts: dict[str, torch.Tensor],
    grid: int,
    path: str | Path | None = None,
    n: int = 6,
) -> Figure:
    """Top: scenes ``x`` ``(B, 1, H, W)`` with the kept cells boxed and their entities'
    centres crossed, in the entities' colours; bottom: every candidate's KL on the
    ``grid x grid`` candidate grid, the kept ones numbered. ``parts``: a
    :class:`probgen.models.MEVAE`'s ``decompose(x)`` (``indices``, ``kl``, ``centres``)."""
    from matplotlib.patches import Rectangle

    n = min(n, x.shape[0])
    fig, axes = new_figure(2, n, figsize=(1.8 * n, 3.7), squeeze=False)
    canvas = x.shape[-1]
    cell = canvas / grid
    for j in range(n):
        top, bottom = axes[0, j], axes[1, j]
        top.imshow(x[j, 0].cpu().numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        im = bottom.imshow(parts["kl"][j].cpu().numpy(), cmap="magma", interpolation="nearest")
        for r, idx in enumerate(parts["indices"][j].tolist()):
            colour = entity_colour(r).tolist()
            gy, gx = divmod(idx, grid)
            top.add_patch(
                Rectangle(
                    (gx * cell - 0.5, gy * cell - 0.5),
                    cell,
                    cell,
                    fill=False,
                    edgecolor=colour,
                    lw=1.2,
                )
            )
            cx, cy = ((parts["centres"][j, r].cpu() + 1) * canvas / 2 - 0.5).tolist()
            top.plot([cx], [cy], "+", color=colour, ms=7, mew=1.5)
            bottom.text(
                gx,
                gy,
                str(r + 1),
                ha="center",
                va="center",
                fontsize=7,
                color=colour,
                fontweight="bold",
            )
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
        top.set_xlim(-0.5, canvas - 0.5)
        top.set_ylim(canvas - 0.5, -0.5)
        fig.colorbar(im, ax=bottom, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    axes[0, 0].set_ylabel("kept cells (boxes),\nentity centres (+)", fontsize=7)
    axes[1, 0].set_ylabel("KL(q || N(0, I)), nats", fontsize=7)
    fig.suptitle(
        f"candidate grid {grid}x{grid}: the K largest KL are kept (numbered by rank)", fontsize=9
    )
    fig.tight_layout(pad=0.3)
    return save(fig, path)


__all__ = ["ENTITY_COLOURS", "colourize", "entity_colour", "kl_map_figure", "one_colour"]
