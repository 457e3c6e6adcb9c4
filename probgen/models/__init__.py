"""Pyro model/guide pairs, one file per family."""

from probgen.models.registry import MODELS
from probgen.models.cvae import CVAE, Baseline

__all__ = ["MODELS", "CVAE", "Baseline"]
