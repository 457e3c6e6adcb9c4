"""The settings of a training run (:class:`FitConfig`) and what it returns (:class:`FitResult`)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probgen import checks
from probgen.errors import ConfigError
from probgen.infer.objectives import OBJECTIVES
from probgen.infer.phases import OPTIMIZERS
from probgen.train.device import resolve_device
from probgen.train.schedules import SCHEDULES
from probgen.train.speed import COMPILE_OPTIONS, MATMUL_PRECISIONS, PRECISIONS


def _json_form(value):
    """Tuples -> lists, recursively (``phase_optim`` as JSON gives it back); numpy arrays
    and torch tensors -> lists (a 0-d one -> its number). Other values are left as they
    are, for :meth:`FitConfig.check` to refuse."""
    if isinstance(value, torch.Tensor):
        return _json_form(value.detach().cpu().tolist())
    if isinstance(value, (tuple, list)):
        return [_json_form(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_form(v) for k, v in value.items()}
    return _plain(value)


def _plain(value):
    """numpy numbers -> Python numbers, numpy arrays -> lists, ``Path`` -> ``str``
    (JSON-ready)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return value.tolist()  # a 0-d array gives its number
    if isinstance(value, np.generic):
        return value.item()
    return value


_JSON_LEAVES = (bool, int, float, str, type(None))


def _refuse_non_json(where: str, value) -> None:
    """A ``phase_optim`` setting must be JSON data (it is recorded with the run and
    compared on resume): a bool, number, string or None, or a list of those."""
    items = value if isinstance(value, list) else [value]
    for i, v in enumerate(items):
        if not isinstance(v, _JSON_LEAVES):
            at = f"{where}[{i}]" if isinstance(value, list) else where
            kind = type(v).__qualname__
            if type(v).__module__ != "builtins":
                kind = f"{type(v).__module__}.{kind}"
            raise ConfigError(
                f"{at}: a value of type {kind} cannot be recorded with the run; give a "
                f"bool, a number, a string, None or a list of those."
            )


AUTO = "auto"
"""The default of ``patience`` and ``restore_best``: decided by the run (see
:class:`FitConfig`)."""

DEFAULT_EPOCHS = 100
DEFAULT_PATIENCE = 10


