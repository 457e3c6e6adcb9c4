"""Scenes of several MNIST digits on one canvas, with their ground truth.

A scene is a ``canvas x canvas`` grey image holding between ``min_digits`` and
``max_digits`` MNIST digits (28 x 28) at random positions, composed by the
pixel-wise maximum (overlapping strokes stay readable, no pixel exceeds 1). Each
scene keeps its ground truth:

==================  ===============================  ==========================================
tensor              shape, dtype                      meaning
==================  ===============================  ==========================================
``images``          ``(N, 1, C, C)`` float32          the scene, grey levels in [0, 1] (or a
                                                      binarization of them, see ``binarize``)
``masks``           ``(N, D, C, C)`` bool             digit ``i``'s mask: the pixels where its
                                                      grey level exceeds ``mask_threshold``
                                                      (all False for slots ``i >= count``)
``segmentation``    ``(N, C, C)`` int64               0 on background, ``i + 1`` where digit
                                                      ``i`` owns the pixel: the union of the
                                                      masks, each pixel given to the digit that
                                                      is brightest there (what the maximum shows)
``counts``          ``(N,)`` int64                    number of digits
``classes``         ``(N, D)`` int64                  digit classes, ``-1`` for empty slots
``positions``       ``(N, D, 2)`` int64               (row, column) of each digit's top-left
                                                      corner, ``-1`` for empty slots
==================  ===============================  ==========================================

(``D = max_digits``, ``C = canvas``.) Digit centres lie at least ``min_distance``
pixels apart, so no digit hides another completely; positions are drawn uniformly
by rejection, and a scene that does not find room in 20 attempts falls back to a
shuffled square lattice of spacing ``min_distance`` (which always fits when the
settings pass their check). Scenes of one digit
(``min_digits = max_digits = 1``) come from the same generator.

Generation is deterministic given the settings and ``seed``; :func:`scene_splits`
caches each split (``$PROBGEN_DATA`` or ``~/.cache/probgen``, folder ``scenes``)
so a second call reads the file instead of drawing again. Train, validation and
test scenes are built from disjoint digits: the MNIST training digits split as
:func:`probgen.data.image_splits` splits them (same ``val_size`` and ``seed``),
and the MNIST test digits.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection
from pathlib import Path

import numpy as np
import torch

from probgen import checks, files
from probgen.data.datasets import default_root, load_images, unpack_bundled_mnist
from probgen.data.preprocess import (
    check_binarize,
    dynamic_binarization,
    split_indices,
    static_binarize,
)
from probgen.data.tensors import TensorData
from probgen.errors import ConfigError

SCENE_FORMAT = 3  # bump when the generator changes: old cache files are not reused
TRUTH_NAMES = ("images", "masks", "segmentation", "counts", "classes", "positions")
_PLACEMENT_TRIES = 100  # draws per digit, and scenes redrawn, before the lattice
_MAX_DIGITS = 63  # the cache packs the masks as bits of one integer per pixel


def lattice_capacity(canvas: int, digit_size: int, min_distance: float) -> int:
    """How many digits a square lattice of spacing ``min_distance`` places on the canvas
    (digits wholly inside): the most :func:`make_scenes` accepts."""
    span = canvas - digit_size
    if min_distance <= 0:
        return _MAX_DIGITS
    per_side = math.floor(span / min_distance) + 1
    return per_side * per_side


def check_scene_settings(
    canvas: int,
    digit_size: int,
    min_digits: int,
    max_digits: int,
    min_distance: float,
    mask_threshold: float,
) -> None:
    """Refuse settings that cannot make scenes, with a message that says which and why."""
    canvas = checks.positive_int("canvas", canvas)
    min_digits = checks.positive_int("min_digits", min_digits)
    max_digits = checks.positive_int("max_digits", max_digits)
    if canvas < digit_size:
        raise ConfigError(
            f"a canvas of {canvas}x{canvas} pixels is smaller than one digit "
            f"({digit_size}x{digit_size}); use canvas >= {digit_size}."
        )
    if min_digits > max_digits:
        raise ConfigError(f"min_digits ({min_digits}) is larger than max_digits ({max_digits}).")
    if max_digits > _MAX_DIGITS:
        raise ConfigError(f"at most {_MAX_DIGITS} digits per scene, got max_digits={max_digits}.")
    min_distance = checks.nonnegative_float("min_distance", min_distance, hint="in pixels")
    cap = lattice_capacity(canvas, digit_size, min_distance)
    if max_digits > cap:
        raise ConfigError(
            f"{max_digits} digits do not fit on a {canvas}x{canvas} canvas with centres "
            f"{min_distance:g} pixels apart (at most {cap}); lower max_digits or min_distance, "
            f"or enlarge the canvas."
        )
    if not isinstance(mask_threshold, (int, float)) or not 0 <= mask_threshold < 1:
        raise ConfigError(f"mask_threshold is a grey level in [0, 1), got {mask_threshold!r}.")


def _place(rng: np.random.Generator, n: int, span: int, min_distance: float) -> np.ndarray:
    """``n`` top-left corners in ``[0, span]^2`` whose pairwise distances are >= min_distance."""
    d2 = min_distance * min_distance
    for _ in range(_PLACEMENT_TRIES // 5):
        pos = np.empty((n, 2), dtype=np.int64)
        ok = True
        for i in range(n):
            for _ in range(_PLACEMENT_TRIES):
                p = rng.integers(0, span + 1, size=2)
                if i == 0 or (((pos[:i] - p) ** 2).sum(1) >= d2).all():
                    pos[i] = p
                    break
            else:
                ok = False
                break
        if ok:
            return pos
    # crowded settings: a shuffled lattice of spacing min_distance (fits by the check)
    per_side = math.floor(span / min_distance) + 1
    grid = np.array([(r, c) for r in range(per_side) for c in range(per_side)], dtype=np.int64)
    grid = np.floor(grid * min_distance).astype(np.int64)
    return grid[rng.permutation(len(grid))[:n]]


def make_scenes(
    digits: torch.Tensor,
    labels: torch.Tensor,
    num_scenes: int,
    *,
    canvas: int = 64,
    min_digits: int = 1,
    max_digits: int = 4,
    min_distance: float = 14.0,
    mask_threshold: float = 0.5,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Draw ``num_scenes`` scenes from a pool of digits (no cache; see :func:`scene_splits`).

    Args:
        digits: uint8 digits ``(M, h, w)`` (MNIST: ``h = w = 28``).
        labels: their classes ``(M,)``.
        num_scenes: scenes to draw.
        canvas: side of the square canvas in pixels (at least the digit's side).
        min_digits: least digit count of a scene (the count is uniform on
            ``min_digits..max_digits``).
        max_digits: largest digit count of a scene.
        min_distance: least distance between two digits' centres, in pixels.
        mask_threshold: a digit's mask is where its grey level exceeds this.
        seed: seed of the draw (counts, digits, positions).

    Returns:
        ``images`` as uint8 ``(N, C, C)``; ``masks``, ``segmentation``, ``counts``,
        ``classes``, ``positions`` as in the module's table; ``sources`` ``(N, D)`` each
        digit's index in ``digits`` (``-1`` for empty slots).
    """
    if digits.dim() != 3 or digits.dtype != torch.uint8:
        raise ConfigError(
            f"digits must be uint8 of shape (M, h, w), got {digits.dtype} {tuple(digits.shape)}."
        )
    h, w = digits.shape[1:]
    if h != w:
        raise ConfigError(f"digits must be square, got {h}x{w}.")
    check_scene_settings(canvas, h, min_digits, max_digits, min_distance, mask_threshold)
    num_scenes = checks.positive_int("num_scenes", num_scenes)
    rng = np.random.default_rng(seed)
    span = canvas - h
    level = math.floor(mask_threshold * 255)  # mask: grey level > threshold
    src = digits.numpy()
    lab = labels.numpy()
    images = np.zeros((num_scenes, canvas, canvas), dtype=np.uint8)
    masks = np.zeros((num_scenes, max_digits, canvas, canvas), dtype=bool)
    seg = np.zeros((num_scenes, canvas, canvas), dtype=np.int64)
    counts = rng.integers(min_digits, max_digits + 1, size=num_scenes)
    classes = np.full((num_scenes, max_digits), -1, dtype=np.int64)
    positions = np.full((num_scenes, max_digits, 2), -1, dtype=np.int64)
    sources = np.full((num_scenes, max_digits), -1, dtype=np.int64)
    for s in range(num_scenes):
        n = int(counts[s])
        idx = rng.integers(0, len(src), size=n)
        pos = _place(rng, n, span, min_distance)
        best = np.zeros((canvas, canvas), dtype=np.int16)  # brightest level so far, -1 none
        best.fill(-1)
        for i in range(n):
            r, c = pos[i]
            d = src[idx[i]]
            window = (slice(r, r + h), slice(c, c + w))
            np.maximum(images[s][window], d, out=images[s][window])
            m = d > level
            masks[s, i][window] = m
            # owner: the brightest digit at the pixel (the first one on ties)
            brighter = m & (d.astype(np.int16) > best[window])
            best[window][brighter] = d[brighter]
            seg[s][window][brighter] = i + 1
            classes[s, i] = lab[idx[i]]
            positions[s, i] = pos[i]
            sources[s, i] = idx[i]
    return {
        "images": torch.from_numpy(images),
        "masks": torch.from_numpy(masks),
        "segmentation": torch.from_numpy(seg),
        "counts": torch.from_numpy(counts),
        "classes": torch.from_numpy(classes),
        "positions": torch.from_numpy(positions),
        "sources": torch.from_numpy(sources),
    }


