"""The settings of a training run (:class:`FitConfig`) and what it returns (:class:`FitResult`)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from probgen.errors import ConfigError
from probgen.infer.objectives import OBJECTIVES
from probgen.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")
OPTIMIZERS.register("adam", torch.optim.Adam)
OPTIMIZERS.register("adamw", torch.optim.AdamW)
OPTIMIZERS.register("sgd", torch.optim.SGD)
OPTIMIZERS.register("rmsprop", torch.optim.RMSprop)


def _plain(value):
    """numpy numbers -> Python numbers, ``Path`` -> ``str`` (JSON-ready)."""
    if isinstance(value, Path):
        return str(value)
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        return value.item()
    return value


@dataclass
class FitConfig:
    """Settings of one training run (round-trips through JSON).

    Attributes:
        epochs: the most epochs to run.
        batch_size: examples per gradient step (per process under torchrun).
        lr: learning rate (a phase may set its own).
        optimizer: a name in :data:`OPTIMIZERS`.
        weight_decay: L2 penalty of the optimizer.
        lr_schedule: ``None`` (constant), ``cosine``, ``warmup_cosine``, ``onecycle``,
            ``linear`` or ``step``: a name in :data:`probgen.train.SCHEDULES`, stepped
            after every optimizer step.
        warmup_epochs: epochs of linear warm-up for ``warmup_cosine`` (and the rising
            part of ``onecycle``, as a share of the run when < 1).
        patience: stop after this many *checks* of the monitored figure without
            improvement; ``None`` never stops early.
        min_delta: an improvement must exceed this.
        monitor: the history entry that early stopping and the best weights follow:
            ``val_loss`` (the default; ``train_loss`` when there is no validation data)
            or any figure a callback adds (``fid``, ``val_nll``, ...). Epochs without it
            are not checks.
        mode: ``min`` (lower is better) or ``max``.
        restore_best: load the best epoch's weights when training ends.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        seed: seeds torch, numpy, random and the batch order; ``None`` leaves the global
            generators alone and draws the batch order from torch's global generator.
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
    lr_schedule: Optional[str] = None
    warmup_epochs: float = 0.0
    patience: Optional[int] = 10
    min_delta: float = 0.0
    monitor: str = "val_loss"
    mode: str = "min"
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

    def __post_init__(self):
        for f in fields(self):
            setattr(self, f.name, _plain(getattr(self, f.name)))

    def check(self) -> "FitConfig":
        from probgen.train.schedules import SCHEDULES

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
        if not (isinstance(self.warmup_epochs, (int, float)) and self.warmup_epochs >= 0):
            raise ConfigError(f"warmup_epochs must be 0 or more, got {self.warmup_epochs!r}.")
        if self.mode not in ("min", "max"):
            raise ConfigError(f"mode must be 'min' or 'max', got {self.mode!r}.")
        if not isinstance(self.monitor, str) or not self.monitor:
            raise ConfigError(f"monitor must name a history entry, got {self.monitor!r}.")
        OPTIMIZERS.get(self.optimizer)
        OBJECTIVES.get(self.objective)
        if self.lr_schedule is not None:
            SCHEDULES.get(self.lr_schedule)
        if self.resume and not self.checkpoint:
            raise ConfigError("resume=True needs a checkpoint path to resume from.")
        from probgen.train.loop import resolve_device
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


# Settings that do not change what a run computes: a resumed run may change them freely.
# (epochs and patience only say when to stop; lr is applied with a message.)
NOT_RUN_DEFINING = ("epochs", "patience", "device", "checkpoint", "resume", "progress",
                    "verbose", "validate", "eval_batch_size", "lr", "restore_best")


@dataclass
class FitResult:
    """What a run returns: per-epoch history and where the best epoch was.

    ``history`` holds one dict per epoch: ``epoch``, ``train_loss`` (the first phase's
    loss per example), ``train_loss/<phase>`` for every phase of a multi-phase step,
    ``val_loss``, ``lr``, ``seconds`` and whatever the callbacks added.
    """

    history: List[Dict[str, Any]] = field(default_factory=list)
    best_epoch: Optional[int] = None
    best_loss: float = math.inf
    best_value: Optional[float] = None
    monitor: str = "val_loss"
    stopped_early: bool = False
    wall_time: float = 0.0
    device: str = "cpu"
    world_size: int = 1
    config: Optional[FitConfig] = None

    @property
    def train_loss(self) -> List[float]:
        return [h["train_loss"] for h in self.history]

    @property
    def val_loss(self) -> List[Optional[float]]:
        return [h["val_loss"] for h in self.history]

    def curve(self, key: str) -> List[Optional[float]]:
        """One figure over the epochs (``None`` where an epoch did not compute it)."""
        return [h.get(key) for h in self.history]

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
