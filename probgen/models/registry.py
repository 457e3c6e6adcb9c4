"""The registry of every model family (used by contract tests, examples and ``probgen.load``).

Registering a class here also makes it *rebuildable*: its constructor's arguments are
recorded on every instance (:func:`model_config`), so a checkpoint written by the fit
loop carries them and :func:`probgen.load` returns a ready model without the user
repeating them. Arguments that are themselves registered models (the CVAE's baseline)
are recorded as such, recursively.

A rebuildable class also gets ``save_pretrained`` (a model folder of ``config.json`` and
``model.safetensors``, no pickle: :mod:`probgen.models.pretrained`), ``push_to_hub`` and
the class method ``from_pretrained``; :func:`from_pretrained` rebuilds whatever model a
folder holds.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import tempfile
from pathlib import Path
from typing import Any

import pyro.util
import torch

from probgen.errors import CheckpointError, ConfigError, ProbgenError
from probgen.models import pretrained
from probgen.registry import Registry

_CONFIG_ATTR = "_probgen_init_args"
_MODEL_KEY = "__probgen_model__"

MOVED: dict[str, str] = {
    "probgen.models.aae:SemiSupervisedAAE": "probgen.models.semi_supervised_aae:SemiSupervisedAAE",
}
"""Registered classes that moved, ``"old.module:Class" -> "new.module:Class"``: checkpoints
and model folders record the path of the class that wrote them, and
:func:`build_from_config` reads an old path as the new one (so they still load)."""


_LR_SETTINGS = ("lr", "d_lr", "g_lr", "betas")

DROPPED: dict[str, tuple[str, ...]] = {
    "probgen.models.gan:GAN": ("d_lr", "g_lr", "betas"),
    "probgen.models.flowgan:FlowGAN": ("d_lr", "g_lr", "betas"),
    "probgen.models.aae:AAE": _LR_SETTINGS,
    "probgen.models.semi_supervised_aae:SemiSupervisedAAE": _LR_SETTINGS + ("c_lr",),
    "probgen.models.aging:AgeCGAN": ("d_lr", "g_lr", "betas"),
    "probgen.models.aging:CAAE": _LR_SETTINGS,
}
"""Constructor arguments that registered classes no longer take and that did not shape
the model, ``"module:Class" -> names`` (the class's present path): checkpoints and model
folders that record them still load, without them. The learning rates and Adam betas of
the adversarial models are the run's now (``FitConfig.phase_optim``)."""


def current_settings(config: dict[str, Any]) -> dict[str, Any]:
    """Recorded model settings (:func:`model_config`) as this probgen reads them: a
    moved class under its new path (:data:`MOVED`), arguments it no longer takes that did
    not shape the model left out (:data:`DROPPED`), registered models inside likewise.
    Anything else is returned as it is."""
    if not isinstance(config, dict) or not isinstance(config.get("args"), dict):
        return config
    path = config.get(_MODEL_KEY, "")
    path = MOVED.get(path, path) if isinstance(path, str) else path
    dropped = DROPPED.get(path, ()) if isinstance(path, str) else ()
    args = {
        k: current_settings(v) if isinstance(v, dict) and _MODEL_KEY in v else v
        for k, v in config["args"].items()
        if k not in dropped
    }
    return {**config, _MODEL_KEY: path, "args": args}


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
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return value.item()
    if hasattr(type(value), _CONFIG_ATTR + "_recorded"):
        return model_config(value)
    raise TypeError(f"{where} is a {type(value).__name__}, which a checkpoint cannot record")


def model_config(module: torch.nn.Module) -> dict[str, Any]:
    """``{"__probgen_model__": "module:Class", "args": {...}}`` of a registered model."""
    recorded = module.__dict__.get(_CONFIG_ATTR)
    cls = type(module)
    if recorded is None or recorded[0] is not cls:
        # a subclass with a constructor of its own records nothing we could rebuild it from
        raise TypeError(f"{cls.__name__} is not a registered probgen model")
    args = recorded[1]
    encoded = {k: _encode(v, f"argument {k!r} of {cls.__name__}") for k, v in args.items()}
    return {_MODEL_KEY: f"{cls.__module__}:{cls.__qualname__}", "args": encoded}


def build_from_config(
    config: dict[str, Any],
    source: str = "the checkpoint",
    *,
    strict: bool = False,
    how: str | None = None,
) -> torch.nn.Module:
    """Rebuild a model from :func:`model_config` (only classes of the probgen package).

    Args:
        config: what :func:`model_config` recorded.
        source: the file named in error messages.
        strict: also refuse settings that lack an argument the constructor has a default
            for (an argument added since they were recorded); else it takes its default.
            A class recorded under a path it has left (:data:`MOVED`) is built from its
            new one, and arguments it no longer takes that did not shape the model
            (:data:`DROPPED`) are left out.
        how: what the error messages advise (how to load settings of another version).

    Raises:
        CheckpointError: one line when the settings do not fit this probgen: the class was
            renamed or moved, or its constructor gained or lost an argument (a checkpoint
            of another probgen version), or it refuses the recorded values.
    """
    how = how or (
        "it was written by another probgen version: load it with that version, or "
        "build the model yourself and restore it with probgen.load(path, "
        "module=model)"
    )
    if not isinstance(config, dict) or not isinstance(config.get("args"), dict):
        raise CheckpointError(
            f"{source} records no model settings probgen can read (written "
            f"by another probgen version); {how}."
        )
    config = current_settings(config)
    path = config.get(_MODEL_KEY, "")
    module_name, _, qualname = str(path).partition(":")
    if not module_name.startswith("probgen.") or not qualname:
        raise CheckpointError(
            f"{source} names model class {path!r}; probgen rebuilds "
            f"only probgen's own registered models."
        )
    try:
        obj = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise CheckpointError(
            f"{source} holds a {path}, a model class this probgen does not "
            f"have ({type(err).__name__}: {err}); {how}."
        ) from None
    if not hasattr(obj, _CONFIG_ATTR + "_recorded"):
        raise CheckpointError(f"{source}: {path} is not a registered probgen model.")
    args = {
        k: build_from_config(v, source, strict=strict, how=how)
        if isinstance(v, dict) and _MODEL_KEY in v
        else v
        for k, v in config["args"].items()
    }
    differs = _signature_differences(obj, args, strict=strict)
    if differs:
        raise CheckpointError(
            f"{source} holds a {obj.__name__} whose settings do not fit this "
            f"probgen's {obj.__name__} ({differs}); {how}."
        )
    try:
        return obj(**args)
    except (TypeError, ValueError, ProbgenError) as err:
        first = (str(err).strip().splitlines() or ["no detail"])[0]
        raise CheckpointError(
            f"{source} holds a {obj.__name__} that this probgen cannot build "
            f"from its recorded settings ({type(err).__name__}: {first}); "
            f"{how}."
        ) from None


def _signature_differences(cls, args: dict[str, Any], strict: bool = False) -> str:
    """What the recorded ``args`` lack or have too many for ``cls``'s constructor (with
    ``strict``, arguments with a default that ``args`` lack too)."""
    init = getattr(cls.__init__, "__wrapped__", cls.__init__)
    try:
        params = list(inspect.signature(init).parameters.values())[1:]
    except (TypeError, ValueError):
        return ""
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        unknown = []
    else:
        unknown = sorted(set(args) - {p.name for p in named})
    missing = sorted(p.name for p in named if p.default is p.empty and p.name not in args)
    added = [p for p in named if strict and p.default is not p.empty and p.name not in args]
    parts = []
    if unknown:
        parts.append(
            f"it records {', '.join(map(repr, unknown))}, which the constructor no longer takes"
        )
    if missing:
        parts.append(
            f"the constructor now needs {', '.join(map(repr, missing))}, which it does not record"
        )
    if added:
        parts.append(
            "the constructor now also takes "
            + ", ".join(f"{p.name!r} (default {p.default!r})" for p in added)
            + ", which it does not record"
        )
    return "; ".join(parts)


# --------------------------------------------------------------------------- model folders


def _registered_name(cls) -> str | None:
    """The name ``cls`` is registered under in :data:`MODELS` (``None`` for a network made
    rebuildable without being registered)."""
    return next((name for name in MODELS if MODELS.get(name) is cls), None)


def _data_settings(data_settings) -> Any:
    """The training data's settings as JSON data: a dict, or read from a ``TensorData``
    (its ``settings``) or a run's result (its ``data_settings``)."""
    if data_settings is None or isinstance(data_settings, dict):
        value = data_settings
    elif hasattr(data_settings, "data_settings"):
        value = data_settings.data_settings
    elif hasattr(data_settings, "settings"):
        value = data_settings.settings
    else:
        raise ConfigError(
            f"data_settings must be a dict, a TensorData or a fit result, got a "
            f"{type(data_settings).__name__}."
        )
    try:
        return _encode(value, "data_settings")
    except TypeError as err:
        raise ConfigError(
            f"{err}; give data settings made of numbers, strings, lists and dicts."
        ) from None


def save_pretrained(self: torch.nn.Module, path: str | Path, *, data_settings: Any = None) -> Path:
    """Write this model as a folder: ``config.json`` (its class and constructor settings,
    probgen's version, the training data's settings) and ``model.safetensors`` (its
    weights and buffers). No pickle: :func:`probgen.from_pretrained` reads it back with
    JSON and safetensors only. The model is left as it was (device, mode).

    Example::

        model.save_pretrained("results/vae-mnist", data_settings=splits["train"])
        again = probgen.from_pretrained("results/vae-mnist")

    Args:
        path: the folder (created when missing; other files in it are left alone).
        data_settings: how the training data was made, for whoever loads the model: a
            dict, a :class:`~probgen.data.TensorData` (its ``settings``) or a fit result
            that records them (its ``data_settings``).

    Returns:
        The folder (under ``torchrun``, processes other than rank 0 write nothing).

    Raises:
        ConfigError: the model was built from objects rather than settings (a network
            given to its constructor), is not a registered class, or ``data_settings``
            is not data.
        CheckpointError: the folder cannot be written.
    """
    try:
        model = model_config(self)
    except TypeError as err:
        raise ConfigError(
            f"{err}: a model folder records how to rebuild the model from "
            f"settings (numbers, strings, registered models); build it from "
            f"settings, or save its state_dict with safetensors.torch.save_model."
        ) from None
    record = {
        "name": _registered_name(type(self)),
        "model": model,
        "data": _data_settings(data_settings),
    }
    if (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_rank() != 0
    ):
        return Path(path)
    return pretrained.write_folder(self, path, record)


def push_to_hub(
    self: torch.nn.Module,
    repo_id: str,
    *,
    data_settings: Any = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
) -> Any:
    """Upload this model's folder (:meth:`save_pretrained`) to the Hugging Face Hub
    repository ``repo_id`` (``"user/repo"``, created when missing); needs
    ``huggingface_hub`` (``pip install "probgen[hub]"``). Returns its ``CommitInfo``.
    """
    pretrained.check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="probgen-") as tmp:
        self.save_pretrained(tmp, data_settings=data_settings)
        return pretrained.upload(
            tmp,
            repo_id,
            private=private,
            token=token,
            commit_message=commit_message,
            revision=revision,
        )


