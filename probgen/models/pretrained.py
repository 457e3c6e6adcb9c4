"""Model folders without pickle: ``config.json`` and ``model.safetensors``.

A folder written by ``model.save_pretrained(DIR)`` holds two files:

- ``config.json``: the folder format and its version, the probgen and torch versions that
  wrote it, the model's constructor settings (what :func:`probgen.models.registry.model_config`
  records, nested registered models included), the training data's settings when given,
  and a description of the weights file (its SHA-256, the names of tied tensors, the
  floating-point dtype);
- ``model.safetensors``: the model's ``state_dict`` (parameters and persistent buffers,
  such as ActNorm's ``initialized`` flag and flows' fixed permutations), written with the
  ``safetensors`` package.

Reading one runs no code the files name: JSON and safetensors hold data only, and the
model is rebuilt by :func:`probgen.from_pretrained` from probgen's own registered classes.
Nothing here calls ``torch.load`` or ``pickle``. (Checkpoints for resuming a run keep their
own format: :mod:`probgen.train.checkpoint`.)

This module reads and writes the files; what a folder records about a model (its class
and settings) and how the model is rebuilt live in :mod:`probgen.models.registry`, which
attaches ``save_pretrained`` and ``from_pretrained`` to every registered class.

The Hugging Face Hub is optional (``pip install "probgen[hub]"``): ``huggingface_hub``
is imported only when a repository id is given, never for a local folder.
"""

from __future__ import annotations

import json
import os
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from probgen import files
from probgen.errors import CheckpointError, ConfigError

FORMAT = "probgen.pretrained"
VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

PathLike = str | os.PathLike


# --------------------------------------------------------------------------- writing


def _complete(t: torch.Tensor) -> bool:
    """Whether ``t`` covers its whole storage (not a view of part of a larger tensor)."""
    return t.numel() * t.element_size() == t.untyped_storage().nbytes()


