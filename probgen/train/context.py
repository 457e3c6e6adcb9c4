"""What a model may skip while the fit loop runs its steps.

Inside :func:`probgen.fit` a model's trace feeds one loss and nothing else, so two
pieces of per-step work buy nothing there:

* checking every batch of the data, when the loop has already checked the whole data
  set once before the first step (``data_checked``);
* recording ``pyro.deterministic`` sites that only :class:`pyro.infer.Predictive` and
  the user read (the fit loop never does);
* registering a module's parameters with ``pyro.module`` on every step, when the step
  already optimizes that module's parameters by declaration (``module``): Pyro's
  registration walks every parameter each call, and only matters to optimizers that
  find parameters through the param store.

The loop sets the context for the duration of its training and validation passes, and
models ask :func:`current_step` (``None`` outside the loop). A context variable, not a
module attribute: the same model called by the user, by Pyro's own ``SVI`` or by
``Predictive`` (even from a callback) sees ``None`` and does everything.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Iterator, Optional

__all__ = ["StepContext", "current_step", "running_steps"]


@dataclass(frozen=True)
class StepContext:
    """data_checked: the loop checked every example of the data these steps read.
    module: the module whose parameters every phase of the step declares (or ``None``)."""
    data_checked: bool = False
    module: Optional[Any] = None

    def registers(self, module) -> bool:
        """Whether ``module`` must still call ``pyro.module`` in this step."""
        return self.module is not module


_CURRENT: ContextVar[Optional[StepContext]] = ContextVar("probgen_step", default=None)


def current_step() -> Optional[StepContext]:
    """The fit loop's context while it runs training or validation steps, else ``None``."""
    return _CURRENT.get()


@contextlib.contextmanager
def running_steps(data_checked: bool = False, module=None) -> Iterator[StepContext]:
    ctx = StepContext(data_checked=data_checked, module=module)
    token = _CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.reset(token)
