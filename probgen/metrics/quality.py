"""Sample quality without the internet: FID and KID on MNIST-classifier features, precision/recall
and class coverage.

Every model family is scored with the same yardstick: the penultimate layer (128 features)
of a small MNIST classifier (:mod:`probgen.nn.classifier`, trained by
:mod:`probgen.metrics.classifier_training`) and shipped with the
package. So the metrics here are "FID, MNIST-classifier features" and "KID,
MNIST-classifier features": they rank MNIST models against each other offline, but their
values are **not** comparable with published FIDs, which use Inception-v3 features.

- FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a
  Local Nash Equilibrium") and KID (Binkowski et al. 2018, "Demystifying MMD GANs") are
  torchmetrics' :class:`~torchmetrics.image.fid.FrechetInceptionDistance` and
  :class:`~torchmetrics.image.kid.KernelInceptionDistance`; probgen adds no Frechet or MMD
  code of its own.
- Precision and recall of samples (Kynkaanniemi et al. 2019, "Improved Precision and Recall
  Metric for Assessing Generative Models"): the fraction of samples inside the real data's
  manifold, and of real images inside the samples' manifold, each manifold a union of balls
  whose radii are the distances to the k-th nearest neighbour. torchmetrics has no such
  metric, so it is written here (:func:`precision_recall`).
- Class coverage: the classifier's class histogram of the samples against the uniform
  distribution (classes covered, KL to uniform): mode dropping that FID alone blurs.

One network pass per image set serves all of them: :func:`sample_quality` extracts the
features once and hands them to torchmetrics through a pass-through feature module, and a
:class:`QualityReference` keeps the real set's features, so scoring many models against the
MNIST test set computes the real features once.

The standard Inception FID is one setting away (``feature="inception"``) for a user with
the Inception-v3 FID weights (``inception_weights=PATH``) or network access
(``inception_weights="download"``); it needs ``torch-fidelity``, as torchmetrics does.

Example::

    from probgen.metrics.quality import mnist_reference, sample_quality
    ref = mnist_reference()                       # MNIST test set, features computed once
    scores = sample_quality(model.sample(10000), ref)
    scores["fid"], scores["precision"], scores["recall"], scores["classes_covered"]
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from probgen import checks
from probgen.data import image_splits
from probgen.errors import CheckpointError, ConfigError, DataError
from probgen.nn.classifier import load_classifier, shipped_sha256
from probgen.train import Metric

FID_NAME = "FID, MNIST-classifier features"
KID_NAME = "KID, MNIST-classifier features"
INCEPTION_FID_NAME = "FID, Inception-v3 pool features"
INCEPTION_KID_NAME = "KID, Inception-v3 pool features"
FEATURES = ("mnist", "inception")
INCEPTION_FEATURES = 2048
#: width of the shipped MNIST classifier's feature layer (``MNISTClassifier``'s default)
MNIST_FEATURES = 128

MNIST_IMAGE_SHAPE = (1, 28, 28)


# --------------------------------------------------------------------------------------------
# input checks


def _describe(x: torch.Tensor) -> str:
    return f"shape {tuple(x.shape)}, dtype {str(x.dtype).replace('torch.', '')}"


def _to_unit_float(x: torch.Tensor, name: str) -> torch.Tensor:
    """uint8 / bool / float images as float32 grey levels in [0, 1] (range checked)."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if x.dtype == torch.bool:
        return x.float()
    if not x.is_floating_point():
        raise DataError(
            f"{name}: images must be float in [0, 1] or uint8 in [0, 255], got {_describe(x)}."
        )
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise DataError(
            f"{name}: images contain NaN or infinite values; check the model's samples."
        )
    if x.numel():
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            hint = " (tanh outputs: pass (x + 1) / 2)" if lo >= -1 - 1e-3 and hi <= 1 + 1e-3 else ""
            raise DataError(
                f"{name}: grey levels must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                f"rescale them to [0, 1]{hint}."
            )
    return x.float().clamp(0, 1)


