"""The fit loop: one loop for every model probgen trains.

``fit(step, train, val, config)`` runs epochs of mini-batch gradient steps
on device-resident data, tracks train/validation loss, stops early when the
validation loss has not improved for ``patience`` epochs (restoring the best
weights), writes atomic checkpoints every epoch and resumes from them
bit-for-bit on a CPU. What one step computes lives in :mod:`probgen.train.steps`.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import pyro
import torch
from torch import nn
from tqdm.auto import tqdm

from probgen.data.tensors import TensorData
from probgen.errors import CheckpointError, ConfigError, TrainingDivergedError
from probgen.infer.objectives import OBJECTIVES
from probgen.registry import Registry
from probgen.train.checkpoint import load_checkpoint, load_module_state, save_checkpoint
from probgen.train.steps import LossStep, SVIStep

OPTIMIZERS: Registry = Registry("optimizer")
OPTIMIZERS.register("adam", torch.optim.Adam)
OPTIMIZERS.register("adamw", torch.optim.AdamW)
OPTIMIZERS.register("sgd", torch.optim.SGD)


@dataclass
class FitConfig:
    """Settings of one training run (round-trips through JSON).

    Attributes:
        epochs: the most epochs to run.
        batch_size: examples per gradient step.
        lr: learning rate.
        optimizer: a name in :data:`OPTIMIZERS`.
        weight_decay: L2 penalty of the optimizer.
        patience: stop after this many epochs without improvement of the
            monitored loss (validation loss if there is validation data, else
            training loss); ``None`` never stops early.
        min_delta: an improvement must exceed this.
        restore_best: load the best epoch's weights when training ends.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        seed: seeds torch, numpy, random and the batch order; ``None`` leaves them.
        objective: for Pyro models, a name in :data:`probgen.infer.OBJECTIVES`.
        num_particles: ELBO samples per example during training.
        eval_particles: ELBO samples per example for the validation loss.
        clip_norm: clip the gradient norm to this, if set.
        eval_batch_size: batch size of the validation pass.
        checkpoint: path of the checkpoint file written after every epoch.
        resume: continue from ``checkpoint`` when it exists.
        progress: show a tqdm progress bar.
        verbose: print one line per epoch (losses, time).
        validate: switch on Pyro's (slow) argument and shape validation.
    """

    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    patience: Optional[int] = 10
    min_delta: float = 0.0
    restore_best: bool = True
    device: str = "auto"
    seed: Optional[int] = 0
    objective: str = "trace"
    num_particles: int = 1
    eval_particles: Optional[int] = None
    clip_norm: Optional[float] = None
    eval_batch_size: int = 1000
    checkpoint: Optional[str] = None
    resume: bool = False
    progress: bool = True
    verbose: bool = True
    validate: bool = False

    def check(self) -> "FitConfig":
        def positive_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}.")

        for name in ("epochs", "batch_size", "num_particles", "eval_batch_size"):
            positive_int(name)
        if self.eval_particles is not None:
            positive_int("eval_particles")
        if self.patience is not None:
            positive_int("patience")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}.")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ConfigError(f"clip_norm must be positive, got {self.clip_norm!r}.")
        OPTIMIZERS.get(self.optimizer)
        OBJECTIVES.get(self.objective)
        if self.resume and not self.checkpoint:
            raise ConfigError("resume=True needs a checkpoint path to resume from.")
        resolve_device(self.device)
        return self

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "FitConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown FitConfig settings: {sorted(unknown)}.")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "FitConfig":
        return cls.from_dict(json.loads(text))


@dataclass
class FitResult:
    """What a run returns: per-epoch history and where the best epoch was."""

    history: List[Dict[str, Any]] = field(default_factory=list)
    best_epoch: Optional[int] = None
    best_loss: float = math.inf
    stopped_early: bool = False
    wall_time: float = 0.0
    device: str = "cpu"
    config: Optional[FitConfig] = None

    @property
    def train_loss(self) -> List[float]:
        return [h["train_loss"] for h in self.history]

    @property
    def val_loss(self) -> List[Optional[float]]:
        return [h["val_loss"] for h in self.history]

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    @property
    def train_seconds(self) -> float:
        """Seconds spent in training epochs, over every process of a resumed run
        (``wall_time`` is this process's part only)."""
        return float(sum(h["seconds"] for h in self.history))

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["config"] = self.config.to_dict() if self.config else None
        return d

    def __repr__(self) -> str:
        last = self.history[-1] if self.history else {}
        return (f"FitResult(epochs_run={self.epochs_run}, best_epoch={self.best_epoch}, "
                f"best_loss={self.best_loss:.4f}, last={last.get('train_loss')}, "
                f"stopped_early={self.stopped_early}, wall_time={self.wall_time:.1f}s)")


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a CUDA request without CUDA is an error."""
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} was asked for, but this machine has no CUDA "
                              f"device; use device='cpu' or 'auto'.")
        return torch.device(device)
    raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}.")


def set_seed(seed: int) -> None:
    """Seed Python's, numpy's and torch's random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state(loader_gen: torch.Generator) -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "loader": loader_gen.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any], loader_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"].cpu())
    loader_gen.set_state(state["loader"].cpu())
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _clone_state(module: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@torch.no_grad()
def evaluate(step, data: TensorData, batch_size: int = 1000) -> float:
    """Mean per-example ``step.eval_loss`` over ``data`` (no gradients, eval mode)."""
    module = step.module
    was_training = module.training
    module.eval()
    total, n = 0.0, 0
    try:
        for batch in data.batches(batch_size):
            b = batch[0].shape[0]
            total += float(step.eval_loss(batch)) * b
            n += b
    finally:
        module.train(was_training)
    return total / max(n, 1)


def as_step(obj, config: FitConfig):
    """A step object for ``obj``: a step already, or a module with ``model``/``guide`` (SVI)."""
    if hasattr(obj, "loss") and hasattr(obj, "module"):
        return obj
    if isinstance(obj, nn.Module) and hasattr(obj, "model") and hasattr(obj, "guide"):
        return SVIStep(obj, objective=config.objective, num_particles=config.num_particles,
                       eval_particles=config.eval_particles)
    if isinstance(obj, nn.Module) and callable(getattr(obj, "loss", None)):
        return LossStep(obj, lambda module, *batch: module.loss(*batch))
    raise ConfigError(
        f"fit() needs a Pyro model with .model and .guide methods, a network with a .loss "
        f"method, an SVIStep or a LossStep; "
        f"got {type(obj).__name__}. Wrap a plain network as LossStep(net, loss_fn).")


RUN_DEFINING = ("objective", "num_particles")


def _check_same_run(state: Dict[str, Any], config: "FitConfig", module, path) -> None:
    """A resumed run must continue the same training: same model class and objective."""
    saved = state.get("config") or {}
    diffs = [f"{k}: {saved[k]!r} in the checkpoint, {getattr(config, k)!r} now"
             for k in RUN_DEFINING if k in saved and saved[k] != getattr(config, k)]
    cls = state.get("module_class")
    if cls is not None and cls != type(module).__qualname__:
        diffs.append(f"model: {cls} in the checkpoint, {type(module).__qualname__} now")
    if diffs:
        raise CheckpointError(
            f"cannot resume from {path}: it belongs to another run ({'; '.join(diffs)}). "
            f"Use another checkpoint path (--out) or start afresh without resume.")


def fit(step, train: TensorData, val: Optional[TensorData] = None,
        config: Optional[FitConfig] = None,
        callbacks: Sequence[Callable[[Dict[str, Any]], None]] = (), **overrides) -> FitResult:
    """Train ``step`` on ``train``; return a :class:`FitResult`.

    Args:
        step: a probgen Pyro model (an ``nn.Module`` with ``model`` and ``guide``),
            an :class:`SVIStep` for any Pyro model/guide pair, or a :class:`LossStep`
            for a plain PyTorch network.
        train: training data; batches are passed to the step as positional arguments.
        val: validation data, monitored for early stopping.
        config: a :class:`FitConfig`; keyword ``overrides`` replace its fields.
        callbacks: called after each epoch with that epoch's history entry.

    Raises:
        TrainingDivergedError: the loss became NaN/inf; names the epoch and step.
            The last checkpoint on disk is the last good one.
    """
    config = replace(config or FitConfig(), **overrides).check()
    device = resolve_device(config.device)
    step = as_step(step, config)
    module = step.module.to(device)
    if train.device != device:
        train = train.to(device)
    if val is not None and val.device != device:
        val = val.to(device)
    if len(train) == 0:
        raise ConfigError("the training data is empty.")

    if config.seed is not None:
        set_seed(config.seed)
    loader_gen = torch.Generator(device="cpu")
    loader_gen.manual_seed(config.seed if config.seed is not None else torch.seed())

    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"{type(module).__name__} has no trainable parameters.")
    opt_kwargs = dict(lr=config.lr)
    if config.weight_decay:
        opt_kwargs["weight_decay"] = config.weight_decay
    optimizer = OPTIMIZERS.get(config.optimizer)(params, **opt_kwargs)

    result = FitResult(device=str(device), config=config)
    best_state = None
    bad_epochs = 0
    start_epoch = 0
    ckpt_path = Path(config.checkpoint) if config.checkpoint else None

    if config.resume and ckpt_path is not None and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location=device)
        _check_same_run(state, config, module, ckpt_path)
        load_module_state(module, state["module"], source=f"checkpoint {ckpt_path}")
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"], loader_gen)
        result.history = list(state["history"])
        result.best_epoch = state["best_epoch"]
        result.best_loss = state["best_loss"]
        best_state = state.get("best_state")
        bad_epochs = state["bad_epochs"]
        start_epoch = state["epoch"]
        if state.get("stopped_early"):
            start_epoch = config.epochs  # that run was finished already
            result.stopped_early = True

    def checkpoint_state(epoch):
        return {"epoch": epoch, "module": module.state_dict(),
                "optimizer": optimizer.state_dict(), "rng": _rng_state(loader_gen),
                "config": config.to_dict(), "history": result.history,
                "best_epoch": result.best_epoch, "best_loss": result.best_loss,
                "best_state": best_state, "bad_epochs": bad_epochs,
                "stopped_early": result.stopped_early,
                "module_class": type(module).__qualname__}

    t0 = time.perf_counter()
    n_batches = train.num_batches(config.batch_size)
    with pyro.get_param_store().scope(), pyro.validation_enabled(config.validate):
        module.train()
        for epoch in range(start_epoch, config.epochs):
            te = time.perf_counter()
            total, count = 0.0, 0
            bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{config.epochs}",
                       disable=not config.progress, leave=False, dynamic_ncols=True)
            for i, batch in enumerate(train.batches(config.batch_size, shuffle=True,
                                                    generator=loader_gen)):
                loss = step.loss(batch)
                value = float(loss.detach())
                if not math.isfinite(value):
                    bar.close()
                    _diverged(module, best_state, epoch, i, value, ckpt_path)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.clip_norm is not None:
                    nn.utils.clip_grad_norm_(params, config.clip_norm)
                optimizer.step()
                b = batch[0].shape[0]
                total += value * b
                count += b
                bar.update(1)
                if i % 10 == 0:
                    bar.set_postfix(loss=f"{total / count:.3f}")
            bar.close()
            train_loss = total / count
            val_loss = evaluate(step, val, config.eval_batch_size) if val is not None else None
            if val_loss is not None and not math.isfinite(val_loss):
                _diverged(module, best_state, epoch, None, val_loss, ckpt_path)
            monitored = val_loss if val_loss is not None else train_loss
            improved = monitored < result.best_loss - config.min_delta
            if improved:
                result.best_loss, result.best_epoch = monitored, epoch
                best_state = _clone_state(module)
                bad_epochs = 0
            else:
                bad_epochs += 1
            entry = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                     "seconds": time.perf_counter() - te}
            result.history.append(entry)
            if config.verbose:
                tqdm.write(f"epoch {epoch + 1:3d}  train {train_loss:9.4f}"
                           + (f"  val {val_loss:9.4f}" if val_loss is not None else "")
                           + ("  *" if improved else "") + f"  ({entry['seconds']:.1f}s)")
            if config.patience is not None and bad_epochs >= config.patience:
                result.stopped_early = True
            if ckpt_path is not None:
                save_checkpoint(ckpt_path, checkpoint_state(epoch + 1))
            for cb in callbacks:
                cb(entry)
            if result.stopped_early:
                break
    if config.restore_best and best_state is not None:
        module.load_state_dict(best_state)
    result.wall_time = time.perf_counter() - t0
    module.eval()
    return result


def _diverged(module, best_state, epoch, step_i, value, ckpt_path):
    where = f"epoch {epoch + 1}" + (f", step {step_i + 1}" if step_i is not None else
                                   " (validation)")
    if best_state is not None:
        module.load_state_dict(best_state)
        kept = "the model holds the best weights so far"
    else:
        kept = "no epoch had finished, so there are no good weights to restore"
    if ckpt_path is not None and ckpt_path.exists():
        kept += f"; the last good checkpoint is kept at {ckpt_path}"
    raise TrainingDivergedError(
        f"the training loss became {value} at {where}; {kept}. Try a lower learning rate, "
        f"gradient clipping (clip_norm) or check the data for NaNs.",
        epoch=epoch, step=step_i,
        checkpoint=str(ckpt_path) if ckpt_path is not None and ckpt_path.exists() else None)
