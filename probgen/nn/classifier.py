"""A small MNIST classifier whose penultimate layer is the feature space of probgen's
sample-quality metrics.

FID and KID need a feature network. The usual one, Inception-v3, needs weights from the
internet and was trained on colour photographs; this classifier is trained on the bundled
MNIST (by :mod:`probgen.metrics.classifier_training`), so FID and KID on MNIST work
offline. Its values are *not* comparable with published Inception FIDs: probgen names
them "FID, MNIST-classifier features" everywhere. This module holds the network and its
weights file.

Architecture (131k parameters, 0.5 MB as float32)::

    (N, 1, 28, 28) in [0, 1]
    conv 5x5 1->32, BN, ReLU, max-pool 2   -> 32 x 14 x 14
    conv 3x3 32->64, BN, ReLU, max-pool 2  -> 64 x 7 x 7
    conv 3x3 64->64, BN, ReLU, max-pool 2  -> 64 x 3 x 3
    linear 576->128, BN, ReLU              -> the 128 features
    dropout 0.3, linear 128->10            -> class logits

The shipped weights are ``probgen/metrics/_weights/mnist_classifier.pt`` (SHA-256 in
``SHA256SUMS`` beside them), retrained by ``python -m probgen.metrics.classifier_training
--out FILE``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from probgen import checks, files
from probgen.errors import CheckpointError

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "metrics" / "_weights"
WEIGHTS_FILE = WEIGHTS_DIR / "mnist_classifier.pt"
SUMS_FILE = WEIGHTS_DIR / "SHA256SUMS"


class MNISTClassifier(nn.Module):
    """Convolutional MNIST classifier; :meth:`features` gives the penultimate layer.

    Args:
        num_features: width of the penultimate layer (the feature space of FID/KID).
        dropout: dropout before the last linear layer (training only).
    """

    image_shape = (1, 28, 28)
    num_classes = 10

    def __init__(self, num_features: int = 128, dropout: float = 0.3):
        super().__init__()
        num_features = checks.positive_int("num_features", num_features)
        dropout = checks.real("dropout", dropout, low=0, high=1, high_open=True)
        self.num_features = num_features
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 3 * 3, num_features, bias=False),
            nn.BatchNorm1d(num_features),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, self.num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features ``(N, num_features)`` of images ``(N, 1, 28, 28)`` in
        [0, 1]."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, 10)``."""
        return self.head(self.body(x))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both in one pass: ``(N, num_features)`` features and ``(N, 10)`` logits."""
        f = self.body(x)
        return f, self.head(f)


# the SHA-256 of a file (the old name of probgen.files.sha256)
sha256_of = files.sha256


def shipped_sha256() -> str:
    """The SHA-256 recorded for the shipped weights (``SHA256SUMS`` beside them)."""
    if not SUMS_FILE.exists():
        raise CheckpointError(
            f"{SUMS_FILE} is missing: reinstall probgen, or retrain the classifier "
            f"with `python -m probgen.metrics.classifier_training --out {WEIGHTS_FILE}`."
        )
    for line in SUMS_FILE.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == WEIGHTS_FILE.name:
            return parts[0]
    raise CheckpointError(
        f"{SUMS_FILE} has no entry for {WEIGHTS_FILE.name}: retrain the classifier "
        f"with `python -m probgen.metrics.classifier_training --out {WEIGHTS_FILE}`."
    )


def load_classifier(
    path: str | Path | None = None, sha256: str | None = None, device: str | torch.device = "cpu"
) -> MNISTClassifier:
    """The classifier in eval mode, its weights loaded with ``torch.load(weights_only=True)``.

    Args:
        path: a weights file; default: the shipped weights, whose SHA-256 is always checked.
        sha256: the expected SHA-256 of ``path`` (checked when given).
        device: where to put the network.

    Examples:
        The shipped network: 128 features and 10 class logits per image:

        >>> import torch
        >>> from probgen.nn.classifier import load_classifier
        >>> net = load_classifier()
        >>> features, logits = net.features_and_logits(torch.zeros(2, 1, 28, 28))
        >>> features.shape, logits.shape, net.training
        (torch.Size([2, 128]), torch.Size([2, 10]), False)
    """
    if path is None:
        path, sha256 = WEIGHTS_FILE, shipped_sha256()
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"classifier weights {path} not found: retrain them with "
            f"`python -m probgen.metrics.classifier_training --out {path}`."
        )
    if sha256 is not None:
        actual = sha256_of(path)
        if actual != sha256:
            raise CheckpointError(
                f"classifier weights {path} have SHA-256 {actual}, expected {sha256}: "
                f"the file is damaged or foreign; reinstall probgen or retrain with "
                f"`python -m probgen.metrics.classifier_training --out {path}`."
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, foreign pickle, ...
        raise CheckpointError(
            f"{path} is not a readable classifier weights file "
            f"({type(err).__name__}); retrain with "
            f"`python -m probgen.metrics.classifier_training --out {path}`."
        ) from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(f"{path} is not a probgen classifier file (no 'state_dict').")
    net = MNISTClassifier(num_features=int(state.get("num_features", 128)))
    try:
        net.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(
            f"{path} does not fit MNISTClassifier: {str(err).splitlines()[0]}"
        ) from None
    return net.to(device).eval().requires_grad_(False)


def save_classifier(net: MNISTClassifier, path: str | Path, meta: dict | None = None) -> str:
    """Write the weights (loadable with ``weights_only=True``) and return their SHA-256.

    A ``SHA256SUMS`` line for the file is written (or replaced) beside it. Both files are
    written atomically (:mod:`probgen.files`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        "num_features": net.num_features,
    }
    if meta:
        state["meta"] = dict(meta)
    # written whole or not at all (probgen.files), the weights before their sum: a crash
    # leaves the old pair, or new weights whose sum does not match yet (load says so)
    files.torch_save(state, path)
    digest = sha256_of(path)
    sums = path.parent / "SHA256SUMS"
    lines = [
        ln
        for ln in (sums.read_text().splitlines() if sums.exists() else [])
        if ln.split()[-1:] != [path.name]
    ]
    files.write_text(sums, "\n".join(lines + [f"{digest}  {path.name}"]) + "\n")
    return digest