def check_mnist_images(images, name: str = "images") -> torch.Tensor:
    """Images for the MNIST classifier: ``(N, 1, 28, 28)`` float32 in [0, 1].

    Accepts ``(N, 1, 28, 28)``, ``(N, 28, 28)`` and flat ``(N, 784)`` grey images, float in
    [0, 1], uint8 in [0, 255] or bool; anything else raises :class:`DataError`.

    Examples:
        >>> import torch
        >>> from probgen.metrics.quality import check_mnist_images
        >>> x = check_mnist_images(torch.full((2, 784), 255, dtype=torch.uint8))
        >>> x.shape, x.dtype, x.max().item()
        (torch.Size([2, 1, 28, 28]), torch.float32, 1.0)
    """
    if not torch.is_tensor(images):
        raise DataError(f"{name}: expected a tensor of images, got {type(images).__name__}.")
    x = images
    if x.dim() == 2 and x.shape[1] == 784:
        x = x.reshape(-1, 1, 28, 28)
    elif x.dim() == 3 and tuple(x.shape[1:]) == (28, 28):
        x = x.unsqueeze(1)
    if x.dim() != 4 or tuple(x.shape[1:]) != MNIST_IMAGE_SHAPE:
        if x.dim() == 4 and x.shape[1] == 3:
            what = f"colour images ({_describe(images)})"
        elif x.dim() == 4 and x.shape[1] == 1:
            what = f"grey images of another size ({_describe(images)})"
        else:
            what = f"a tensor of {_describe(images)}"
        raise DataError(
            f"{name}: the MNIST-classifier features take grey 28x28 images (N, 1, 28, 28), "
            f"got {what}; for other images use feature='inception' with Inception weights."
        )
    if x.shape[0] == 0:
        raise DataError(f"{name}: no images.")
    return _to_unit_float(x, name)


def _inception_input(images, name: str) -> torch.Tensor:
    """Images as the uint8 ``(N, 3, H, W)`` that torchmetrics' Inception takes (grey repeated)."""
    if not torch.is_tensor(images):
        raise DataError(f"{name}: expected a tensor of images, got {type(images).__name__}.")
    x = images
    if x.dim() == 2 and x.shape[1] == 784:
        x = x.reshape(-1, 1, 28, 28)
    elif x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise DataError(
            f"{name}: Inception features take images (N, 1 or 3, H, W), got {_describe(images)}."
        )
    x = _to_unit_float(x, name)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x * 255).round().to(torch.uint8)


# --------------------------------------------------------------------------------------------
# feature networks


class MNISTFeatures(nn.Module):
    """The shipped MNIST classifier's penultimate layer as a torchmetrics feature network.

    ``FrechetInceptionDistance(feature=MNISTFeatures(), normalize=True)`` is probgen's
    "FID, MNIST-classifier features" as a streaming torchmetrics metric (see
    :func:`fid_metric`). It takes the images :func:`check_mnist_images` accepts and stays in
    eval mode whatever ``train()`` is called with.

    Args:
        classifier: a trained :class:`MNISTClassifier`; default: the shipped weights.
    """

    def __init__(self, classifier: nn.Module | None = None):
        super().__init__()
        if classifier is None:
            # the shipped network, channels-last (twice as fast on CPU); a given one is used
            # as it is
            classifier = load_classifier().to(memory_format=torch.channels_last)
        elif classifier.training:
            raise ConfigError(
                "MNISTFeatures needs the classifier in eval mode: call classifier.eval() first."
            )
        self.classifier = classifier
        self.num_features = self.classifier.num_features

    def train(self, mode: bool = True) -> MNISTFeatures:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = check_mnist_images(images).to(next(self.classifier.parameters()).device)
        return self.classifier.features(x)