# --------------------------------------------------------------------------- cache


def _pack_masks(masks: torch.Tensor) -> torch.Tensor:
    d = masks.shape[1]
    dtype = (
        torch.uint8
        if d <= 8
        else torch.int16
        if d <= 15
        else torch.int32
        if d <= 31
        else torch.int64
    )
    bits = (1 << torch.arange(d, dtype=torch.int64)).view(1, d, 1, 1)
    return (masks.to(torch.int64) * bits).sum(1).to(dtype)


def _unpack_masks(packed: torch.Tensor, d: int) -> torch.Tensor:
    bits = (1 << torch.arange(d, dtype=torch.int64)).view(1, d, 1, 1)
    return (packed.to(torch.int64).unsqueeze(1) & bits) != 0


def _cache_file(folder: Path, settings: dict) -> Path:
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return folder / f"mnist-{settings['split']}-{settings['num_scenes']}-{key}.pt"


def _load_cached(path: Path, settings: dict) -> dict[str, torch.Tensor] | None:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception:  # a truncated or foreign file: draw again and overwrite it
        return None
    if blob.get("settings") != json.dumps(settings, sort_keys=True):
        return None
    out = {k: blob[k] for k in TRUTH_NAMES + ("sources",) if k != "masks"}
    out["masks"] = _unpack_masks(blob["packed_masks"], settings["max_digits"])
    return out


