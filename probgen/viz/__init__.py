"""Matplotlib figures."""

from probgen.viz.curves import (fid_curve_figure, history_figure, learning_curves,
                                phase_losses_figure, plot_history, tradeoff_figure,
                                training_minutes)
from probgen.viz.density import (density_on_grid, discriminator_figure, discriminator_snapshot,
                                 temperature_grid_figure, toy_density_figure, toy_samples_figure)
from probgen.viz.images import (completion_figure, grid_figure, image_grid, image_row,
                                progression_figure, rows_figure, save)
from probgen.viz.latent import (aae_figures, anomaly_figure, interpolation_figure, latent_scatter,
                                manifold_codes, manifold_grids, pca_vs_autoencoder, style_codes,
                                style_figure, vae_figures)
from probgen.viz.scenes import colourize, kl_map_figure, one_colour

__all__ = ["aae_figures", "anomaly_figure", "colourize", "completion_figure", "density_on_grid",
           "discriminator_figure", "discriminator_snapshot", "fid_curve_figure", "grid_figure",
           "history_figure", "image_grid", "image_row", "interpolation_figure", "kl_map_figure",
           "latent_scatter", "learning_curves", "manifold_codes", "manifold_grids", "one_colour",
           "pca_vs_autoencoder", "phase_losses_figure", "plot_history", "progression_figure", "rows_figure", "save",
           "style_codes", "style_figure", "temperature_grid_figure", "toy_density_figure",
           "toy_samples_figure", "tradeoff_figure", "training_minutes", "vae_figures"]
