"""The callback protocol: :class:`Callback` (every hook a no-op), :class:`LambdaCallback`
and :func:`as_callback`.

These sit in a module of their own, below everything that implements or calls the hooks:
the loop (:mod:`probgen.train.loop`), early stopping (:mod:`probgen.train.stopping`), the
callbacks (:mod:`probgen.train.callbacks`) and the experiment trackers
(:mod:`probgen.train.trackers`) all import them from here, so that none of them has to
import another to subclass :class:`Callback`. The hooks, their order and what ``run``
gives are described in :mod:`probgen.train.callbacks`; the names are importable from
there too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch

from probgen.errors import ConfigError
from probgen.train.config import FitConfig, FitResult


class RunView(Protocol):
    """What the hooks receive as ``run``: the fit loop's run (``probgen.train.loop.Run``,
    which builds on this module, so it is described here rather than imported), as a
    callback reads it."""

    #: the module being trained (``None`` for a model whose parameters live only in
    #: Pyro's param store)
    module: torch.nn.Module | None
    #: the training step (:class:`probgen.infer.steps.Step`)
    step: Any
    #: the run's settings
    config: FitConfig
    #: the result so far (history, steps, best loss)
    result: FitResult
    #: the current epoch, from 0
    epoch: int
    #: where the run trains
    device: torch.device
    #: rank 0 of a torchrun job, or the only process
    is_main: bool


HOOKS = (
    "on_fit_start",
    "on_validation_end",
    "on_epoch_end",
    "on_fit_end",
    "on_train_batch_end",
    "on_exception",
)


class Callback:
    """Base class with every hook a no-op."""

    def on_fit_start(self, run: RunView) -> None:
        pass

    def on_validation_end(self, run: RunView, entry: dict[str, Any]) -> None:
        pass

    def on_epoch_end(self, run: RunView, entry: dict[str, Any]) -> None:
        pass

    def on_fit_end(self, run: RunView, result: FitResult) -> None:
        pass

    def on_train_batch_end(self, run: RunView, step_index: int, losses: Mapping[str, Any]) -> None:
        pass

    def on_exception(self, run: RunView, error: BaseException) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class LambdaCallback(Callback):
    """``f(entry)`` called at the end of every epoch (the older callback form)."""

    def __init__(self, fn: Callable[[dict[str, Any]], None]):
        self.fn = fn

    def on_epoch_end(self, run, entry):
        self.fn(entry)


def as_callback(obj) -> Callback:
    """``obj`` as the loop calls it: a :class:`Callback`, or any object with one of the
    hooks (duck-typed, taken as it is), or a plain function ``f(entry)`` (wrapped in a
    :class:`LambdaCallback`); anything else is refused with a
    :class:`~probgen.errors.ConfigError`."""
    if isinstance(obj, Callback):
        return obj
    if any(callable(getattr(obj, h, None)) for h in HOOKS):
        return obj
    if callable(obj):
        return LambdaCallback(obj)
    raise ConfigError(
        f"a callback must be a Callback or a function of the epoch's entry, got "
        f"{type(obj).__name__}."
    )


__all__ = ["HOOKS", "Callback", "LambdaCallback", "as_callback"]
