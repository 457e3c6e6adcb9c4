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
        raise CheckpointError(_why_unreadable(path, err)) from None
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


def _why_unreadable(path: Path, err: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in one sentence."""
    text = str(err)
    first = text.strip().splitlines()[0] if text.strip() else "no detail"
    if "Weights only load failed" in text or "Unsupported global" in text or \
            "unsupported global" in text.lower():
        culprit = ""
        for line in text.splitlines():
            if "GLOBAL" in line or "Unsupported global" in line:
                culprit = " (" + line.strip().rstrip(".") + ")"
                break
        return (f"{path} holds Python objects other than tensors, numbers, strings, lists and "
                f"dicts{culprit}, so it was not written by probgen's fit loop or save_model; "
                f"probgen does not run the code such a file names. If you trust it, open it "
                f"with torch.load(path, weights_only=False).")
    size = path.stat().st_size if path.exists() else 0
    truncated = isinstance(err, EOFError) or any(
        s in text for s in ("central directory", "failed finding", "unexpected EOF",
                            "Ran out of input", "file read failed", "PytorchStreamReader"))
    if truncated:
        return (f"{path} is truncated ({size} bytes; {type(err).__name__}: {first}): the write "
                f"that made it was cut short. Delete it, or point to an intact checkpoint; "
                f"training with resume=True starts afresh when none exists.")
    return (f"{path} is not a PyTorch checkpoint file ({type(err).__name__}: {first}). Point "
            f"to a file written by probgen.fit or save_model.")


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
    """Save a module's weights (and any extra JSON-like entries) as a probgen checkpoint;
    a registered probgen model's settings go with them, for :func:`load`."""
    from probgen.models.registry import model_config
    from probgen.train.distributed import is_main_process

    path = Path(path)
    if not is_main_process():   # under torchrun, rank 0 alone writes files
        return path
    state = dict(extra, module=module.state_dict(), module_class=type(module).__qualname__)
    try:
        state["model"] = model_config(module)
    except TypeError:
        pass
    return save_checkpoint(path, state)


def load_model(module: torch.nn.Module, path: Union[str, Path], map_location=None):
    """Load weights saved by :func:`save_model` or by the fit loop into ``module``."""
    state = load_checkpoint(path, map_location=map_location)
    if "module" not in state:
        raise CheckpointError(f"{path} holds no model weights (no 'module' entry).")
    return load_module_state(module, state["module"], source=f"checkpoint {path}")


def load(path: Union[str, Path], map_location=None, weights: str = "best"):
    """A ready model from a checkpoint of the fit loop (or of :func:`save_model`).

    The checkpoint records the model's class and constructor settings (every model
    registered in :data:`probgen.models.MODELS`, flows included), so nothing needs
    repeating::

        model = probgen.load("results/vae/vae.pt")

    Args:
        map_location: where the tensors go (``"cpu"``, ``"cuda"``); default as saved.
        weights: ``"best"`` (the best epoch's weights, what ``fit`` returns with
            ``restore_best``; the last ones when the run kept no best) or ``"last"``.

    Returns the model in eval mode.
    """
    from probgen.models.registry import build_from_config

    if weights not in ("best", "last"):
        raise CheckpointError(f"weights must be 'best' or 'last', got {weights!r}.")
    state = load_checkpoint(path, map_location=map_location)
    settings = state.get("model")
    if settings is None:
        raise CheckpointError(
            f"{path} does not record the model's settings (it holds a "
            f"{state.get('module_class') or 'model'} that is not a registered probgen model, "
            f"or was built from objects rather than settings). Build the model yourself and "
            f"load the weights with probgen.train.load_model(model, path).")
    model = build_from_config(settings)
    best = state.get("best_state")
    if weights == "best" and isinstance(best, dict) and best.get("module") is not None:
        module_state = best["module"]
    elif weights == "best" and isinstance(best, dict) and "pyro_params" not in best and best:
        module_state = best        # a checkpoint of the first edition of the loop
    else:
        module_state = state["module"]
    load_module_state(model, module_state, source=f"checkpoint {path}")
    if map_location is not None:
        model.to(map_location)
    return model.eval()
