"""Inference: objectives by name."""

from probgen.infer.objectives import IWAE_ELBO, OBJECTIVES, make_elbo

__all__ = ["IWAE_ELBO", "OBJECTIVES", "make_elbo"]
