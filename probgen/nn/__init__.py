"""Plain PyTorch networks used by probgen's models."""

from probgen.nn.mlp import ACTIVATIONS, MLP, GaussianMLP

__all__ = ["ACTIVATIONS", "GaussianMLP", "MLP"]
