"""Matplotlib figures."""

from probgen.viz.images import completion_figure, image_grid, image_row, learning_curves

__all__ = ["completion_figure", "image_grid", "image_row", "learning_curves"]
