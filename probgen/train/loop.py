"""The fit loop: one loop for every model probgen trains.

``fit(step, train, val, config)`` runs epochs of mini-batch gradient steps. A step is
a list of phases (:mod:`probgen.train.steps`): one for a VAE or a flow, several for an
adversarial game. The loop reads top to bottom in named parts, each a method of
:class:`Run`:

1. ``set_up``      the settings decided ("auto"), device (and torchrun's process group),
                   the data's dtype and device (whole, or batches through pinned
                   memory), seeds, the step's phases, the networks that the speed
                   settings concern (:mod:`probgen.train.speed`);
2. ``resume``      a checkpoint's weights, optimizers, schedules, RNG states, history;
3. ``train_epoch`` batches through every phase (``run_phase``: loss, backward,
                   gradient averaging over processes, clipping, optimizer, schedule);
4. ``validate``    the validation loss, reduced over processes;
5. callbacks       figures added to the epoch's entry (``on_validation_end``);
6. ``monitor``     early stopping and the best weights, on any figure;
7. ``checkpoint``  an atomic file after every epoch (rank 0);
8. ``finish``      the best weights restored (when asked), the module back on the device
                   and in the mode it came in.

What varies between runs is a step definition or a callback, never a second loop.

Pyro's meaning by default: a model/guide pair trained with the defaults gets what a loop
of ``pyro.infer.SVI.step`` calls gives it (the same gradients, no early stopping or best
weights without validation data, Pyro's validation and the global generators left as
the user set them); see :class:`~probgen.train.FitConfig`. (probgen's own registered
models train with Pyro's validation off unless ``validate=True``: their data is checked
whole before the first step.)
"""

from __future__ import annotations

import copy
import math
import random
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import pyro
import torch
from torch import nn
from tqdm.auto import tqdm

from probgen.data.tensors import TensorData, same_device
from probgen.errors import CheckpointError, ConfigError, DataError, TrainingDivergedError
from probgen.infer.batches import batch_len
from probgen.infer.context import running_steps
from probgen.infer.phases import OPTIMIZERS, Phase, traced_params
from probgen.infer.steps import Step, as_step
from probgen.train import distributed as ddp
from probgen.train.callbacks import Callback, as_callback
from probgen.train.checkpoint import (
    callable_modules,
    check_writable,
    load_checkpoint,
    load_module_state,
    module_buffers,
    param_owners,
    param_store_constraints,
    save_checkpoint,
)
from probgen.train.config import NOT_RUN_DEFINING, FitConfig, FitResult
from probgen.train.schedules import SCHEDULES
from probgen.train.speed import (
    PRECISIONS,
    NetworkSpeed,
    data_bytes,
    find_networks,
    matmul_precision,
    place_on_device,
)


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a CUDA request without CUDA is an error."""
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if isinstance(device, str) and device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} was asked for, but this machine has no CUDA "
                              f"device; use device='cpu' or 'auto'.")
        return torch.device(device)
    raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}.")


def set_seed(seed: int) -> None:
    """Seed Python's, numpy's and torch's global random generators (for scripts; the
    fit loop calls it only when its ``seed`` setting is not ``None``)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- RNG states

def _rng_state(loader_gen: torch.Generator) -> Dict[str, Any]:
    keys, pos, has_gauss, gauss = np.random.get_state()[1:]
    state = {"torch": torch.get_rng_state(), "loader": loader_gen.get_state(),
             "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: Dict[str, Any], loader_gen: torch.Generator) -> Optional[str]:
    """Restore the generators; a note (one line) when the checkpoint's CUDA states cannot
    be restored here, else ``None``. The states are read on the CPU, wherever the
    checkpoint was mapped."""
    torch.set_rng_state(state["torch"].cpu())
    loader_gen.set_state(state["loader"].cpu())
    random.setstate(_as_tuple(state["python"]))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].cpu().numpy().astype(np.uint32), n["pos"],
                             n["has_gauss"], n["gauss"]))
    cuda = state.get("cuda")
    if not cuda:
        return None
    if not torch.cuda.is_available():
        return ("the checkpoint holds the random-generator states of CUDA devices, and this "
                "machine has none: the run goes on without them, so its random draws differ "
                "from an uninterrupted run on the GPU")
    count = torch.cuda.device_count()
    for i, s in enumerate(cuda[:count]):
        torch.cuda.set_rng_state(s.cpu(), i)
    if len(cuda) > count:
        return (f"the checkpoint holds the random-generator states of {len(cuda)} CUDA "
                f"devices and this machine has {count}: the first {count} were restored")
    return None


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# --------------------------------------------------------------------------- data

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
    return item     # another object: the step's batch_to_args reads it


def _shard(batch, rank: int, world: int):
    n = batch_len(batch)
    per = n // world

    def cut(t):
        return t[rank * per:(rank + 1) * per] if torch.is_tensor(t) and t.dim() else t
    if isinstance(batch, dict):
        return {k: cut(v) for k, v in batch.items()}
    return tuple(cut(t) for t in batch)


def _first_tensor(batch) -> Optional[torch.Tensor]:
    items = batch.values() if isinstance(batch, dict) else batch
    if not isinstance(items, (tuple, list)) and not isinstance(batch, dict):
        return None
    return next((t for t in items if torch.is_tensor(t)), None)


def _reduce_device(device) -> torch.device:
    """Where a cross-process sum can run: the given device; under NCCL (which takes CUDA
    tensors only) this process's GPU; else the CPU."""
    if device is not None:
        return torch.device(device)
    if ddp.is_distributed() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@torch.no_grad()
def evaluate(step, data, batch_size: int = 1000, device=None) -> Optional[float]:
    """Mean per-example ``step.eval_loss`` over ``data`` (no gradients, eval mode).

    ``step`` is what :func:`fit` takes (a probgen model, an :class:`SVIStep`, a
    :class:`LossStep`, ...). It runs as the fit loop's validation runs it: a probgen
    model in a scope of Pyro's param store of its own (the user's store is left as it
    was), in the steps' context of :mod:`probgen.train.context`, with a
    :class:`TensorData` checked whole once (so the model skips its per-batch checks).
    ``data`` is a :class:`TensorData` or any iterable of batches. Under torchrun each
    process scores its share and the mean is over all of them (summed on ``device``, the
    module's by default: NCCL takes CUDA tensors only). The losses are summed where they
    are and read once, at the end (one host sync per pass on a GPU).

    Args:
        device: where the batches go and the sums are reduced; default the step's
            module's device (a step without a module: batches stay where they are). A
            TensorData elsewhere (in host memory for a model on a GPU) stays where it is,
            each batch copied through pinned memory.

    Raises:
        DataError: the data gave no batch, or failed the model's data check.
    """
    step = as_step(step, FitConfig())
    batch_device = torch.device(device) if device is not None else _module_device(step.module)
    with ExitStack() as stack:
        if step.isolate_param_store:
            stack.enter_context(pyro.get_param_store().scope())
        checked = check_data_once(step, data)
        stack.enter_context(running_steps(data_checked=checked, module=step.declared_module))
        return _evaluate(step, data, batch_size, batch_device, _reduce_device(batch_device))


