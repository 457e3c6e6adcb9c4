"""The registry of every model family (used by contract tests, examples and ``probgen.load``).

Registering a class here also makes it *rebuildable*: its constructor's arguments are
recorded on every instance (:func:`model_config`), so a checkpoint written by the fit
loop carries them and :func:`probgen.load` returns a ready model without the user
repeating them. Arguments that are themselves registered models (the CVAE's baseline)
are recorded as such, recursively.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from pathlib import Path
from typing import Any, Dict

import torch

from probgen.errors import CheckpointError
from probgen.registry import Registry

_CONFIG_ATTR = "_probgen_init_args"
_MODEL_KEY = "__probgen_model__"


def _encode(value: Any, where: str) -> Any:
    """A constructor argument as checkpoint-safe data (numbers, strings, lists, dicts)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_encode(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v, where) for k, v in value.items()}
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:   # numpy / torch scalars
        return value.item()
    if hasattr(type(value), _CONFIG_ATTR + "_recorded"):
        return model_config(value)
    raise TypeError(f"{where} is a {type(value).__name__}, which a checkpoint cannot record")


def model_config(module) -> Dict[str, Any]:
    """``{"__probgen_model__": "module:Class", "args": {...}}`` of a registered model."""
    recorded = module.__dict__.get(_CONFIG_ATTR)
    cls = type(module)
    if recorded is None or recorded[0] is not cls:
        # a subclass with a constructor of its own records nothing we could rebuild it from
        raise TypeError(f"{cls.__name__} is not a registered probgen model")
    args = recorded[1]
    encoded = {k: _encode(v, f"argument {k!r} of {cls.__name__}") for k, v in args.items()}
    return {_MODEL_KEY: f"{cls.__module__}:{cls.__qualname__}", "args": encoded}


def build_from_config(config: Dict[str, Any], source: str = "the checkpoint"):
    """Rebuild a model from :func:`model_config` (only classes of the probgen package).

    Raises:
        CheckpointError: one line when the settings do not fit this probgen: the class was
            renamed or moved, or its constructor gained or lost an argument (a checkpoint
            of another probgen version).
    """
    if not isinstance(config, dict) or not isinstance(config.get("args"), dict):
        raise CheckpointError(f"{source} records no model settings probgen can read (written "
                              f"by another probgen version); build the model yourself and "
                              f"restore it with probgen.load(path, module=model).")
    path = config.get(_MODEL_KEY, "")
    module_name, _, qualname = path.partition(":")
    if not module_name.startswith("probgen.") or not qualname:
        raise CheckpointError(f"{source} names model class {path!r}; probgen.load "
                              f"rebuilds only probgen's own registered models.")
    how = ("it was written by another probgen version: load it with that version, or build "
           "the model yourself and restore it with probgen.load(path, module=model)")
    try:
        obj = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise CheckpointError(f"{source} holds a {path}, a model class this probgen does not "
                              f"have ({type(err).__name__}: {err}); {how}.") from None
    if not hasattr(obj, _CONFIG_ATTR + "_recorded"):
        raise CheckpointError(f"{source}: {path} is not a registered probgen model.")
    args = {k: build_from_config(v, source) if isinstance(v, dict) and _MODEL_KEY in v else v
            for k, v in config["args"].items()}
    differs = _signature_differences(obj, args)
    if differs:
        raise CheckpointError(f"{source} holds a {obj.__name__} whose settings do not fit this "
                              f"probgen's {obj.__name__} ({differs}); {how}.")
    try:
        return obj(**args)
    except TypeError as err:
        raise CheckpointError(f"{source} holds a {obj.__name__} that this probgen cannot build "
                              f"from its recorded settings (TypeError: {err}); {how}.") from None


def _signature_differences(cls, args: Dict[str, Any]) -> str:
    """What the recorded ``args`` lack or have too many for ``cls``'s constructor."""
    init = getattr(cls.__init__, "__wrapped__", cls.__init__)
    try:
        params = list(inspect.signature(init).parameters.values())[1:]
    except (TypeError, ValueError):
        return ""
    if any(p.kind is p.VAR_KEYWORD for p in params):
        unknown = []
    else:
        names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        unknown = sorted(set(args) - names)
    missing = sorted(p.name for p in params
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                     and p.default is p.empty and p.name not in args)
    parts = []
    if unknown:
        parts.append(f"it records {', '.join(map(repr, unknown))}, which the constructor no "
                     f"longer takes")
    if missing:
        parts.append(f"the constructor now needs {', '.join(map(repr, missing))}, which it "
                     f"does not record")
    return "; ".join(parts)


def rebuildable(cls):
    """Wrap ``cls.__init__`` so that instances remember the arguments they were built with
    (what registration does; also for a network that is part of a model without being a
    model itself, such as the CVAE's baseline)."""
    if cls.__dict__.get(_CONFIG_ATTR + "_recorded"):
        return cls
    init = cls.__init__
    sig = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        outermost = _CONFIG_ATTR not in self.__dict__
        if outermost:
            bound = sig.bind(self, *args, **kwargs)
            bound.apply_defaults()
            recorded = dict(list(bound.arguments.items())[1:])
            for name, p in sig.parameters.items():   # **kwargs flattened
                if p.kind is p.VAR_KEYWORD and name in recorded:
                    recorded.update(recorded.pop(name))
            object.__setattr__(self, _CONFIG_ATTR, (cls, recorded))
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    setattr(cls, _CONFIG_ATTR + "_recorded", True)
    # probgen's models name their pyro.module sites after their class: two models of
    # one class in one process would collide in the global param store, so the fit
    # loop trains them in a scope of the store of their own.
    cls.isolate_param_store = True
    return cls


class ModelRegistry(Registry):
    """A :class:`~probgen.registry.Registry` whose classes record their constructor
    arguments (see the module docstring)."""

    def _add(self, name, item):
        if inspect.isclass(item) and issubclass(item, torch.nn.Module):
            rebuildable(item)
        super()._add(name, item)


MODELS: ModelRegistry = ModelRegistry("model")