class _Precomputed(nn.Module):
    """Pass-through feature network: torchmetrics receives features computed beforehand."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


@functools.lru_cache(maxsize=4)
def _classifier_on(device: str) -> nn.Module:
    # channels-last convolutions run about twice as fast on CPU (measured on this network)
    return load_classifier(device=device).to(memory_format=torch.channels_last)


def _inception(weights: str | None) -> nn.Module:
    return _load_inception(_inception_weights_path(weights))


def _inception_weights_path(weights: str | None) -> str | None:
    """Check the Inception settings (without loading anything); the path, or None to download."""
    if weights is None:
        raise ConfigError(
            "Inception FID needs the Inception-v3 FID weights: pass inception_weights='/path/to/"
            "weights-inception-2015-12-05-6726825d.pth' (torch-fidelity's file) or "
            "inception_weights='download' (network needed); feature='mnist' works offline."
        )
    path = None
    if weights != "download":
        if not Path(weights).is_file():
            raise ConfigError(
                f"Inception weights file {weights!r} not found: pass the path of "
                f"torch-fidelity's weights-inception-2015-12-05-6726825d.pth, or "
                f"inception_weights='download'."
            )
        path = str(weights)
    from torchmetrics.utilities import imports

    if not imports._TORCH_FIDELITY_AVAILABLE:
        raise ConfigError(
            "Inception FID needs torch-fidelity (torchmetrics' Inception-v3): "
            "`pip install torch-fidelity`, or use feature='mnist'."
        )
    return path


@functools.lru_cache(maxsize=2)
def _load_inception(path: str | None) -> nn.Module:
    from torchmetrics.image.fid import NoTrainInceptionV3

    return NoTrainInceptionV3(
        name="inception-v3-compat",
        features_list=[str(INCEPTION_FEATURES)],
        feature_extractor_weights_path=path,
    )


def _feature_id(feature: str) -> str:
    if feature == "mnist":
        return f"mnist-classifier:{shipped_sha256()[:16]}"
    return f"inception-v3:{INCEPTION_FEATURES}"


def _check_feature(feature: str, inception_weights: str | None = None) -> None:
    checks.choice("feature", feature, FEATURES)
    if feature == "inception":
        _inception_weights_path(inception_weights)


def _device_of(images, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    return images.device if torch.is_tensor(images) else torch.device("cpu")


@torch.no_grad()
def extract_features(
    images: torch.Tensor,
    *,
    feature: str = "mnist",
    inception_weights: str | None = None,
    batch_size: int = 100,
    device: torch.device | str | None = None,
    name: str = "images",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Features ``(N, d)`` (float32, on CPU) and, for ``feature="mnist"``, class logits ``(N, 10)``.

    Args:
        images: see :func:`check_mnist_images` (``"mnist"``) or any ``(N, 1|3, H, W)``
            images in [0, 1] (``"inception"``, resized to 299x299 by torchmetrics).
        feature: ``"mnist"`` (the shipped classifier, 128 features, offline) or
            ``"inception"`` (Inception-v3 pool features, 2048, needs ``inception_weights``).
        batch_size: images per network pass.
        device: where the network runs; default: the images' device.
    """
    _check_feature(feature)
    batch_size = checks.positive_int("batch_size", batch_size)
    dev = _device_of(images, device)
    feats, logits = [], []
    if feature == "mnist":
        x = check_mnist_images(images, name)
        net = _classifier_on(str(dev))
        for i in range(0, x.shape[0], batch_size):
            f, lg = net.features_and_logits(x[i : i + batch_size].to(dev))
            feats.append(f.float().cpu())
            logits.append(lg.float().cpu())
        return torch.cat(feats), torch.cat(logits)
    net = _inception(inception_weights)
    x = _inception_input(images, name)
    net = net.to(dev)
    for i in range(0, x.shape[0], batch_size):
        feats.append(net(x[i : i + batch_size].to(dev)).float().cpu())
    return torch.cat(feats), None


# --------------------------------------------------------------------------------------------
# reference statistics


@dataclass
class QualityReference:
    """A real image set's features, computed once and reused for every model scored against it.

    Build one with :func:`reference_statistics` or :func:`mnist_reference`; ``save`` and
    ``load`` keep it on disk (tensors only, loaded with ``weights_only=True``).

    Attributes:
        features: ``(N, d)`` float32 features of the real images.
        class_counts: ``(10,)`` classifier class counts (``None`` for Inception features).
        feature_network: which network made the features (checked against the samples').
    """

    features: torch.Tensor
    class_counts: torch.Tensor | None
    feature_network: str
    _radii: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def num_features(self) -> int:
        return self.features.shape[1]

    def radii(self, k: int) -> torch.Tensor:
        """Distances of each real feature vector to its k-th nearest neighbour (cached per k)."""
        if k not in self._radii:
            self._radii[k] = knn_radii(self.features, k)
        return self._radii[k]

    def save(self, path: str | Path) -> None:
        torch.save(
            {
                "features": self.features,
                "class_counts": self.class_counts,
                "feature_network": self.feature_network,
            },
            path,
        )

    @classmethod
    def load(cls, path: str | Path) -> QualityReference:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            return cls(state["features"], state["class_counts"], state["feature_network"])
        except Exception as err:  # a foreign pickle, a truncated file, missing keys
            raise CheckpointError(
                f"{path} is not a saved QualityReference ({type(err).__name__}); "
                f"build it again "
                f"with reference_statistics(images)."
            ) from None


def reference_statistics(
    images: torch.Tensor,
    *,
    feature: str = "mnist",
    inception_weights: str | None = None,
    batch_size: int = 100,
    device: torch.device | str | None = None,
) -> QualityReference:
    """The :class:`QualityReference` of a set of real images (see :func:`extract_features`)."""
    feats, logits = extract_features(
        images,
        feature=feature,
        inception_weights=inception_weights,
        batch_size=batch_size,
        device=device,
        name="reference",
    )
    counts = None if logits is None else torch.bincount(logits.argmax(1), minlength=10)
    return QualityReference(feats, counts, _feature_id(feature))