def _evaluate(step, data, batch_size, batch_device, reduce_device) -> Optional[float]:
    module = step.module
    was_training = module.training if module is not None else None
    if module is not None:
        module.eval()
    # tensors summed where they are (no read per batch), numbers on the host
    total: Any = 0.0
    n = 0
    rank, world = ddp.rank(), ddp.world_size()
    try:
        if isinstance(data, TensorData):
            if world > 1:
                data = data.subset(slice(rank, None, world))
            # data elsewhere than the batches' device (host data for a GPU): each batch
            # copied through pinned memory, the data set left where it is
            staged = batch_device if batch_device is not None and \
                not same_device(data.device, batch_device) else None
            batches = data.batches(batch_size, device=staged)
        else:
            batches = (_shard(as_batch(b, batch_device), rank, world) if world > 1
                       else as_batch(b, batch_device) for b in data)
        seen = False
        for batch in batches:
            seen = True
            value = step.eval_loss(batch)
            if value is None:
                return None
            b = batch_len(batch)
            if torch.is_tensor(value):
                total = total + value.detach() * b
            else:   # a number already on the host (a Pyro ELBO's .loss): no read
                total = total + float(value) * b
            n += b
        if not seen and world == 1:
            raise DataError("the validation data gave no batch (an empty DataLoader or data "
                            "set?); give data with at least one example, or val=None.")
    finally:
        if module is not None:
            module.train(was_training)
    # one read of the sum (a host sync on a GPU) per pass, not one per batch
    total, n = ddp.all_reduce_sum([float(total), n], reduce_device)
    if n == 0:
        raise DataError("the validation data gave no batch on any process; give data with at "
                        "least one example, or val=None.")
    return total / n


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


def _module_device(module) -> Optional[torch.device]:
    if module is None:
        return None
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return None


def is_probgen_model(module) -> bool:
    """A registered probgen model (its class records its constructor's arguments)."""
    return module is not None and bool(getattr(type(module), "isolate_param_store", False))


def _overrides(cb, hook: str) -> bool:
    """Whether ``cb`` does something in ``hook`` (the loop calls per-batch hooks only on
    callbacks that define them: a no-op per batch and callback is not free)."""
    fn = getattr(cb, hook, None)
    if not callable(fn):
        return False
    return getattr(type(cb), hook, None) is not getattr(Callback, hook, None)


# --------------------------------------------------------------------------- steps

class PhaseState:
    """A phase's parameters (in the order they joined), optimizer, schedule and counter."""

    def __init__(self, phase: Phase, config: FitConfig, module: Optional[nn.Module]):
        self.phase = phase
        self.params: List[torch.Tensor] = []
        self.names: List[str] = []
        self._ids = set()
        self.optimizer = None
        self.scheduler = None
        self.steps = 0
        self.config = config
        names = {id(p): f"module:{n}" for n, p in module.named_parameters()} if module else {}
        declared = phase.declared_params()
        if declared is not None:
            for i, p in enumerate(declared):
                self.add(names.get(id(p), f"param:{i}"), p)

    def add(self, name: str, tensor: torch.Tensor) -> bool:
        if id(tensor) in self._ids:
            return False
        self._ids.add(id(tensor))
        self.params.append(tensor)
        self.names.append(name)
        if self.optimizer is not None:
            if self.phase.per_parameter:
                # Pyro's per-parameter settings: a group of its own
                self.optimizer.add_param_group(dict(self._base(),
                                                    **self.phase.optim_args_for(name),
                                                    params=[tensor]))
            else:
                # One parameter group per phase, grown as Pyro creates parameters (so the
                # schedule covers them all); Adam's state is per parameter either way.
                self.optimizer.param_groups[0]["params"].append(tensor)
        return True

    def _base(self) -> Dict[str, Any]:
        c, ph = self.config, self.phase
        lr = ph.lr if ph.lr is not None else c.lr
        # no lr at all (Pyro's per-parameter settings, fit's lr unused): the optimizer's own
        kwargs = dict(lr=lr) if lr is not None else {}
        if c.weight_decay:
            kwargs["weight_decay"] = c.weight_decay
        return kwargs

    def build_optimizer(self, total_steps: int, steps_per_epoch: int) -> None:
        c, ph = self.config, self.phase
        name = ph.optimizer or c.optimizer
        cls = OPTIMIZERS.get(name) if isinstance(name, str) else name
        base = self._base()
        if ph.per_parameter:
            groups = [dict(base, **ph.optim_args_for(n), params=[p])
                      for n, p in zip(self.names, self.params)]
            self.optimizer = cls(groups, **base)
        else:
            self.optimizer = cls(list(self.params), **dict(base, **ph.optim_kwargs))
        if c.lr_schedule is not None:
            self.scheduler = SCHEDULES.get(c.lr_schedule)(
                self.optimizer, max(total_steps * ph.repeats, 1), steps_per_epoch * ph.repeats,
                c.warmup_epochs)

    def lr(self) -> Optional[float]:
        return self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else None


