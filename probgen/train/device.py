"""Where a run computes, and its random streams: the device, seeding, and the random
generators' states a checkpoint carries so that a resumed run draws what an uninterrupted
one would."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from probgen.data.tensors import TensorData
from probgen.errors import ConfigError
from probgen.train import distributed as ddp

__all__ = [
    "module_device",
    "reduce_device",
    "resolve_device",
    "rng_state",
    "run_device",
    "seed_run",
    "set_rng_state",
    "set_seed",
]


# --------------------------------------------------------------------------- devices


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a CUDA request without CUDA is an error."""
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if isinstance(device, str) and device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={device!r} was asked for, but this machine has no CUDA "
                f"device; use device='cpu' or 'auto'."
            )
        return torch.device(device)
    raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}.")


def module_device(module) -> torch.device | None:
    """The device of a module's first parameter or buffer (``None``: no module, or one
    without tensors)."""
    if module is None:
        return None
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return None


def reduce_device(device) -> torch.device:
    """Where a cross-process sum can run: the given device; under NCCL (which takes CUDA
    tensors only) this process's GPU; else the CPU."""
    if device is not None:
        return torch.device(device)
    if ddp.is_distributed() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def run_device(module, device: str, train) -> tuple[torch.device, torch.device | None, bool]:
    """``(the run's device, where batches go, whether the device is to be read from the
    first batch)``; joins torchrun's process group when there is one.

    A bare model/guide pair (no module) under ``device="auto"`` trains where its data is,
    as Pyro's ``SVI`` moves nothing: the user's model may hold CPU tensors. Batches then
    stay where they are (``None``), and data that is not a TensorData says its device with
    its first batch.
    """
    if module is None and device == "auto" and ddp.env_world_size() <= 1:
        data_device = train.device if isinstance(train, TensorData) else None
        return data_device or torch.device("cpu"), data_device, data_device is None
    resolved = ddp.setup(resolve_device(device))
    return resolved, resolved, False


# --------------------------------------------------------------------------- seeds


def set_seed(seed: int) -> None:
    """Seed Python's, numpy's and torch's global random generators (for scripts; the
    fit loop calls it only when its ``seed`` setting is not ``None``)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_run(seed: int | None, rank: int, draws_order: bool) -> torch.Generator:
    """Seed a run; return the generator of its batch order (on the CPU).

    With a ``seed``, every process seeds the global generators with ``seed + rank`` (its
    own stream of noise) and all share the batch order. Without one nothing is re-seeded:
    when the run draws a batch order or data transforms (``draws_order``), the order's seed
    is drawn from torch's global generator (rank 0's, for every process), so a user who
    seeded torch before ``fit(seed=None)`` gets the same run twice. Otherwise (a DataLoader
    or a list orders itself; one batch of all the data is not shuffled) nothing is drawn,
    and the run's random draws are those of a loop of ``SVI.step``.
    """
    if seed is not None:
        set_seed(seed + rank)
        loader_seed = seed
    elif draws_order:
        loader_seed = int(torch.randint(0, 2**62, (1,)).item())
        loader_seed = ddp.broadcast_object(loader_seed)
    else:
        loader_seed = 0
    generator = torch.Generator(device="cpu")
    generator.manual_seed(loader_seed)
    return generator


# --------------------------------------------------------------------------- RNG states


def rng_state(loader_gen: torch.Generator) -> dict[str, Any]:
    """The states of torch's, numpy's, Python's and CUDA's generators and of the batch
    order's, as checkpoint data (tensors, numbers, lists)."""
    keys, pos, has_gauss, gauss = np.random.get_state()[1:]
    state = {
        "torch": torch.get_rng_state(),
        "loader": loader_gen.get_state(),
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any], loader_gen: torch.Generator) -> str | None:
    """Restore the generators; a note (one line) when the checkpoint's CUDA states cannot
    be restored here, else ``None``. The states are read on the CPU, wherever the
    checkpoint was mapped."""
    torch.set_rng_state(state["torch"].cpu())
    loader_gen.set_state(state["loader"].cpu())
    random.setstate(_as_tuple(state["python"]))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state(
            (
                "MT19937",
                n["keys"].cpu().numpy().astype(np.uint32),
                n["pos"],
                n["has_gauss"],
                n["gauss"],
            )
        )
    cuda = state.get("cuda")
    if not cuda:
        return None
    if not torch.cuda.is_available():
        return (
            "the checkpoint holds the random-generator states of CUDA devices, and this "
            "machine has none: the run goes on without them, so its random draws differ "
            "from an uninterrupted run on the GPU"
        )
    count = torch.cuda.device_count()
    for i, s in enumerate(cuda[:count]):
        torch.cuda.set_rng_state(s.cpu(), i)
    if len(cuda) > count:
        return (
            f"the checkpoint holds the random-generator states of {len(cuda)} CUDA "
            f"devices and this machine has {count}: the first {count} were restored"
        )
    return None


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
