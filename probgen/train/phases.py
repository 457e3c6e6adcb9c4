"""A phase's training state: the parameters it has found so far (in the order they
joined), its optimizer and schedule, its step count, and its update."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from probgen.errors import ConfigError
from probgen.infer.phases import OPTIMIZERS, Phase
from probgen.train import distributed as ddp
from probgen.train.config import FitConfig
from probgen.train.schedules import SCHEDULES

__all__ = ["PhaseState", "all_params", "check_phase_optim", "phase_settings", "pyro_params"]


def _torch_form(value: Any) -> Any:
    """Lists -> tuples, recursively: ``phase_optim`` keeps JSON's lists, torch's
    optimizers take tuples (``betas``)."""
    if isinstance(value, (list, tuple)):
        return tuple(_torch_form(v) for v in value)
    if isinstance(value, dict):
        return {k: _torch_form(v) for k, v in value.items()}
    return value


def phase_settings(phase_optim: dict[str, dict[str, Any]] | None, name: str) -> dict[str, Any]:
    """The optimizer settings ``phase_optim`` (:class:`~probgen.train.FitConfig`) gives the
    phase called ``name`` (``{}`` for none), in torch's form."""
    return _torch_form(dict((phase_optim or {}).get(name) or {}))


def check_phase_optim(phases: Sequence[Phase], config: FitConfig, where: str) -> None:
    """Refuse, before training, a ``phase_optim`` naming a phase the step lacks or giving
    a phase settings its optimizer refuses (one line naming the phase).

    Args:
        phases: the step's phases.
        config: the run's :class:`~probgen.train.FitConfig`.
        where: the step, as the message names it.

    Raises:
        ConfigError: the first setting that does not fit.
    """
    po = config.phase_optim
    if not po:
        return
    names = [ph.name for ph in phases]
    unknown = [n for n in po if n not in names]
    if unknown:
        raise ConfigError(
            f"phase_optim names {', '.join(map(repr, unknown))}, which "
            f"{where} does not have; its phases are "
            f"{', '.join(map(repr, names))}."
        )
    for ph in phases:
        if ph.name not in po:
            continue
        cls = _optimizer_class(ph, config)
        own = {} if ph.per_parameter else _own_settings(ph, config, "")
        settings = {**_base_settings(ph, config), **own, **_overrides(ph, config)}
        try:  # torch's optimizer judges its own settings (names and values)
            cls([torch.zeros(1, requires_grad=True)], **settings)
        except Exception as err:
            # Any failure to build on a dummy tensor is a refusal: torch raises TypeError
            # and ValueError, but also IndexError (``betas=[0.5]``) and RuntimeError
            # (``fused=True, foreach=True``).
            first = (str(err).strip().splitlines() or [""])[0] or type(err).__name__
            raise ConfigError(
                f"phase_optim[{ph.name!r}]: {cls.__name__} refuses the settings "
                f"{settings} ({first})."
            ) from None


def _base_settings(phase: Phase, config: FitConfig) -> dict[str, Any]:
    """The run's settings of a phase's optimizer: its ``lr`` (unless the phase has its
    own) and ``weight_decay``."""
    lr = phase.lr if phase.lr is not None else config.lr
    # no lr at all (Pyro's per-parameter settings, fit's lr unused): the optimizer's own
    kwargs = dict(lr=lr) if lr is not None else {}
    if config.weight_decay:
        kwargs["weight_decay"] = config.weight_decay
    return kwargs


def _own_settings(phase: Phase, config: FitConfig, name: str) -> dict[str, Any]:
    """The phase's own optimizer settings of the parameter called ``name``; only its
    learning rate when the run's ``phase_optim`` gives the phase another optimizer (the
    others were the phase's optimizer's)."""
    own = phase.optim_args_for(name) if phase.per_parameter else dict(phase.optim_kwargs)
    if "optimizer" in ((getattr(config, "phase_optim", None) or {}).get(phase.name) or {}):
        own = {k: v for k, v in own.items() if k == "lr"}
    return own


def _overrides(phase: Phase, config: FitConfig) -> dict[str, Any]:
    """The run's ``phase_optim`` settings of ``phase`` (``optimizer`` left out)."""
    over = phase_settings(getattr(config, "phase_optim", None), phase.name)
    over.pop("optimizer", None)
    return over


def _optimizer_class(phase: Phase, config: FitConfig) -> type:
    """The optimizer class: the run's ``phase_optim`` choice, else the phase's, else the
    run's."""
    over = phase_settings(getattr(config, "phase_optim", None), phase.name)
    name = over.get("optimizer") or phase.optimizer or config.optimizer
    return OPTIMIZERS.get(name) if isinstance(name, str) else name


