"""Inference: objectives by name."""

from probgen.infer.objectives import OBJECTIVES, make_elbo

__all__ = ["OBJECTIVES", "make_elbo"]