def file_tensors(
    state: dict[str, Any], owner: str = "the model"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a ``state_dict`` as safetensors can write them, and the tied names.

    safetensors refuses tensors that share memory and tensors that are not contiguous.
    A name that is the very same view as an earlier one (tied weights) is written once
    and recorded as ``{name: written name}``, so that loading fills both; any other
    tensor whose memory is shared or laid out differently is written as its own
    contiguous copy (the values, not the layout, are what a folder keeps).
    ``safetensors.torch.save_model`` drops tied names too, but refuses views that share
    memory without one covering it all; this keeps both cases.

    Raises:
        ConfigError: an entry of the state dict is not a tensor (a module's
            ``get_extra_state``), which a weights file cannot hold.
    """
    kept: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    users: dict[tuple, int] = {}
    for name, t in state.items():
        if not torch.is_tensor(t):
            raise ConfigError(
                f"the state of {owner} holds {name!r}, a {type(t).__name__} and "
                f"not a tensor, which a weights file cannot hold."
            )
        t = t.detach()
        if t.numel() > 0:
            storage = (t.device, t.untyped_storage().data_ptr())
            view = storage + (t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
            if view in seen:
                tied[name] = seen[view]
                continue
            seen[view] = name
            users[storage] = users.get(storage, 0) + 1
        kept[name] = t
    for name, t in kept.items():
        if t.numel() == 0:
            continue
        shared = users[(t.device, t.untyped_storage().data_ptr())] > 1
        if shared or not _complete(t):
            kept[name] = t.clone(memory_format=torch.contiguous_format)
        elif not t.is_contiguous():
            kept[name] = t.contiguous()
    return kept, tied


def _dtype_name(state: dict[str, torch.Tensor]) -> str | None:
    """The floating dtype of a state's floating tensors when they all have one."""
    kinds = {
        str(t.dtype).replace("torch.", "")
        for t in state.values()
        if torch.is_tensor(t) and t.is_floating_point()
    }
    return kinds.pop() if len(kinds) == 1 else None


_sha256 = files.sha256


def _probgen_version() -> str:
    """The installed probgen's version (pyproject.toml's, as ``probgen.__version__``), read
    from the distribution's metadata: this module sits below the ``probgen`` package, which
    it does not import."""
    try:
        return metadata.version("probgen")
    except metadata.PackageNotFoundError:  # a source tree on the path, not installed
        return "unknown"


def _folder(path: PathLike) -> Path:
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(
            f"{folder} is a file; save_pretrained writes a folder (config.json "
            f"and model.safetensors): give a folder path."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(
            f"cannot create the folder {folder} ({err.strerror or err}); choose another path."
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CheckpointError(
            f"cannot write into {folder}: the folder is not writable; choose another path."
        )
    return folder


def write_folder(module: torch.nn.Module, path: PathLike, record: dict[str, Any]) -> Path:
    """Write ``config.json`` (``record`` plus the format, versions and weights' description)
    and ``model.safetensors`` (``module.state_dict()``) into the folder ``path``.

    Both files are first written under temporary names in the folder and then renamed
    into place (:func:`probgen.files.replacing`), the weights first: an interrupted save
    leaves the earlier files, or new weights whose SHA-256 the earlier ``config.json``
    does not record (which :func:`load_weights` refuses), never a truncated file. Other
    files in the folder are left alone. The module is left as it was (no move, no mode switch).

    Args:
        module: the model.
        path: the folder (created when missing).
        record: JSON-ready entries (``model``, ``data``, ...) for ``config.json``.

    Returns:
        The folder.

    Raises:
        ConfigError: ``path`` is a file, or the state holds a non-tensor entry.
        CheckpointError: the folder cannot be created or written (disk full, ...).
    """
    folder = _folder(path)
    state = module.state_dict()
    tensors, tied = file_tensors(state, owner=type(module).__name__)
    config = {
        "format": FORMAT,
        "format_version": VERSION,
        "probgen_version": _probgen_version(),
        "torch_version": torch.__version__.split("+")[0],
        **record,
    }
    try:
        # both written before either is renamed; the weights renamed first (the inner block)
        with (
            files.replacing(folder / CONFIG_NAME) as config_tmp,
            files.replacing(folder / WEIGHTS_NAME) as weights_tmp,
        ):
            safetensors.torch.save_file(tensors, str(weights_tmp), metadata={"format": "pt"})
            config["weights"] = {
                "file": WEIGHTS_NAME,
                "sha256": _sha256(weights_tmp),
                "tied": tied,
                "dtype": _dtype_name(state),
            }
            config_tmp.write_text(
                json.dumps(config, indent=2, sort_keys=False, allow_nan=True) + "\n",
                encoding="utf-8",
            )
    except (OSError, RuntimeError, safetensors.SafetensorError) as err:
        why = (
            getattr(err, "strerror", None)
            or (str(err).strip().splitlines() or [type(err).__name__])[0]
        )
        raise CheckpointError(
            f"could not write the model folder {folder} ({why}); the files "
            f"that were there are as they were."
        ) from None
    return folder


# --------------------------------------------------------------------------- reading


def read_config(path: PathLike) -> dict[str, Any]:
    """The ``config.json`` of a model folder, checked: its format, and a version this
    probgen reads.

    Raises:
        CheckpointError: one line: no such folder, no ``config.json`` (a folder of another
            kind, or a probgen checkpoint file), unreadable JSON, or a folder written by a
            newer probgen.
    """
    folder = Path(path).expanduser()
    if folder.is_file():
        raise CheckpointError(
            f"{folder} is a file, not a model folder; a checkpoint of the fit "
            f"loop loads with probgen.load({str(folder)!r})."
        )
    if not folder.is_dir():
        raise CheckpointError(f"no model folder at {folder}.")
    file = folder / CONFIG_NAME
    if not file.is_file():
        raise CheckpointError(
            f"{folder} has no {CONFIG_NAME}, so it is not a probgen model "
            f"folder; write one with model.save_pretrained({str(folder)!r})."
        )
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{file} is not readable JSON ({first}); write the folder again "
            f"with model.save_pretrained."
        ) from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(
            f"{file} is not the config of a probgen model folder (it has no "
            f'"format": {json.dumps(FORMAT)} entry).'
        )
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(
            f"{file} records no folder format version; write the folder again "
            f"with model.save_pretrained."
        )
    if version > VERSION:
        raise CheckpointError(
            f"{folder} was written by a newer probgen "
            f"({config.get('probgen_version', 'unknown')}, folder format "
            f"{version} > {VERSION}); upgrade probgen to read it."
        )
    return config


def saved_dtype(config: dict[str, Any]) -> torch.dtype | None:
    """The floating dtype a folder's weights were saved in (``None`` when mixed or not
    recorded)."""
    name = (config.get("weights") or {}).get("dtype")
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else None


def _names(names, most: int = 3) -> str:
    names = sorted(names)
    shown = ", ".join(map(repr, names[:most]))
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def read_weights(path: PathLike, config: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a folder's ``model.safetensors`` on the CPU, tied names filled in,
    after checking the file is the one ``config.json`` describes (its SHA-256).

    Raises:
        CheckpointError: one line: no weights file, a file other than the one the config
            was written with, or a file safetensors cannot read.
    """
    folder = Path(path).expanduser()
    config = read_config(folder) if config is None else config
    described = config.get("weights") or {}
    file = folder / str(described.get("file") or WEIGHTS_NAME)
    if file.name != Path(file.name).name or file.parent != folder:
        raise CheckpointError(
            f"{folder / CONFIG_NAME} names the weights file "
            f"{described.get('file')!r}, which is not a file of the folder."
        )
    if not file.is_file():
        raise CheckpointError(
            f"{folder} has a {CONFIG_NAME} but no {file.name}; copy the whole "
            f"folder, or write it again with model.save_pretrained."
        )
    want = described.get("sha256")
    if want is not None and _sha256(file) != want:
        raise CheckpointError(
            f"{file} is not the weights file {CONFIG_NAME} was written with "
            f"(its SHA-256 differs: an interrupted save, or files of two "
            f"saves mixed); write the folder again with model.save_pretrained."
        )
    try:
        tensors = safetensors.torch.load_file(str(file), device="cpu")
    except Exception as err:  # SafetensorError, OSError, ... : a file it cannot parse
        first = str(err).strip().splitlines()[0] if str(err).strip() else "no detail"
        raise CheckpointError(
            f"{file} is not a readable safetensors file ({type(err).__name__}:"
            f" {first}); write the folder again with model.save_pretrained."
        ) from None
    for name, source in (described.get("tied") or {}).items():
        if source not in tensors:
            raise CheckpointError(
                f"{folder / CONFIG_NAME} ties {name!r} to {source!r}, which "
                f"{file.name} does not hold; write the folder again."
            )
        tensors[name] = tensors[source]
    return tensors


def load_weights(
    module: torch.nn.Module, path: PathLike, config: dict[str, Any] | None = None
) -> torch.nn.Module:
    """Load a folder's weights into ``module`` (built with the settings the folder records),
    after checking that every name and shape fits.

    :func:`probgen.from_pretrained` builds the module from ``config.json`` and calls
    this; call it yourself for a model you built (a subclass of your own, say).

    Raises:
        CheckpointError: one line naming the weights the file lacks, the ones it has too
            many, or the first shapes that differ.
    """
    folder = Path(path).expanduser()
    tensors = read_weights(folder, config)
    own = module.state_dict()
    missing = set(own) - set(tensors)
    extra = set(tensors) - set(own)
    reshaped = [
        f"{n!r} is {tuple(tensors[n].shape)} in the file and {tuple(own[n].shape)} in the model"
        for n in sorted(set(own) & set(tensors))
        if torch.is_tensor(own[n]) and tuple(own[n].shape) != tuple(tensors[n].shape)
    ]
    if missing or extra or reshaped:
        parts = (
            ([f"it lacks {_names(missing)}"] if missing else [])
            + ([f"it has {_names(extra)}, which the model does not"] if extra else [])
            + (
                [
                    ", ".join(reshaped[:2])
                    + (f" and {len(reshaped) - 2} more differ" if len(reshaped) > 2 else "")
                ]
                if reshaped
                else []
            )
        )
        raise CheckpointError(
            f"{folder / WEIGHTS_NAME} does not fit the "
            f"{type(module).__name__} {CONFIG_NAME} describes: "
            f"{'; '.join(parts)}. The folder's files come from different "
            f"models or probgen versions; write it again with "
            f"model.save_pretrained, or load it with the probgen version that "
            f"wrote it."
        )
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"{folder / WEIGHTS_NAME} does not load into the "
            f"{type(module).__name__}: {str(err).strip().splitlines()[0]}"
        ) from None
    return module


# --------------------------------------------------------------------------- the Hub

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_repo_id(path: PathLike) -> bool:
    """Whether ``path`` reads as a Hub repository id (``"user/repo"``) rather than a local
    folder: a string, no folder of that name here, not absolute, not starting with ``.``,
    ``~`` or a separator, exactly one ``/``."""
    if not isinstance(path, str) or os.path.exists(os.path.expanduser(path)):
        return False
    return bool(_REPO_ID.match(path)) and ".." not in path


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise ConfigError(
            "the Hugging Face Hub needs the huggingface_hub package: pip install "
            '"probgen[hub]" (or pip install huggingface_hub).'
        ) from None
    return huggingface_hub


def resolve(path: PathLike, revision: str | None = None, **hub_options: Any) -> Path:
    """The local folder for ``path``: the folder itself, or, for a Hub repository id
    (:func:`is_repo_id`), its ``config.json`` and ``model.safetensors`` downloaded with
    ``huggingface_hub.snapshot_download`` (to its cache; other files of the repository,
    pickles included, are not downloaded). A local path never reaches the network.

    Args:
        path: a folder, or ``"user/repo"``.
        revision: the repository's branch, tag or commit.
        hub_options: passed to ``snapshot_download`` (``token``, ``cache_dir``,
            ``local_files_only``, ...).

    Raises:
        CheckpointError: no such folder, or the download failed (one line).
        ConfigError: a repository id without ``huggingface_hub`` installed.
    """
    if not is_repo_id(path):
        if revision is not None or hub_options:
            raise ConfigError(
                f"{str(path)!r} is a local path; revision and Hub options apply "
                f'to a Hub repository id ("user/repo") only.'
            )
        return Path(path).expanduser()
    hub = _hub()
    try:
        local = hub.snapshot_download(
            repo_id=path,
            revision=revision,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME],
            **hub_options,
        )
    except Exception as err:  # offline, no such repository, no access, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else "no detail"
        raise CheckpointError(
            f"no local folder {path!r}, and fetching it from the Hugging "
            f"Face Hub failed ({type(err).__name__}: {first})."
        ) from None
    return Path(local)


def check_repo_id(repo_id: Any) -> str:
    """``repo_id`` when it reads ``"user/repo"``.

    Raises:
        ConfigError: it does not; or ``huggingface_hub`` is not installed.
    """
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise ConfigError(f'repo_id must read "user/repo", got {repo_id!r}.')
    _hub()
    return repo_id


def upload(
    folder: PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
) -> Any:
    """Upload a model folder's two files to the Hub repository ``repo_id`` (created
    when missing) with ``huggingface_hub``; returns its ``CommitInfo``."""
    check_repo_id(repo_id)
    hub = _hub()
    api = hub.HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        allow_patterns=[CONFIG_NAME, WEIGHTS_NAME],
        revision=revision,
        commit_message=commit_message or "probgen model folder",
    )


__all__ = [
    "CONFIG_NAME",
    "FORMAT",
    "VERSION",
    "WEIGHTS_NAME",
    "check_repo_id",
    "file_tensors",
    "is_repo_id",
    "load_weights",
    "read_config",
    "read_weights",
    "resolve",
    "saved_dtype",
    "upload",
    "write_folder",
]
