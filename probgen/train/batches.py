"""The batches a run reads: data loaders' items as batches on a device, a torchrun
process's share of each global batch, the whole-data checks made once before the first
step, and where a :class:`~probgen.data.TensorData` stays during a run."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from probgen.data.tensors import TensorData, same_device
from probgen.errors import DataError
from probgen.infer.batches import batch_len
from probgen.train.speed import data_bytes, place_on_device

__all__ = [
    "as_batch",
    "batches",
    "check_data_once",
    "conform_dtypes",
    "first_tensor",
    "place_data",
    "require_batches",
    "shard",
    "shuffles",
    "steps_per_epoch",
]


def _move(t, device):
    if device is None or not torch.is_tensor(t) or t.device == device:
        return t
    # non_blocking only helps (and is only safe to rely on) for pinned host memory
    pinned = t.device.type == "cpu" and device.type == "cuda" and t.is_pinned()
    return t.to(device, non_blocking=pinned)


def as_batch(item, device):
    """A batch from a data loader, its tensors on ``device`` (``None``: where they are).
    A tensor becomes a one-tensor tuple; tuples and dicts keep their form (a dict's
    entries are the model's keyword arguments)."""
    if torch.is_tensor(item):
        return (_move(item, device),)
    if isinstance(item, dict):
        return {k: _move(v, device) for k, v in item.items()}
    if isinstance(item, (tuple, list)):
        return tuple(_move(v, device) for v in item)
    return item  # another object: the step's batch_to_args reads it


def shard(batch, rank: int, world: int):
    """Process ``rank``'s slice of a global batch of ``world`` processes."""
    n = batch_len(batch)
    per = n // world

    def cut(t):
        return t[rank * per : (rank + 1) * per] if torch.is_tensor(t) and t.dim() else t

    if isinstance(batch, dict):
        return {k: cut(v) for k, v in batch.items()}
    return tuple(cut(t) for t in batch)


def first_tensor(batch) -> torch.Tensor | None:
    """The first tensor of a tuple or dict batch (``None`` for other batches)."""
    items = batch.values() if isinstance(batch, dict) else batch
    if not isinstance(items, (tuple, list)) and not isinstance(batch, dict):
        return None
    return next((t for t in items if torch.is_tensor(t)), None)


def shuffles(data: TensorData, batch_size: int, world: int) -> bool:
    """Whether an epoch of ``data`` has more than one batch to shuffle. One batch of all
    the data keeps its order: a permutation would change no gradient but the pairing of
    examples with a model's per-example parameters (Pyro's local latents under an
    AutoGuide, fitted on the whole data in a fixed order)."""
    return len(data) > batch_size * max(world, 1)


def steps_per_epoch(data, batch_size: int, world: int) -> tuple[int, bool]:
    """``(steps in an epoch, whether that is known)``: data without a length counts one."""
    if isinstance(data, TensorData):
        n = len(data) // world if world > 1 else len(data)
        return max(1, -(-n // batch_size)), True
    try:
        return max(1, len(data)), True
    except TypeError:
        return 1, False


def batches(
    data,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator,
    staged: torch.device | None,
    batch_device: torch.device | None,
    rank: int = 0,
    world: int = 1,
) -> Iterator:
    """An epoch's batches of ``data``: a TensorData sliced (shuffled by ``generator``; each
    batch copied to ``staged`` through pinned memory when the data stays elsewhere), any
    other iterable's items as batches on ``batch_device``. Under torchrun every process
    walks the global batch order and keeps its slice of each global batch (a staged
    global batch is copied whole: the transform draws for all of it, as in one process,
    so the processes' noise matches a one-process run)."""
    if isinstance(data, TensorData):
        shuffle = shuffle and shuffles(data, batch_size, world)
        if world > 1:
            for batch in data.batches(
                batch_size * world,
                shuffle=shuffle,
                generator=generator,
                drop_last=True,
                device=staged,
            ):
                yield shard(batch, rank, world)
        else:
            yield from data.batches(batch_size, shuffle=shuffle, generator=generator, device=staged)
    else:
        for item in data:
            batch = as_batch(item, batch_device)
            yield shard(batch, rank, world) if world > 1 else batch


def place_data(
    datasets: dict[str, object], target: torch.device | None, data_on_device
) -> tuple[dict[str, object], dict[str, torch.device], list[str]]:
    """Each TensorData of ``datasets`` on the batches' device ``target``, whole (the fast
    path, and the default for data that takes at most half of a GPU's free memory), or,
    as ``data_on_device`` decides, left in host memory with every batch copied through
    pinned memory (:meth:`TensorData.batches` with ``device``).

    Returns ``(the datasets as placed, {name: device} of those staged, one note per
    staged data set)``.
    """
    placed, staged, notes = dict(datasets), {}, []
    if target is None:
        return placed, staged, notes
    moving = {
        k: d
        for k, d in datasets.items()
        if isinstance(d, TensorData) and not same_device(d.device, target)
    }
    host = {k: d for k, d in moving.items() if d.device.type == "cpu"}
    whole = place_on_device({k: data_bytes(d) for k, d in host.items()}, target, data_on_device)
    for name, data in moving.items():
        if whole.get(name, True):
            placed[name] = data.to(target)
            continue
        staged[name] = target
        why = (
            ""
            if data_on_device is False
            else " (it takes more than half of the device's free memory)"
        )
        notes.append(
            f"the {name} data ({data_bytes(data) / 2**30:.2f} GiB) stays in host "
            f"memory{why}; each batch is copied to {target} through pinned memory"
        )
    return placed, staged, notes


def conform_dtypes(
    module: torch.nn.Module | None, datasets: dict[str, object], who: str
) -> tuple[dict[str, object], str | None]:
    """Data of another dtype than the module's: floats are converted, uint8 images are
    refused (their scale is not the loop's to guess). Data for a step without a module
    (or a module without floating-point parameters) is left as given, as under Pyro's SVI.

    Args:
        module: the step's module (or ``None``).
        datasets: ``{label: data}`` (``"training"``, ``"validation"``); other data than a
            TensorData is left as it is.
        who: the step, as messages name it.

    Returns:
        ``(the datasets, one line saying what was converted, or None)``.

    Raises:
        DataError: uint8 tensors.
    """
    want = (
        next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
        if module is not None
        else None
    )
    out, notes = dict(datasets), []
    if want is None:
        return out, None
    for label, data in datasets.items():
        if not isinstance(data, TensorData):
            continue
        names = data.names or [f"tensor {i}" for i in range(len(data.tensors))]
        for name, t in zip(names, data.tensors):
            if t.dtype == torch.uint8:
                raise DataError(
                    f"the {label} data's {name} are uint8 (levels 0-255), and {who} computes "
                    f"in {want}: convert them first, e.g. probgen.data.to_unit_interval(x) for "
                    f"grey levels in [0, 1], and build the TensorData from that."
                )
        other = sorted(
            {
                str(t.dtype).replace("torch.", "")
                for t in data.tensors
                if t.is_floating_point() and t.dtype != want
            }
        )
        if other:
            out[label] = data.to(dtype=want)
            notes.append(f"the {label} data from {'/'.join(other)}")
    if not notes:
        return out, None
    return out, (
        f"converted {' and '.join(notes)} to {str(want).replace('torch.', '')}, the "
        f"dtype of {type(module).__name__}'s parameters"
    )


def check_data_once(step, data) -> bool:
    """Check the whole of ``data`` once with the step's ``check_data``; True when that
    covers every batch the steps will read (the models then skip their per-batch checks).

    A TensorData without a per-batch transform is what the steps read. With a transform
    whose every draw passes the checks when one does (``one_draw_checks``: dynamic
    binarization, uniform dequantization), one draw of the transformed data is checked,
    made with a generator of its own (the loader's generator and the global random
    streams are left as they are). Other data (a transform without the flag, a
    DataLoader) are checked batch by batch by the models.
    """
    if not isinstance(data, TensorData):
        return False
    check = getattr(step, "check_data", None)
    if check is None:
        return False
    if data.transform is None:
        return bool(check(data.tensors))
    if not getattr(data.transform, "one_draw_checks", False):
        return False
    return bool(check(_one_draw(data)))


def _one_draw(data: TensorData) -> tuple:
    """The transformed tensors of ``data``, drawn with a fixed CPU generator of their own.
    A transform draws on the data's device, from the generator on the CPU and from the
    device's own stream elsewhere (:mod:`probgen.data.draws`): that stream is forked for
    the draw, so the run's random draws stay those it would make without this check."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    device = data.device
    if device.type == "cpu":
        return tuple(data.transform(data.tensors, generator))
    backend = getattr(torch, device.type)
    index = device.index if device.index is not None else backend.current_device()
    with torch.random.fork_rng(devices=[index], device_type=device.type):
        return tuple(data.transform(data.tensors, generator))


def require_batches(data, world: int, batch_size: int, label: str) -> None:
    """Refuse, before training, data that gives no batch: an empty TensorData, or one with
    fewer examples than one global batch of a torchrun job (whose global batches are whole).

    Raises:
        DataError: one line saying what to give instead.
    """
    if not isinstance(data, TensorData):
        return
    if len(data) == 0:
        raise DataError(
            f"the {label} data is empty."
            if label == "training"
            else f"the {label} data is empty; give data with at least one example, or val=None."
        )
    if label == "training" and world > 1 and len(data) < batch_size * world:
        raise DataError(
            f"the training data has {len(data)} examples, fewer than one global batch of "
            f"{batch_size * world} (batch_size {batch_size} x {world} processes); give a "
            f"smaller batch_size."
        )
