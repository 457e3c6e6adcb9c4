"""Callbacks: what varies between runs, apart from the one fit loop.

A callback is an object with any of these methods (all optional), called by
:func:`probgen.train.fit` in this order every epoch:

* ``on_fit_start(run)``: once, after set-up and resume;
* ``on_validation_end(run, entry)``: after the validation pass; add figures to the
  epoch's history ``entry`` here (an FID every 5 epochs, a validation NLL) and early
  stopping / best weights can follow them (``FitConfig.monitor``);
* ``on_epoch_end(run, entry)``: after the monitor and the checkpoint (logging);
* ``on_fit_end(run, result)``: once, at the end;
* ``on_train_batch_end(run, step_index, losses)``: after each batch's optimizer steps
  (``step_index``: the run's step count before this step, 0-based, ``FitResult.steps - 1``
  after it: unique over the run and the same over a resume, also for data without a
  length; ``losses``: phase name -> that batch's loss as a detached 0-d tensor, the
  mean over a phase's repeats; reading one is a host sync on a GPU, so read few);
* ``on_exception(run, error)``: when training stops on an error, before it propagates
  (close files; an error raised here is ignored, the training error is the one reported);
* ``state_dict()`` / ``load_state_dict(state)``: what it must carry over a resume
  (checkpointed with the run).

``run`` gives ``run.module``, ``run.step``, ``run.config``, ``run.result``,
``run.epoch``, ``run.device`` and ``run.is_main`` (rank 0 of a torchrun job, or the
only process). A plain function ``f(entry)`` is called as ``on_epoch_end``.
(Modelled on Lightning's ``Callback``; the hooks are fewer because the loop is smaller.)
:class:`Callback` itself, :class:`LambdaCallback` and :func:`as_callback` live in
:mod:`probgen.train.hooks`, below everything that implements or calls the hooks.

Experiment trackers (CSV, TensorBoard, MLflow, W&B) are callbacks too:
:mod:`probgen.train.trackers`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from probgen import checks
from probgen.errors import ConfigError

# The protocol lives below every module that implements or calls it; importable from here.
from probgen.train.config import FitResult
from probgen.train.hooks import Callback, LambdaCallback, RunView, as_callback  # noqa: F401

# CSVLogger and TensorBoard lived here before they became trackers: the old import path
# keeps working (trackers.py builds on probgen.train.hooks, not on this module).
from probgen.train.trackers import CSVLogger, TensorBoard  # noqa: F401


class Metric(Callback):
    """Compute ``fn(module)`` every ``every`` epochs (and at the last) and record it.

    ``fn`` returns a number, recorded under ``name``, or a dict of figures (key -> number
    or ``None``), each recorded under its own key (an FID and the live generator's FID
    from one set of samples; a report's several numbers). The metric times itself: the
    epoch's entry also gets ``<name>_seconds`` (wall clock) and ``<name>_cpu_seconds``
    (this process's CPU time, :func:`time.process_time`) of the call, so that a clock of
    training time can leave them out (:class:`TrainingCPUTime`).

    With ``FitConfig(monitor=key, mode="min"|"max")`` early stopping and the best weights
    follow it; epochs that skip it are not checks. The module is in eval mode and
    gradients are off while ``fn`` runs; its mode is restored afterwards.

    Examples:
        A metric returning a dict: each figure under its own key, the time under the
        metric's name. A line fitted to ``y = 3x`` from zero weights, two Adam steps of
        ``lr = 1e-3``:

        >>> import torch
        >>> from probgen.data import TensorData
        >>> from probgen.train import LossStep, Metric, fit
        >>> net = torch.nn.Linear(1, 1)
        >>> _ = torch.nn.init.zeros_(net.weight), torch.nn.init.zeros_(net.bias)
        >>> x = torch.linspace(-1, 1, 8)[:, None]
        >>> step = LossStep(net, lambda net, x, y: (net(x) - y).pow(2).mean())
        >>> line = Metric("line", lambda net: {"slope": net.weight.item(),
        ...                                    "bias": net.bias.item()})
        >>> result = fit(step, TensorData(x, 3 * x), epochs=2, callbacks=[line],
        ...              progress=False, verbose=False)
        >>> [(round(h["slope"], 4), h["bias"]) for h in result.history]
        [(0.001, 0.0), (0.002, 0.0)]
        >>> sorted(k for k in result.history[-1] if k.startswith("line"))
        ['line_cpu_seconds', 'line_seconds']

        A number is recorded under the name; early stopping can follow it::

            fit(gan, train, callbacks=[Metric("fid", fid_of, every=5)], monitor="fid",
                mode="min", patience=4)
    """

    def __init__(self, name: str, fn: Callable[[Any], float | Mapping[str, Any]], every: int = 1):
        every = checks.positive_int(f"Metric {name!r}: every", every)
        self.name, self.fn, self.every = name, fn, every

    def due(self, run: RunView, entry: dict[str, Any]) -> bool:
        """Whether the metric is computed at this epoch: every ``every``-th and the last."""
        epoch = entry["epoch"] + 1
        return epoch % self.every == 0 or epoch == run.config.epochs

    def on_validation_end(self, run: RunView, entry: dict[str, Any]) -> None:
        import torch

        if not self.due(run, entry):
            return
        module = run.module
        was = module.training if module is not None else None
        if module is not None:
            module.eval()
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            with torch.no_grad():
                value = self.fn(module if module is not None else run.step)
        finally:
            if module is not None:
                module.train(was)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        if isinstance(value, Mapping):
            entry.update({k: None if v is None else float(v) for k, v in value.items()})
        else:
            entry[self.name] = float(value)
        entry[f"{self.name}_seconds"], entry[f"{self.name}_cpu_seconds"] = wall, cpu


class TrainingCPUTime(Callback):
    """``cpu_seconds``: this process's CPU seconds of each epoch, metrics left out.

    The clock runs from the end of one epoch's validation pass to the end of the next
    (from the start of fit for the first), in :func:`time.process_time`; the CPU seconds
    that the :class:`Metric` callbacks named in ``leave_out`` recorded for the epoch
    (their ``<name>_cpu_seconds``) are taken off, so an FID every epoch does not count as
    training. Put this callback after those metrics. On a shared machine the wall clock
    counts the other jobs too; with one torch thread the process's CPU time is what the
    training itself cost.

    Example::

        fit(gan, train, callbacks=[Metric("fid", fid_of), TrainingCPUTime(leave_out=["fid"])])
        sum(h["cpu_seconds"] for h in result.history)   # training CPU seconds, FIDs left out
    """

    def __init__(self, leave_out: Sequence[str] = ()):
        if isinstance(leave_out, str):
            leave_out = (leave_out,)
        self.leave_out = tuple(leave_out)
        self.last = time.process_time()

    def on_fit_start(self, run: RunView) -> None:
        self.last = time.process_time()

    def on_validation_end(self, run: RunView, entry: dict[str, Any]) -> None:
        now = time.process_time()
        spent = sum(entry.get(f"{name}_cpu_seconds", 0.0) for name in self.leave_out)
        entry["cpu_seconds"] = now - self.last - spent
        self.last = now


def training_seconds(
    history: Sequence[Mapping[str, Any]], leave_out: Sequence[str] = ("fid",)
) -> tuple[float, float]:
    """``(wall, cpu)`` seconds of training in a run's history: the entries' wall
    ``seconds`` less the ``<name>_seconds`` of the metrics in ``leave_out`` (an FID every
    epoch is no training), and their ``cpu_seconds`` (:class:`TrainingCPUTime`) where every
    entry has them, else NaN.

    Examples:
        >>> from probgen.train.callbacks import training_seconds
        >>> history = [{"seconds": 90.0, "fid_seconds": 30.0, "cpu_seconds": 55.0},
        ...            {"seconds": 60.0, "cpu_seconds": 58.0}]
        >>> training_seconds(history)
        (120.0, 113.0)
    """
    wall = sum(
        h["seconds"] - sum(h.get(f"{name}_seconds", 0.0) for name in leave_out) for h in history
    )
    cpu = (
        sum(h["cpu_seconds"] for h in history)
        if history and all("cpu_seconds" in h for h in history)
        else float("nan")
    )
    return wall, cpu


class Snapshots(Callback):
    """``take(module)`` at chosen epochs: what a model looks like over training.

    At the end of each epoch in ``epochs`` (counted from 1), on the main process,
    ``take(module)`` (gradients off) gives a dict of tensors (samples from fixed noise, a
    discriminator's values on a grid), kept in :attr:`taken` under ``"epoch N"`` and
    carried over a resume (the checkpoint holds them). ``take`` draws its own random
    numbers from a generator of its own if the training's stream is to be left alone.

    Example::

        shots = Snapshots(Snapshots.spread(20, 5), lambda gan: {"samples": gan.sample(
            10, generator=torch.Generator().manual_seed(7)).cpu()})
        fit(gan, train, callbacks=[shots])
        rows_figure({k: v["samples"] for k, v in shots.taken.items()})
    """

    def __init__(self, epochs: Sequence[int], take: Callable[[Any], dict[str, Any]]):
        self.epochs = {
            checks.positive_int("Snapshots: each of epochs", e, hint="epochs are counted from 1")
            for e in epochs
        }
        self.take = take
        self.taken: dict[str, dict[str, Any]] = {}

    @staticmethod
    def spread(epochs: int, n: int) -> list[int]:
        """About ``n`` epochs evenly spread over ``1..epochs``, the first and last among
        them.

        Examples:
            >>> from probgen.train.callbacks import Snapshots
            >>> Snapshots.spread(20, 5), Snapshots.spread(2, 5)
            ([1, 4, 8, 12, 16, 20], [1, 2])
        """
        epochs, n = checks.positive_int("epochs", epochs), checks.positive_int("n", n)
        picks = {max(1, round(epochs * (i + 1) / n)) for i in range(n)}
        return sorted(picks | {1, epochs})

    def on_epoch_end(self, run: RunView, entry: dict[str, Any]) -> None:
        import torch

        if entry["epoch"] + 1 not in self.epochs or not run.is_main:
            return
        with torch.no_grad():
            self.taken[f"epoch {entry['epoch'] + 1}"] = dict(self.take(run.module))

    def state_dict(self) -> dict[str, Any]:
        return {"taken": self.taken}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.taken = dict(state.get("taken", {}))


AVERAGES = ("ema", "uniform")


class WeightAverage(Callback):
    """A running average of the module's weights, updated once per epoch.

    ``kind="ema"``: an exponential moving average, ``w_avg <- decay * w_avg + (1 - decay) * w``
    (Polyak and Juditsky 1992, "Acceleration of Stochastic Approximation by Averaging");
    ``kind="uniform"``: the plain mean of the epochs' weights (Izmailov et al. 2018,
    "Averaging Weights Leads to Wider Optima and Better Generalization"). The epochs from
    ``start`` (counted from 1) enter the average. The averaging itself is
    :class:`torch.optim.swa_utils.AveragedModel`'s; this callback decides when it runs,
    evaluates the averaged copy and carries it over a resume.

    The average is updated after each validation pass, before the checkpoint, so the
    checkpoint holds it and a resumed run continues the same average. ``metrics``
    (``name -> fn(averaged_module)``) are computed on the averaged copy every epoch (eval
    mode, no gradients) and added to the epoch's entry, where ``FitConfig.monitor`` can
    follow them. :attr:`averaged` is that copy (``None`` before the first update). With
    ``swap=True`` the averaged weights are copied into the trained module when fit ends
    (after ``restore_best``, so the average wins); otherwise call :meth:`copy_to`.

    Buffers (batch-norm statistics) follow the trained module and are not averaged; for
    a network with batch norm, recompute them on the averaged copy with
    :func:`torch.optim.swa_utils.update_bn`. Only the module's parameters are averaged,
    not parameters that live only in Pyro's param store.

    Example::

        avg = WeightAverage("ema", decay=0.8, metrics={"val_error_avg": error_of})
        fit(model, train, val, callbacks=[avg], restore_best=False)   # model: averaged
    """

    def __init__(
        self,
        kind: str = "ema",
        decay: float = 0.8,
        start: int = 1,
        metrics: dict[str, Callable[[Any], float]] | None = None,
        swap: bool = True,
    ):
        checks.choice("WeightAverage: kind", kind, AVERAGES)
        decay = checks.fraction(
            "WeightAverage: decay", decay, hint="0.8 keeps about the last 5 epochs"
        )
        start = checks.positive_int(
            "WeightAverage: start", start, hint="the first epoch averaged, counted from 1"
        )
        self.kind, self.decay, self.start, self.swap = kind, decay, start, bool(swap)
        self.metrics = dict(metrics or {})
        self._avg = None  # the AveragedModel, built from the module on the first update
        self._pending = None  # a resumed state, loaded on that first build

    @property
    def averaged(self) -> nn.Module | None:
        """The module with the averaged weights (``None`` before the first update)."""
        return None if self._avg is None else self._avg.module

    @property
    def num_averaged(self) -> int:
        """How many epochs' weights are in the average."""
        return 0 if self._avg is None else int(self._avg.n_averaged)

    def _build(self, module) -> None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        fn = get_ema_multi_avg_fn(self.decay) if self.kind == "ema" else None
        self._avg = AveragedModel(_copyable(module), multi_avg_fn=fn, use_buffers=False)
        self._avg.requires_grad_(False)

    def on_fit_start(self, run: RunView) -> None:
        if run.module is None:
            raise ConfigError(
                "WeightAverage averages a module's weights, but this run has no "
                "module (a model whose parameters live only in Pyro's param "
                "store); wrap the networks in an nn.Module / PyroModule."
            )
        if self._pending is not None:
            self._build(run.module)
            self._avg.load_state_dict(self._pending)
            self._pending = None

    def on_validation_end(self, run: RunView, entry: dict[str, Any]) -> None:
        import torch

        if entry["epoch"] + 1 < self.start:
            return
        if self._avg is None:
            self._build(run.module)
        self._avg.update_parameters(run.module)
        if not self.metrics:
            return
        module = self._avg.module
        module.eval()
        with torch.no_grad():
            for name, fn in self.metrics.items():
                entry[name] = float(fn(module))

    def copy_to(self, module: nn.Module) -> None:
        """Copy the averaged parameters into ``module`` (of the same architecture)."""
        import torch

        if self._avg is None:
            raise ConfigError(
                f"WeightAverage has no average yet: no epoch since start={self.start} has finished."
            )
        with torch.no_grad():
            for p, q in zip(module.parameters(), self._avg.module.parameters(), strict=True):
                p.copy_(q.to(p.device))

    def on_fit_end(self, run: RunView, result: FitResult) -> None:
        if self.swap and self._avg is not None:
            self.copy_to(run.module)

    def state_dict(self) -> dict[str, Any]:
        return {} if self._avg is None else {"averaged": self._avg.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("averaged") is not None:
            self._pending = state["averaged"]


def _copyable(module):
    """A deep copy of ``module`` that AveragedModel can copy again.

    ``copy.deepcopy`` refuses tensors inside an autograd graph, and Pyro's transforms keep
    their last input and output in such tensors (``_cached_x_y``, ``_cached_log_scale``;
    a flow after one training step has them). The copy takes those caches detached: a cache
    is used only when the same tensor object comes back, which a stale copy never is."""
    import copy

    import torch

    memo, seen, todo = {}, set(), [module]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if not obj.is_leaf:
                memo[id(obj)] = obj.detach()
        elif isinstance(obj, dict):
            todo.extend(obj.values())
        elif isinstance(obj, (list, tuple, set)):
            todo.extend(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            todo.extend(vars(obj).values())
    return copy.deepcopy(module, memo)


def metric_value(entry: dict[str, Any], key: str) -> float | None:
    v = entry.get(key)
    return None if v is None else float(v)