def read_pretrained_config(
    path: str | Path, *, revision: str | None = None, **hub_options: Any
) -> dict[str, Any]:
    """The ``config.json`` of a model folder (or Hub repository): ``model`` (class and
    settings), ``data`` (the training data's settings), ``probgen_version``, ..."""
    return pretrained.read_config(pretrained.resolve(path, revision, **hub_options))


def from_pretrained(
    path: str | Path,
    *,
    map_location: str | torch.device | None = "cpu",
    strict: bool = True,
    revision: str | None = None,
    **hub_options: Any,
) -> torch.nn.Module:
    """The model a folder written by ``save_pretrained`` holds, rebuilt and in eval mode.

    The model is built from ``config.json`` (probgen's own registered classes only, as
    :func:`build_from_config` does) and gets the weights of ``model.safetensors``; no
    pickle is read (no ``torch.load``). Building it draws its initial weights from
    torch's generator, which is then put back as it was: loading a model leaves your
    random streams alone.

    Example::

        model = probgen.from_pretrained("results/vae-mnist")
        model = probgen.from_pretrained("user/vae-mnist")   # Hub (probgen[hub])

    Args:
        path: the folder; or a Hugging Face Hub repository id (``"user/repo"``, when no
            folder of that name exists here), downloaded with ``huggingface_hub``. A local
            folder never reaches the network.
        map_location: the device the model is moved to (the CPU by default).
        strict: refuse settings that lack an argument this probgen's constructor has
            (added since the folder was written), even one with a default; with
            ``strict=False`` such arguments take their defaults.
        revision: for a repository id: its branch, tag or commit.
        **hub_options: for a repository id: ``snapshot_download``'s options (``token``,
            ``cache_dir``, ``local_files_only``, ...).

    Raises:
        CheckpointError: one line saying what differs and what to do: no such folder, a
            folder of a newer probgen, a class this probgen lacks, a constructor argument
            added, removed or renamed, weights missing, extra or of another shape.
    """
    folder = pretrained.resolve(path, revision, **hub_options)
    config = pretrained.read_config(folder)
    how = (
        f"it was written by probgen {config.get('probgen_version', 'unknown')}: load it "
        f'with that version, or edit the "model" entry of its {pretrained.CONFIG_NAME} '
        f"to this probgen's class and arguments"
    )
    if strict:
        how += " (from_pretrained(..., strict=False) gives added arguments their defaults)"
    state = pyro.util.get_rng_state()
    try:
        model = build_from_config(
            config.get("model"), strict=strict, how=how, source=str(folder / pretrained.CONFIG_NAME)
        )
    finally:
        pyro.util.set_rng_state(state)
    dtype = pretrained.saved_dtype(config)
    if dtype is not None and any(
        t.is_floating_point() and t.dtype != dtype for t in model.state_dict().values()
    ):
        model.to(dtype)  # saved in float64 (say): it comes back in float64
    pretrained.load_weights(model, folder, config)
    if map_location is not None:
        model.to(map_location)
    return model.eval()