@functools.lru_cache(maxsize=2)
def _mnist_reference(split: str) -> QualityReference:
    splits = image_splits("mnist", val_size=0)
    checks.choice("split", split, sorted(splits))
    return reference_statistics(splits[split].tensors[0])


def mnist_reference(split: str = "test") -> QualityReference:
    """The bundled MNIST ``split`` (``"test"``: 10,000 images; ``"train"``: 60,000) as a
    reference, on MNIST-classifier features; computed once per process."""
    ref = _mnist_reference(split)
    return QualityReference(ref.features, ref.class_counts, ref.feature_network, ref._radii)


# --------------------------------------------------------------------------------------------
# the metrics


def _check_features(real: torch.Tensor, fake: torch.Tensor) -> None:
    for name, f in (("reference features", real), ("sample features", fake)):
        if not torch.is_tensor(f) or f.dim() != 2:
            raise DataError(
                f"{name} must be a (N, d) tensor, got "
                f"{_describe(f) if torch.is_tensor(f) else type(f).__name__}."
            )
    if real.shape[1] != fake.shape[1]:
        raise DataError(
            f"reference and sample features differ in width ({real.shape[1]} vs "
            f"{fake.shape[1]}): were they made by the same feature network?"
        )


def _min_fid_samples(num_features: int) -> int:
    return num_features + 1


