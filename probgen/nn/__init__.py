"""Plain PyTorch networks used by probgen's models."""

from probgen.nn.classifier import MNISTClassifier, load_classifier
from probgen.nn.coders import NETS, Encoder
from probgen.nn.mlp import ACTIVATIONS, MLP, GaussianMLP

__all__ = ["ACTIVATIONS", "Encoder", "GaussianMLP", "MLP", "MNISTClassifier", "NETS", "load_classifier"]
