"""Callbacks: what varies between runs, apart from the one fit loop.

A callback is an object with any of these methods (all optional), called by
:func:`probgen.train.fit` in this order every epoch:

* ``on_fit_start(run)``: once, after set-up and resume;
* ``on_validation_end(run, entry)``: after the validation pass; add figures to the
  epoch's history ``entry`` here (an FID every 5 epochs, a validation NLL) and early
  stopping / best weights can follow them (``FitConfig.monitor``);
* ``on_epoch_end(run, entry)``: after the monitor and the checkpoint (logging);
* ``on_fit_end(run, result)``: once, at the end;
* ``state_dict()`` / ``load_state_dict(state)``: what it must carry over a resume
  (checkpointed with the run).

``run`` gives ``run.module``, ``run.step``, ``run.config``, ``run.result``,
``run.epoch``, ``run.device`` and ``run.is_main`` (rank 0 of a torchrun job, or the
only process). A plain function ``f(entry)`` is called as ``on_epoch_end``.
(Modelled on Lightning's ``Callback``; the hooks are fewer because the loop is smaller.)
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

from probgen.errors import ConfigError


class Callback:
    """Base class with every hook a no-op."""

    def on_fit_start(self, run) -> None:
        pass

    def on_validation_end(self, run, entry: Dict[str, Any]) -> None:
        pass

    def on_epoch_end(self, run, entry: Dict[str, Any]) -> None:
        pass

    def on_fit_end(self, run, result) -> None:
        pass

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass


class LambdaCallback(Callback):
    """``f(entry)`` called at the end of every epoch (the older callback form)."""

    def __init__(self, fn: Callable[[Dict[str, Any]], None]):
        self.fn = fn

    def on_epoch_end(self, run, entry):
        self.fn(entry)


def as_callback(obj) -> Callback:
    if isinstance(obj, Callback):
        return obj
    hooks = ("on_fit_start", "on_validation_end", "on_epoch_end", "on_fit_end")
    if any(callable(getattr(obj, h, None)) for h in hooks):
        return obj
    if callable(obj):
        return LambdaCallback(obj)
    raise ConfigError(f"a callback must be a Callback or a function of the epoch's entry, got "
                      f"{type(obj).__name__}.")


class Metric(Callback):
    """Compute ``fn(module)`` -> a number every ``every`` epochs and record it as ``name``.

    With ``FitConfig(monitor=name, mode="min"|"max")`` early stopping and the best
    weights follow it; epochs that skip it are not checks. The module is in eval mode
    and gradients are off while ``fn`` runs.

    Example::

        fit(gan, train, callbacks=[Metric("fid", lambda m: fid_of(m), every=5)],
            monitor="fid", mode="min", patience=4)
    """

    def __init__(self, name: str, fn: Callable[[Any], float], every: int = 1):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"Metric {name!r}: every must be a positive integer, got {every!r}.")
        self.name, self.fn, self.every = name, fn, every

    def on_validation_end(self, run, entry):
        import torch

        if (entry["epoch"] + 1) % self.every and entry["epoch"] + 1 != run.config.epochs:
            return
        module = run.module
        was = module.training if module is not None else None
        if module is not None:
            module.eval()
        try:
            with torch.no_grad():
                value = float(self.fn(module if module is not None else run.step))
        finally:
            if module is not None:
                module.train(was)
        entry[self.name] = value


class CSVLogger(Callback):
    """Write every epoch's figures to a CSV file (rewritten each epoch, rank 0 only)."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)

    def on_epoch_end(self, run, entry):
        if not run.is_main:
            return
        rows = run.result.history
        keys = []
        for row in rows:
            keys += [k for k in row if k not in keys and not isinstance(row[k], (dict, list))]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            for row in rows:
                w.writerow({k: row.get(k) for k in keys})


class TensorBoard(Callback):
    """Log every numeric figure of each epoch to TensorBoard (rank 0 only).

    Needs the ``tensorboard`` package (``pip install tensorboard``); asking for it
    without says so.
    """

    def __init__(self, log_dir: Union[str, Path]):
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise ConfigError("the TensorBoard callback needs the tensorboard package: "
                              "pip install tensorboard (or use CSVLogger).") from None
        self.log_dir = str(log_dir)
        self._writer = None

    def on_epoch_end(self, run, entry):
        if not run.is_main:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(self.log_dir)
        for k, v in entry.items():
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) \
                    and math.isfinite(v):
                self._writer.add_scalar(k, v, entry["epoch"] + 1)
        self._writer.flush()

    def on_fit_end(self, run, result):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def metric_value(entry: Dict[str, Any], key: str) -> Optional[float]:
    v = entry.get(key)
    return None if v is None else float(v)
