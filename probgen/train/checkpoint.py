"""Checkpoint files: atomic writes and loads that fail with a clear message.

A checkpoint is a ``torch.save`` file holding a dict with ``format`` set to
:data:`FORMAT`. It contains only tensors, numbers, strings, lists and dicts,
so it loads with ``torch.load(..., weights_only=True)`` (no code runs when a
file is opened).

What the fit loop writes (besides ``format`` and ``version``): ``module`` (the step's
module's ``state_dict``, or ``None`` for a Pyro model whose parameters all live in
Pyro's param store), ``pyro_params`` (the unconstrained values of the Pyro parameters no
module holds, by param-store name) and ``pyro_constraints`` (their constraints, as
data), ``model`` (a registered probgen model's constructor settings), ``config``,
``history``, ``best_state``, ``phases`` (optimizers, schedules), ``rng``, ``data`` (the
training data's ``settings``) and ``step`` (the objective and particle count).
Everything loads on the CPU unless asked otherwise (``map_location``), so a checkpoint
written on a GPU opens on a machine without one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine
from torch.distributions import constraints as torch_constraints

from probgen import files
from probgen.errors import CheckpointError, CheckpointWriteError
from probgen.models.registry import build_from_config, model_config
from probgen.train.distributed import is_main_process

# what torch.load takes as map_location: a device, a callable or a {from: to} mapping
MapLocation = str | torch.device | Callable | dict[str, str] | None

FORMAT = "probgen.checkpoint"
VERSION = 1


# --------------------------------------------------------------------------- writing


def check_writable(path: str | Path) -> Path:
    """Refuse, before any training, a checkpoint path that cannot be written: a folder,
    a path under a file, a read-only folder. Creates the missing folders.

    Raises:
        CheckpointError: one line saying what is in the way.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"the checkpoint path {path} is a folder; give a file name "
            f"inside it (e.g. {path / 'checkpoint.pt'})."
        )
    for parent in [path.parent, *path.parent.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise CheckpointError(
                    f"cannot write the checkpoint {path}: {parent} is a file, "
                    f"not a folder. Choose another path."
                )
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(
            f"cannot create the folder {path.parent} for the checkpoint "
            f"({err.strerror or err}). Choose another path."
        ) from None
    if not os.access(path.parent, os.W_OK | os.X_OK) or (
        path.exists() and not os.access(path, os.W_OK) and not os.access(path.parent, os.W_OK)
    ):
        raise CheckpointError(
            f"cannot write the checkpoint {path}: the folder {path.parent} "
            f"is not writable. Choose another path."
        )
    return path


def _disk_full(err: BaseException, folder: Path) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # torch.save reports a failed write as a RuntimeError from its zip writer
    # ("[enforce fail at inline_container.cc] ... file write failed"): ask the disk.
    if isinstance(err, RuntimeError) and (
        "file write failed" in str(err) or "inline_container" in str(err)
    ):
        try:
            return shutil.disk_usage(folder).free < 64 * 2**20
        except OSError:
            return False
    return False


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically.

    The file is written under a temporary name in the same folder, flushed to
    disk, then renamed over ``path`` (:func:`probgen.files.replacing`): a kill at any
    moment leaves either the previous checkpoint or the new one, never a truncated file.
    Temporary files that an earlier write left behind (a ``SIGKILL`` during the write)
    are removed first.

    Raises:
        CheckpointWriteError: the file system refused the write (no space left, a quota,
            a read-only folder, an I/O error): a :class:`CheckpointError` that is also
            an ``OSError`` with the ``errno`` (``ENOSPC`` for a full disk, also when
            torch's writer reports it as a ``RuntimeError``) and the file name. The
            previous checkpoint, if any, is left as it was.
        CheckpointError: another failed write (the state cannot be pickled, ...).
    """
    path = Path(path)
    existed = path.exists()
    intact = "the previous checkpoint is intact" if existed else "no checkpoint was written"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointWriteError(
            f"cannot create the folder {path.parent} for the "
            f"checkpoint {path} ({err.strerror or err}).",
            err.errno,
            path.parent,
        ) from None
    payload = dict(state, format=FORMAT, version=VERSION)
    try:
        files.torch_save(payload, path)
    except (OSError, RuntimeError) as err:
        if _disk_full(err, path.parent):
            code = err.errno if isinstance(err, OSError) and err.errno else errno.ENOSPC
            raise CheckpointWriteError(
                f"no space left on the device while writing {path}; "
                f"{intact}. Free some space and resume with "
                f"resume=True (--resume).",
                code,
                path,
            ) from None
        why = (
            err.strerror
            if isinstance(err, OSError) and err.strerror
            else str(err).strip().splitlines()[0]
            if str(err).strip()
            else type(err).__name__
        )
        message = f"could not write the checkpoint {path} ({why}); {intact}."
        if isinstance(err, OSError) and err.errno:
            # the file system's refusal (read-only, permissions, I/O): an OSError too
            raise CheckpointWriteError(message, err.errno, path) from None
        raise CheckpointError(message) from None
    return path


# --------------------------------------------------------------------------- reading


def load_checkpoint(path: str | Path, map_location: MapLocation = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        map_location: where the tensors go (``torch.load``'s argument); the CPU by
            default, so a checkpoint written on a GPU opens anywhere.

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
            f"module.load_state_dict instead."
        )
    if state.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path} was written by a newer probgen (checkpoint version {state['version']} > "
            f"{VERSION}); upgrade probgen to read it."
        )
    return state


def _why_unreadable(path: Path, err: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in one sentence."""
    text = str(err)
    first = text.strip().splitlines()[0] if text.strip() else "no detail"
    if (
        "Weights only load failed" in text
        or "Unsupported global" in text
        or "unsupported global" in text.lower()
    ):
        culprit = ""
        for line in text.splitlines():
            if "GLOBAL" in line or "Unsupported global" in line:
                culprit = " (" + line.strip().rstrip(".") + ")"
                break
        return (
            f"{path} holds Python objects other than tensors, numbers, strings, lists and "
            f"dicts{culprit}, so it was not written by probgen's fit loop or save_model; "
            f"probgen does not run the code such a file names. If you trust it, open it "
            f"with torch.load(path, weights_only=False)."
        )
    if "CUDA" in text and ("deserialize" in text or "torch.cuda.is_available" in text):
        return (
            f"{path} holds CUDA tensors and this machine has no CUDA device; load it with "
            f"map_location='cpu' (the default)."
        )
    size = path.stat().st_size if path.exists() else 0
    truncated = isinstance(err, EOFError) or any(
        s in text
        for s in (
            "central directory",
            "failed finding",
            "unexpected EOF",
            "Ran out of input",
            "file read failed",
            "PytorchStreamReader",
        )
    )
    if truncated:
        return (
            f"{path} is truncated ({size} bytes; {type(err).__name__}: {first}): the write "
            f"that made it was cut short. Delete it, or point to an intact checkpoint; "
            f"training with resume=True starts afresh when none exists."
        )
    return (
        f"{path} is not a PyTorch checkpoint file ({type(err).__name__}: {first}). Point "
        f"to a file written by probgen.fit or save_model."
    )


def load_module_state(module: torch.nn.Module, state_dict: dict[str, Any], source="checkpoint"):
    """``module.load_state_dict`` with a clear message when the shapes or names differ."""
    if not isinstance(state_dict, dict):
        raise CheckpointError(
            f"the {source} holds no weights for a module (its 'module' entry "
            f"is {type(state_dict).__name__})."
        )
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as err:
        raise CheckpointError(
            f"the {source} does not fit this {type(module).__name__}: "
            f"{str(err).splitlines()[0]} ... Build the model with the settings it was "
            f"trained with (the checkpoint's 'config' entry records them), or load it with "
            f"the probgen version that wrote it."
        ) from None
    return module


def save_model(module: torch.nn.Module, path: str | Path, **extra: Any) -> Path:
    """Save a module's weights (and any extra JSON-like entries) as a probgen checkpoint;
    a registered probgen model's settings go with them, for :func:`load`."""
    path = Path(path)
    if not is_main_process():  # under torchrun, rank 0 alone writes files
        return path
    state = dict(extra, module=module.state_dict(), module_class=type(module).__qualname__)
    with contextlib.suppress(TypeError):
        state["model"] = model_config(module)
    return save_checkpoint(path, state)


def _param_store_run(path, state) -> str:
    names = sorted(state.get("pyro_params") or {})
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return (
        f"{path} is a run of a Pyro model whose parameters live in Pyro's param store "
        f"({len(names)} of them{': ' + shown if names else ''}) and holds no module weights; "
        f"restore it with probgen.load(path, model=model, guide=guide)."
    )


def load_model(
    module: torch.nn.Module, path: str | Path, map_location: MapLocation = "cpu"
) -> torch.nn.Module:
    """Load weights saved by :func:`save_model` or by the fit loop into ``module``
    (the last epoch's; :func:`load` picks the best ones and restores Pyro parameters)."""
    state = load_checkpoint(path, map_location=map_location)
    if "module" not in state:
        raise CheckpointError(
            f"{path} holds no model weights (no 'module' entry): it was not "
            f"written by probgen's fit or save_model, or by an older probgen."
        )
    if state["module"] is None:
        raise CheckpointError(_param_store_run(path, state))
    return load_module_state(module, state["module"], source=f"checkpoint {path}")


# --------------------------------------------------------------------------- constraints


def encode_constraint(constraint) -> dict[str, Any] | None:
    """A Pyro/torch constraint as checkpoint data, or ``None`` when it cannot be written
    as data (a constraint class probgen does not know how to rebuild)."""
    import pyro.distributions.constraints as pc

    for name in dir(pc):
        if not name.startswith("_") and getattr(pc, name) is constraint:
            return {"name": name}
    cls = type(constraint)
    owner = getattr(torch_constraints, cls.__name__, None) or getattr(pc, cls.__name__, None)
    if owner is not cls:
        return None
    args = {}
    for k, v in vars(constraint).items():
        if isinstance(v, torch_constraints.Constraint):
            v = encode_constraint(v)
            if v is None:
                return None
            args[k] = {"constraint": v}
        elif isinstance(v, (bool, int, float)) or torch.is_tensor(v):
            args[k] = v
        else:
            return None
    return {"class": cls.__name__, "args": args}


def decode_constraint(data: dict[str, Any] | None):
    """The constraint :func:`encode_constraint` wrote (``None`` for ``None``)."""
    import pyro.distributions.constraints as pc

    if data is None:
        return None
    if "name" in data:
        return getattr(pc, data["name"])
    cls = getattr(torch_constraints, data["class"], None) or getattr(pc, data["class"])
    args = {
        k: decode_constraint(v["constraint"]) if isinstance(v, dict) else v
        for k, v in data["args"].items()
    }
    return cls(**args)


def param_store_constraints(names) -> dict[str, dict[str, Any] | None]:
    """The encoded constraints of the named entries of Pyro's (current) param store."""
    table = pyro.get_param_store().get_state()["constraints"]
    return {n: encode_constraint(table[n]) if n in table else None for n in names}


# --------------------------------------------------------------------------- load


@dataclass
class RestoredRun:
    """A run of a user's Pyro model restored by :func:`load`.

    Attributes:
        model, guide: the callables given to :func:`load`.
        module: the module whose weights were loaded (``None`` when the run had none).
        params: the restored Pyro parameters, by param-store name, as their
            *constrained* values (what ``pyro.param(name)`` returns), detached.
        epoch: the epochs the run had finished when the checkpoint was written.
        history: the run's per-epoch history.
    """

    model: Any = None
    guide: Any = None
    module: torch.nn.Module | None = None
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def _pick_weights(path, state, weights):
    """(module state, Pyro params) of the weights asked for."""
    if "module" not in state and "pyro_params" not in state:
        raise CheckpointError(
            f"{path} holds no model weights (no 'module' entry): it was not "
            f"written by probgen's fit or save_model, or by an older probgen; "
            f"load it with the version that wrote it."
        )
    best = state.get("best_state")
    if weights is None:
        # what fit returned: the best weights when the run restored them, else the last
        restored = (state.get("config") or {}).get("restore_best", True)
        weights = "best" if restored is True else "last"
    if (
        weights == "best"
        and isinstance(best, dict)
        and best
        and ("module" in best or "pyro_params" in best)
    ):
        return best.get("module"), best.get("pyro_params") or {}
    if weights == "best" and isinstance(best, dict) and best and "pyro_params" not in best:
        return best, {}  # a checkpoint of the first edition of the loop
    return state.get("module"), state.get("pyro_params") or {}


def callable_modules(model, guide) -> dict[str, torch.nn.Module]:
    """The modules a model/guide pair is made of: the callables themselves when they are
    ``nn.Module``s (a ``PyroModule`` model, an AutoGuide) and the modules their bound
    methods belong to (a tutorial-style VAE's ``model``/``guide`` methods), by role."""
    out: dict[str, torch.nn.Module] = {}
    for key, fn in (("model", model), ("guide", guide)):
        if isinstance(fn, torch.nn.Module):
            out[key] = fn
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, torch.nn.Module):
            out[key + ".__self__"] = owner
    return out


def param_owners(
    modules: dict[str, torch.nn.Module], params: dict[str, torch.Tensor]
) -> dict[str, list[str]]:
    """``{store name: [role, attribute path]}`` for the Pyro parameters that are a
    module's own ``nn.Parameter`` (registered by ``pyro.module``, a ``PyroModule`` or an
    AutoGuide): :func:`load` puts their values back into the module itself, as Pyro's
    ``pyro.module(..., update_module_params=True)`` would."""
    where = {}
    for key, module in modules.items():
        for path, p in module.named_parameters():
            where.setdefault(id(p), (key, path, p))
    out = {}
    for name, t in params.items():
        hit = where.get(id(t))
        if hit is not None and hit[2] is t:
            out[name] = [hit[0], hit[1]]
    return out


def module_buffers(
    modules: dict[str, torch.nn.Module], skip: torch.nn.Module | None = None
) -> dict[str, dict[str, torch.Tensor]]:
    """The buffers of a model/guide pair's modules, by role and attribute path (fixed
    random permutations and masks of an AutoIAFNormal's flow, running statistics): they
    are no Pyro parameters, and a run reloads only with them."""
    out = {}
    for key, module in modules.items():
        if module is skip:
            continue
        bufs = {path: b.detach() for path, b in module.named_buffers()}
        if bufs:
            out[key] = bufs
    return out


def _get(module: torch.nn.Module, kind: str, path: str) -> torch.Tensor | None:
    try:
        return module.get_parameter(path) if kind == "param" else module.get_buffer(path)
    except AttributeError:
        return None


def _constraint_of(path, name, encoded, current):
    data = encoded.get(name)
    constraint = decode_constraint(data) if data is not None else current.get(name)
    if constraint is None:
        if name in encoded:
            raise CheckpointError(
                f"{path}: the constraint of Pyro parameter {name!r} was not recorded (a "
                f"constraint class probgen cannot write as data); call the model and guide "
                f"once so that the parameter exists, then load again."
            )
        constraint = torch_constraints.real  # a checkpoint of an older probgen
    return constraint


def _put(path, role, module, items, missing_ok: bool) -> list:
    """Copy ``items`` ((kind, store name, attribute path, value, constraint)) into
    ``module``; returns the store entries of the parameters, and the items it could not
    place (when ``missing_ok``)."""
    entries, left = [], []
    for kind, name, attr, value, constraint in items:
        target = _get(module, kind, attr)
        if target is None or target.shape != value.shape:
            if missing_ok and target is None:
                left.append((kind, name, attr, value, constraint))
                continue
            what = f"{role}.{attr}" + (
                f" (shape {tuple(target.shape)}, the run's {tuple(value.shape)})"
                if target is not None
                else ""
            )
            raise CheckpointError(
                f"{path}: the run's {what} does not fit this "
                f"{type(module).__name__}; give the model and guide the "
                f"run was trained with, built with the same settings."
            )
        with torch.no_grad():
            target.copy_(value)
        if kind == "param":
            entries.append((name, target, constraint))
    return entries, left


def _register(entries) -> None:
    if entries:
        pyro.get_param_store().set_state(
            {"params": {n: t for n, t, _ in entries}, "constraints": {n: c for n, _, c in entries}}
        )


def _restore_params(
    path,
    params: dict[str, torch.Tensor],
    encoded: dict[str, Any],
    owners: dict[str, list[str]],
    buffers: dict[str, dict[str, torch.Tensor]],
    modules: dict[str, torch.nn.Module],
) -> dict[str, torch.Tensor]:
    """Put the run's Pyro parameters back: a module's own parameters (and its buffers)
    into the module, with the param store's entry pointing at them as ``pyro.module``
    registers them; the others into Pyro's param store with their constraints. Returns
    the parameters' constrained values."""
    current = pyro.get_param_store().get_state()["constraints"]
    shown, loose = {}, []
    by_role: dict[str, list] = {}
    for name, value in params.items():
        constraint = _constraint_of(path, name, encoded, current)
        shown[name] = torch.distributions.transform_to(constraint)(value).detach()
        role, attr = owners.get(name, (None, None))
        if role is None or modules.get(role) is None:
            loose.append((name, value.detach().clone().requires_grad_(True), constraint))
        else:
            by_role.setdefault(role, []).append(("param", name, attr, value, constraint))
    for role, bufs in buffers.items():
        if modules.get(role) is not None:
            by_role.setdefault(role, []).extend(
                ("buffer", None, attr, value, None) for attr, value in bufs.items()
            )
    _register(loose)
    for role, items in by_role.items():
        module = modules[role]
        lazy = (
            hasattr(module, "_setup_prototype") and getattr(module, "prototype_trace", True) is None
        )
        entries, left = _put(path, role, module, items, missing_ok=lazy)
        _register(entries)
        if left:
            _when_set_up(path, module, role, left)
    return shown


def _when_set_up(path, module, role, items) -> None:
    """An AutoGuide builds its parameters on its first call (from the model's trace on
    that call's arguments): set it up then, before it computes, and load the values."""

    def load_on_first_call(mod, args, kwargs):
        handle.remove()
        if getattr(mod, "prototype_trace", None) is None:
            mod._setup_prototype(*args, **kwargs)
        if any(_get(mod, kind, attr) is None for kind, _, attr, _, _ in items) and callable(
            getattr(mod, "get_posterior", None)
        ):
            # a normalizing-flow guide (AutoIAFNormal) builds its transform here, in the
            # same order of random draws as its first call would
            with poutine.block():
                mod.get_posterior(*args, **kwargs)
        entries, _ = _put(path, role, mod, items, missing_ok=False)
        _register(entries)

    handle = module.register_forward_pre_hook(load_on_first_call, with_kwargs=True)


def load(
    path: str | Path,
    model: Callable | None = None,
    guide: Callable | None = None,
    *,
    module: torch.nn.Module | None = None,
    map_location: MapLocation = "cpu",
    weights: str | None = None,
) -> torch.nn.Module | RestoredRun:
    """A ready model from a checkpoint of the fit loop (or of :func:`save_model`), or a
    user's Pyro run restored.

    A probgen model: the checkpoint records the model's class and constructor settings
    (every model registered in :data:`probgen.models.MODELS`, flows included), so nothing
    needs repeating::

        model = probgen.load("results/vae/vae.pt")        # the model, in eval mode

    Your own Pyro model: give the callables that made the run. The Pyro parameters
    (``pyro.param`` sites, AutoGuides, ``PyroModule`` parameters) go back into Pyro's
    param store with their constraints; parameters that belong to a module of the model
    or guide (an AutoGuide's, a ``PyroModule``'s, a network registered with
    ``pyro.module``) go back into that module, so the model computes with them; and
    ``module`` (the step's module, when the run had one) gets its weights. An AutoGuide
    that has not run yet builds its parameters on its first call and gets the run's
    values then; as in Pyro, that first call must have the training data's arguments
    (``guide(x, y)``: the guide's prototype comes from the model's trace on them)::

        run = probgen.load("run.pt", model=model, guide=guide)
        guide(x, y)                   # an AutoGuide not yet called: once, as in training
        Predictive(model, guide=guide, num_samples=100)(x)   # as before saving
        run.params["scale"]                                  # constrained, as pyro.param

    Args:
        model: the run's Pyro model. A model that is an ``nn.Module`` of the
            checkpoint's module class gets the module weights.
        guide: the run's Pyro guide, as ``model``.
        module: the module to load the weights into (``SVIStep(..., module=m)``).
        map_location: where the tensors go; the CPU by default (a checkpoint written on a
            GPU loads on a machine without one). A rebuilt probgen model is moved there.
        weights: ``None`` (what ``fit`` returned: the best epoch's weights when the run
            restored them, else the last), ``"best"`` or ``"last"``.

    Returns:
        The rebuilt probgen model in eval mode when neither callables nor ``module`` are
        given; else a :class:`RestoredRun` (modules are left in their mode).

    Raises:
        CheckpointError: one line saying what does not fit (a run of a Pyro model loaded
            without its callables, a model class or constructor of another probgen
            version, missing entries).
    """
    if weights not in (None, "best", "last"):
        raise CheckpointError(f"weights must be None, 'best' or 'last', got {weights!r}.")
    state = load_checkpoint(path, map_location=map_location)
    module_state, pyro_params = _pick_weights(path, state, weights)
    source = f"checkpoint {path}"
    if model is None and guide is None and module is None:
        settings = state.get("model")
        if settings is None:
            if module_state is None:
                raise CheckpointError(_param_store_run(path, state))
            raise CheckpointError(
                f"{path} does not record the model's settings (it holds a "
                f"{state.get('module_class') or 'model'} that is not a registered probgen "
                f"model, or was built from objects rather than settings). Build the model "
                f"yourself and load its weights with probgen.load(path, module=model) (or "
                f"probgen.train.load_model(model, path))."
            )
        built = build_from_config(settings, source=str(path))
        load_module_state(built, module_state, source=source)
        if map_location is not None:
            built.to(map_location)
        return built.eval()
    target = module
    saved_class = state.get("module_class")
    if target is None and module_state is not None:
        for candidate in (
            model,
            guide,
            getattr(model, "__self__", None),
            getattr(guide, "__self__", None),
        ):
            if (
                isinstance(candidate, torch.nn.Module)
                and type(candidate).__qualname__ == saved_class
            ):
                target = candidate
                break
        if target is None:
            raise CheckpointError(
                f"{path} holds the weights of a {saved_class}, and neither "
                f"the model nor the guide is one: pass it as "
                f"probgen.load(path, model=..., guide=..., module=...)."
            )
    if target is not None:
        if module_state is None:
            raise CheckpointError(
                f"{path} holds no module weights for module="
                f"{type(target).__name__}: its run kept every parameter in "
                f"Pyro's param store; load it without module=."
            )
        load_module_state(target, module_state, source=source)
    params = _restore_params(
        path,
        pyro_params,
        state.get("pyro_constraints") or {},
        state.get("pyro_owners") or {},
        state.get("pyro_buffers") or {},
        callable_modules(model, guide),
    )
    return RestoredRun(
        model=model,
        guide=guide,
        module=target,
        params=params,
        epoch=state.get("epoch"),
        history=list(state.get("history") or []),
    )