@dataclass
class FitConfig:
    """Settings of one training run (round-trips through JSON).

    Pyro's meaning by default: a model/guide pair trained with the defaults gets what
    repeated ``pyro.infer.SVI.step`` calls give it. No early stopping and no best weights
    unless the run has validation data or the user asks (``patience``, ``restore_best``,
    ``monitor``); Pyro's validation as the user set it; no global generator re-seeded
    unless ``seed`` is given.

    Attributes:
        epochs: the most epochs to run (``None``: 100, or as many as ``num_steps`` needs).
        num_steps: run exactly this many training steps (batches; one optimizer step per
            phase each), across as many epochs as that takes, as a loop of
            ``SVI.step`` calls counts them. Give ``epochs`` or ``num_steps``, not both.
        batch_size: examples per gradient step (per process under torchrun).
        lr: learning rate (a phase may set its own).
        optimizer: a name in :data:`OPTIMIZERS`.
        phase_optim: per phase of the step (by name: ``"D"`` and ``"G"`` of a GAN, the
            names of ``train_loss/<phase>`` in the history), optimizer settings that
            replace the phase's own: ``lr``, any setting of the optimizer (``betas``,
            ``eps``, ``momentum``, ...), merged over the phase's ``optim_kwargs``, and
            ``optimizer`` (a name in :data:`OPTIMIZERS`), which replaces the phase's
            optimizer and its settings but its learning rate. For example
            ``{"D": {"lr": 1e-4}, "G": {"betas": [0.5, 0.99]}}``. Kept as JSON data
            (tuples, numpy arrays and tensors become lists; the optimizer gets them as
            tuples); any other value is refused. ``fit`` refuses a phase name the step
            lacks and a setting the optimizer refuses, before training. A resumed run may
            change the learning rates here (applied, with a message, as ``lr``), not the
            other settings.
        weight_decay: L2 penalty of the optimizer.
        lr_schedule: ``None`` (constant), ``cosine``, ``warmup_cosine``, ``onecycle``,
            ``linear`` or ``step``: a name in :data:`probgen.train.SCHEDULES`, stepped
            after every optimizer step.
        warmup_epochs: epochs of linear warm-up for ``warmup_cosine`` (and the rising
            part of ``onecycle``, as a share of the run when < 1).
        patience: stop after this many *checks* of the monitored figure without
            improvement; ``None`` never stops early. ``"auto"`` (the default): 10 when the
            run has validation data or monitors a figure named in ``monitor``, else
            ``None`` (a training loss of one sample per example is no ground to stop on).
            When a run stops early, ``fit`` prints one line saying when and why.
        min_delta: an improvement must exceed this.
        monitor: the history entry that early stopping and the best weights follow:
            ``val_loss`` (the default; ``train_loss`` when there is no validation data)
            or any figure a callback adds (``fid``, ``val_nll``, ...). Epochs without it
            are not checks. Naming another figure than ``val_loss`` asks for early
            stopping and the best weights.
        mode: ``min`` (lower is better) or ``max``.
        restore_best: load the best epoch's weights when training ends. ``"auto"`` (the
            default): when the run has validation data, an explicit ``patience`` or a
            ``monitor`` other than ``val_loss``; else the last weights are kept.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``. ``fit``
            moves the step's module there for the run and back to the device it came
            on when it returns. A bare model/guide pair (no module) trains where its data
            is under ``auto``: Pyro's ``SVI`` moves nothing, and the model may hold CPU
            tensors of its own.
        seed: seeds torch, numpy, random and the batch order. ``None`` (the default)
            re-seeds nothing: the batch order of a :class:`~probgen.data.TensorData` is
            drawn from torch's global generator, so a user who seeded torch gets the same
            run twice.
        objective: for Pyro models, a name in :data:`probgen.infer.OBJECTIVES`.
        num_particles: ELBO samples per example during training.
        eval_particles: ELBO samples per example for the validation loss.
            (``objective``, ``num_particles`` and ``eval_particles`` build the step of a
            probgen model; a step given ready-made has its own, and ``fit`` refuses them.)
        clip_norm: clip the gradient norm to this, if set.
        eval_batch_size: batch size of the validation pass.
        checkpoint: path of the checkpoint file written after every epoch.
        resume: continue from ``checkpoint`` when it exists.
        progress: show a tqdm progress bar.
        verbose: print one line per epoch (losses, time), and the early-stopping line.
        validate: Pyro's argument and support validation (``pyro.enable_validation``)
            inside the run. ``None`` (the default) depends on what is trained:

            * a model/guide pair, a step or a network of the user's: left exactly as the
              user set it, as under Pyro's own ``SVI``;
            * a probgen model (a registered class: VAE, CVAE, flows, ...): switched
              **off** for the duration of ``fit`` (and back afterwards). ``fit`` checks
              such a model's data whole before the first step, and Pyro's per-step
              support checks cost about 12% of a small model's step on the CPU and a
              host-device sync each on a GPU.

            ``True``/``False`` force it on/off for the run, whatever is trained.
        matmul_precision: (a speed setting, as the three below: opt-in, since none has
            yet been measured on a GPU for probgen's models; :mod:`probgen.train.speed`)
            ``None`` (torch's setting as the user left it), ``"highest"``,
            ``"high"`` (TensorFloat-32 matrix products on Ampere or later GPUs) or
            ``"medium"`` (bfloat16 products where available, the CPU's oneDNN included):
            :func:`torch.set_float32_matmul_precision` for the duration of ``fit``; the
            user's setting is restored when it returns.
        precision: ``None`` (float32 throughout) or ``"bf16"``: the step's networks (the
            plain ``nn.Module`` parts of the model: encoders, decoders, discriminators,
            a flow's coupling networks) run under bfloat16 autocast on the run's device
            (CUDA with bfloat16 support, or the CPU), their outputs back in float32.
            Distributions, log-densities, log-determinants, the ELBO's sums and the
            loss stay float32, as do parameters, gradients and optimizer states.
            Validation and callbacks during ``fit`` see the same networks.
        compile: ``False``, ``True`` or a dict of :func:`torch.compile` keyword arguments
            (``{"mode": "max-autotune"}``, ``{"backend": "aot_eager"}``): compile the
            same networks after a first eager step (Pyro creates parameters lazily
            there). Pyro callables (``PyroModule``, AutoGuides, transforms) are not
            compiled. Compiling takes seconds to minutes on the first steps (and once
            more for evaluation mode).
        data_on_device: where a :class:`~probgen.data.TensorData` stays during a run on a
            GPU. ``True``: on the GPU, whole (the fast path: batches are slices, no copy
            per batch); ``False``: in host memory, each batch gathered into pinned memory
            and copied asynchronously; ``"auto"`` (the default): on the GPU when it
            takes at most half of the GPU's free memory (MNIST-size data always does),
            else in host memory. Nothing changes on the CPU.

    ``matmul_precision``, ``precision``, ``compile`` and ``data_on_device`` may change
    when a run is resumed (a run trained on a GPU in bfloat16 can go on on a CPU);
    ``fit`` says so in one line when ``precision`` or ``matmul_precision`` differ.
    """

    epochs: int | None = None
    num_steps: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    phase_optim: dict[str, dict[str, Any]] | None = None
    weight_decay: float = 0.0
    lr_schedule: str | None = None
    warmup_epochs: float = 0.0
    patience: int | str | None = AUTO
    min_delta: float = 0.0
    monitor: str = "val_loss"
    mode: str = "min"
    restore_best: bool | str = AUTO
    device: str = "auto"
    seed: int | None = None
    objective: str = "trace"
    num_particles: int = 1
    eval_particles: int | None = None
    clip_norm: float | None = None
    eval_batch_size: int = 1000
    checkpoint: str | None = None
    resume: bool = False
    progress: bool = True
    verbose: bool = True
    validate: bool | None = None
    matmul_precision: str | None = None
    precision: str | None = None
    compile: bool | dict[str, Any] = False
    data_on_device: bool | str = AUTO

    def __post_init__(self):
        for f in fields(self):
            setattr(self, f.name, _plain(getattr(self, f.name)))
        self.phase_optim = _json_form(self.phase_optim)

    def check(self) -> FitConfig:
        """Refuse bad settings, one line each (:class:`~probgen.errors.ConfigError`)."""
        if self.epochs is not None and self.num_steps is not None:
            raise ConfigError(
                f"give epochs or num_steps, not both (epochs={self.epochs!r}, "
                f"num_steps={self.num_steps!r})."
            )
        for name in ("batch_size", "num_particles", "eval_batch_size"):
            checks.positive_int(name, getattr(self, name))
        for name in ("epochs", "num_steps", "eval_particles"):
            checks.optional(checks.positive_int, name, getattr(self, name))
        if self.patience != AUTO:
            checks.optional(
                checks.positive_int,
                "patience",
                self.patience,
                hint="or None (no early stopping) or 'auto'",
            )
        if self.restore_best != AUTO and not isinstance(self.restore_best, bool):
            raise ConfigError(
                f"restore_best must be True, False or 'auto', got {self.restore_best!r}."
            )
        if self.validate is not None and not isinstance(self.validate, bool):
            raise ConfigError(
                f"validate must be True, False or None (as the user set it), got {self.validate!r}."
            )
        checks.optional(checks.seed, "seed", self.seed, hint="or None")
        self._check_speed()
        checks.positive_float("lr", self.lr)
        checks.nonnegative_float("weight_decay", self.weight_decay)
        checks.nonnegative_float("min_delta", self.min_delta)
        checks.optional(checks.positive_float, "clip_norm", self.clip_norm)
        checks.nonnegative_float("warmup_epochs", self.warmup_epochs)
        checks.choice("mode", self.mode, ("min", "max"))
        if not isinstance(self.monitor, str) or not self.monitor:
            raise ConfigError(f"monitor must name a history entry, got {self.monitor!r}.")
        OPTIMIZERS.get(self.optimizer)
        self._check_phase_optim()
        OBJECTIVES.get(self.objective)
        if self.lr_schedule is not None:
            SCHEDULES.get(self.lr_schedule)
        if self.resume and not self.checkpoint:
            raise ConfigError("resume=True needs a checkpoint path to resume from.")
        resolve_device(self.device)
        return self

    def _check_phase_optim(self) -> None:
        """The form of ``phase_optim``; which phases exist and which settings their
        optimizers take are judged against the step
        (:func:`probgen.train.phases.check_phase_optim`)."""
        po = self.phase_optim
        if po is None:
            return
        if not isinstance(po, dict):
            raise ConfigError(
                f"phase_optim must be a dict of phase name -> optimizer settings "
                f"({{'D': {{'lr': 1e-4}}}}), got {po!r}."
            )
        for name, settings in po.items():
            if not isinstance(name, str):
                raise ConfigError(f"phase_optim: phase names must be strings, got {name!r}.")
            if not isinstance(settings, dict):
                raise ConfigError(
                    f"phase_optim[{name!r}] must be a dict of optimizer settings "
                    f"({{'lr': 1e-4, 'betas': [0.5, 0.999]}}), got {settings!r}."
                )
            for key, value in settings.items():
                if not isinstance(key, str):
                    raise ConfigError(
                        f"phase_optim[{name!r}]: setting names must be strings, got {key!r}."
                    )
                _refuse_non_json(f"phase_optim[{name!r}][{key!r}]", value)
            if "lr" in settings:
                checks.positive_float(f"phase_optim[{name!r}]['lr']", settings["lr"])
            if "optimizer" in settings:
                if not isinstance(settings["optimizer"], str):
                    raise ConfigError(
                        f"phase_optim[{name!r}]['optimizer'] must be a name in "
                        f"probgen.train.OPTIMIZERS ({', '.join(OPTIMIZERS)}), got "
                        f"{settings['optimizer']!r}."
                    )
                if settings["optimizer"] not in OPTIMIZERS:
                    raise ConfigError(
                        f"phase_optim[{name!r}]['optimizer']: unknown optimizer "
                        f"{settings['optimizer']!r}; choose one of "
                        f"{', '.join(OPTIMIZERS)}."
                    )

    def _check_speed(self) -> None:
        if self.matmul_precision is not None and self.matmul_precision not in MATMUL_PRECISIONS:
            raise ConfigError(
                f"matmul_precision must be one of {list(MATMUL_PRECISIONS)} or "
                f"None (torch's setting as it is), got {self.matmul_precision!r}."
            )
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision must be None (float32) or one of {list(PRECISIONS)}, "
                f"got {self.precision!r}."
            )
        if isinstance(self.compile, dict):
            unknown = sorted(set(self.compile) - COMPILE_OPTIONS)
            if unknown:
                raise ConfigError(
                    f"compile: {unknown} are not torch.compile arguments; give "
                    f"some of {sorted(COMPILE_OPTIONS)}, or compile=True."
                )
            modes = (
                None,
                "default",
                "reduce-overhead",
                "max-autotune",
                "max-autotune-no-cudagraphs",
            )
            if self.compile.get("mode") not in modes:
                raise ConfigError(
                    f"compile: mode must be one of {list(modes)}, got {self.compile['mode']!r}."
                )
            backend = self.compile.get("backend")
            if isinstance(backend, str):
                import torch._dynamo

                names = torch._dynamo.list_backends(exclude_tags=())
                if backend not in names:
                    raise ConfigError(
                        f"compile: backend {backend!r} is not one of torch's ({', '.join(names)})."
                    )
        elif not isinstance(self.compile, bool):
            raise ConfigError(
                f"compile must be True, False or a dict of torch.compile "
                f"arguments, got {self.compile!r}."
            )
        if self.data_on_device != AUTO and not isinstance(self.data_on_device, bool):
            raise ConfigError(
                f"data_on_device must be True, False or 'auto', got {self.data_on_device!r}."
            )

    def resolved(self, has_val: bool) -> FitConfig:
        """These settings with ``"auto"`` decided for a run with (or without) validation
        data: what the run does, and what its result and checkpoint record."""
        asked = self.monitor != "val_loss" or isinstance(self.patience, int)
        active = has_val or asked
        patience = (
            (DEFAULT_PATIENCE if active else None) if self.patience == AUTO else self.patience
        )
        restore = active if self.restore_best == AUTO else self.restore_best
        epochs = self.epochs
        if epochs is None and self.num_steps is None:
            epochs = DEFAULT_EPOCHS
        return replace(self, patience=patience, restore_best=restore, epochs=epochs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FitConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown FitConfig settings: {sorted(unknown)}.")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> FitConfig:
        return cls.from_dict(json.loads(text))

    def explicit(self) -> set:
        """The settings that differ from the defaults."""
        default = FitConfig()
        return {f.name for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)}


