"""Two-dimensional toy densities: two moons, rings, eight Gaussians.

The quickest way to see that a density model works: its density, drawn on a
grid, should look like the points. Every maker returns ``(N, 2)`` points,
reproducible from ``seed``, roughly centred and within [-4, 4]^2;
:func:`toy_splits` wraps them as train/validation/test :class:`TensorData`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from probgen import checks
from probgen.data.tensors import TensorData
from probgen.registry import Registry

TOY: Registry = Registry("toy data set")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed))


def _check_n(n) -> int:
    return checks.positive_int("the number of points n", n)


@TOY.register("moons")
def two_moons(n: int, noise: float = 0.08, seed: int = 0) -> torch.Tensor:
    """Two interleaved half circles (scikit-learn's ``make_moons``), scaled by 2 and centred."""
    _check_n(n)
    g = _generator(seed)
    upper = torch.rand(n, generator=g) < 0.5
    t = torch.rand(n, generator=g) * math.pi
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    pts = torch.stack([x - 0.5, y - 0.25], 1) * 2
    return (pts + noise * 2 * torch.randn(n, 2, generator=g)).to(torch.get_default_dtype())


@TOY.register("rings")
def rings(
    n: int, radii: Sequence[float] = (1.0, 2.0, 3.0), noise: float = 0.08, seed: int = 0
) -> torch.Tensor:
    """Concentric circles; each point picks a ring with probability proportional to its
    radius (uniform density along the circles), plus Gaussian noise."""
    _check_n(n)
    g = _generator(seed)
    r = torch.as_tensor(radii, dtype=torch.float64)
    idx = torch.multinomial(r / r.sum(), n, replacement=True, generator=g)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    pts = torch.stack([torch.cos(t), torch.sin(t)], 1) * r[idx, None]
    pts = pts + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return pts.to(torch.get_default_dtype())


@TOY.register("8gaussians")
def eight_gaussians(n: int, radius: float = 2.5, std: float = 0.2, seed: int = 0) -> torch.Tensor:
    """A mixture of eight equally weighted Gaussians on a circle."""
    _check_n(n)
    g = _generator(seed)
    k = torch.randint(0, 8, (n,), generator=g)
    angle = k.to(torch.float64) * (math.pi / 4)
    centres = torch.stack([torch.cos(angle), torch.sin(angle)], 1) * radius
    pts = centres + std * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return pts.to(torch.get_default_dtype())


def toy_points(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` points of the toy density ``name`` (one of ``TOY.names()``)."""
    return TOY.get(name)(n, seed=seed)


def toy_splits(
    name: str,
    train: int = 8000,
    val: int = 1000,
    test: int = 2000,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, TensorData]:
    """Independent train / validation / test draws of a toy density as :class:`TensorData`."""
    out = {}
    for i, (split, n) in enumerate((("train", train), ("val", val), ("test", test))):
        if n:
            pts = toy_points(name, n, seed=seed * 3 + i).to(device)
            out[split] = TensorData(pts, names=("points",))
    return out
