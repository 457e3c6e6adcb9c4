"""What a model may skip while the fit loop runs its steps: a Pyro handler the loop applies.

Inside :func:`probgen.fit` a model's trace feeds one loss and nothing else, so some
per-step work buys nothing there:

* checking every batch of the data, when the loop has already checked the whole data
  set once before the first step (``data_checked``);
* recording ``pyro.deterministic`` sites that only :class:`pyro.infer.Predictive` and
  the user read (the fit loop never does);
* registering a module's parameters with ``pyro.module`` on every step, when the step
  already optimizes that module's parameters by declaration (``module``): Pyro's
  registration walks every parameter each call, and only matters to optimizers that
  find parameters through the param store.

The loop runs each of its steps' computations (a phase's loss, a validation pass) inside
a :class:`StepContext`, a :class:`~pyro.poutine.messenger.Messenger` entered like any
Pyro handler (``with StepContext(...)``), and a model asks :func:`current_step`: the
innermost ``StepContext`` on Pyro's handler stack, or ``None``. The same model called by
the user, by Pyro's own ``SVI`` or by ``Predictive`` (also from a callback during
``fit``: the loop leaves the handler before it calls callbacks) sees ``None`` and does
everything.

Why a handler rather than a flag: it lives where Pyro keeps what applies to a model's
execution (the handler stack, as ``poutine.scale`` or ``poutine.mask`` do), its extent is
that of the ``with`` block, and it needs no state of its own in probgen. The query looks
the handler up on the stack instead of sending a message through it (as
``poutine.get_mask()`` does), for two reasons: a message would stop at an enclosing
``poutine.block()`` (a loss that traces its model under ``block`` inside a step would
then see no step), and it would cost a message through every handler on each query,
several times per step. The handler processes no message itself. Pyro's handler stack
is one per process, not per thread, as Pyro's param store is: run one fit at a time.
"""

from __future__ import annotations

from typing import Any

from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import _PYRO_STACK

__all__ = ["StepContext", "current_step", "running_steps"]


class StepContext(Messenger):
    """The fit loop's handler around its steps' computations.

    Args:
        data_checked: the loop checked every example of the data these steps read (the
            models skip their per-batch value checks).
        module: the module whose parameters every phase of the step declares (its model
            may skip ``pyro.module``), or ``None``.
    """

    def __init__(self, data_checked: bool = False, module: Any | None = None):
        super().__init__()
        self.data_checked = bool(data_checked)
        self.module = module

    def registers(self, module: Any) -> bool:
        """Whether ``module`` must still call ``pyro.module`` in this step."""
        return self.module is not module

    def __repr__(self) -> str:
        held = type(self.module).__name__ if self.module is not None else None
        return f"StepContext(data_checked={self.data_checked}, module={held})"


def current_step() -> StepContext | None:
    """The innermost :class:`StepContext` on Pyro's handler stack: the fit loop's, while it
    runs a step's computations; else ``None``."""
    for frame in reversed(_PYRO_STACK):
        if isinstance(frame, StepContext):
            return frame
    return None


def running_steps(data_checked: bool = False, module=None) -> StepContext:
    """A :class:`StepContext` to enter: ``with running_steps(data_checked=True): ...``."""
    return StepContext(data_checked=data_checked, module=module)