# Settings that do not change what a run computes: a resumed run may change them freely.
# (epochs and patience only say when to stop; lr is applied with a message, and so are
# phase_optim's learning rates: its other settings are compared by probgen.train.resume.)
# The speed settings change how, not what, a run computes (within rounding), like the
# device; a resumed run may change them (precision and matmul_precision with a message).
NOT_RUN_DEFINING = (
    "epochs",
    "num_steps",
    "patience",
    "device",
    "checkpoint",
    "resume",
    "progress",
    "verbose",
    "validate",
    "eval_batch_size",
    "lr",
    "phase_optim",
    "restore_best",
    "matmul_precision",
    "precision",
    "compile",
    "data_on_device",
)


@dataclass
class FitResult:
    """What a run returns: per-epoch history and where the best epoch was.

    ``history`` holds one dict per epoch: ``epoch``, ``train_loss`` (the first phase's
    loss per example), ``train_loss/<phase>`` for every phase of a multi-phase step,
    ``val_loss``, ``lr``, ``seconds`` and whatever the callbacks added. ``steps``
    counts the training steps (batches) of the whole run, resumed parts included;
    ``config`` holds the settings the run used, with ``"auto"`` decided, and ``None`` for
    the settings a ready-made step does not read (``objective``, ``num_particles``, ...).
    ``data_settings`` is how the training data was made (a :class:`~probgen.data.TensorData`'s
    ``settings``, ``None`` for data without them), so that
    ``model.save_pretrained(DIR, data_settings=result)`` records it.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_loss: float = math.inf
    best_value: float | None = None
    monitor: str = "val_loss"
    stopped_early: bool = False
    steps: int = 0
    wall_time: float = 0.0
    device: str = "cpu"
    world_size: int = 1
    config: FitConfig | None = None
    data_settings: dict[str, Any] | None = None

    @property
    def train_loss(self) -> list[float]:
        return [h["train_loss"] for h in self.history]

    @property
    def val_loss(self) -> list[float | None]:
        return [h["val_loss"] for h in self.history]

    def curve(self, key: str) -> list[float | None]:
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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["config"] = self.config.to_dict() if self.config else None
        return d

    def __repr__(self) -> str:
        last = self.history[-1] if self.history else {}
        return (
            f"FitResult(epochs_run={self.epochs_run}, best_epoch={self.best_epoch}, "
            f"best_loss={self.best_loss:.4f}, last={last.get('train_loss')}, "
            f"stopped_early={self.stopped_early}, wall_time={self.wall_time:.1f}s)"
        )