def min_fid_samples(feature: str = "mnist") -> int:
    """The fewest images, of samples and of reference images each, that an FID on
    ``feature``'s features takes: one more than the features (129 for the MNIST
    classifier's 128, 2049 for Inception-v3's 2048). With fewer rows than features a
    covariance matrix is singular and the distance is dominated by that. Scripts check a
    sample-count flag against it when the command line is parsed.

    Args:
        feature: ``"mnist"`` or ``"inception"``.

    Examples:
        >>> from probgen.metrics.quality import min_fid_samples
        >>> min_fid_samples("mnist"), min_fid_samples("inception")
        (129, 2049)
    """
    checks.choice("feature", feature, FEATURES)
    return _min_fid_samples(MNIST_FEATURES if feature == "mnist" else INCEPTION_FEATURES)


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID of two feature sets ``(N, d)`` and ``(M, d)``, by torchmetrics' FrechetInceptionDistance.

    Each set needs more rows than features (``d + 1``): with fewer, a covariance matrix is
    singular and the distance is dominated by that.
    """
    _check_features(real, fake)
    need = _min_fid_samples(real.shape[1])
    for name, f in (("reference features", real), ("sample features", fake)):
        if f.shape[0] < need:
            raise DataError(
                f"FID on {real.shape[1]} features needs at least {need} {name}, got "
                f"{f.shape[0]}; draw more (10,000 is usual)."
            )
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    metric.update(real.detach().double().cpu(), real=True)
    metric.update(fake.detach().double().cpu(), real=False)
    return float(metric.compute())


def kernel_distance(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (mean, std over ``subsets`` random subsets of ``subset_size``) by torchmetrics'
    KernelInceptionDistance (cubic polynomial kernel).

    The subsets are drawn from a random state seeded with ``seed`` inside
    :func:`torch.random.fork_rng`, so the result is reproducible and the caller's global
    random state is left as it was.
    """
    _check_features(real, fake)
    checks.positive_int("kid_subsets", subsets)
    checks.integer("kid_subset_size", subset_size, low=2)
    checks.seed("seed", seed)
    for name, f in (("reference", real), ("samples", fake)):
        if f.shape[0] < subset_size:
            raise DataError(
                f"KID subsets of {subset_size} need at least {subset_size} {name}, got "
                f"{f.shape[0]}; pass a smaller kid_subset_size or more images."
            )
    from torchmetrics.image.kid import KernelInceptionDistance

    with warnings.catch_warnings():
        # torchmetrics warns that KID keeps every feature; here they are in memory already
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(
            feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=subset_size
        )
    # float32 kernels: on MNIST-classifier features they agree with float64 to 1e-8 (KID
    # values 1e-3 to 1) at less than half the time
    metric.update(real.detach().float().cpu(), real=True)
    metric.update(fake.detach().float().cpu(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


@torch.no_grad()
def knn_radii(features: torch.Tensor, k: int = 3, chunk: int = 1024) -> torch.Tensor:
    """Euclidean distance of each row of ``features`` ``(N, d)`` to its k-th nearest other row.

    Examples:
        >>> import torch
        >>> from probgen.metrics.quality import knn_radii
        >>> knn_radii(torch.tensor([[0.0], [1.0], [3.0], [6.0]]), k=1)
        tensor([1., 1., 2., 3.])
    """
    checks.positive_int("k", k)
    chunk = checks.positive_int("chunk", chunk)
    if features.shape[0] <= k:
        raise DataError(
            f"k-NN radii with k={k} need more than {k} points, got {features.shape[0]}."
        )
    f = features.float()
    out = []
    for i in range(0, f.shape[0], chunk):
        d = torch.cdist(f[i : i + chunk], f)
        # the k+1 smallest include the point itself (distance 0)
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


@torch.no_grad()
def _inside_any_ball(
    points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 1024
) -> torch.Tensor:
    """For each point: is it within ``radii[j]`` of some ``centres[j]``?"""
    p, c, r = points.float(), centres.float(), radii.float()
    out = []
    for i in range(0, p.shape[0], chunk):
        out.append((torch.cdist(p[i : i + chunk], c) <= r[None, :]).any(dim=1))
    return torch.cat(out)


def precision_recall(
    real: torch.Tensor, fake: torch.Tensor, k: int = 3, real_radii: torch.Tensor | None = None
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of feature sets ``(N, d)``,
    ``(M, d)``.

    The real manifold is the union of balls around each real feature vector with radius
    the distance to its k-th nearest real neighbour; likewise for the samples.
    Precision is the fraction of samples inside the real manifold (are the samples
    realistic?), recall the fraction of real points inside the samples' manifold (do the
    samples cover the data?). torchmetrics has no such metric, hence this code; the
    paper uses k = 3.

    Args:
        real: ``(N, d)`` features of real images.
        fake: ``(M, d)`` features of samples.
        k: the neighbour whose distance is a ball's radius.
        real_radii: the real set's k-NN radii if already known (:meth:`QualityReference.radii`).

    Returns:
        ``(precision, recall)``, each in [0, 1].

    Examples:
        Samples half a step off a line of real points lie inside its balls (radius 1,
        the distance to the nearest neighbour), and cover it; samples far away do neither:

        >>> import torch
        >>> from probgen.metrics import precision_recall
        >>> real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
        >>> precision_recall(real, real + 0.5, k=1), precision_recall(real, real + 10, k=1)
        ((1.0, 1.0), (0.0, 0.0))
    """
    _check_features(real, fake)
    checks.positive_int("k", k)
    if real_radii is None:
        real_radii = knn_radii(real, k)
    fake_radii = knn_radii(fake, k)
    precision = _inside_any_ball(fake, real, real_radii).float().mean()
    recall = _inside_any_ball(real, fake, fake_radii).float().mean()
    return float(precision), float(recall)


def class_coverage(logits: torch.Tensor, min_share: float = 0.1) -> dict:
    """Mode coverage from the classifier's predicted classes of the samples.

    Args:
        logits: ``(N, C)`` class logits (or probabilities) of the samples.
        min_share: a class counts as covered when it holds at least ``min_share / C`` of the
            samples (``0.1``: a tenth of its uniform share), so a few misclassified samples
            do not make a missing class look covered.

    Returns:
        ``classes_covered`` (int), ``class_kl`` (KL of the class histogram to the uniform
        distribution, nats: 0 for uniform, log C for one class) and ``class_histogram``
        (the fraction of samples per class).

    Examples:
        Four samples of four classes, half of them of class 0 and none of class 3:

        >>> import torch
        >>> from probgen.metrics import class_coverage
        >>> cover = class_coverage(torch.eye(4)[[0, 0, 1, 2]])   # one-hot "logits"
        >>> cover["classes_covered"], round(cover["class_kl"], 4), cover["class_histogram"]
        (3, 0.3466, [0.5, 0.25, 0.25, 0.0])
    """
    if not torch.is_tensor(logits) or logits.dim() != 2 or logits.shape[0] == 0:
        raise DataError("class_coverage takes (N, C) logits of at least one sample.")
    min_share = checks.probability("min_share", min_share)
    c = logits.shape[1]
    p = torch.bincount(logits.argmax(1).cpu(), minlength=c).double() / logits.shape[0]
    kl = float((p[p > 0] * (p[p > 0] * c).log()).sum())
    covered = int((p >= min_share / c).sum()) if min_share > 0 else int((p > 0).sum())
    return {"classes_covered": covered, "class_kl": kl, "class_histogram": p.tolist()}


# --------------------------------------------------------------------------------------------
# the entry points


def _feature_width(feature: str, reference) -> int:
    if isinstance(reference, QualityReference):
        return reference.num_features
    return INCEPTION_FEATURES if feature == "inception" else _classifier_on("cpu").num_features


def _check_counts(
    samples, reference, feature: str, kid_subset_size: int | None = None, k: int | None = None
) -> None:
    """Refuse too few samples or reference images before any network runs."""
    if reference is None and feature != "mnist":
        raise ConfigError(
            "with feature='inception' pass the real images (or their "
            "QualityReference) as reference."
        )
    width = _feature_width(feature, reference)
    need = {f"FID on {width} features": _min_fid_samples(width)}
    if kid_subset_size is not None:
        need["KID subsets"] = kid_subset_size
    if k is not None:
        need[f"k-NN radii with k={k}"] = k + 1
    most = max(need.values())
    why = "; ".join(f"{what}: {n}" for what, n in need.items())
    for name, x in (("samples", samples), ("reference images", reference)):
        if torch.is_tensor(x) and x.dim() >= 1 and x.shape[0] < most:
            hint = " or lower kid_subset_size" if kid_subset_size is not None else ""
            raise DataError(
                f"need at least {most} {name} ({why}), got {x.shape[0]}; "
                f"draw more (10,000 is usual){hint}."
            )


def _as_reference(
    reference, feature: str, inception_weights, batch_size: int, device
) -> QualityReference:
    if reference is None:
        if feature != "mnist":
            raise ConfigError(
                "with feature='inception' pass the real images (or their "
                "QualityReference) as reference."
            )
        return mnist_reference("test")
    if isinstance(reference, QualityReference):
        if reference.feature_network != _feature_id(feature):
            raise ConfigError(
                f"the reference was made with {reference.feature_network}, not "
                f"{_feature_id(feature)}: build it with reference_statistics(images, "
                f"feature={feature!r})."
            )
        return reference
    return reference_statistics(
        reference,
        feature=feature,
        inception_weights=inception_weights,
        batch_size=batch_size,
        device=device,
    )


def fid(
    samples: torch.Tensor,
    reference: torch.Tensor | QualityReference | None = None,
    *,
    feature: str = "mnist",
    inception_weights: str | None = None,
    batch_size: int = 100,
    device: torch.device | str | None = None,
) -> float:
    """FID of ``samples`` against ``reference`` ("FID, MNIST-classifier features" by default).

    Only FID: the cheap score for curves during training. ``reference``: ``None`` (the
    MNIST test set), real images, or a :class:`QualityReference`.
    """
    _check_feature(feature, inception_weights)
    _check_counts(samples, reference, feature)
    ref = _as_reference(reference, feature, inception_weights, batch_size, device)
    feats, _ = extract_features(
        samples,
        feature=feature,
        inception_weights=inception_weights,
        batch_size=batch_size,
        device=device,
        name="samples",
    )
    return frechet_distance(ref.features, feats)


def sample_quality(
    samples: torch.Tensor,
    reference: torch.Tensor | QualityReference | None = None,
    *,
    feature: str = "mnist",
    inception_weights: str | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    k: int = 3,
    min_class_share: float = 0.1,
    seed: int = 0,
    batch_size: int = 100,
    device: torch.device | str | None = None,
) -> dict:
    """FID, KID, precision/recall and class coverage of ``samples`` against ``reference``.

    Args:
        samples: generated images, ``(N, 1, 28, 28)`` (or ``(N, 28, 28)``, ``(N, 784)``) in
            [0, 1] for the default MNIST-classifier features.
        reference: ``None`` (the bundled MNIST test set, features computed once per
            process), real images, or a :class:`QualityReference` (reused across calls).
        feature: ``"mnist"`` (offline) or ``"inception"`` (the standard Inception-v3 FID;
            needs ``inception_weights``: a path to the FID weights or ``"download"``).
        kid_subsets: how many random subsets KID averages over.
        kid_subset_size: images per KID subset (both sets need at least this many).
        k: the neighbour of precision/recall's radii.
        min_class_share: see :func:`class_coverage`.
        seed: seed of KID's subsets (drawn in a forked random state).
        batch_size: images per pass of the feature network.
        device: where the feature network runs (default: the samples' device).

    Returns:
        A dict: ``fid``, ``kid_mean``, ``kid_std``, ``precision``, ``recall``,
        ``classes_covered``, ``class_kl``, ``class_histogram`` (the last three ``None`` with
        Inception features), ``num_samples``, ``num_reference``, ``fid_name`` and
        ``kid_name`` (what the numbers are: "FID, MNIST-classifier features" unless
        Inception), ``feature_network``, ``k``, ``kid_subset_size``.
    """
    _check_feature(feature, inception_weights)
    checks.positive_int("kid_subsets", kid_subsets)
    checks.integer("kid_subset_size", kid_subset_size, low=2)
    checks.positive_int("k", k)
    checks.probability("min_class_share", min_class_share)
    checks.seed("seed", seed)
    checks.positive_int("batch_size", batch_size)
    _check_counts(samples, reference, feature, kid_subset_size, k)
    ref = _as_reference(reference, feature, inception_weights, batch_size, device)
    feats, logits = extract_features(
        samples,
        feature=feature,
        inception_weights=inception_weights,
        batch_size=batch_size,
        device=device,
        name="samples",
    )
    out = {"fid": frechet_distance(ref.features, feats)}
    out["kid_mean"], out["kid_std"] = kernel_distance(
        ref.features, feats, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed
    )
    out["precision"], out["recall"] = precision_recall(
        ref.features, feats, k, real_radii=ref.radii(k)
    )
    if logits is not None:
        out.update(class_coverage(logits, min_class_share))
    else:
        out.update(classes_covered=None, class_kl=None, class_histogram=None)
    mnist = feature == "mnist"
    out.update(
        num_samples=feats.shape[0],
        num_reference=len(ref),
        fid_name=FID_NAME if mnist else INCEPTION_FID_NAME,
        kid_name=KID_NAME if mnist else INCEPTION_KID_NAME,
        feature_network=ref.feature_network,
        k=k,
        kid_subset_size=kid_subset_size,
    )
    return out


def fid_metric(**kwargs):
    """torchmetrics' FrechetInceptionDistance on MNIST-classifier features, for streaming use.

    ``metric.update(images, real=True|False)`` takes the images :func:`check_mnist_images`
    accepts; ``metric.compute()`` gives "FID, MNIST-classifier features" (the same value
    :func:`fid` gives). ``kwargs`` go to torchmetrics (``reset_real_features=False`` keeps
    the real statistics across ``reset()``).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=MNISTFeatures(), normalize=True, **kwargs)


def kid_metric(subsets: int = 100, subset_size: int = 1000, **kwargs):
    """torchmetrics' KernelInceptionDistance on MNIST-classifier features, for streaming use."""
    checks.positive_int("subsets", subsets)
    checks.integer("subset_size", subset_size, low=2)
    from torchmetrics.image.kid import KernelInceptionDistance

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        return KernelInceptionDistance(
            feature=MNISTFeatures(),
            subsets=subsets,
            subset_size=subset_size,
            normalize=True,
            **kwargs,
        )


@dataclass
class QualityScorer:
    """Samples scored against one reference set with one feature network: :meth:`fid`
    (the cheap score, for curves during training) and :meth:`report` (every figure of
    :func:`sample_quality`). Build one with :func:`quality_scorer`.

    Attributes:
        reference: the real images' features.
        feature, inception_weights: the feature network (see :func:`sample_quality`).
        kid_subset_size: KID's subsets, fewer where either set is smaller.
        seed: of KID's subsets.
    """

    reference: QualityReference
    feature: str = "mnist"
    inception_weights: str | None = None
    kid_subset_size: int = 1000
    seed: int = 0

    def __post_init__(self):
        checks.integer("kid_subset_size", self.kid_subset_size, low=2)
        checks.seed("seed", self.seed)

    @property
    def fid_name(self) -> str:
        """What :meth:`fid` measures: "FID, MNIST-classifier features" unless Inception."""
        return FID_NAME if self.feature == "mnist" else INCEPTION_FID_NAME

    def fid(self, samples) -> float:
        """FID of ``samples`` against the reference."""
        return fid(
            samples, self.reference, feature=self.feature, inception_weights=self.inception_weights
        )

    def report(self, samples) -> dict:
        """:func:`sample_quality` of ``samples`` against the reference, KID on subsets of
        ``min(kid_subset_size, reference images, samples)``."""
        n = samples.shape[0] if torch.is_tensor(samples) else len(samples)
        return sample_quality(
            samples,
            self.reference,
            feature=self.feature,
            inception_weights=self.inception_weights,
            seed=self.seed,
            kid_subset_size=min(self.kid_subset_size, len(self.reference), n),
        )

    @torch.no_grad()
    def sample_report(self, model, num_samples: int, seed: int = 0) -> dict:
        """:meth:`report` of ``model.sample(num_samples, generator=g)``, ``g`` a generator
        of its own seeded with ``seed`` (the same noise whenever it is called, the caller's
        random stream left alone), with the seconds of drawing and scoring as
        ``eval_seconds``."""
        checks.positive_int("num_samples", num_samples)
        checks.seed("seed", seed)
        start = time.perf_counter()
        out = self.report(model.sample(num_samples, generator=torch.Generator().manual_seed(seed)))
        out["eval_seconds"] = time.perf_counter() - start
        return out


def report_line(report: dict) -> str:
    """One line of a :func:`sample_quality` report: its FID (named by the features), KID,
    precision, recall and, with the MNIST classifier's features, the classes covered.

    Examples:
        >>> from probgen.metrics.quality import report_line
        >>> report = {"fid_name": "FID, MNIST-classifier features", "fid": 12.345,
        ...           "kid_mean": 0.01234, "precision": 0.7, "recall": 0.55,
        ...           "classes_covered": 10, "class_kl": 0.0123}
        >>> report_line(report)  # doctest: +NORMALIZE_WHITESPACE
        'FID, MNIST-classifier features 12.35, KID 0.0123, precision 0.700, recall 0.550,
        classes covered 10/10 (KL to uniform 0.012)'
    """
    classes = len(report.get("class_histogram") or ()) or 10
    covered = (
        f", classes covered {report['classes_covered']}/{classes} (KL to uniform "
        f"{report['class_kl']:.3f})"
        if report.get("classes_covered") is not None
        else ""
    )
    return (
        f"{report['fid_name']} {report['fid']:.2f}, KID {report['kid_mean']:.4f}, "
        f"precision {report['precision']:.3f}, recall {report['recall']:.3f}{covered}"
    )


def quality_scorer(
    images: torch.Tensor,
    *,
    inception_weights: str | None = None,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> QualityScorer | None:
    """A :class:`QualityScorer` against the real ``images`` with the features that fit them:
    the shipped MNIST classifier's for grey 28x28 images, else Inception-v3's when
    ``inception_weights`` is given (a path, or ``"download"``); ``None`` where no feature
    network fits (colour images without Inception weights). The reference features are
    computed here, once.

    Example::

        scorer = quality_scorer(splits["test"].tensors[0])
        scorer.fid(gan.sample(10000)), scorer.report(gan.sample(10000))["precision"]
    """
    shape = tuple(images.shape[1:])
    if shape in (MNIST_IMAGE_SHAPE, MNIST_IMAGE_SHAPE[1:]):
        kw: dict = {"feature": "mnist"}
    elif inception_weights:
        kw = {"feature": "inception", "inception_weights": inception_weights}
    else:
        return None
    return QualityScorer(
        reference_statistics(images, **kw), kid_subset_size=kid_subset_size, seed=seed, **kw
    )


class FIDCurve(Metric):
    """A :class:`~probgen.train.Metric` that records the FID of ``num_samples`` samples every
    ``every`` epochs (and at the last), as ``fid`` with its ``fid_seconds`` and
    ``fid_cpu_seconds``.

    The samples are ``module.sample(num_samples, generator=g)`` with ``g`` a generator of
    its own seeded with ``seed`` each time: the curve compares the same noise over
    training, and the training's random stream is left alone. A model that samples from
    averaged weights (a GAN with ``ema``) also gets the live weights' FID from the same
    noise, ``fid_live`` (``module.sample(..., averaged=False)``).

    Args:
        score: samples -> FID (:meth:`QualityScorer.fid`).

    Example::

        curve = FIDCurve(quality_scorer(test_images).fid, 10000, every=5)
        fit(gan, train, callbacks=[curve, TrainingCPUTime(leave_out=["fid"])])
    """

    def __init__(
        self,
        score: Callable[[torch.Tensor], float],
        num_samples: int,
        every: int = 1,
        seed: int = 0,
        name: str = "fid",
    ):
        checks.positive_int("num_samples", num_samples)
        checks.seed("seed", seed)
        self.score, self.num_samples, self.seed = score, num_samples, seed
        super().__init__(name, self._curve, every)

    def _curve(self, module) -> dict[str, float]:
        out = {
            self.name: self.score(
                module.sample(self.num_samples, generator=torch.Generator().manual_seed(self.seed))
            )
        }
        if getattr(module, "ema", None):  # the live weights', from the same noise
            out[f"{self.name}_live"] = self.score(
                module.sample(
                    self.num_samples,
                    generator=torch.Generator().manual_seed(self.seed),
                    averaged=False,
                )
            )
        return out


__all__ = [
    "FID_NAME",
    "KID_NAME",
    "FIDCurve",
    "MNISTFeatures",
    "QualityReference",
    "QualityScorer",
    "check_mnist_images",
    "class_coverage",
    "extract_features",
    "fid",
    "fid_metric",
    "frechet_distance",
    "kernel_distance",
    "kid_metric",
    "knn_radii",
    "min_fid_samples",
    "mnist_reference",
    "precision_recall",
    "quality_scorer",
    "reference_statistics",
    "report_line",
    "sample_quality",
]
