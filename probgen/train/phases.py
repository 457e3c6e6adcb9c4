"""A phase's training state: the parameters it has found so far (in the order they
joined), its optimizer and schedule, its step count, and its update."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from probgen.infer.phases import OPTIMIZERS, Phase
from probgen.train import distributed as ddp
from probgen.train.schedules import SCHEDULES

__all__ = ["PhaseState", "all_params", "pyro_params"]


class PhaseState:
    """A phase's parameters (in the order they joined), optimizer, schedule and counter.

    Args:
        phase: the :class:`~probgen.infer.Phase`.
        config: the run's :class:`~probgen.train.FitConfig` (learning rate, optimizer,
            weight decay and schedule, where the phase sets none).
        module: the step's module (its parameters' names for the checkpoint), or ``None``.
    """

    def __init__(self, phase: Phase, config, module: Optional[nn.Module]):
        self.phase = phase
        self.params: List[torch.Tensor] = []
        self.names: List[str] = []
        self._ids = set()
        self.optimizer = None
        self.scheduler = None
        self.steps = 0
        self.config = config
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
                self.optimizer.add_param_group(dict(self._base(),
                                                    **self.phase.optim_args_for(name),
                                                    params=[tensor]))
            else:
                # One parameter group per phase, grown as Pyro creates parameters (so the
                # schedule covers them all); Adam's state is per parameter either way.
                self.optimizer.param_groups[0]["params"].append(tensor)
        return True

    def _base(self) -> Dict[str, Any]:
        c, ph = self.config, self.phase
        lr = ph.lr if ph.lr is not None else c.lr
        # no lr at all (Pyro's per-parameter settings, fit's lr unused): the optimizer's own
        kwargs = dict(lr=lr) if lr is not None else {}
        if c.weight_decay:
            kwargs["weight_decay"] = c.weight_decay
        return kwargs

    def build_optimizer(self, total_steps: int, steps_per_epoch: int) -> None:
        """The optimizer of the parameters found so far, and the schedule over the run."""
        c, ph = self.config, self.phase
        name = ph.optimizer or c.optimizer
        cls = OPTIMIZERS.get(name) if isinstance(name, str) else name
        base = self._base()
        if ph.per_parameter:
            groups = [dict(base, **ph.optim_args_for(n), params=[p])
                      for n, p in zip(self.names, self.params)]
            self.optimizer = cls(groups, **base)
        else:
            self.optimizer = cls(list(self.params), **dict(base, **ph.optim_kwargs))
        if c.lr_schedule is not None:
            self.scheduler = SCHEDULES.get(c.lr_schedule)(
                self.optimizer, max(total_steps * ph.repeats, 1), steps_per_epoch * ph.repeats,
                c.warmup_epochs)

    def update(self, loss: torch.Tensor, clip_norm: Optional[float]) -> None:
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

    def lr(self) -> Optional[float]:
        return self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else None


def all_params(phases: Sequence[PhaseState]) -> List[torch.Tensor]:
    """Every phase's parameters, each once, in the order they joined."""
    seen, out = set(), []
    for st in phases:
        for p in st.params:
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def pyro_params(phases: Sequence[PhaseState]) -> Dict[str, torch.Tensor]:
    """Parameters found through Pyro that no module holds, by param-store name."""
    out = {}
    for st in phases:
        for name, p in zip(st.names, st.params):
            if name.startswith("pyro:"):
                out[name[5:]] = p
    return out
