"""What a model may skip while the fit loop runs its steps.

Inside :func:`probgen.fit` a model's trace feeds one loss and nothing else, so two
pieces of per-step work buy nothing there:

* checking every batch of the data, when the loop has already checked the whole data
  set once before the first step (``data_checked``);
* recording ``pyro.deterministic`` sites that only :class:`pyro.infer.Predictive` and
  the user read (the fit loop never does).

The loop sets the context for the duration of its training and validation passes, and
models ask :func:`current_step` (``None`` outside the loop). A context variable, not a
module attribute: the same model called by the user, by Pyro's own ``SVI`` or by
``Predictive`` (even from a callback) sees ``None`` and does everything.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator, Optional

__all__ = ["StepContext", "current_step", "running_steps"]


@dataclass(frozen=True)
class StepContext:
    """data_checked: the loop checked every example of the data these steps read."""
    data_checked: bool = False


_CURRENT: ContextVar[Optional[StepContext]] = ContextVar("probgen_step", default=None)


def current_step() -> Optional[StepContext]:
    """The fit loop's context while it runs training or validation steps, else ``None``."""
    return _CURRENT.get()


@contextlib.contextmanager
def running_steps(data_checked: bool = False) -> Iterator[StepContext]:
    ctx = StepContext(data_checked=data_checked)
    token = _CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.reset(token)