class Run:
    """One call of :func:`fit`: the loop's state and its named parts."""

    def __init__(self, step, train, val, config: FitConfig, callbacks: Sequence = (),
                 explicit: Iterable[str] = (), batch_to_args=None):
        self.config = config
        self.explicit = set(explicit)
        self.batch_to_args = batch_to_args
        self.callbacks = [as_callback(c) for c in callbacks]
        self.train_data, self.val_data = train, val
        self.step_obj = step
        settings = getattr(train, "settings", None)
        self.result = FitResult(config=config, monitor=config.monitor,
                                data_settings=copy.deepcopy(settings) if isinstance(settings, dict)
                                else None)
        self.best_state = None
        self.bad_epochs = 0
        self.start_epoch = 0
        self.epoch = 0
        self.finished = False
        self.monitored = config.monitor
        self.module = None
        self.speed: Optional[NetworkSpeed] = None
        self.staged: Dict[str, Optional[torch.device]] = {"train_data": None, "val_data": None}
        self.home = None
        self.was_training = None
        self.ckpt_path = Path(config.checkpoint) if config.checkpoint else None

    # ------------------------------------------------------------------ 1. set-up
    def set_up(self) -> None:
        self.config = c = self.config.resolved(has_val=self.val_data is not None)
        ready_made = isinstance(self.step_obj, Step)
        if ready_made and self.batch_to_args is not None:
            raise ConfigError("fit(batch_to_args=...) adapts the batches of a step fit builds; "
                              "give a ready-made step its own: SVIStep(model, guide, "
                              "batch_to_args=fn) or LossStep(net, loss_fn, batch_to_args=fn).")
        self.step = as_step(self.step_obj, c, self.batch_to_args)
        if ready_made:
            # Settings the step does not read are refused when set, and not recorded.
            ignored = self.step.ignored_settings()
            refused = sorted(self.explicit & ignored)
            if refused:
                raise ConfigError(
                    f"fit: {', '.join(refused)} {'is' if len(refused) == 1 else 'are'} set, but "
                    f"the step given ({type(self.step).__name__} of {self.step.describe()}) "
                    f"does not read {'it' if len(refused) == 1 else 'them'}: it brings its own "
                    f"(SVIStep(model, guide, loss=..., num_particles=..., optim=...)). Set "
                    f"{'it' if len(refused) == 1 else 'them'} on the step, or pass the model "
                    f"itself to fit.")
            c = self.config = replace(c, **{k: None for k in ignored})
        self.result.config = c
        self.result.monitor = c.monitor
        if self.ckpt_path is not None:
            check_writable(self.ckpt_path)
        self.module = self.step.module
        self._set_device()
        self.world, self.rank = ddp.world_size(), ddp.rank()
        self.is_main = self.rank == 0
        if self.module is not None:
            self.was_training = self.module.training
            self.home = _module_device(self.module)
            if self.home is not None and self.home != self.device:
                self.module.to(self.device)
                if c.verbose and self.is_main:
                    tqdm.write(f"fit: moved {type(self.module).__name__} from {self.home} to "
                               f"{self.device} (it goes back when fit returns)")
        if isinstance(self.train_data, TensorData):
            if len(self.train_data) == 0:
                raise DataError("the training data is empty.")
            if self.world > 1 and len(self.train_data) < c.batch_size * self.world:
                # a torchrun job's global batches are whole (drop_last): none would be left
                raise DataError(
                    f"the training data has {len(self.train_data)} examples, fewer than one "
                    f"global batch of {c.batch_size * self.world} (batch_size {c.batch_size} "
                    f"x {self.world} processes); give a smaller batch_size.")
        elif not isinstance(self.train_data, Iterable):
            raise ConfigError(f"train must be a TensorData or an iterable of batches (e.g. a "
                              f"torch DataLoader), got {type(self.train_data).__name__}.")
        if isinstance(self.val_data, TensorData) and len(self.val_data) == 0:
            raise DataError("the validation data is empty; give data with at least one "
                            "example, or val=None.")
        self._conform_dtypes()
        self._place_data()
        # Whole-data checks once, here, instead of in every step (context.py).
        self.train_checked = check_data_once(self.step, self.train_data)
        self.val_checked = check_data_once(self.step, self.val_data)
        self.declared = getattr(self.step, "declared_module", None)
        if c.seed is not None:
            # Each process its own stream of noise; all share the batch order.
            set_seed(c.seed + self.rank)
            loader_seed = c.seed
        elif isinstance(self.train_data, TensorData) and (
                self._shuffles(self.train_data) or self.train_data.transform is not None):
            # Draw from the global generator, never re-seed it: a user who seeded torch
            # before fit(seed=None) gets the same run twice. (A DataLoader or a list
            # orders itself, and one batch of all the data is not shuffled: nothing is
            # drawn then, so the run's random draws are those of a loop of SVI.step.)
            loader_seed = int(torch.randint(0, 2**62, (1,)).item())
            loader_seed = ddp.broadcast_object(loader_seed)
        else:
            loader_seed = 0
        self.loader_gen = torch.Generator(device="cpu")
        self.loader_gen.manual_seed(loader_seed)
        self.phases = [PhaseState(p, c, self.module) for p in self.step.phases]
        for st in self.phases:
            if not st.phase.discover and not st.params:
                raise ConfigError(f"phase {st.phase.name!r} of {self.step.describe()} has no "
                                  f"trainable parameters.")
            if st.phase.per_parameter and c.lr_schedule is not None:
                raise ConfigError(f"phase {st.phase.name!r}: per-parameter optimizer settings "
                                  f"and lr_schedule={c.lr_schedule!r} cannot go together; give "
                                  f"the optimizer one dict of settings.")
        self.steps_per_epoch, known = self._steps_per_epoch()
        self.max_steps = c.num_steps
        if c.num_steps is not None:
            epochs = -(-c.num_steps // self.steps_per_epoch) if known else None
            self.config = c = replace(c, epochs=epochs)
            self.result.config = c
        # a Pyro user counting steps in epochs of one batch: about 20 lines, not thousands
        self.print_every = max(1, (c.epochs or 0) // 20) if c.num_steps is not None else 1
        ddp.broadcast_tensors(self._all_params())
        self.speed = self._speed_plan()

    def _place_data(self) -> None:
        """Each TensorData on the batches' device, whole (the fast path, and the default
        for data that takes at most half of a GPU's free memory), or, as
        ``data_on_device`` decides, left in host memory with every batch copied through
        pinned memory (:meth:`TensorData.batches` with ``device``)."""
        self.staged: Dict[str, Optional[torch.device]] = {"train_data": None, "val_data": None}
        target = self.batch_device
        if target is None:
            return
        moving = {}
        for which in ("train_data", "val_data"):
            data = getattr(self, which)
            if isinstance(data, TensorData) and not same_device(data.device, target):
                moving[which] = data
        host = {k: d for k, d in moving.items() if d.device.type == "cpu"}
        whole = place_on_device({k: data_bytes(d) for k, d in host.items()}, target,
                                self.config.data_on_device)
        for which, data in moving.items():
            if whole.get(which, True):
                setattr(self, which, data.to(target))
            else:
                self.staged[which] = target
                if self.config.verbose and self.is_main:
                    label = "training" if which == "train_data" else "validation"
                    why = "" if self.config.data_on_device is False else \
                        " (it takes more than half of the device's free memory)"
                    tqdm.write(f"fit: the {label} data ({data_bytes(data) / 2**30:.2f} GiB) "
                               f"stays in host memory{why}; each batch is copied to {target} "
                               f"through pinned memory")

    def _speed_plan(self) -> Optional[NetworkSpeed]:
        """The networks that ``precision`` and ``compile`` concern (checked here, before
        any training), or ``None`` when neither is asked for."""
        c = self.config
        if c.precision is None and not c.compile:
            return None
        asked = " and ".join(x for x in (f"precision={c.precision!r}" if c.precision else "",
                                         "compile" if c.compile else "") if x)
        roots = [self.module] if self.module is not None else list(callable_modules(
            getattr(self.step, "model", None), getattr(self.step, "guide", None)).values())
        networks = find_networks(roots)
        if not networks:
            raise ConfigError(
                f"{asked} concerns the networks of the model (plain nn.Modules with trainable "
                f"parameters: encoders, decoders, coupling networks), and "
                f"{self.step.describe()} has none that fit holds; give the step a module "
                f"holding them (SVIStep(model, guide, module=net)), or leave {asked} unset.")
        low = PRECISIONS.get(c.precision) if c.precision is not None else None
        dtypes = sorted({str(p.dtype).replace("torch.", "") for n in networks
                         for p in n.parameters() if p.is_floating_point()})
        if low is not None:
            if dtypes != ["float32"]:
                raise ConfigError(f"precision={c.precision!r} runs float32 networks in "
                                  f"bfloat16, and {self.step.describe()}'s networks hold "
                                  f"{'/'.join(dtypes)} parameters; give float32 ones or leave "
                                  f"precision unset.")
            # emulated bfloat16 (GPUs before Ampere) runs, but slower than float32
            if self.device.type == "cuda" and \
                    not torch.cuda.is_bf16_supported(including_emulation=False):
                raise ConfigError(f"precision={c.precision!r}: {self.device} "
                                  f"({torch.cuda.get_device_name(self.device)}) has no native "
                                  f"bfloat16 support; leave precision unset on this GPU.")
        options = None
        if c.compile:
            options = dict(c.compile) if isinstance(c.compile, dict) else {}
        return NetworkSpeed(networks, self.device.type, autocast=low, compile=options,
                            dtype=torch.float32)

    def _set_device(self) -> None:
        """The run's device, and where batches go (``None``: where they are).

        A bare model/guide pair (no module) under ``device="auto"`` trains where its data
        is, as Pyro's ``SVI`` moves nothing: the user's model may hold CPU tensors.
        """
        c = self.config
        if self.module is None and c.device == "auto" and ddp.env_world_size() <= 1:
            data_device = self.train_data.device if isinstance(self.train_data, TensorData) \
                else None
            self.batch_device = data_device
            self.device = data_device or torch.device("cpu")
            self.device_from_data = data_device is None
        else:
            self.device = ddp.setup(resolve_device(c.device))
            self.batch_device = self.device
            self.device_from_data = False

    def _conform_dtypes(self) -> None:
        """Data of another dtype than the module's: floats are converted (said once),
        uint8 images are refused (their scale is not the loop's to guess). A step without
        a module gets its data as given, as under Pyro's SVI."""
        if self.module is None:
            return
        want = next((p.dtype for p in self.module.parameters() if p.is_floating_point()), None)
        if want is None:
            return
        notes = []
        for which, label in (("train_data", "training"), ("val_data", "validation")):
            data = getattr(self, which)
            if not isinstance(data, TensorData):
                continue
            names = data.names or [f"tensor {i}" for i in range(len(data.tensors))]
            for name, t in zip(names, data.tensors):
                if t.dtype == torch.uint8:
                    raise DataError(
                        f"the {label} data's {name} are uint8 (levels 0-255), and "
                        f"{self.step.describe()} computes in {want}: convert them first, e.g. "
                        f"probgen.data.to_unit_interval(x) for grey levels in [0, 1], and "
                        f"build the TensorData from that.")
            other = sorted({str(t.dtype).replace("torch.", "") for t in data.tensors
                            if t.is_floating_point() and t.dtype != want})
            if other:
                setattr(self, which, data.to(dtype=want))
                notes.append(f"the {label} data from {'/'.join(other)}")
        if notes and self.config.verbose and self.is_main:
            tqdm.write(f"fit: converted {' and '.join(notes)} to "
                       f"{str(want).replace('torch.', '')}, the dtype of "
                       f"{type(self.module).__name__}'s parameters")

    def _steps_per_epoch(self):
        data = self.train_data
        if isinstance(data, TensorData):
            n = len(data) // self.world if self.world > 1 else len(data)
            return max(1, -(-n // self.config.batch_size)), True
        try:
            return max(1, len(data)), True
        except TypeError:
            return 1, False

    def _all_params(self) -> List[torch.Tensor]:
        seen, out = set(), []
        for st in self.phases:
            for p in st.params:
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def _pyro_params(self) -> Dict[str, torch.Tensor]:
        """Parameters found through Pyro that no module holds, by param-store name."""
        out = {}
        for st in self.phases:
            for name, p in zip(st.names, st.params):
                if name.startswith("pyro:"):
                    out[name[5:]] = p
        return out

    def _shuffles(self, data: TensorData) -> bool:
        """Whether an epoch of ``data`` has more than one batch to shuffle. One batch of
        all the data keeps its order: a permutation would change no gradient but the
        pairing of examples with a model's per-example parameters (Pyro's local latents
        under an AutoGuide, fitted on the whole data in a fixed order)."""
        return len(data) > self.config.batch_size * max(self.world, 1)

    def _batches(self, data, shuffle: bool):
        if isinstance(data, TensorData):
            shuffle = shuffle and self._shuffles(data)
            device = self.staged.get("train_data" if data is self.train_data else "val_data")
            if self.world > 1:
                # the global batch order, this process's slice of every global batch (a
                # staged global batch is copied whole: the transform draws for all of it,
                # as in one process, so the processes' noise matches a one-process run)
                for batch in data.batches(self.config.batch_size * self.world, shuffle=shuffle,
                                          generator=self.loader_gen, drop_last=True,
                                          device=device):
                    yield _shard(batch, self.rank, self.world)
            else:
                yield from data.batches(self.config.batch_size, shuffle=shuffle,
                                        generator=self.loader_gen, device=device)
        else:
            for item in data:
                batch = as_batch(item, self.batch_device)
                yield _shard(batch, self.rank, self.world) if self.world > 1 else batch

    def _discover_all(self) -> None:
        """Run each discovering phase once on a first batch, without a gradient step, so
        that parameters Pyro creates lazily (AutoGuides) exist before a resume loads them
        or before rank 0's values are broadcast."""
        if not any(st.phase.discover for st in self.phases):
            return
        batch = next(iter(self._batches(self.train_data, shuffle=False)), None)
        if batch is None:
            raise DataError("the training data gave no batch (an empty DataLoader?).")
        ctx: Dict[str, Any] = {}
        for st in self.phases:
            if st.phase.discover:
                _, found = traced_params(lambda: st.phase.loss(batch, ctx))
                self._join(st, found)

    def _join(self, st: PhaseState, found: Dict[str, torch.Tensor]) -> None:
        new = [t for name, t in found.items() if st.add(f"pyro:{name}", t)]
        if new:
            ddp.broadcast_tensors(new)

    # ------------------------------------------------------------------ 2. resume
    def resume(self) -> None:
        c = self.config
        if not (c.resume and self.ckpt_path is not None and self.ckpt_path.exists()):
            if self.world > 1:
                self._discover_all()
            return
        # On the CPU first (the RNG states must be CPU tensors; a checkpoint written on a
        # GPU opens anywhere); weights and optimizer states are copied to their device.
        state = load_checkpoint(self.ckpt_path, map_location="cpu")
        self._check_same_run(state)
        self._discover_all()
        if self.module is not None and state.get("module") is not None:
            load_module_state(self.module, state["module"], source=f"checkpoint {self.ckpt_path}")
        store_params = self._pyro_params()
        with torch.no_grad():
            for name, value in (state.get("pyro_params") or {}).items():
                if name in store_params:
                    store_params[name].copy_(value)
        for st, saved in zip(self.phases, state.get("phases", [])):
            by_name = dict(zip(st.names, st.params))
            missing = [n for n in saved["names"] if n not in by_name]
            if missing:
                raise CheckpointError(
                    f"cannot resume from {self.ckpt_path}: phase {st.phase.name!r} had "
                    f"parameters this run does not create ({', '.join(missing[:3])}).")
            order = list(saved["names"]) + [n for n in st.names if n not in saved["names"]]
            st.params = [by_name[n] for n in order]
            st.names = order
            st.steps = saved["steps"]
            if saved.get("optimizer") is not None:
                st.build_optimizer(self._total_steps(), self.steps_per_epoch)
                st.optimizer.load_state_dict(saved["optimizer"])
                if st.scheduler is not None and saved.get("scheduler") is not None:
                    st.scheduler.load_state_dict(saved["scheduler"])
        self._apply_new_lr(state)
        self._note_speed_changes(state)
        rng = state["rng"]
        if isinstance(rng, list):   # one state per process of a torchrun job
            rng = rng[self.rank] if self.rank < len(rng) else rng[0]
        note = _set_rng_state(rng, self.loader_gen)
        if note and c.verbose and self.is_main:
            tqdm.write(f"fit: resuming {self.ckpt_path}: {note}.")
        self.result.history = list(state["history"])
        self.result.best_epoch = state["best_epoch"]
        self.result.best_loss = state["best_loss"]
        self.result.steps = int(state.get("steps", 0))
        self.best_state = state.get("best_state")
        self.bad_epochs = state["bad_epochs"]
        self.start_epoch = state["epoch"]
        for cb, cb_state in zip(self.callbacks, state.get("callbacks", [])):
            if hasattr(cb, "load_state_dict") and cb_state:
                cb.load_state_dict(cb_state)
        if state.get("stopped_early"):
            self.finished = True    # that run was finished already
            self.result.stopped_early = True

    def _check_same_run(self, state: Dict[str, Any]) -> None:
        """A resumed run must continue the same training: every setting that changes
        what it computes is the same (epochs, patience and lr may change), on the same
        data, with the same objective and particle count."""
        saved = state.get("config") or {}
        now = self.config.to_dict()
        diffs = [f"{k}: {saved[k]!r} in the checkpoint, {now[k]!r} now"
                 for k in now if k in saved and k not in NOT_RUN_DEFINING and saved[k] != now[k]]
        if saved.get("lr_schedule") is not None and saved.get("epochs") != now["epochs"]:
            # a schedule spans the run's epochs: changing them changes every later step
            diffs.append(f"epochs: {saved.get('epochs')!r} in the checkpoint, {now['epochs']!r} "
                         f"now (the {saved['lr_schedule']} schedule spans them)")
        cls = state.get("module_class")
        mine = type(self.module).__qualname__ if self.module is not None else None
        if cls is not None and cls != mine:
            diffs.append(f"model: {cls} in the checkpoint, {mine} now")
        saved_model, mine_model = state.get("model"), _model_settings(self.module)
        if cls == mine and saved_model is not None and mine_model is not None:
            # the same class built otherwise (a denoising and an inpainting autoencoder)
            a, b = saved_model.get("args", {}), mine_model.get("args", {})
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    diffs.append(f"model setting {k}: {a.get(k)!r} in the checkpoint, "
                                 f"{b.get(k)!r} now")
        saved_step, mine_step = state.get("step") or {}, self.step.signature()
        for k in mine_step:
            if k in saved_step and saved_step[k] != mine_step[k]:
                diffs.append(f"step {k}: {saved_step[k]!r} in the checkpoint, "
                             f"{mine_step[k]!r} now")
        saved_data = state.get("data")
        mine_data = getattr(self.train_data, "settings", None)
        if isinstance(saved_data, dict) and isinstance(mine_data, dict):
            for k in sorted(set(saved_data) | set(mine_data)):
                if saved_data.get(k) != mine_data.get(k):
                    diffs.append(f"data {k}: {saved_data.get(k)!r} in the checkpoint, "
                                 f"{mine_data.get(k)!r} now")
        phases = state.get("phases")
        if phases is not None and [p["name"] for p in phases] != [s.phase.name for s in self.phases]:
            diffs.append(f"phases: {[p['name'] for p in phases]} in the checkpoint, "
                         f"{[s.phase.name for s in self.phases]} now")
        if state.get("world_size", 1) != self.world and self.config.seed is not None:
            diffs.append(f"processes: {state.get('world_size', 1)} in the checkpoint, "
                         f"{self.world} now")
        if diffs:
            raise CheckpointError(
                f"cannot resume from {self.ckpt_path}: it belongs to another run "
                f"({'; '.join(diffs)}). Use another checkpoint path (--out) or start afresh "
                f"without resume.")

    def _note_speed_changes(self, state) -> None:
        """One line when the numerics settings differ from the checkpoint's run (allowed:
        a bfloat16 run on a GPU may go on in float32 on a CPU)."""
        saved = state.get("config") or {}
        changed = [f"{k} {getattr(self.config, k)!r} (the checkpoint ran with {saved[k]!r})"
                   for k in ("precision", "matmul_precision")
                   if k in saved and saved[k] != getattr(self.config, k)]
        if changed and self.config.verbose and self.is_main:
            tqdm.write(f"fit: resuming {self.ckpt_path} with {' and '.join(changed)}")

    def _apply_new_lr(self, state) -> None:
        old = (state.get("config") or {}).get("lr")
        new = self.config.lr
        if old is None or new is None or old == new:
            return
        for st in self.phases:
            if st.optimizer is None or st.phase.sets_lr:
                continue
            for g in st.optimizer.param_groups:
                g["lr"] = g["lr"] * new / old
                if "initial_lr" in g:
                    g["initial_lr"] = new
            if st.scheduler is not None:
                st.scheduler.base_lrs = [b * new / old for b in st.scheduler.base_lrs]
        if self.config.verbose and self.is_main:
            tqdm.write(f"fit: resuming {self.ckpt_path} with lr {new} (the checkpoint ran "
                       f"with {old})")

    def _total_steps(self) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return self.config.epochs * self.steps_per_epoch

    # ------------------------------------------------------------------ 3. train epoch
    def _bar(self, epoch: int):
        c = self.config
        show = c.progress and self.is_main
        if self.max_steps is not None:
            # counting steps: one bar for the whole run
            if getattr(self, "_run_bar", None) is None:
                self._run_bar = tqdm(total=self.max_steps, initial=self.result.steps,
                                     desc="steps", disable=not show, leave=False,
                                     dynamic_ncols=True)
            return self._run_bar
        return tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{c.epochs}",
                    disable=not show, leave=False, dynamic_ncols=True)

    def train_epoch(self, epoch: int) -> Dict[str, Any]:
        c = self.config
        t0 = time.perf_counter()
        totals = {st.phase.name: 0.0 for st in self.phases}
        counts = {st.phase.name: 0 for st in self.phases}
        bar = self._bar(epoch)
        per_run_bar = self.max_steps is not None
        batch_hooks = [cb for cb in self.callbacks if _overrides(cb, "on_train_batch_end")]
        batches = self._batches(self.train_data, shuffle=True)
        i = 0
        # Reading a loss is a host-device sync: on a GPU the loop reads every 10th step.
        check_every = 1 if self.device.type == "cpu" else 10
        # The steps' context: models may skip what only a user reads (context.py).
        with running_steps(data_checked=self.train_checked, module=self.declared):
            for batch in batches:
                if self.max_steps is not None and self.result.steps >= self.max_steps:
                    break
                if self.device_from_data and i == 0:
                    first = _first_tensor(batch)
                    if first is not None:
                        self.device = first.device
                        check_every = 1 if self.device.type == "cpu" else 10
                        if self.speed is not None:     # autocast where the data is
                            self.speed.device_type = self.device.type
                ctx: Dict[str, Any] = {}
                losses: Optional[Dict[str, Any]] = {} if batch_hooks else None
                for st in self.phases:
                    done = []
                    for r in range(st.phase.repeats):
                        if r and st.phase.fresh_batch:
                            batch = next(batches, None)
                            if batch is None:
                                break
                        value = self.run_phase(st, batch, ctx)
                        b = batch_len(batch)
                        totals[st.phase.name] = totals[st.phase.name] + value * b
                        counts[st.phase.name] += b
                        if losses is not None:
                            done.append(value)
                        if i % check_every == 0 or check_every == 1:
                            v = float(value)
                            if not math.isfinite(v):
                                if not per_run_bar:
                                    bar.close()
                                self._diverged(epoch, i, v, st.phase.name)
                    if losses is not None and done:
                        losses[st.phase.name] = done[0] if len(done) == 1 else \
                            torch.stack([torch.as_tensor(d) for d in done]).mean()
                    if batch is None:
                        break
                bar.update(1)
                if i % 10 == 0 and c.progress and self.is_main:
                    first_phase = self.phases[0].phase.name
                    shown = float(totals[first_phase]) / max(counts[first_phase], 1)
                    bar.set_postfix(loss=f"{shown:.3f}")
                self.result.steps += 1
                if self.speed is not None and self.speed.compile_pending:
                    # after a first eager step: Pyro's lazily created parameters exist
                    self.speed.compile_now()
                if batch_hooks:
                    # the run's step count (0-based), resumed parts included: unique even
                    # for data without a length, whose epochs have no known size
                    for cb in batch_hooks:
                        cb.on_train_batch_end(self, self.result.steps - 1, losses)
                i += 1
                if batch is None:
                    break
        if not per_run_bar:
            bar.close()
        if i == 0:
            raise DataError(f"the training data gave no batch in epoch {epoch + 1} (an empty "
                            f"DataLoader, or an iterator that was used up by the epoch "
                            f"before?); give data with at least one batch, re-iterable.")
        entry: Dict[str, Any] = {"epoch": epoch}
        names = [st.phase.name for st in self.phases]
        sums = ddp.all_reduce_sum([float(totals[n]) for n in names] +
                                  [counts[n] for n in names], self.device)
        means = {n: sums[j] / max(sums[len(names) + j], 1) for j, n in enumerate(names)}
        for n, v in means.items():
            if not math.isfinite(v):
                self._diverged(epoch, None, v, n, where="training")
        entry["train_loss"] = means[names[0]]
        if len(names) > 1:
            for n in names:
                entry[f"train_loss/{n}"] = means[n]
        entry["lr"] = self.phases[0].lr()
        entry["_t0"] = t0
        return entry

    def run_phase(self, st: PhaseState, batch, ctx) -> torch.Tensor:
        """One optimizer step of one phase; returns the reported loss (a tensor)."""
        ph = st.phase
        if ph.discover is True or (ph.discover == "first" and st.steps == 0):
            out, found = traced_params(lambda: ph.loss(batch, ctx))
            self._join(st, found)
        else:
            out = ph.loss(batch, ctx)
        loss, reported = (out if isinstance(out, tuple) else (out, out))
        reported = reported.detach() if torch.is_tensor(reported) else torch.as_tensor(reported)
        if self.device.type == "cpu" and not math.isfinite(float(reported)):
            return reported   # checked and reported by the caller, before any update
        if st.optimizer is None:
            if not st.params:
                raise ConfigError(
                    f"phase {ph.name!r} of {self.step.describe()} found no trainable "
                    f"parameters: its loss touched no pyro.param / pyro.module site and it "
                    f"declares none.")
            st.build_optimizer(self._total_steps(), self.steps_per_epoch)
        if not ph.owns_backward:
            # Every step ends with the gradients cleared (below), so they are usually None
            # here; clear again only when something between the steps left one (a user's
            # backward in a callback): a zero_grad costs a tenth of a small model's step.
            if any(p.grad is not None for p in st.params):
                st.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        ddp.average_gradients(st.params)
        clip = ph.clip_norm if ph.clip_norm is not None else self.config.clip_norm
        if clip is not None:
            nn.utils.clip_grad_norm_(st.params, clip)
        st.optimizer.step()
        # Clear after the step too, as pyro.infer.SVI does: no gradient is left on the
        # parameters for the user's next Pyro step to accumulate onto.
        st.optimizer.zero_grad(set_to_none=True)
        if st.scheduler is not None:
            st.scheduler.step()
        st.steps += 1
        return reported

    # ------------------------------------------------------------------ 4. validate
    def validate(self, entry: Dict[str, Any]) -> None:
        val_loss = None
        if self.val_data is not None:
            with running_steps(data_checked=self.val_checked, module=self.declared):
                val_loss = _evaluate(self.step, self.val_data, self.config.eval_batch_size,
                                     self.batch_device, self.device)
            if val_loss is not None and not math.isfinite(val_loss):
                self._diverged(entry["epoch"], None, val_loss, None, where="validation")
        entry["val_loss"] = val_loss

    # ------------------------------------------------------------------ 6. monitor
    def monitor(self, entry: Dict[str, Any]) -> bool:
        """Update the best figure and the patience count; True when it improved."""
        c = self.config
        key = c.monitor
        if key == "val_loss" and entry.get("val_loss") is None:
            key = "train_loss"
        self.monitored = key
        value = entry.get(key)
        value = ddp.broadcast_object(value)   # every process takes rank 0's decision
        if value is None:
            return False
        value = float(value)
        sign = 1.0 if c.mode == "min" else -1.0
        best = self.result.best_loss
        improved = (best is None or not math.isfinite(best) or
                    sign * value < sign * best - c.min_delta)
        if improved:
            self.result.best_loss, self.result.best_epoch = value, entry["epoch"]
            self.result.best_value = value
            if c.restore_best:
                self.best_state = self._snapshot()
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        if c.patience is not None and self.bad_epochs >= c.patience:
            self.result.stopped_early = True
        return improved

    def _snapshot(self) -> Dict[str, Any]:
        snap = {"module": {k: v.detach().clone() for k, v in self.module.state_dict().items()}
                if self.module is not None else None}
        snap["pyro_params"] = {k: v.detach().clone() for k, v in self._pyro_params().items()}
        return snap

    def _restore(self, snap) -> None:
        if snap is None:
            return
        if "pyro_params" not in snap:    # a checkpoint of the first edition: module only
            snap = {"module": snap, "pyro_params": {}}
        if self.module is not None and snap.get("module") is not None:
            self.module.load_state_dict(snap["module"])
        params = self._pyro_params()
        with torch.no_grad():
            for k, v in snap["pyro_params"].items():
                if k in params:
                    params[k].copy_(v)

    def _stop_line(self, entry) -> str:
        c, r = self.config, self.result
        best = r.best_epoch
        held = (f"the model holds epoch {best + 1}'s weights (restore_best)"
                if c.restore_best and self.best_state is not None else
                "the model holds the last epoch's weights")
        of = f" of {c.epochs}" if c.epochs is not None else ""
        return (f"fit: stopped early after epoch {entry['epoch'] + 1}{of}: {self.monitored} did "
                f"not improve on {r.best_loss:.6g} (epoch {best + 1}) for {c.patience} "
                f"check{'s' if c.patience != 1 else ''} (patience={c.patience}); {held}.")

    # ------------------------------------------------------------------ 7. checkpoint
    def checkpoint(self, epoch_done: int) -> None:
        if self.ckpt_path is None:
            return
        rngs = ddp.gather_objects(_rng_state(self.loader_gen)) if self.world > 1 else \
            _rng_state(self.loader_gen)
        if not self.is_main:
            return
        live = self._pyro_params()
        # the modules of a model/guide pair (an AutoGuide, a PyroModule, a VAE's methods)
        pair_modules = callable_modules(getattr(self.step, "model", None),
                                        getattr(self.step, "guide", None))
        pyro_params = {k: v.detach() for k, v in live.items()}
        state = {"epoch": epoch_done, "steps": self.result.steps,
                 "module": self.module.state_dict() if self.module is not None else None,
                 "pyro_params": pyro_params,
                 "pyro_constraints": param_store_constraints(pyro_params),
                 "pyro_owners": param_owners(pair_modules, live),
                 "pyro_buffers": module_buffers(pair_modules, skip=self.module),
                 "phases": [{"name": st.phase.name, "names": list(st.names), "steps": st.steps,
                             "optimizer": st.optimizer.state_dict() if st.optimizer else None,
                             "scheduler": st.scheduler.state_dict() if st.scheduler else None}
                            for st in self.phases],
                 "rng": rngs, "world_size": self.world,
                 "config": self.config.to_dict(), "history": self.result.history,
                 "best_epoch": self.result.best_epoch, "best_loss": self.result.best_loss,
                 "best_state": self.best_state, "bad_epochs": self.bad_epochs,
                 "stopped_early": self.result.stopped_early,
                 "callbacks": [cb.state_dict() if hasattr(cb, "state_dict") else {}
                               for cb in self.callbacks],
                 "module_class": type(self.module).__qualname__ if self.module is not None
                 else None,
                 "step": self.step.signature(),
                 "data": getattr(self.train_data, "settings", None)}
        settings = _model_settings(self.module)
        if settings is not None:
            state["model"] = settings
        save_checkpoint(self.ckpt_path, state)

    # ------------------------------------------------------------------ the loop
    def _validation_setting(self) -> Optional[bool]:
        """Pyro's validation inside the run: as asked; by default the user's own for their
        steps, off for a probgen model (its data is checked whole before the first step)."""
        if self.config.validate is not None:
            return self.config.validate
        return False if is_probgen_model(self.module) else None

    def _done(self, epoch: int) -> bool:
        if self.finished:
            return True
        if self.max_steps is not None:
            return self.result.steps >= self.max_steps
        return epoch >= self.config.epochs

    def execute(self) -> FitResult:
        try:
            self.set_up()
            t0 = time.perf_counter()
            with ExitStack() as stack:
                if self.step.isolate_param_store:
                    stack.enter_context(pyro.get_param_store().scope())
                validate = self._validation_setting()
                if validate is not None:
                    stack.enter_context(pyro.validation_enabled(validate))
                # the speed settings, for this run only (undone on the way out)
                stack.enter_context(matmul_precision(self.config.matmul_precision))
                if self.speed is not None:
                    stack.enter_context(self.speed.active())
                try:
                    self._train(t0)
                except BaseException as err:
                    for cb in self.callbacks:
                        if _overrides(cb, "on_exception"):
                            try:
                                cb.on_exception(self, err)
                            except Exception:
                                pass    # the training error is the one reported
                    raise
            for cb in self.callbacks:
                _call(cb, "on_fit_end", self, self.result)
        finally:
            self._return_module()
        return self.result

    def _train(self, t0: float) -> None:
        c = self.config
        if self.module is not None:
            self.module.train()
        self.resume()
        for cb in self.callbacks:
            _call(cb, "on_fit_start", self)
        epoch = self.start_epoch
        try:
            while not self._done(epoch):
                self.epoch = epoch
                entry = self.train_epoch(epoch)
                self.validate(entry)
                for cb in self.callbacks:
                    _call(cb, "on_validation_end", self, entry)
                improved = self.monitor(entry)
                entry["seconds"] = time.perf_counter() - entry.pop("_t0")
                self.result.history.append(entry)
                last = self.result.stopped_early or self._done(epoch + 1)
                if last or (epoch + 1) % self.print_every == 0:
                    self._print(entry, improved)
                self.checkpoint(epoch + 1)
                for cb in self.callbacks:
                    _call(cb, "on_epoch_end", self, entry)
                if self.result.stopped_early:
                    if c.verbose and self.is_main:
                        tqdm.write(self._stop_line(entry))
                    break
                epoch += 1
        finally:
            bar = getattr(self, "_run_bar", None)
            if bar is not None:
                bar.close()
        self.finish(t0)

    def _print(self, entry, improved) -> None:
        if not (self.config.verbose and self.is_main):
            return
        extra = "".join(f"  {k.split('/')[-1]} {v:.4f}" for k, v in entry.items()
                        if k.startswith("train_loss/"))
        others = "".join(f"  {k} {v:.4g}" for k, v in entry.items()
                         if k not in ("epoch", "train_loss", "val_loss", "lr", "seconds")
                         and not k.startswith("train_loss/") and isinstance(v, (int, float))
                         and not isinstance(v, bool))
        steps = f"  step {self.result.steps}" if self.max_steps is not None else ""
        tqdm.write(f"epoch {entry['epoch'] + 1:3d}{steps}  train {entry['train_loss']:9.4f}"
                   + extra
                   + (f"  val {entry['val_loss']:9.4f}" if entry["val_loss"] is not None else "")
                   + others + ("  *" if improved else "") + f"  ({entry['seconds']:.1f}s)")

    # ------------------------------------------------------------------ 8. finish
    def finish(self, t0: float) -> None:
        if self.config.restore_best and self.best_state is not None:
            self._restore(self.best_state)
        self.result.wall_time = time.perf_counter() - t0
        self.result.device = str(self.device)
        self.result.world_size = self.world

    def _return_module(self) -> None:
        """The module back in the mode and on the device it came in (no side effects)."""
        module = self.module
        if module is None:
            return
        if self.was_training is not None:
            module.train(self.was_training)
        if self.home is not None and _module_device(module) != self.home:
            module.to(self.home)
            if self.config.verbose and getattr(self, "is_main", True):
                tqdm.write(f"fit: moved {type(module).__name__} back to {self.home}")

    def _diverged(self, epoch, step_i, value, phase, where=None):
        if where is None:
            where = f"epoch {epoch + 1}, step {step_i + 1}"
        else:
            where = f"epoch {epoch + 1} ({where})"
        if phase is not None and len(self.phases) > 1:
            where += f", phase {phase!r}"
        if self.best_state is not None:
            self._restore(self.best_state)
            kept = "the model holds the best weights so far"
        elif not self.config.restore_best:
            kept = "the weights were not restored (restore_best is off)"
        else:
            kept = "no epoch had finished, so there are no good weights to restore"
        ckpt = self.ckpt_path
        if ckpt is not None and ckpt.exists():
            kept += f"; the last good checkpoint is kept at {ckpt}"
        raise TrainingDivergedError(
            f"the training loss became {value} at {where}; {kept}. Try a lower learning rate, "
            f"gradient clipping (clip_norm) or check the data for NaNs.",
            epoch=epoch, step=step_i,
            checkpoint=str(ckpt) if ckpt is not None and ckpt.exists() else None)


def _call(cb, hook, *args):
    fn = getattr(cb, hook, None)
    if callable(fn):
        fn(*args)


def _model_settings(module) -> Optional[Dict[str, Any]]:
    """The constructor settings of a registered probgen model (``None`` for others)."""
    if module is None:
        return None
    from probgen.models.registry import model_config
    try:
        return model_config(module)
    except TypeError:
        return None


def fit(step, train: Union[TensorData, Iterable], val=None, config: Optional[FitConfig] = None,
        callbacks: Sequence = (), *, batch_to_args=None, **overrides) -> FitResult:
    """Train ``step`` on ``train``; return a :class:`FitResult`.

    With a Pyro model/guide pair and the default settings, ``fit`` does what a loop of
    ``pyro.infer.SVI.step`` calls does: the same gradients and updates, no early
    stopping and no best weights unless there is validation data (or ``patience``,
    ``restore_best`` or ``monitor`` ask for them), Pyro's validation and the global
    random generators as the user left them (see :class:`FitConfig`). When a run stops
    early, one line says when and why.

    Args:
        step: a probgen model (a module with ``model`` and ``guide``, or with
            ``fit_step``), an :class:`SVIStep` for any Pyro model/guide pair, a
            :class:`LossStep` for a plain PyTorch network, or a :class:`PhasedStep`.
        train: a :class:`TensorData` (device-resident, the fast path: its tensors are
            the model's positional arguments) or any iterable of batches, e.g. a
            ``torch.utils.data.DataLoader`` (it shuffles itself). A batch that is a dict
            goes in as keyword arguments, a tuple as positional ones.
        val: validation data of either kind, scored every epoch.
        config: a :class:`FitConfig`; keyword ``overrides`` replace its fields.
        callbacks: :class:`Callback` objects or functions of the epoch's entry.
        batch_to_args: ``f(batch) -> (args, kwargs)`` for a model that ``fit`` wraps in
            its step (a module with ``model``/``guide`` or ``loss``); a ready-made step
            takes its own (``SVIStep(..., batch_to_args=f)``).

    Devices: the step's module is moved to ``config.device`` for the run and returned on
    the device (and in the train/eval mode) it came in, so its methods work on the
    user's tensors afterwards whatever device trained it. A bare model/guide pair trains
    where its data is under ``device="auto"``.

    Data: a TensorData in host memory is moved to the GPU once, whole, when it takes at
    most half of the GPU's free memory (``data_on_device="auto"``), else each batch is
    copied through pinned memory. Floating-point tensors of a TensorData of another dtype than the module's
    parameters (float64 images for a float32 model) are converted, said in one line;
    uint8 images are refused (:class:`~probgen.errors.DataError`), since their scale is
    not the loop's to guess. A step without a module gets its data as given.

    Pyro's validation (``validate=None``, the default): a step of the user's (a bare
    model/guide pair, an ``SVIStep``, a ``LossStep``) trains with Pyro's validation as
    the user set it. A probgen model (a registered class: VAE, CVAE, flows, GANs, ...)
    trains with it switched off for the duration of ``fit``, since ``fit`` checks its
    data whole before the first step and Pyro's per-step checks cost about 12% of a
    small model's step (and a host sync each on a GPU); ``validate=True`` keeps it on.

    Speed settings for a GPU (``matmul_precision``, ``precision="bf16"``, ``compile``,
    ``data_on_device``; see :class:`FitConfig` and :mod:`probgen.train.speed`) are
    opt-in, apply to this run only and are undone when ``fit`` returns.

    Under ``torchrun`` every process calls ``fit`` alike and they train data-parallel
    (:mod:`probgen.train.distributed`).

    Raises:
        ConfigError: bad settings; ``epochs`` with ``num_steps``; ``objective``,
            ``num_particles`` or ``eval_particles`` set with a ready-made step (which has
            its own); a batch that does not fit the model's or guide's signature.
        DataError: an epoch without a batch, uint8 images for a module.
        CheckpointError: an unwritable checkpoint path (before training), a failed write
            (the previous checkpoint is kept), or a resume from another run.
        TrainingDivergedError: the loss became NaN/inf; names the epoch and step.
            The last checkpoint on disk is the last good one.
    """
    given = set(overrides)
    if config is not None:
        given |= config.explicit()
    config = replace(config or FitConfig(), **overrides).check()
    return Run(step, train, val, config, callbacks, explicit=given,
               batch_to_args=batch_to_args).execute()


# The loop's parts that probgen.lightning reads, under their older private names (kept for
# now, for code that imported them).
_PhaseState = PhaseState
_as_batch = as_batch
_is_probgen_model = is_probgen_model
_checked_once = check_data_once