class PhaseState:
    """A phase's parameters (in the order they joined), optimizer, schedule and counter.

    Args:
        phase: the :class:`~probgen.infer.Phase`.
        config: the run's :class:`~probgen.train.FitConfig` (learning rate, optimizer,
            weight decay and schedule, where the phase sets none).
        module: the step's module (its parameters' names for the checkpoint), or ``None``.
    """

    def __init__(self, phase: Phase, config: FitConfig, module: nn.Module | None) -> None:
        self.phase = phase
        self.params: list[torch.Tensor] = []
        self.names: list[str] = []
        self._ids = set()
        self.optimizer = None
        self.scheduler = None
        self.steps = 0
        self.config = config
        # The learning rate the phase started this run with (recorded in the checkpoint,
        # so that a resumed run with another rate scales from it): set when the optimizer
        # is built, and by probgen.train.resume when a run comes back from a checkpoint.
        self.start_lr: float | None = None
        names = {id(p): f"module:{n}" for n, p in module.named_parameters()} if module else {}
        declared = phase.declared_params()
        if declared is not None:
            for i, p in enumerate(declared):
                self.add(names.get(id(p), f"param:{i}"), p)

    def add(self, name: str, tensor: torch.Tensor) -> bool:
        """Add a parameter (to the optimizer too, once it exists); False when it is in."""
        if id(tensor) in self._ids:
            return False
        self._ids.add(id(tensor))
        self.params.append(tensor)
        self.names.append(name)
        if self.optimizer is not None:
            if self.phase.per_parameter:
                # Pyro's per-parameter settings: a group of its own
                self.optimizer.add_param_group(dict(self.group_settings(name), params=[tensor]))
            else:
                # One parameter group per phase, grown as Pyro creates parameters (so the
                # schedule covers them all); Adam's state is per parameter either way.
                self.optimizer.param_groups[0]["params"].append(tensor)
        return True

    def _base(self) -> dict[str, Any]:
        return _base_settings(self.phase, self.config)

    def group_settings(self, name: str) -> dict[str, Any]:
        """The optimizer settings of the parameter called ``name``: the run's (``lr``,
        ``weight_decay``), then the phase's, then the run's ``phase_optim`` for it."""
        own = _own_settings(self.phase, self.config, name)
        return {**self._base(), **own, **_overrides(self.phase, self.config)}

    def initial_lr(self, lr: float | None, phase_optim: dict[str, Any] | None) -> float | None:
        """The learning rate this phase starts with under a run's ``lr`` and ``phase_optim``
        (``None``: per parameter, or none given)."""
        over = phase_settings(phase_optim, self.phase.name)
        if "lr" in over:
            return over["lr"]
        ph = self.phase
        if ph.per_parameter:
            return None
        return ph.optim_kwargs.get("lr", ph.lr if ph.lr is not None else lr)

    def build_optimizer(self, total_steps: int, steps_per_epoch: int) -> None:
        """The optimizer of the parameters found so far, and the schedule over the run."""
        c, ph = self.config, self.phase
        cls = _optimizer_class(ph, c)
        self.start_lr = self.initial_lr(getattr(c, "lr", None), getattr(c, "phase_optim", None))
        if ph.per_parameter:
            groups = [
                dict(self.group_settings(n), params=[p]) for n, p in zip(self.names, self.params)
            ]
            self.optimizer = cls(groups, **self._base())
        else:
            self.optimizer = cls(list(self.params), **self.group_settings(""))
        if c.lr_schedule is not None:
            self.scheduler = SCHEDULES.get(c.lr_schedule)(
                self.optimizer,
                max(total_steps * ph.repeats, 1),
                steps_per_epoch * ph.repeats,
                c.warmup_epochs,
            )

    def update(self, loss: torch.Tensor, clip_norm: float | None) -> None:
        """One optimizer step on ``loss``: its backward pass (unless the phase's loss made
        it), the gradients averaged over torchrun's processes and clipped to ``clip_norm``,
        the step and the schedule's; the gradients cleared afterwards."""
        if not self.phase.owns_backward:
            # Every step ends with the gradients cleared (below), so they are usually None
            # here; clear again only when something between the steps left one (a user's
            # backward in a callback): a zero_grad costs a tenth of a small model's step.
            if any(p.grad is not None for p in self.params):
                self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        ddp.average_gradients(self.params)
        if clip_norm is not None:
            nn.utils.clip_grad_norm_(self.params, clip_norm)
        self.optimizer.step()
        # Clear after the step too, as pyro.infer.SVI does: no gradient is left on the
        # parameters for the user's next Pyro step to accumulate onto.
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        self.steps += 1

    def lr(self) -> float | None:
        """The first parameter group's learning rate now (``None`` before the optimizer)."""
        return self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else None


def all_params(phases: Sequence[PhaseState]) -> list[torch.Tensor]:
    """Every phase's parameters, each once, in the order they joined."""
    seen, out = set(), []
    for st in phases:
        for p in st.params:
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def pyro_params(phases: Sequence[PhaseState]) -> dict[str, torch.Tensor]:
    """Parameters found through Pyro that no module holds, by param-store name."""
    out = {}
    for st in phases:
        for name, p in zip(st.names, st.params):
            if name.startswith("pyro:"):
                out[name[5:]] = p
    return out
