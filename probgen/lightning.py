"""probgen's steps under Lightning's ``Trainer`` (optional: ``pip install "probgen[lightning]"``).

:class:`ProbgenModule` wraps anything :func:`probgen.fit` trains (a probgen model, an
:class:`~probgen.train.SVIStep` of any Pyro model/guide pair, a
:class:`~probgen.train.LossStep`, a :class:`~probgen.train.PhasedStep` of adversarial
phases) in a ``LightningModule``, so that a Lightning user gets its ``Trainer``
(accelerators and devices, strategies, precision, loggers, callbacks, checkpoints)::

    import lightning.pytorch as L
    from probgen.lightning import ProbgenModule, TensorBatches

    module = ProbgenModule(vae, lr=1e-3)
    L.Trainer(max_epochs=10).fit(module, TensorBatches(train, batch_size=128, shuffle=True))

One step of the Trainer does what one step of :func:`probgen.fit` does, with probgen's
own pieces: the step's phases and their losses, the optimizers of
:data:`~probgen.train.OPTIMIZERS` and the schedules of :data:`~probgen.train.SCHEDULES`
built as the fit loop builds them (one optimizer per phase), parameters found by tracing
Pyro's param sites as ``pyro.infer.SVI`` finds them, the step context of
:mod:`probgen.infer.context` (with the data of a :class:`TensorBatches` checked whole once,
when training, validation or testing starts, so that the model skips its per-batch
checks as in ``fit``), and a probgen model's own scope of Pyro's param store. So
the same model, data order, seed and settings give the same parameters under either
(``tests/test_lightning.py`` checks it for a VAE, a bare Pyro pair with an AutoNormal
guide and a GAN's two phases).

Lightning's own parts do what they do for any module: moving to devices, precision,
gradient synchronisation, logging (``train_loss`` and, for several phases,
``train_loss/<phase>`` per step and per epoch; ``val_loss``, ``test_loss``), checkpoints
(weights, optimizers, schedules). What :func:`probgen.fit` does besides the step (early
stopping, best weights, checkpoint files, progress) is the Trainer's business here, with
its callbacks.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import fields, replace
from typing import Any

import numpy as np
import pyro
import torch
from torch import nn

try:
    import lightning.pytorch as L
except ImportError as err:  # an optional extra: say how to get it, in one line
    raise ImportError(
        "probgen.lightning needs Lightning: pip install 'probgen[lightning]' (or pip install "
        "lightning)."
    ) from err

from probgen import checks
from probgen.data.tensors import TensorData
from probgen.errors import CheckpointError, ConfigError, TrainingDivergedError
from probgen.infer.batches import batch_len
from probgen.infer.context import StepContext
from probgen.infer.phases import traced_params
from probgen.infer.steps import STEP_SETTINGS, Step, as_step
from probgen.models.registry import is_probgen_model
from probgen.train.batches import as_batch, check_data_once
from probgen.train.config import FitConfig
from probgen.train.phases import PhaseState, check_phase_optim

__all__ = ["ProbgenModule", "TensorBatches"]

# The settings of FitConfig that define the step and its optimizers: what this module reads.
STEP_AND_OPTIMIZER = (
    "lr",
    "optimizer",
    "phase_optim",
    "weight_decay",
    "lr_schedule",
    "warmup_epochs",
    "clip_norm",
    "validate",
) + STEP_SETTINGS

# The fit loop's own settings, and what takes their place under Lightning.
LOOP_ONLY = {
    "epochs": "Trainer(max_epochs=...)",
    "num_steps": "Trainer(max_steps=...) (which counts every phase's optimizer steps)",
    "batch_size": "the data loader's batch size (TensorBatches(data, batch_size=...))",
    "eval_batch_size": "the validation data loader's batch size",
    "device": "Trainer(accelerator=..., devices=...)",
    "seed": "lightning.pytorch.seed_everything(...) or probgen.train.set_seed(...)",
    "patience": "the EarlyStopping callback",
    "min_delta": "the EarlyStopping callback",
    "monitor": "the EarlyStopping / ModelCheckpoint callbacks",
    "mode": "the EarlyStopping / ModelCheckpoint callbacks",
    "restore_best": "ModelCheckpoint(save_top_k=1) and its best_model_path",
    "checkpoint": "the ModelCheckpoint callback",
    "resume": "Trainer.fit(..., ckpt_path=...)",
    "progress": "Trainer(enable_progress_bar=...)",
    "verbose": "Trainer(enable_model_summary=...) and its loggers",
    "precision": 'Trainer(precision="bf16-mixed")',
    "matmul_precision": "torch.set_float32_matmul_precision(...) before Trainer.fit",
    "compile": "compile the networks yourself (torch.compile) before Trainer.fit",
    "data_on_device": "a DataLoader(pin_memory=True) (the Trainer moves each batch)",
}


class TensorBatches:
    """A :class:`~probgen.data.TensorData` as an iterable of batches for Lightning.

    Each pass yields what :func:`probgen.fit` reads from the same data: tuples of the
    tensors, shuffled by ``generator`` (a data set of one batch keeps its order, as in
    ``fit``) with the data's own transform applied. Under ``probgen.fit(..., seed=s)`` the
    batch order is that of ``TensorBatches(data, batch_size, shuffle=True,
    generator=torch.Generator().manual_seed(s))``. One process only: a multi-process
    strategy needs a ``torch.utils.data.DataLoader``, which Lightning can shard.

    Args:
        data: the data set.
        batch_size: examples per batch.
        shuffle: a new order every pass.
        generator: the generator of the order and the transform's draws (``None``:
            torch's global one).
        drop_last: leave out a last, smaller batch.
    """

    def __init__(
        self,
        data: TensorData,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ):
        if not isinstance(data, TensorData):
            raise ConfigError(
                f"TensorBatches takes a probgen.data.TensorData, got "
                f"{type(data).__name__}; wrap other data sets in a "
                f"torch.utils.data.DataLoader."
            )
        batch_size = checks.positive_int("batch_size", batch_size)
        self.data, self.batch_size, self.drop_last = data, batch_size, drop_last
        self.shuffle = bool(shuffle) and len(data) > batch_size
        self.generator = generator

    def __iter__(self) -> Iterator[tuple]:
        return self.data.batches(
            self.batch_size,
            shuffle=self.shuffle,
            generator=self.generator,
            drop_last=self.drop_last,
        )

    def __len__(self) -> int:
        return self.data.num_batches(self.batch_size, drop_last=self.drop_last)


# --------------------------------------------------------------------------- helpers


def _program(phases) -> list[list[int]]:
    """The phase runs of one fit-loop step, cut where a run takes a fresh batch.

    The fit loop draws the next batch inside a step for each repeat after the first of
    a phase with ``fresh_batch`` (a GAN's k discriminator steps); Lightning hands a
    module one batch per ``training_step``. So the step is cut into pieces of one batch
    each: ``Phase("D", repeats=2)``, ``Phase("G")`` -> ``[[D], [D, G]]``.
    """
    pieces: list[list[int]] = [[]]
    for i, ph in enumerate(phases):
        for r in range(ph.repeats):
            if r and ph.fresh_batch:
                pieces.append([])
            pieces[-1].append(i)
    return pieces


def _generators(loader) -> list[torch.Generator]:
    """The generators a data loader draws from when a pass starts (its own, its
    sampler's, its batch sampler's sampler's)."""
    found, seen = [], set()
    candidates = [getattr(loader, "generator", None)]
    sampler = getattr(loader, "sampler", None)
    candidates.append(getattr(sampler, "generator", None))
    batch_sampler = getattr(loader, "batch_sampler", None)
    candidates.append(getattr(getattr(batch_sampler, "sampler", None), "generator", None))
    for g in candidates:
        if isinstance(g, torch.Generator) and id(g) not in seen:
            seen.add(id(g))
            found.append(g)
    return found


@contextlib.contextmanager
def _random_state_kept(generators=(), cuda_devices=()):
    """Everything drawn inside is drawn from copies: torch's, numpy's and Python's global
    generators and ``generators`` are as they were afterwards."""
    py, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002 (the global one)
    kept = [(g, g.get_state()) for g in generators]
    with torch.random.fork_rng(devices=list(cuda_devices)):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)  # noqa: NPY002
            for g, state in kept:
                g.set_state(state)


# --------------------------------------------------------------------------- the module


class ProbgenModule(L.LightningModule):
    """A probgen step as a ``LightningModule``: ``Trainer.fit`` runs it as
    :func:`probgen.fit` would.

    Every phase of the step has an optimizer of its own (Lightning's manual optimization),
    built from :data:`~probgen.train.OPTIMIZERS` with the phase's settings or the ones
    given here, and a schedule of :data:`~probgen.train.SCHEDULES` when ``lr_schedule``
    is set (spanning the run's ``Trainer.estimated_stepping_batches``). Each
    ``training_step`` runs the phases on the batch in order, as the fit loop does:
    loss, ``manual_backward``, clipping (``clip_norm``), optimizer step, gradients
    cleared, schedule stepped. A phase that runs ``k`` times on fresh batches (a GAN's
    discriminator) takes one Lightning batch per run, so the batches reach the phases in
    the fit loop's order; a ``Trainer(max_steps=...)`` counts every phase's optimizer
    steps.

    Parameters that Pyro creates lazily (an AutoGuide, ``pyro.param`` sites) are created
    before the optimizers are built, by one traced pass of each discovering phase on one
    batch (``example_batch``, or the first training batch) in ``setup``, as Pyro's
    ``examples/svi_lightning.py`` runs one mini-batch before training; that pass draws
    from copies of the random generators and leaves the modules' buffers as they were,
    so the run that follows draws what ``probgen.fit``'s draws (exactly so when the
    parameters' initialization itself draws nothing, e.g.
    ``AutoNormal(model, init_loc_fn=init_to_mean)``). Parameters found later, as
    ``SVI.step`` finds them, join their phase's optimizer then.

    A model or guide that is an ``nn.Module`` (an AutoGuide, a ``PyroModule``) is a
    submodule here, so Lightning moves, checkpoints and synchronises its parameters;
    ``pyro.param`` sites outside any module follow the module's device and dtype and are
    saved in Lightning's checkpoints (key ``"probgen"``), but a multi-process strategy
    needs every parameter in a module (:class:`~probgen.errors.ConfigError` otherwise).

    Args:
        step: what :func:`probgen.fit` takes: a probgen model, an
            :class:`~probgen.train.SVIStep`, a :class:`~probgen.train.LossStep`, a
            :class:`~probgen.train.PhasedStep`, or a module with ``model`` and ``guide``.
        config: a :class:`~probgen.train.FitConfig` to take the settings from; only
            those of the step and its optimizers are read (``lr``, ``optimizer``,
            ``phase_optim``, ``weight_decay``, ``lr_schedule``, ``warmup_epochs``, ``clip_norm``,
            ``validate``, ``objective``, ``num_particles``, ``eval_particles``); the
            fit loop's own (``epochs``, ``patience``, ``device``, and the speed settings
            ``precision``, ``matmul_precision``, ``compile``, ``data_on_device``) are
            refused when set, with the Trainer's counterpart named.
        batch_to_args: ``f(batch) -> (args, kwargs)`` for a model the step is built for
            (as ``fit(batch_to_args=...)``).
        example_batch: a batch as the training data gives it, for the first traced
            pass (default: the first batch of the Trainer's training data, drawn
            without moving any generator).
        **settings: settings of ``config`` to replace (``lr=1e-3``, ``clip_norm=5.0``).

    Raises:
        ConfigError: a setting of the fit loop's own, a setting a ready-made step does
            not read, or bad settings (at construction); a phase without parameters,
            16-bit mixed precision with ``clip_norm`` or a phase that runs its own
            backward, a multi-process strategy with parameters outside modules (in
            ``setup``, before any step).
        DataError: the data of a :class:`TensorBatches` fails the model's check (when
            training, validation or testing starts, before its first step).
        TrainingDivergedError: a non-finite loss on the CPU, before its update.
    """

    def __init__(
        self,
        step: Any,
        config: FitConfig | None = None,
        *,
        batch_to_args: Callable[..., Any] | None = None,
        example_batch: Any = None,
        **settings: Any,
    ) -> None:
        super().__init__()
        if config is not None and not isinstance(config, FitConfig):
            raise ConfigError(
                f"config must be a probgen.train.FitConfig, got {type(config).__name__}."
            )
        known = {f.name for f in fields(FitConfig)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(
                f"ProbgenModule: unknown settings {unknown}; the step's and its "
                f"optimizers' are {sorted(STEP_AND_OPTIMIZER)}."
            )
        given = set(settings) | (config.explicit() if config is not None else set())
        loop_only = sorted(given & set(LOOP_ONLY))
        if loop_only:
            raise ConfigError(
                "ProbgenModule: "
                + "; ".join(f"{k} is the fit loop's, use {LOOP_ONLY[k]}" for k in loop_only)
                + "."
            )
        config = replace(config or FitConfig(), **settings).check()
        # The Trainer's callbacks stop early and keep the best weights, not the step.
        config = replace(config, patience=None, restore_best=False)
        if isinstance(step, Step):
            if batch_to_args is not None:
                raise ConfigError(
                    "batch_to_args adapts the batches of a step built here; give "
                    "a ready-made step its own: SVIStep(model, guide, "
                    "batch_to_args=fn)."
                )
            refused = sorted(given & step.ignored_settings())
            if refused:
                raise ConfigError(
                    f"ProbgenModule: {', '.join(refused)} set, but the step given "
                    f"({type(step).__name__} of {step.describe()}) brings its own; set "
                    f"them on the step, or pass the model itself."
                )
            config = replace(config, **dict.fromkeys(step.ignored_settings()))
        self.config = config
        self.step = as_step(step, config, batch_to_args)
        check_phase_optim(self.step.phases, config, self.step.describe())
        self.automatic_optimization = False
        self.example_batch = example_batch
        # The networks, where Lightning moves, checkpoints and synchronises them.
        self.module = self.step.module
        inside = {id(m) for m in self.module.modules()} if self.module is not None else set()
        pyro_modules = {}
        for key in ("model", "guide"):
            fn = getattr(self.step, key, None)
            if isinstance(fn, nn.Module) and id(fn) not in inside:
                pyro_modules[key] = fn  # an AutoGuide, a PyroModule
        self.pyro_modules = nn.ModuleDict(pyro_modules)
        self._program = _program(self.step.phases)
        self._states: list[PhaseState] | None = None
        self._store_state: dict[str, Any] = {"params": {}, "constraints": {}}
        self._piece, self._ctx = 0, {}
        self._pending: dict[str, Any] | None = None
        # which data were checked whole (see _check_loader), by stage and by data set
        self._checked = {"train": False, "val": False, "test": False}
        self._data_checks: dict[int, tuple[TensorData, bool]] = {}

    # ------------------------------------------------------------------ contexts
    def _validation_setting(self) -> bool | None:
        # The fit loop's rule (Run._validation_setting): as asked; the user's own for
        # their steps; off for a probgen model, whose data checks stay in the model.
        if self.config.validate is not None:
            return self.config.validate
        return False if is_probgen_model(self.step.module) else None

    @contextlib.contextmanager
    def _running(self, data_checked: bool = False):
        """What the fit loop holds around its steps, held here around each call: a
        probgen model's own scope of Pyro's param store, Pyro's validation setting, the
        step context (``data_checked``: the data these steps read was checked whole).
        Per call rather than for the run, because Lightning calls a module one hook at a
        time and skips ``teardown`` after an exception: a scope held across calls could
        leave the user's param store replaced."""
        with contextlib.ExitStack() as stack:
            if self.step.isolate_param_store:
                stack.enter_context(pyro.get_param_store().scope(self._store_state))
            validate = self._validation_setting()
            if validate is not None:
                stack.enter_context(pyro.validation_enabled(validate))
            stack.enter_context(
                StepContext(data_checked=data_checked, module=self.step.declared_module)
            )
            yield

    # ------------------------------------------------------------------ data checks
    def _check_loader(self, loader) -> bool:
        """Check a :class:`TensorBatches`' data whole, once per data set, as the fit loop
        does before its first step (:func:`~probgen.train.batches.check_data_once`); True
        when that covers every batch, so the model skips its per-batch checks (a host
        sync each on a GPU). Other loaders (a ``DataLoader``, several loaders) are
        checked batch by batch by the model."""
        if not isinstance(loader, TensorBatches):
            return False
        key = id(loader.data)
        if key not in self._data_checks:
            # the data object kept with its result, so that its id is not reused
            self._data_checks[key] = (loader.data, check_data_once(self.step, loader.data))
        return self._data_checks[key][1]

    def on_train_start(self) -> None:
        # after setup and the sanity check's validation, before the first training step
        self._checked["train"] = self._check_loader(self.trainer.train_dataloader)

    def on_validation_start(self) -> None:
        self._checked["val"] = self._check_loader(self.trainer.val_dataloaders)

    def on_test_start(self) -> None:
        self._checked["test"] = self._check_loader(self.trainer.test_dataloaders)

    # ------------------------------------------------------------------ set-up
    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        trainer = self.trainer
        self._states = [PhaseState(p, self.config, self.step.module) for p in self.step.phases]
        for st in self._states:
            if not st.phase.discover and not st.params:
                raise ConfigError(
                    f"phase {st.phase.name!r} of {self.step.describe()} has no "
                    f"trainable parameters."
                )
        if any(st.phase.discover is True for st in self._states):
            self._warm_up()
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            clipped = self.config.clip_norm is not None or any(
                st.phase.clip_norm is not None for st in self._states
            )
            owns = [st.phase.name for st in self._states if st.phase.owns_backward]
            if clipped or owns:
                why = "clip_norm" if clipped else f"phase {owns[0]!r} running its own backward"
                raise ConfigError(
                    f"ProbgenModule: {why} cannot go with 16-bit mixed precision "
                    f"(its gradients are scaled); use precision='bf16-mixed' or "
                    f"'32-true'."
                )
        loose = self._loose()
        if trainer.world_size > 1 and loose:
            raise ConfigError(
                f"ProbgenModule: under a {trainer.world_size}-process strategy every parameter "
                f"must be in a module, so that it is synchronised; {', '.join(list(loose)[:3])} "
                f"{'is' if len(loose) == 1 else 'are'} not (a pyro.param site: use an AutoGuide "
                f"or a PyroModule, or one process)."
            )
        if self._pending is not None:
            self._restore_loose(self._pending)
            self._pending = None
        self._piece, self._ctx = 0, {}

    def _warm_up(self) -> None:
        """One traced pass of each discovering phase on one batch, without a step, so that
        the parameters Pyro creates lazily exist before Lightning moves the module, wraps
        it for its strategy, restores a checkpoint and builds the optimizers."""
        device = next((p.device for p in self.parameters()), None)
        cuda = (
            [device.index if device.index is not None else torch.cuda.current_device()]
            if device is not None and device.type == "cuda"
            else []
        )
        if self.example_batch is not None:
            batch = self.example_batch
        else:
            # Lightning sets its training data up after configure_optimizers; this is
            # what its estimated_stepping_batches does to read it earlier.
            self.trainer.fit_loop.setup_data()
            loader = self.trainer.train_dataloader
            if loader is None:
                raise ConfigError(
                    "ProbgenModule: the Trainer has no training data to find "
                    "Pyro's lazily made parameters on; give example_batch=."
                )
            with _random_state_kept(_generators(loader), cuda):
                batch = next(iter(loader), None)
            if batch is None:
                raise ConfigError("ProbgenModule: the training data gave no batch.")
        if device is not None:
            batch = self.on_before_batch_transfer(batch, 0)
            batch = self.transfer_batch_to_device(batch, device, 0)
            batch = self.on_after_batch_transfer(batch, 0)
        batch = as_batch(batch, None)
        buffers = [(b, b.detach().clone()) for b in self.buffers()]
        ctx: dict[str, Any] = {}
        with _random_state_kept(cuda_devices=cuda), self._running():
            for st in self._states:
                if st.phase.discover:
                    _, found = traced_params(lambda st=st: st.phase.loss(batch, ctx))
                    for name, t in found.items():
                        st.add(f"pyro:{name}", t)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for st in self._states:  # a phase that runs its own backward left gradients
            for p in st.params:
                p.grad = None

    def _loose(self) -> dict[str, torch.Tensor]:
        """The phases' parameters that no submodule holds (``pyro.param`` sites outside
        modules, parameters a phase names from elsewhere), by name."""
        owned = {id(p) for p in self.parameters()}
        out: dict[str, torch.Tensor] = {}
        for st in getattr(self, "_states", None) or ():
            for name, p in zip(st.names, st.params):
                if id(p) not in owned:
                    out.setdefault(
                        name if name.startswith("pyro:") else f"{st.phase.name}:{name}", p
                    )
        return out

    def _apply(self, fn, *args, **kwargs):
        # Lightning moves and converts a module through nn.Module._apply (to(), double(),
        # its precision plugins); the parameters outside modules follow, in place as
        # nn.Module moves its own, so that Pyro's param store and the optimizers still
        # hold them.
        out = super()._apply(fn, *args, **kwargs)
        with torch.no_grad():
            for t in self._loose().values():
                t.data = fn(t)
                if t.grad is not None:
                    t.grad = fn(t.grad)
        return out

    def configure_optimizers(self) -> Any:
        if self._states is None:
            raise ConfigError(
                "ProbgenModule trains under Trainer.fit (its setup finds the "
                "parameters of each phase)."
            )
        total = per_epoch = 1
        if self.config.lr_schedule is not None:
            total = self.trainer.estimated_stepping_batches
            if not math.isfinite(total):
                raise ConfigError(
                    f"lr_schedule={self.config.lr_schedule!r} spans the run: give "
                    f"the Trainer max_epochs or max_steps."
                )
            total = int(total)
            per_epoch = max(int(min(self.trainer.num_training_batches, total)), 1)
        optimizers, schedulers = [], []
        for st in self._states:
            if not st.params:
                raise ConfigError(
                    f"phase {st.phase.name!r} of {self.step.describe()} found no trainable "
                    f"parameters: its loss touched no pyro.param / pyro.module site and it "
                    f"declares none."
                )
            st.build_optimizer(total, per_epoch)
            optimizers.append(st.optimizer)
            if st.scheduler is not None:
                schedulers.append(st.scheduler)
        return (optimizers, schedulers) if schedulers else optimizers

    # ------------------------------------------------------------------ steps
    def on_train_epoch_start(self) -> None:
        # The fit loop starts every epoch with a whole step (fresh batches do not cross
        # epochs).
        self._piece, self._ctx = 0, {}

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        batch = as_batch(batch, None)
        optimizers = self.optimizers()
        if not isinstance(optimizers, list):
            optimizers = [optimizers]
        if self._piece == 0:
            self._ctx = {}  # shared by the phases of one fit-loop step
        reported: dict[str, list[torch.Tensor]] = {}
        with self._running(self._checked["train"]):
            for i in self._program[self._piece]:
                st = self._states[i]
                value = self._run_phase(st, optimizers[i], batch, self._ctx, batch_idx)
                reported.setdefault(st.phase.name, []).append(value)
        self._piece = (self._piece + 1) % len(self._program)
        return self._log_losses(reported, batch_len(batch))

    def _run_phase(self, st: PhaseState, optimizer, batch, ctx, batch_idx) -> torch.Tensor:
        """One optimizer step of one phase: the fit loop's ``Run.run_phase``, with
        Lightning's backward (precision, strategy), clipping and optimizer step in place
        of the loop's own (which average gradients over torchrun's processes itself)."""
        ph = st.phase
        if ph.discover is True or (ph.discover == "first" and st.steps == 0):
            out, found = traced_params(lambda: ph.loss(batch, ctx))
            for name, t in found.items():
                st.add(f"pyro:{name}", t)
        else:
            out = ph.loss(batch, ctx)
        loss, reported = out if isinstance(out, tuple) else (out, out)
        reported = reported.detach() if torch.is_tensor(reported) else torch.as_tensor(reported)
        if reported.device.type == "cpu" and not math.isfinite(float(reported)):
            phase = f", phase {ph.name!r}" if len(self._states) > 1 else ""
            raise TrainingDivergedError(
                f"the training loss became {float(reported)} at epoch {self.current_epoch + 1}, "
                f"batch {batch_idx + 1}{phase}; that update was not made. Try a lower learning "
                f"rate, clip_norm, or check the data for NaNs.",
                epoch=self.current_epoch,
                step=batch_idx,
            )
        if not ph.owns_backward:
            if any(p.grad is not None for p in st.params):
                optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
        clip = ph.clip_norm if ph.clip_norm is not None else self.config.clip_norm
        if clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if st.scheduler is not None:
            st.scheduler.step()
        st.steps += 1
        return reported

    def _log_losses(self, reported: dict[str, list[torch.Tensor]], n: int) -> dict[str, Any]:
        """``train_loss`` (the first phase's, per example) and ``train_loss/<phase>`` of a
        step of several phases, per step and per epoch (weighted by examples, as the fit
        loop's epoch means)."""
        first = self._states[0].phase.name
        sync = self.trainer.world_size > 1
        out: dict[str, Any] = {}
        for name, values in reported.items():
            value = values[0] if len(values) == 1 else torch.stack(values).mean()
            b = n * len(values)
            keys = (["train_loss"] if name == first else []) + (
                [f"train_loss/{name}"] if len(self._states) > 1 else []
            )
            for key in keys:
                self.log(
                    key,
                    value,
                    on_step=True,
                    on_epoch=True,
                    batch_size=b,
                    prog_bar=key == "train_loss",
                    sync_dist=sync,
                )
            out[name] = value
            if name == first:
                out["loss"] = value
        return out

    def _eval_step(self, batch, key: str):
        batch = as_batch(batch, None)
        with self._running(self._checked["val" if key == "val_loss" else "test"]):
            value = self.step.eval_loss(batch)
        if value is None:
            return None
        self.log(
            key,
            value,
            on_step=False,
            on_epoch=True,
            batch_size=batch_len(batch),
            prog_bar=True,
            sync_dist=self.trainer.world_size > 1,
        )
        return value

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        """The step's validation loss per example, logged as ``val_loss`` (a step without
        one, such as a GAN's, logs nothing)."""
        return self._eval_step(batch, "val_loss")

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        """As :meth:`validation_step`, logged as ``test_loss``."""
        return self._eval_step(batch, "test_loss")

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["probgen"] = {
            "loose": {k: v.detach().clone() for k, v in self._loose().items()},
            "phase_steps": [st.steps for st in self._states or ()],
            "piece": self._piece,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("probgen")
        if saved is None:
            return
        if self._states is None:  # before setup: applied once the phases exist
            self._pending = saved
            return
        self._restore_loose(saved)

    def _restore_loose(self, saved: dict[str, Any]) -> None:
        loose = self._loose()
        missing = sorted(set(saved.get("loose", {})) - set(loose))
        if missing:
            raise CheckpointError(
                f"the checkpoint holds parameters this step does not create "
                f"({', '.join(missing[:3])}); it was written for another "
                f"model or guide."
            )
        with torch.no_grad():
            for k, v in saved.get("loose", {}).items():
                loose[k].copy_(v)
        for st, steps in zip(self._states, saved.get("phase_steps", [])):
            st.steps = steps
        self._piece = saved.get("piece", 0)