def _save_cached(path: Path, settings: dict, scenes: dict[str, torch.Tensor]) -> None:
    blob = {k: v for k, v in scenes.items() if k != "masks"}
    blob["packed_masks"] = _pack_masks(scenes["masks"])
    blob["settings"] = json.dumps(settings, sort_keys=True)
    # a killed or concurrent writer never leaves half a file
    files.torch_save(blob, path, clean=False)


def _seed_of(seed: int, split: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{split}".encode()).digest()[:8], "little")


def scene_splits(
    num_train: int = 20000,
    num_val: int = 2000,
    num_test: int = 2000,
    *,
    canvas: int = 64,
    min_digits: int = 1,
    max_digits: int = 4,
    min_distance: float = 14.0,
    mask_threshold: float = 0.5,
    val_size: int = 10000,
    binarize: str = "none",
    seed: int = 0,
    truth: bool | Collection[str] = False,
    device: str | torch.device = "cpu",
    root: str | Path | None = None,
    cache: bool = True,
) -> dict[str, TensorData]:
    """Train / validation / test scenes as device-resident :class:`TensorData`.

    Without ground truth (``truth=False``) each split holds the images alone,
    ``(N, 1, C, C)`` float32, which is what :func:`probgen.fit` passes to a model
    (``model(x)``). With ``truth=True`` (or a collection of split names, e.g.
    ``("test",)``) those splits hold every tensor of the module's table, in that
    order, named; the masks take ``max_digits`` bytes per pixel, so ask for them on
    the splits you score.

    Args:
        num_train: training scenes.
        num_val: validation scenes (ignored when ``val_size`` is 0: no validation
            split, as :func:`image_splits`).
        num_test: test scenes.
        canvas: see :func:`make_scenes`.
        min_digits: see :func:`make_scenes`.
        max_digits: see :func:`make_scenes`.
        min_distance: see :func:`make_scenes`.
        mask_threshold: see :func:`make_scenes`.
        val_size: MNIST training digits held out for the validation scenes.
        binarize: ``none``, ``dynamic`` (training images redrawn as Bernoulli pixels
            at every use; validation and test get one fixed draw) or ``static``.
        seed: seed of the digit split, the scenes and static binarization.
        truth: which splits carry the ground truth.
        root: cache folder (default ``$PROBGEN_DATA`` or ``~/.cache/probgen``); the
            MNIST files are read from the bundled copy as :func:`load_images` does.
        cache: read and write cached scenes (``False``: always draw).
    """
    check_binarize(binarize)
    check_scene_settings(canvas, 28, min_digits, max_digits, min_distance, mask_threshold)
    sizes = {
        "train": checks.positive_int("num_train", num_train),
        "test": checks.positive_int("num_test", num_test),
    }
    if val_size:
        sizes["val"] = checks.positive_int("num_val", num_val)
    wanted = set(sizes) if truth is True else set() if truth is False else set(truth)
    unknown = wanted - {"train", "val", "test"}
    if unknown:
        raise ConfigError(f"truth names splits train/val/test, got {sorted(unknown)}.")
    folder = Path(root) if root is not None else default_root()
    pools = {}
    out = {}
    for k in ("train", "val", "test"):
        if k not in sizes:
            continue
        settings = dict(
            format=SCENE_FORMAT,
            split=k,
            num_scenes=sizes[k],
            canvas=canvas,
            min_digits=min_digits,
            max_digits=max_digits,
            min_distance=float(min_distance),
            mask_threshold=float(mask_threshold),
            val_size=val_size,
            seed=seed,
        )
        path = _cache_file(folder / "scenes", settings)
        scenes = _load_cached(path, settings) if cache else None
        if scenes is None:
            if not pools:
                pools = _digit_pools(val_size, seed, root)
            digits, labels = pools[k]
            scenes = make_scenes(
                digits,
                labels,
                sizes[k],
                canvas=canvas,
                min_digits=min_digits,
                max_digits=max_digits,
                min_distance=min_distance,
                mask_threshold=mask_threshold,
                seed=_seed_of(seed, k),
            )
            if cache:
                _save_cached(path, settings, scenes)
        x = scenes["images"].unsqueeze(1).float().div_(255.0)
        transform = None
        if binarize == "static" or (binarize == "dynamic" and k != "train"):
            x = static_binarize(x, seed + {"train": 0, "val": 1, "test": 2}[k])
        elif binarize == "dynamic":
            transform = dynamic_binarization
        x = x.to(device)
        if k in wanted:
            rest = [scenes[n].to(device) for n in TRUTH_NAMES[1:]]
            out[k] = TensorData(x, *rest, transform=transform, names=TRUTH_NAMES)
        else:
            out[k] = TensorData(x, transform=transform, names=("images",))
    return out


def _digit_pools(val_size: int, seed: int, root):
    if root is not None:
        unpack_bundled_mnist(root)  # everything under the caller's folder
    tr_images, tr_labels = load_images("mnist", True, root)
    te_images, te_labels = load_images("mnist", False, root)
    if val_size:
        tr_idx, va_idx = split_indices(len(tr_labels), val_size, seed)
        return {
            "train": (tr_images[tr_idx], tr_labels[tr_idx]),
            "val": (tr_images[va_idx], tr_labels[va_idx]),
            "test": (te_images, te_labels),
        }
    return {"train": (tr_images, tr_labels), "test": (te_images, te_labels)}


def images_only(data: TensorData) -> TensorData:
    """The images of a scene split (its first tensor), with its transform: what a model
    trains on, without the ground truth."""
    return TensorData(data.tensors[0], transform=data.transform, names=("images",))