def _class_from_pretrained(cls: type, path: str | Path, **kwargs: Any) -> torch.nn.Module:
    """The model of this class a folder holds (see :func:`from_pretrained`)."""
    model = from_pretrained(path, **kwargs)
    if not isinstance(model, cls):
        raise CheckpointError(
            f"{path} holds a {type(model).__name__}, not a {cls.__name__}; "
            f"load it with probgen.from_pretrained({str(path)!r})."
        )
    return model


def rebuildable(cls: type) -> type:
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
            for name, p in sig.parameters.items():  # **kwargs flattened
                if p.kind is p.VAR_KEYWORD and name in recorded:
                    recorded.update(recorded.pop(name))
            object.__setattr__(self, _CONFIG_ATTR, (cls, recorded))
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    setattr(cls, _CONFIG_ATTR + "_recorded", True)
    for name, method in (
        ("save_pretrained", save_pretrained),
        ("push_to_hub", push_to_hub),
        ("from_pretrained", classmethod(_class_from_pretrained)),
    ):
        if name not in cls.__dict__:
            setattr(cls, name, method)
    # probgen's models name their pyro.module sites after their class: two models of
    # one class in one process would collide in the global param store, so the fit
    # loop trains them in a scope of the store of their own.
    cls.isolate_param_store = True
    return cls


def is_probgen_model(module: Any) -> bool:
    """Whether ``module`` is a model of a registered probgen class (its class records its
    constructor's arguments, and the fit loop trains it in a scope of Pyro's param store
    of its own)."""
    return module is not None and bool(getattr(type(module), "isolate_param_store", False))


class ModelRegistry(Registry):
    """A :class:`~probgen.registry.Registry` whose classes record their constructor
    arguments (see the module docstring)."""

    def _add(self, name, item):
        if inspect.isclass(item) and issubclass(item, torch.nn.Module):
            rebuildable(item)
        super()._add(name, item)


MODELS: ModelRegistry = ModelRegistry("model")
