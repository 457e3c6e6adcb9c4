"""The fit loop's step context under its older path: it is a Pyro handler now,
:class:`probgen.infer.context.StepContext`, which this module re-exports."""

from probgen.infer.context import StepContext, current_step, running_steps  # noqa: F401
