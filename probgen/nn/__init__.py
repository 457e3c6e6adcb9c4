"""Plain PyTorch networks used by probgen's models."""

from probgen.nn.classifier import MNISTClassifier, load_classifier
from probgen.nn.coders import NETS, Encoder
from probgen.nn.heads import GaussianHead
from probgen.nn.mlp import ACTIVATIONS, MLP, GaussianMLP

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "NETS",
    "Encoder",
    "GaussianHead",
    "GaussianMLP",
    "MNISTClassifier",
    "load_classifier",
]
