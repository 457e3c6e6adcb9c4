"""Data for attribute editing and aging: graded digits with ground truth, and face folders.

Face-aging papers can only show pictures and user studies, because nobody has the same
face photographed at every age. :func:`graded_mnist` makes a data set where the "aged"
version of every image is known exactly: every MNIST digit drawn at ``K`` levels of one
attribute,

* ``thickness``: grey-level morphological thinning and thickening of the strokes (the
  operations of Morpho-MNIST, Castro et al. 2019, "Morpho-MNIST: Quantitative Assessment
  and Diagnostics for Representation Learning"): level ``k`` applies ``k - thinning``
  dilations (erosions when negative) by a 2x2 square, alternately towards the bottom right
  and the top left, so that each level adds about one pixel of stroke width and level
  ``thinning`` is the digit as drawn (the 3x3 cross grows strokes two pixels a step: six
  levels of it leave digits the MNIST classifier cannot read);
* ``slant``: a horizontal shear, from ``-max_shear`` to ``+max_shear`` in ``K`` even steps
  (bilinear resampling, :func:`torch.nn.functional.grid_sample`).

The level plays the age group; the digit and its style play the identity. It is
deterministic (no random draw), generated in about a second for the whole of MNIST, and
cached on disk (:func:`probgen.data.default_root` ``/graded``).

:class:`AgeFolder` reads a UTKFace-style folder (``{age}_{gender}_{race}_{datetime}.jpg``,
aligned crops), resizes the images (64x64 for Age-cGAN, 128x128 for the CAAE) and bins the
ages into groups (:data:`AGE_GROUPS`: Age-cGAN's six, the CAAE's ten, or any bounds). It is
a ``torch.utils.data.Dataset`` that reads each image when asked: :func:`faces_loader`
wraps it in a ``DataLoader``, which the fit loop takes as training data.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from probgen import checks, files
from probgen.data.datasets import default_root, image_splits
from probgen.data.tensors import TensorData
from probgen.errors import ConfigError, DataError

ATTRIBUTES = ("thickness", "slant")

AGE_GROUPS: dict[str, tuple[int, ...]] = {
    # lower bounds of the groups (Antipov et al. 2017: 0-18, 19-29, 30-39, 40-49, 50-59, 60+)
    "agecgan": (0, 19, 30, 40, 50, 60),
    # Zhang et al. 2017: 0-5, 6-10, 11-15, 16-20, 21-30, 31-40, 41-50, 51-60, 61-70, 71+
    "caae": (0, 6, 11, 16, 21, 31, 41, 51, 61, 71),
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# --------------------------------------------------------------------------- morphology


def _cross_neighbours(x: torch.Tensor) -> torch.Tensor:
    """``(5, N, C, H, W)``: each pixel and its four neighbours (outside the image: 0)."""
    p = F.pad(x, (1, 1, 1, 1))
    h, w = x.shape[-2:]
    return torch.stack(
        [
            p[..., 1 : h + 1, 1 : w + 1],
            p[..., 0:h, 1 : w + 1],
            p[..., 2 : h + 2, 1 : w + 1],
            p[..., 1 : h + 1, 0:w],
            p[..., 1 : h + 1, 2 : w + 2],
        ]
    )


def _square2(x: torch.Tensor, step: int) -> torch.Tensor:
    """``(4, N, C, H, W)``: each pixel and its neighbours in a 2x2 square, towards the
    bottom right on even ``step``, the top left on odd ones (two steps: the 3x3 square,
    centred)."""
    h, w = x.shape[-2:]
    if step % 2 == 0:
        p = F.pad(x, (0, 1, 0, 1))
        return torch.stack([p[..., :h, :w], p[..., 1:, :w], p[..., :h, 1:], p[..., 1:, 1:]])
    p = F.pad(x, (1, 0, 1, 0))
    return torch.stack([p[..., 1:, 1:], p[..., :h, 1:], p[..., 1:, :w], p[..., :h, :w]])


def dilate(x: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """Grey-level dilation of ``(N, C, H, W)`` images by ``steps`` 2x2 squares (half a
    pixel more stroke on each side per step; two steps: the centred 3x3 square)."""
    for i in range(steps):
        x = _square2(x, i).amax(0)
    return x


def erode(x: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """Grey-level erosion by ``steps`` 2x2 squares (the dual of :func:`dilate`)."""
    for i in range(steps):
        x = _square2(x, i).amin(0)
    return x


def shear(x: torch.Tensor, amount: float) -> torch.Tensor:
    """Horizontal shear ``x' = x + amount * y`` about the centre (positive: top to the right)."""
    n = x.shape[0]
    theta = x.new_tensor([[1.0, amount, 0.0], [0.0, 1.0, 0.0]]).expand(n, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def stroke_thickness(images: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Measured mean stroke width per image, ``2 * area / boundary`` of the ink above
    ``threshold`` (a strip of width ``t`` and length ``L`` has area ``t L`` and boundary
    about ``2 L``); ``(N,)``, 0 for an empty image. Computed from the pixels alone, apart
    from how the levels were made."""
    ink = (images > threshold).float()
    if ink.dim() == 3:
        ink = ink.unsqueeze(1)
    inner = _cross_neighbours(ink).amin(0)
    area = ink.flatten(1).sum(1)
    boundary = (ink - inner).flatten(1).sum(1)
    return torch.where(boundary > 0, 2 * area / boundary.clamp_min(1), torch.zeros_like(area))


def graded_images(
    images: torch.Tensor,
    attribute: str = "thickness",
    levels: int = 6,
    *,
    thinning: int = 1,
    max_shear: float = 0.5,
) -> torch.Tensor:
    """Every image at every level: ``(N, C, H, W)`` in [0, 1] -> ``(N, levels, C, H, W)``.

    Args:
        attribute: ``thickness`` or ``slant``.
        levels: ``K``, the number of levels (age groups).
        thinning: (thickness) levels below the drawn digit, made by erosion; the others
            are made by ``1, 2, ...`` dilations.
        max_shear: (slant) the shear of the first and last levels.
    """
    checks.choice("attribute", attribute, ATTRIBUTES)
    levels = checks.integer("levels", levels, low=2, hint="a graded data set needs 2 or more")
    if not torch.is_tensor(images) or images.dim() != 4:
        raise DataError(
            f"graded_images takes images (N, C, H, W), got "
            f"{tuple(images.shape) if torch.is_tensor(images) else type(images)}."
        )
    x = images.float()
    out = []
    if attribute == "thickness":
        thinning = checks.int_in_range("thinning", thinning, 0, levels - 1)
        for k in range(levels):
            t = k - thinning
            out.append(erode(x, -t) if t < 0 else dilate(x, t))
    else:
        max_shear = checks.real("max_shear", max_shear, low=0.0, high=1.5, low_open=True)
        for k in range(levels):
            out.append(shear(x, -max_shear + 2 * max_shear * k / (levels - 1)))
    return torch.stack(out, 1).clamp_(0.0, 1.0)


@dataclass
class GradedSet:
    """Images of ``N`` identities at ``K`` levels with the ground truth of every level.

    Attributes:
        images: ``(N, K, C, H, W)`` in [0, 1]; ``images[i, k]`` is identity ``i`` at level
            ``k``.
        digits: ``(N,)`` the digit of each identity.
        attribute: how the levels were made.
    """

    images: torch.Tensor
    digits: torch.Tensor
    attribute: str

    @property
    def levels(self) -> int:
        return self.images.shape[1]

    def __len__(self) -> int:
        return self.images.shape[0]

    def flat(self) -> TensorData:
        """``TensorData(images (N K, C, H, W), level (N K,), identity (N K,))``: each image
        once, with its level (the "age group") and its identity."""
        n, k = self.images.shape[:2]
        level = torch.arange(k, device=self.images.device).repeat(n)
        ident = torch.arange(n, device=self.images.device).repeat_interleave(k)
        return TensorData(
            self.images.reshape((n * k,) + self.images.shape[2:]),
            level,
            ident,
            names=("images", "level", "identity"),
        )

    def sequences(self) -> TensorData:
        """``TensorData(images (N, K, C, H, W), digits (N,))``: whole progressions (the
        recurrent model's training pairs are their neighbouring levels)."""
        return TensorData(self.images, self.digits, names=("sequences", "digits"))

    def to(self, device) -> GradedSet:
        return GradedSet(self.images.to(device), self.digits.to(device), self.attribute)


def _cache_key(**settings) -> str:
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def graded_mnist(
    attribute: str = "thickness",
    levels: int = 6,
    *,
    val_size: int = 10000,
    seed: int = 0,
    limit: int | None = None,
    thinning: int = 1,
    max_shear: float = 0.5,
    device: str | torch.device = "cpu",
    cache: bool | str | Path = True,
) -> dict[str, GradedSet]:
    """The bundled MNIST's train / val / test splits, every digit at ``levels`` levels.

    Args:
        attribute: see :func:`graded_images`.
        levels: see :func:`graded_images`.
        val_size: as :func:`probgen.data.image_splits`.
        seed: as :func:`probgen.data.image_splits`.
        limit: as :func:`probgen.data.image_splits`.
        thinning: see :func:`graded_images`.
        max_shear: see :func:`graded_images`.
        device: where the tensors go.
        cache: ``True``: read or write ``default_root()/graded``; a folder: there;
            ``False``: compute every time.
    """
    settings = dict(
        attribute=attribute,
        levels=levels,
        thinning=thinning,
        max_shear=max_shear,
        val_size=val_size,
        seed=seed,
        limit=limit,
        version=1,
    )
    path = None
    if cache:
        folder = Path(default_root() / "graded" if cache is True else cache)
        path = folder / f"graded_mnist_{attribute}_{_cache_key(**settings)}.pt"
        if path.exists():
            stored = torch.load(path, map_location="cpu", weights_only=True)
            return {
                k: GradedSet(
                    v["images"].float().div_(255).to(device), v["digits"].to(device), attribute
                )
                for k, v in stored.items()
            }
    splits = image_splits("mnist", val_size=val_size, seed=seed, limit=limit)
    out = {}
    for k, data in splits.items():
        x, y = data.tensors
        out[k] = GradedSet(
            graded_images(x, attribute, levels, thinning=thinning, max_shear=max_shear),
            y,
            attribute,
        )
    if path is not None:
        # stored as bytes (a quarter of the floats' size); written whole or not at all, by
        # any number of processes at once
        files.torch_save(
            {
                k: {"images": (v.images * 255).round().to(torch.uint8), "digits": v.digits}
                for k, v in out.items()
            },
            path,
            clean=False,
        )
        out = {
            k: GradedSet((v.images * 255).round() / 255, v.digits, attribute)
            for k, v in out.items()
        }  # the same values as a cached read
    return {k: v.to(device) for k, v in out.items()}


# --------------------------------------------------------------------------- face folders

_UTK_NAME = re.compile(r"^(\d{1,3})_([01])_([0-4])_(\d+)")


def parse_face_name(name: str) -> tuple[int, int, int]:
    """``(age, gender, race)`` from a UTKFace file name ``{age}_{gender}_{race}_{datetime}``.

    Raises:
        DataError: naming the file, when the name does not follow the pattern.
    """
    m = _UTK_NAME.match(Path(name).name)
    if m is None or int(m.group(1)) > 130:
        raise DataError(
            f"face file {name!r} does not follow the UTKFace pattern "
            f"{{age}}_{{gender 0|1}}_{{race 0-4}}_{{datetime}}.jpg (age 0-130); rename "
            f"or remove it, or pass strict=False to skip such files."
        )
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def age_bounds(groups: str | Sequence[int]) -> tuple[int, ...]:
    """The lower bounds of the age groups: a name in :data:`AGE_GROUPS` or increasing
    integers starting at 0."""
    if isinstance(groups, str):
        if groups not in AGE_GROUPS:
            raise ConfigError(
                f"age groups must be one of {sorted(AGE_GROUPS)} or a list of "
                f"lower bounds such as (0, 20, 40, 60), got {groups!r}."
            )
        return AGE_GROUPS[groups]
    bounds = tuple(groups)
    if (
        len(bounds) < 2
        or bounds[0] != 0
        or any(isinstance(b, bool) or not isinstance(b, int) for b in bounds)
        or any(b >= c for b, c in itertools.pairwise(bounds))
    ):
        raise ConfigError(
            f"age group bounds must be increasing integers starting at 0 (at "
            f"least two groups), got {groups!r}."
        )
    return bounds


def age_group(age: int, groups: str | Sequence[int] = "agecgan") -> int:
    """The group of an age: the last group whose lower bound is at most ``age``."""
    bounds = age_bounds(groups)
    return sum(1 for b in bounds if age >= b) - 1


class AgeFolder(torch.utils.data.Dataset):
    """A folder of aligned face crops named ``{age}_{gender}_{race}_{datetime}.jpg``.

    Items are ``(image (C, size, size) float in [0, 1], group int64)``, read from disk when
    asked (Pillow) and resized with antialiasing (torchvision).

    Args:
        root: the folder (its ``.jpg``/``.jpeg``/``.png`` files, not sub-folders).
        size: the side of the square images (64 for Age-cGAN, 128 for the CAAE).
        groups: ``agecgan`` (six groups), ``caae`` (ten) or lower bounds.
        channels: 3 (RGB) or 1 (grey).
        strict: a file whose name does not follow the pattern is an error (``False``: it
            is skipped and listed in :attr:`skipped`).

    Attributes:
        files, ages, groups: the images' paths, ages and group indices.
    """

    def __init__(
        self,
        root: str | Path,
        size: int = 64,
        groups: str | Sequence[int] = "agecgan",
        channels: int = 3,
        strict: bool = True,
    ):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"face folder {str(root)!r} does not exist or is not a folder.")
        self.size = checks.positive_int("size", size)
        checks.choice("channels", channels, (1, 3))
        self.channels = channels
        self.bounds = age_bounds(groups)
        self.files: list[Path] = []
        self.ages: list[int] = []
        self.skipped: list[str] = []
        for p in sorted(root.iterdir()):
            if not p.is_file() or not p.name.lower().endswith(IMAGE_SUFFIXES):
                continue
            try:
                age, _, _ = parse_face_name(p.name)
            except DataError:
                if strict:
                    raise
                self.skipped.append(p.name)
                continue
            self.files.append(p)
            self.ages.append(age)
        if not self.files:
            raise DataError(
                f"face folder {str(root)!r} holds no image named "
                f"{{age}}_{{gender}}_{{race}}_{{datetime}}.jpg."
            )
        self.groups = torch.tensor([age_group(a, self.bounds) for a in self.ages])

    @property
    def num_groups(self) -> int:
        return len(self.bounds)

    def __len__(self) -> int:
        return len(self.files)

    def first(self, n: int, device: str | torch.device | None = None):
        """``(images (m, C, size, size), groups (m,))`` of the first ``m = min(n, len)``
        faces, on ``device`` (the CPU by default): a fixed batch to draw edits of."""
        m = min(checks.positive_int("n", n), len(self))
        images = torch.stack([self[i][0] for i in range(m)])
        return images.to(device), self.groups[:m].to(device)

    def __getitem__(self, i: int):
        from PIL import Image, UnidentifiedImageError
        from torchvision.transforms.functional import pil_to_tensor, resize

        path = self.files[i]
        try:
            with Image.open(path) as im:
                img = pil_to_tensor(im.convert("RGB" if self.channels == 3 else "L"))
        except (OSError, UnidentifiedImageError) as err:
            raise DataError(f"face file {str(path)!r} could not be decoded ({err}).") from None
        img = resize(img, [self.size, self.size], antialias=True)
        return img.float().div_(255), self.groups[i]


def faces_loader(
    root: str | Path,
    size: int = 64,
    groups: str | Sequence[int] = "agecgan",
    batch_size: int = 64,
    shuffle: bool = True,
    num_workers: int = 0,
    channels: int = 3,
    strict: bool = True,
    generator: torch.Generator | None = None,
):
    """A ``DataLoader`` of ``(images, groups)`` batches from :class:`AgeFolder` (what
    ``probgen.fit`` takes as training data when a data set does not fit in memory)."""
    ds = AgeFolder(root, size, groups, channels, strict)
    return torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=generator,
        drop_last=False,
    )


__all__ = [
    "AGE_GROUPS",
    "ATTRIBUTES",
    "AgeFolder",
    "GradedSet",
    "age_bounds",
    "age_group",
    "dilate",
    "erode",
    "faces_loader",
    "graded_images",
    "graded_mnist",
    "parse_face_name",
    "shear",
    "stroke_thickness",
]
