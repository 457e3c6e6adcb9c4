"""A phase: one part of a training step (its parameters, optimizer, loss and repeats),
and how the parameters a loss touches through Pyro are found.

Parameters are found the way :class:`pyro.infer.SVI` finds them: a loss runs under
``poutine.trace(param_only=True)`` (:func:`traced_params`) and each ``pyro.param`` site it
touched (``pyro.module``, ``PyroParam``, AutoGuides, ...) joins the phase's optimizer the
first time it is seen. A phase can also name its parameters up front (a module's
``parameters()``); then only those are optimised by it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro import poutine
from pyro.params.param_store import (
    module_from_param_with_module_name,
    normalize_param_name,
    user_param_name,
)
from torch import nn

from probgen import checks
from probgen.errors import ConfigError
from probgen.registry import Registry

LossFn = Callable[[Any, dict[str, Any]], Any]

OPTIMIZERS: Registry = Registry("optimizer")
OPTIMIZERS.register("adam", torch.optim.Adam)
OPTIMIZERS.register("adamw", torch.optim.AdamW)
OPTIMIZERS.register("sgd", torch.optim.SGD)
OPTIMIZERS.register("rmsprop", torch.optim.RMSprop)

PLAYERS = (None, "discriminator", "generator")

__all__ = ["OPTIMIZERS", "PLAYERS", "LossFn", "Phase", "traced_params"]


@dataclass
class Phase:
    """One part of a training step: its parameters, optimizer, loss and repeats.

    Args:
        name: shown in the progress bar and the history (``train_loss/<name>``).
        loss: ``loss(batch, ctx)`` -> scalar tensor, or ``(scalar, reported)``.
        params: the parameters this phase optimises: an iterable of tensors, a module,
            or a callable returning either. ``None``: every parameter the loss touches
            through Pyro (``pyro.param`` / ``pyro.module`` sites), found as it runs.
        optimizer: a name in :data:`probgen.train.OPTIMIZERS` or a ``torch.optim``
            optimizer class (default: the run's).
        lr: learning rate (default: the run's ``lr``).
        optim_kwargs: other optimizer settings, e.g. ``{"betas": (0.5, 0.999)}``; or, as
            Pyro's per-parameter form, a function of the parameter's name returning them
            (``f(name)`` or ``f(module_name, param_name)``): each parameter then has
            a parameter group of its own.
        repeats: runs per batch (k discriminator steps per generator step).
        fresh_batch: each repeat after the first draws the next batch of data
            (Goodfellow et al. 2014, Algorithm 1); ``False`` reuses the batch.
        owns_backward: the loss calls ``backward`` itself (Pyro objectives that only
            offer ``loss_and_grads``); the loop then skips it.
        clip_norm: gradient-norm clipping for this phase (default: the run's).
        discover: also optimise the Pyro param sites the loss touches that are not in
            ``params`` (default: only when ``params`` is ``None``); ``"first"`` looks on
            the run's first step only (a probgen model, whose module holds everything
            its ``pyro.module`` sites register: the trace would cost every step for
            nothing). Leave it off for a phase whose loss runs networks it must not move
            (a discriminator phase that samples the generator).
        player: the adversarial player this phase trains, ``"discriminator"`` or
            ``"generator"`` (``None``: no player); what
            :func:`probgen.infer.adversarial.player_optim` reads.
    """

    name: str
    loss: LossFn
    params: Any = None
    optimizer: str | type | None = None
    lr: float | None = None
    optim_kwargs: dict[str, Any] | Callable[..., dict[str, Any]] = field(default_factory=dict)
    repeats: int = 1
    fresh_batch: bool = True
    owns_backward: bool = False
    clip_norm: float | None = None
    discover: bool | str | None = None
    player: str | None = None

    def __post_init__(self) -> None:
        if self.discover is None:
            self.discover = self.params is None
        self.repeats = checks.positive_int(f"phase {self.name!r}: repeats (k)", self.repeats)
        if not callable(self.loss):
            raise ConfigError(f"phase {self.name!r}: loss must be callable as loss(batch, ctx).")
        opt = self.optimizer
        if (
            opt is not None
            and not isinstance(opt, str)
            and not (isinstance(opt, type) and issubclass(opt, torch.optim.Optimizer))
        ):
            raise ConfigError(
                f"phase {self.name!r}: optimizer must be a name in "
                f"probgen.train.OPTIMIZERS or a torch.optim optimizer class, got "
                f"{opt!r}."
            )
        if self.player not in PLAYERS:
            raise ConfigError(
                f"phase {self.name!r}: player must be one of {list(PLAYERS)}, got {self.player!r}."
            )
        if not (isinstance(self.optim_kwargs, dict) or callable(self.optim_kwargs)):
            raise ConfigError(
                f"phase {self.name!r}: optim_kwargs must be a dict or a function "
                f"of the parameter's name returning one."
            )

    def declared_params(self) -> list[torch.Tensor] | None:
        """The parameters named up front (``None`` when they are found by tracing)."""
        p = self.params
        if p is None:
            return None
        if callable(p) and not isinstance(p, nn.Module):
            p = p()
        if isinstance(p, nn.Module):
            p = p.parameters()
        return [t for t in p if t.requires_grad]

    @property
    def per_parameter(self) -> bool:
        """Whether the optimizer settings differ per parameter (Pyro's callable form)."""
        return callable(self.optim_kwargs)

    def optim_args_for(self, name: str) -> dict[str, Any]:
        """The optimizer settings of the parameter called ``name`` (``pyro:<store name>``
        or ``module:<attribute path>``), as ``pyro.optim.PyroOptim`` computes them."""
        if not callable(self.optim_kwargs):
            return dict(self.optim_kwargs)
        store_name = name.split(":", 1)[-1]
        fn = self.optim_kwargs
        try:
            argc = len(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            argc = 1
        out = (
            fn(normalize_param_name(store_name))
            if argc == 1
            else fn(module_from_param_with_module_name(store_name), user_param_name(store_name))
        )
        if not isinstance(out, dict):
            raise ConfigError(
                f"phase {self.name!r}: the per-parameter optimizer settings must "
                f"be a dict, got {type(out).__name__} for {store_name!r}."
            )
        return out

    @property
    def sets_lr(self) -> bool:
        """Whether this phase brings its own learning rate."""
        return self.lr is not None or callable(self.optim_kwargs) or "lr" in self.optim_kwargs


def traced_params(fn: Callable[[], Any]) -> tuple[Any, dict[str, torch.Tensor]]:
    """Run ``fn()`` and return ``(result, {name: unconstrained tensor})`` of the Pyro
    param sites it touched, in the order they were first touched (as ``SVI.step``)."""
    with poutine.trace(param_only=True) as capture:
        out = fn()
    found = {}
    for name, site in capture.trace.nodes.items():
        value = site["value"]
        unconstrained = getattr(value, "unconstrained", None)
        t = unconstrained() if unconstrained is not None else value
        if torch.is_tensor(t) and t.requires_grad:
            found[name] = t
    return out, found
