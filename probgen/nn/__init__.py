"""Plain PyTorch networks used by probgen's models."""

from probgen.nn.coders import NETS, Encoder
from probgen.nn.mlp import ACTIVATIONS, MLP, GaussianMLP

__all__ = ["ACTIVATIONS", "Encoder", "GaussianMLP", "MLP", "MNISTClassifier", "NETS", "load_classifier"]


def __getattr__(name):
    # the classifier loads lazily so that `python -m probgen.nn.classifier` (its retraining
    # command) does not find itself imported by `import probgen`
    if name in ("MNISTClassifier", "load_classifier"):
        from probgen.nn import classifier
        return getattr(classifier, name)
    raise AttributeError(f"module 'probgen.nn' has no attribute {name!r}")
