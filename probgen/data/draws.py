"""Random draws made on the device of the data they perturb.

The fit loop hands per-batch transforms (binarization, dequantization, corruption,
augmentation) its loader's generator, a CPU generator whose state checkpoints store. A
draw for a CPU batch comes from that generator, so a CPU run (and a resumed one) sees
the same draws. A draw for a batch on an accelerator is made there, from the generator
when it lives on that device type and otherwise from the device's own random stream
(whose state the fit loop's checkpoints store as well): drawing on the CPU and copying
to the GPU would cost a host-to-device copy per batch and stall on the CPU's generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Device = str | torch.device


def _generator_for(device: Device, generator: torch.Generator | None) -> torch.Generator | None:
    """``generator`` when it can draw on ``device``, else ``None`` (the device's stream)."""
    if generator is None:
        return None
    return generator if torch.device(device).type == generator.device.type else None


def randint(
    low: int,
    high: int,
    shape: Sequence[int],
    device: Device,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Integers uniform in ``[low, high)`` of ``shape``, made on ``device``."""
    return torch.randint(
        low, high, tuple(shape), device=device, generator=_generator_for(device, generator)
    )


def rand_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``U(0, 1)`` draws of ``x``'s shape, dtype and device."""
    return torch.rand(
        x.shape, generator=_generator_for(x.device, generator), device=x.device, dtype=x.dtype
    )


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``N(0, 1)`` draws of ``x``'s shape, dtype and device."""
    return torch.randn(
        x.shape, generator=_generator_for(x.device, generator), device=x.device, dtype=x.dtype
    )


__all__ = ["rand_like", "randint", "randn_like"]
