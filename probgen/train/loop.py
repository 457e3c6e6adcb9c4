"""The fit loop: one loop for every model probgen trains.

``fit(step, train, val, config)`` runs epochs of mini-batch gradient steps. A step is
a list of phases (:mod:`probgen.infer.steps`): one for a VAE or a flow, several for an
adversarial game. :class:`Run` reads top to bottom in named parts:

1. ``set_up``      the settings decided ("auto"), the step, the device and torchrun's
                   process group (:mod:`~probgen.train.device`), the data's dtype and
                   place and its whole-data checks (:mod:`~probgen.train.batches`), the
                   seeds, the phases' states (:mod:`~probgen.train.phases`), early
                   stopping and best weights (:mod:`~probgen.train.stopping`), the
                   networks the speed settings concern (:mod:`~probgen.train.speed`);
2. ``resume``      from a checkpoint of the same run (:mod:`~probgen.train.resume`);
3. ``train_epoch`` batches through every phase (``run_phase``: the loss inside the step
                   context, backward, gradient averaging over processes, clipping,
                   optimizer, schedule);
4. ``validate``    the validation loss, reduced over processes
                   (:mod:`~probgen.train.validation`);
5. callbacks       ``on_validation_end``: the run's own (figures added to the epoch's
                   entry), then early stopping and the best weights, which follow them;
6. ``checkpoint``  an atomic file after every epoch (rank 0);
7. ``finish``      the best weights restored (when asked), the module back on the device
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

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyro
import torch
from tqdm.auto import tqdm

from probgen.data.tensors import TensorData
from probgen.errors import ConfigError, DataError, TrainingDivergedError
from probgen.infer.batches import batch_len
from probgen.infer.context import StepContext
from probgen.infer.phases import traced_params
from probgen.infer.steps import Step, as_step
from probgen.models.registry import is_probgen_model
from probgen.train import distributed as ddp

# Names that lived in this module before the loop was split, under their older path.
from probgen.train.batches import (
    as_batch,  # noqa: F401
    batches,
    check_data_once,
    conform_dtypes,
    first_tensor,
    place_data,
    require_batches,
    shuffles,
    steps_per_epoch,
)
from probgen.train.callbacks import Callback, as_callback
from probgen.train.checkpoint import check_writable, load_checkpoint, save_checkpoint
from probgen.train.config import FitConfig, FitResult
from probgen.train.device import (  # noqa: F401
    module_device,
    resolve_device,
    rng_state,
    run_device,
    seed_run,
    set_seed,
)
from probgen.train.phases import PhaseState, all_params, check_phase_optim
from probgen.train.resume import check_same_run, checkpoint_state, restore
from probgen.train.speed import NetworkSpeed, matmul_precision, speed_plan
from probgen.train.stopping import BestWeights, EarlyStopping
from probgen.train.validation import (
    evaluate,  # noqa: F401
    evaluate_pass,
)

__all__ = ["Run", "fit"]


def _overrides(cb, hook: str) -> bool:
    """Whether ``cb`` does something in ``hook`` (the loop calls per-batch hooks only on
    callbacks that define them: a no-op per batch and callback is not free)."""
    fn = getattr(cb, hook, None)
    if not callable(fn):
        return False
    return getattr(type(cb), hook, None) is not getattr(Callback, hook, None)


def _call(cb, hook, *args):
    fn = getattr(cb, hook, None)
    if callable(fn):
        fn(*args)


class Run:
    """One call of :func:`fit`: the loop's state and its named parts.

    Callbacks read ``run.module``, ``run.step``, ``run.config``, ``run.result``,
    ``run.epoch``, ``run.device`` and ``run.is_main``.
    """

    def __init__(
        self,
        step: Any,
        train: TensorData | Iterable,
        val: TensorData | Iterable | None,
        config: FitConfig,
        callbacks: Sequence = (),
        explicit: Iterable[str] = (),
        batch_to_args: Callable[..., Any] | None = None,
    ):
        self.config = config
        self.explicit = set(explicit)
        self.batch_to_args = batch_to_args
        self.callbacks = [as_callback(c) for c in callbacks]
        self.train_data, self.val_data = train, val
        self.step_obj = step
        settings = getattr(train, "settings", None)
        self.result = FitResult(
            config=config,
            monitor=config.monitor,
            data_settings=copy.deepcopy(settings) if isinstance(settings, dict) else None,
        )
        self.start_epoch = 0
        self.epoch = 0
        self.finished = False
        self.module = None
        self.speed: NetworkSpeed | None = None
        self.staged: dict[str, torch.device | None] = {"train_data": None, "val_data": None}
        self.home = None
        self.was_training = None
        self.is_main = True
        self.ckpt_path = Path(config.checkpoint) if config.checkpoint else None
        self.stopping: EarlyStopping | None = None
        self.best_weights: BestWeights | None = None
        self._run_bar = None

    # ------------------------------------------------------------------ 1. set-up
    def set_up(self) -> None:
        self.config = self.config.resolved(has_val=self.val_data is not None)
        self.step = self._make_step()
        check_phase_optim(self.step.phases, self.config, self.step.describe())
        c = self.result.config = self.config
        self.result.monitor = c.monitor
        if self.ckpt_path is not None:
            check_writable(self.ckpt_path)
        self.module = self.step.module
        self.device, self.batch_device, self.device_from_data = run_device(
            self.module, c.device, self.train_data
        )
        self.world, self.rank = ddp.world_size(), ddp.rank()
        self.is_main = self.rank == 0
        self._move_module()
        self._check_data()
        self._conform_dtypes()
        self._place_data()
        # Whole-data checks once, here, instead of in every step (probgen.infer.context).
        self.train_checked = check_data_once(self.step, self.train_data)
        self.val_checked = check_data_once(self.step, self.val_data)
        self.declared = getattr(self.step, "declared_module", None)
        self.loader_gen = seed_run(
            c.seed,
            self.rank,
            isinstance(self.train_data, TensorData)
            and (
                shuffles(self.train_data, c.batch_size, self.world)
                or self.train_data.transform is not None
            ),
        )
        self.phases = self._phase_states()
        self.stopping = EarlyStopping(c.monitor, c.mode, c.min_delta, c.patience)
        self.best_weights = BestWeights(self.stopping, enabled=c.restore_best)
        # the run's callbacks first: early stopping may follow a figure one of them adds
        self.hooks = [*self.callbacks, self.stopping, self.best_weights]
        self._count_steps()
        ddp.broadcast_tensors(all_params(self.phases))
        self.speed = speed_plan(self.config, self.module, self.step, self.device)

    def _make_step(self) -> Step:
        """The step of what ``fit`` was given; a ready-made step's settings cleared."""
        c, ready_made = self.config, isinstance(self.step_obj, Step)
        if ready_made and self.batch_to_args is not None:
            raise ConfigError(
                "fit(batch_to_args=...) adapts the batches of a step fit builds; "
                "give a ready-made step its own: SVIStep(model, guide, "
                "batch_to_args=fn) or LossStep(net, loss_fn, batch_to_args=fn)."
            )
        step = as_step(self.step_obj, c, self.batch_to_args)
        if ready_made:
            # Settings the step does not read are refused when set, and not recorded.
            ignored = step.ignored_settings()
            refused = sorted(self.explicit & ignored)
            if refused:
                one = len(refused) == 1
                raise ConfigError(
                    f"fit: {', '.join(refused)} {'is' if one else 'are'} set, but "
                    f"the step given ({type(step).__name__} of {step.describe()}) "
                    f"does not read {'it' if one else 'them'}: it brings its own "
                    f"(SVIStep(model, guide, loss=..., num_particles=..., optim=...)). Set "
                    f"{'it' if one else 'them'} on the step, or pass the model "
                    f"itself to fit."
                )
            self.config = replace(c, **dict.fromkeys(ignored))
        return step

    def _move_module(self) -> None:
        if self.module is None:
            return
        self.was_training = self.module.training
        self.home = module_device(self.module)
        if self.home is not None and self.home != self.device:
            self.module.to(self.device)
            self._say(
                f"fit: moved {type(self.module).__name__} from {self.home} to "
                f"{self.device} (it goes back when fit returns)"
            )

    def _check_data(self) -> None:
        if not isinstance(self.train_data, (TensorData, Iterable)):
            raise ConfigError(
                f"train must be a TensorData or an iterable of batches (e.g. a "
                f"torch DataLoader), got {type(self.train_data).__name__}."
            )
        require_batches(self.train_data, self.world, self.config.batch_size, "training")
        require_batches(self.val_data, self.world, self.config.batch_size, "validation")

    def _conform_dtypes(self) -> None:
        """Floating-point data of another dtype than the module's converted (said once)."""
        data, note = conform_dtypes(
            self.module,
            {"training": self.train_data, "validation": self.val_data},
            self.step.describe(),
        )
        self.train_data, self.val_data = data["training"], data["validation"]
        if note:
            self._say(f"fit: {note}")

    def _place_data(self) -> None:
        """Each TensorData on the batches' device, whole, or left in host memory with its
        batches copied through pinned memory (as ``data_on_device`` decides)."""
        data, staged, notes = place_data(
            {"training": self.train_data, "validation": self.val_data},
            self.batch_device,
            self.config.data_on_device,
        )
        self.train_data, self.val_data = data["training"], data["validation"]
        self.staged = {"train_data": staged.get("training"), "val_data": staged.get("validation")}
        for note in notes:
            self._say(f"fit: {note}")

    def _phase_states(self):
        phases = [PhaseState(p, self.config, self.module) for p in self.step.phases]
        for st in phases:
            if not st.phase.discover and not st.params:
                raise ConfigError(
                    f"phase {st.phase.name!r} of {self.step.describe()} has no "
                    f"trainable parameters."
                )
            if st.phase.per_parameter and self.config.lr_schedule is not None:
                raise ConfigError(
                    f"phase {st.phase.name!r}: per-parameter optimizer settings "
                    f"and lr_schedule={self.config.lr_schedule!r} cannot go "
                    f"together; give the optimizer one dict of settings."
                )
        return phases

    def _count_steps(self) -> None:
        c = self.config
        self.steps_per_epoch, known = steps_per_epoch(self.train_data, c.batch_size, self.world)
        self.max_steps = c.num_steps
        if c.num_steps is not None:
            epochs = -(-c.num_steps // self.steps_per_epoch) if known else None
            self.config = c = self.result.config = replace(c, epochs=epochs)
        # a Pyro user counting steps in epochs of one batch: about 20 lines, not thousands
        self.print_every = max(1, (c.epochs or 0) // 20) if c.num_steps is not None else 1

    def total_steps(self) -> int:
        """The run's optimizer steps per phase and repeat (a schedule spans them)."""
        if self.max_steps is not None:
            return self.max_steps
        return self.config.epochs * self.steps_per_epoch

    def _batches(self, data, shuffle: bool):
        which = "train_data" if data is self.train_data else "val_data"
        return batches(
            data,
            self.config.batch_size,
            shuffle=shuffle,
            generator=self.loader_gen,
            staged=self.staged.get(which),
            batch_device=self.batch_device,
            rank=self.rank,
            world=self.world,
        )

    def _discover_all(self) -> None:
        """Run each discovering phase once on a first batch, without a gradient step, so
        that parameters Pyro creates lazily (AutoGuides) exist before a resume loads them
        or before rank 0's values are broadcast."""
        if not any(st.phase.discover for st in self.phases):
            return
        batch = next(iter(self._batches(self.train_data, shuffle=False)), None)
        if batch is None:
            raise DataError("the training data gave no batch (an empty DataLoader?).")
        ctx: dict[str, Any] = {}
        for st in self.phases:
            if st.phase.discover:
                _, found = traced_params(lambda st=st: st.phase.loss(batch, ctx))
                self._join(st, found)

    def _join(self, st: PhaseState, found: dict[str, torch.Tensor]) -> None:
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
        check_same_run(self, state)
        self._discover_all()
        restore(self, state)

    # ------------------------------------------------------------------ 3. train epoch
    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch: every batch through every phase; the epoch's history entry."""
        t0 = time.perf_counter()
        names = [st.phase.name for st in self.phases]
        totals, counts = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0)
        bar = self._bar(epoch)
        batch_hooks = [cb for cb in self.hooks if _overrides(cb, "on_train_batch_end")]
        batches = self._batches(self.train_data, shuffle=True)
        i = 0
        try:
            for batch in batches:
                if self.max_steps is not None and self.result.steps >= self.max_steps:
                    break
                if self.device_from_data and i == 0:
                    self._read_device(batch)
                losses, exhausted = self.train_step(
                    batch, batches, epoch, i, totals, counts, keep=bool(batch_hooks)
                )
                bar.update(1)
                if i % 10 == 0 and self.config.progress and self.is_main:
                    shown = float(totals[names[0]]) / max(counts[names[0]], 1)
                    bar.set_postfix(loss=f"{shown:.3f}")
                self.result.steps += 1
                if self.speed is not None and self.speed.compile_pending:
                    # after a first eager step: Pyro's lazily created parameters exist
                    self.speed.compile_now()
                for cb in batch_hooks:
                    # the run's step count (0-based), resumed parts included: unique even
                    # for data without a length, whose epochs have no known size
                    cb.on_train_batch_end(self, self.result.steps - 1, losses)
                i += 1
                if exhausted:
                    break
        finally:
            if self.max_steps is None:  # counting steps: one bar for the whole run
                bar.close()
        if i == 0:
            raise DataError(
                f"the training data gave no batch in epoch {epoch + 1} (an empty "
                f"DataLoader, or an iterator that was used up by the epoch "
                f"before?); give data with at least one batch, re-iterable."
            )
        return self._epoch_entry(epoch, t0, totals, counts)

    def train_step(
        self,
        batch: Any,
        batches: Iterator[Any],
        epoch: int,
        i: int,
        totals: dict[str, Any],
        counts: dict[str, Any],
        keep: bool,
    ) -> tuple[dict[str, Any] | None, bool]:
        """One batch through every phase (a phase's repeats after the first take fresh
        batches from ``batches``); the losses are summed where they are, and read (a host
        sync on a GPU) every 10th step there, every step on the CPU. Returns ``(each
        phase's loss for the callbacks, or None unless ``keep``; whether the data ran
        out)``."""
        ctx: dict[str, Any] = {}
        losses: dict[str, Any] | None = {} if keep else None
        check = i % (1 if self.device.type == "cpu" else 10) == 0
        for st in self.phases:
            name, done = st.phase.name, []
            for r in range(st.phase.repeats):
                if r and st.phase.fresh_batch:
                    batch = next(batches, None)
                    if batch is None:
                        break
                value = self.run_phase(st, batch, ctx)
                b = batch_len(batch)
                totals[name], counts[name] = totals[name] + value * b, counts[name] + b
                if keep:
                    done.append(value)
                if check and not math.isfinite(float(value)):
                    self._diverged(epoch, i, float(value), name)
            if losses is not None and done:
                losses[name] = (
                    done[0]
                    if len(done) == 1
                    else torch.stack([torch.as_tensor(d) for d in done]).mean()
                )
            if batch is None:
                break
        return losses, batch is None

    def run_phase(self, st: PhaseState, batch: Any, ctx: dict[str, Any]) -> torch.Tensor:
        """One optimizer step of one phase; returns the reported loss (a tensor). The loss
        runs inside the step context (:class:`~probgen.infer.context.StepContext`)."""
        ph = st.phase
        found = None
        with StepContext(data_checked=self.train_checked, module=self.declared):
            if ph.discover is True or (ph.discover == "first" and st.steps == 0):
                out, found = traced_params(lambda: ph.loss(batch, ctx))
            else:
                out = ph.loss(batch, ctx)
        if found is not None:
            self._join(st, found)
        loss, reported = out if isinstance(out, tuple) else (out, out)
        reported = reported.detach() if torch.is_tensor(reported) else torch.as_tensor(reported)
        if self.device.type == "cpu" and not math.isfinite(float(reported)):
            return reported  # checked and reported by the caller, before any update
        if st.optimizer is None:
            if not st.params:
                raise ConfigError(
                    f"phase {ph.name!r} of {self.step.describe()} found no trainable "
                    f"parameters: its loss touched no pyro.param / pyro.module site and it "
                    f"declares none."
                )
            st.build_optimizer(self.total_steps(), self.steps_per_epoch)
        st.update(loss, ph.clip_norm if ph.clip_norm is not None else self.config.clip_norm)
        return reported

    def _epoch_entry(self, epoch: int, t0: float, totals, counts) -> dict[str, Any]:
        """The epoch's mean losses (over every process), its learning rate and start."""
        names = [st.phase.name for st in self.phases]
        sums = ddp.all_reduce_sum(
            [float(totals[n]) for n in names] + [counts[n] for n in names], self.device
        )
        means = {n: sums[j] / max(sums[len(names) + j], 1) for j, n in enumerate(names)}
        for n, v in means.items():
            if not math.isfinite(v):
                self._diverged(epoch, None, v, n, where="training")
        entry: dict[str, Any] = {"epoch": epoch, "train_loss": means[names[0]]}
        if len(names) > 1:
            for n in names:
                entry[f"train_loss/{n}"] = means[n]
        entry["lr"] = self.phases[0].lr()
        entry["_t0"] = t0
        return entry

    def _bar(self, epoch: int):
        c = self.config
        show = c.progress and self.is_main
        if self.max_steps is not None:
            # counting steps: one bar for the whole run
            if self._run_bar is None:
                self._run_bar = tqdm(
                    total=self.max_steps,
                    initial=self.result.steps,
                    desc="steps",
                    disable=not show,
                    leave=False,
                    dynamic_ncols=True,
                )
            return self._run_bar
        return tqdm(
            total=self.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{c.epochs}",
            disable=not show,
            leave=False,
            dynamic_ncols=True,
        )

    def _read_device(self, batch) -> None:
        """A bare model/guide pair on data without a device of its own: the first batch's."""
        first = first_tensor(batch)
        if first is not None:
            self.device = first.device
            if self.speed is not None:  # autocast where the data is
                self.speed.device_type = self.device.type

    # ------------------------------------------------------------------ 4. validate
    def validate(self, entry: dict[str, Any]) -> None:
        val_loss = None
        if self.val_data is not None:
            with StepContext(data_checked=self.val_checked, module=self.declared):
                val_loss = evaluate_pass(
                    self.step,
                    self.val_data,
                    self.config.eval_batch_size,
                    self.batch_device,
                    self.device,
                )
            if val_loss is not None and not math.isfinite(val_loss):
                self._diverged(entry["epoch"], None, val_loss, None, where="validation")
        entry["val_loss"] = val_loss

    # ------------------------------------------------------------------ 6. checkpoint
    def checkpoint(self, epoch_done: int) -> None:
        if self.ckpt_path is None:
            return
        rngs = (
            ddp.gather_objects(rng_state(self.loader_gen))
            if self.world > 1
            else rng_state(self.loader_gen)
        )
        if self.is_main:
            save_checkpoint(self.ckpt_path, checkpoint_state(self, epoch_done, rngs))

    # ------------------------------------------------------------------ the loop
    def execute(self) -> FitResult:
        try:
            self.set_up()
            t0 = time.perf_counter()
            with ExitStack() as stack:
                self._enter_run_settings(stack)
                try:
                    self._train(t0)
                except BaseException as err:
                    for cb in self.hooks:
                        if _overrides(cb, "on_exception"):
                            # the training error is the one reported
                            with contextlib.suppress(Exception):
                                cb.on_exception(self, err)
                    raise
            for cb in self.hooks:
                _call(cb, "on_fit_end", self, self.result)
        finally:
            self._return_module()
        return self.result

    def _enter_run_settings(self, stack: ExitStack) -> None:
        """What holds for this run only (undone on the way out): a scope of Pyro's param
        store for a probgen model, Pyro's validation setting, the speed settings."""
        if self.step.isolate_param_store:
            stack.enter_context(pyro.get_param_store().scope())
        validate = self.config.validate
        if validate is None and is_probgen_model(self.module):
            validate = False  # its data is checked whole before the first step
        if validate is not None:
            stack.enter_context(pyro.validation_enabled(validate))
        stack.enter_context(matmul_precision(self.config.matmul_precision))
        if self.speed is not None:
            stack.enter_context(self.speed.active())

    def _done(self, epoch: int) -> bool:
        if self.finished:
            return True
        if self.max_steps is not None:
            return self.result.steps >= self.max_steps
        return epoch >= self.config.epochs

    def _train(self, t0: float) -> None:
        if self.module is not None:
            self.module.train()
        self.resume()
        for cb in self.hooks:
            _call(cb, "on_fit_start", self)
        epoch = self.start_epoch
        try:
            while not self._done(epoch):
                self.epoch = epoch
                entry = self.train_epoch(epoch)
                self.validate(entry)
                for cb in self.hooks:  # the run's callbacks, early stopping, best weights
                    _call(cb, "on_validation_end", self, entry)
                entry["seconds"] = time.perf_counter() - entry.pop("_t0")
                self.result.history.append(entry)
                last = self.result.stopped_early or self._done(epoch + 1)
                if last or (epoch + 1) % self.print_every == 0:
                    self._print(entry, self.stopping.improved)
                self.checkpoint(epoch + 1)
                for cb in self.hooks:
                    _call(cb, "on_epoch_end", self, entry)
                if self.result.stopped_early:
                    self._say(
                        self.stopping.stop_line(
                            self.result,
                            entry,
                            self.config.epochs,
                            self.best_weights.held(self.result.best_epoch),
                        )
                    )
                    break
                epoch += 1
        finally:
            if self._run_bar is not None:
                self._run_bar.close()
        self.finish(t0)

    def _print(self, entry, improved) -> None:
        if not (self.config.verbose and self.is_main):
            return
        extra = "".join(
            f"  {k.split('/')[-1]} {v:.4f}" for k, v in entry.items() if k.startswith("train_loss/")
        )
        others = "".join(
            f"  {k} {v:.4g}"
            for k, v in entry.items()
            if k not in ("epoch", "train_loss", "val_loss", "lr", "seconds")
            and not k.startswith("train_loss/")
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
        )
        steps = f"  step {self.result.steps}" if self.max_steps is not None else ""
        tqdm.write(
            f"epoch {entry['epoch'] + 1:3d}{steps}  train {entry['train_loss']:9.4f}"
            + extra
            + (f"  val {entry['val_loss']:9.4f}" if entry["val_loss"] is not None else "")
            + others
            + ("  *" if improved else "")
            + f"  ({entry['seconds']:.1f}s)"
        )

    def _say(self, line: str) -> None:
        if self.config.verbose and self.is_main:
            tqdm.write(line)

    # ------------------------------------------------------------------ 7. finish
    def finish(self, t0: float) -> None:
        if self.config.restore_best:
            self.best_weights.restore(self)
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
        if self.home is not None and module_device(module) != self.home:
            module.to(self.home)
            self._say(f"fit: moved {type(module).__name__} back to {self.home}")

    def _diverged(self, epoch, step_i, value, phase, where=None):
        if where is None:
            where = f"epoch {epoch + 1}, step {step_i + 1}"
        else:
            where = f"epoch {epoch + 1} ({where})"
        if phase is not None and len(self.phases) > 1:
            where += f", phase {phase!r}"
        if self.best_weights.restore(self):
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
            epoch=epoch,
            step=step_i,
            checkpoint=str(ckpt) if ckpt is not None and ckpt.exists() else None,
        )


def fit(
    step: Any,
    train: TensorData | Iterable,
    val: TensorData | Iterable | None = None,
    config: FitConfig | None = None,
    callbacks: Sequence = (),
    *,
    batch_to_args: Callable[..., Any] | None = None,
    **overrides: Any,
) -> FitResult:
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
    copied through pinned memory. Floating-point tensors of a TensorData of another dtype
    than the module's parameters (float64 images for a float32 model) are converted, said
    in one line; uint8 images are refused (:class:`~probgen.errors.DataError`), since their scale is
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
    return Run(
        step, train, val, config, callbacks, explicit=given, batch_to_args=batch_to_args
    ).execute()
