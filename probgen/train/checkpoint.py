"""Checkpoint files: atomic writes and loads that fail with a clear message.

A checkpoint is a ``torch.save`` file holding a dict with ``format`` set to
:data:`FORMAT`. It contains only tensors, numbers, strings, lists and dicts,
so it loads with ``torch.load(..., weights_only=True)`` (no code runs when a
file is opened).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Union

import torch

from probgen.errors import CheckpointError

FORMAT = "probgen.checkpoint"
VERSION = 1


def save_checkpoint(path: Union[str, Path], state: Dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically.

    The file is written under a temporary name in the same folder, flushed to
    disk, then renamed over ``path``: a kill at any moment leaves either the
    previous checkpoint or the new one, never a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(state, format=FORMAT, version=VERSION)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; use the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: Union[str, Path], map_location=None) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: the file is missing, truncated, not a PyTorch file, or
            a PyTorch file that is not a probgen checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # EOFError, UnpicklingError, RuntimeError, KeyError, ...
        raise CheckpointError(
            f"{path} is truncated or is not a checkpoint file ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}). Delete it, or point "
            f"to an intact checkpoint; training with resume=True starts afresh when none exists."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a probgen checkpoint (it has no "
            f"format={FORMAT!r} entry). Load plain state dicts with torch.load and "
            f"module.load_state_dict instead.")
    if state.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path} was written by a newer probgen (checkpoint version {state['version']} > "
            f"{VERSION}); upgrade probgen to read it.")
    return state


def load_module_state(module: torch.nn.Module, state_dict: Dict[str, Any], source="checkpoint"):
    """``module.load_state_dict`` with a clear message when the shapes or names differ."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as err:
        raise CheckpointError(
            f"the {source} does not fit this {type(module).__name__}: "
            f"{str(err).splitlines()[0]} ... Build the model with the settings it was "
            f"trained with (the checkpoint's 'config' entry records them)."
        ) from None
    return module


def save_model(module: torch.nn.Module, path: Union[str, Path], **extra) -> Path:
    """Save a module's weights (and any extra JSON-like entries) as a probgen checkpoint."""
    return save_checkpoint(path, dict(extra, module=module.state_dict(),
                                      module_class=type(module).__qualname__))


def load_model(module: torch.nn.Module, path: Union[str, Path], map_location=None):
    """Load weights saved by :func:`save_model` or by the fit loop into ``module``."""
    state = load_checkpoint(path, map_location=map_location)
    if "module" not in state:
        raise CheckpointError(f"{path} holds no model weights (no 'module' entry).")
    return load_module_state(module, state["module"], source=f"checkpoint {path}")
