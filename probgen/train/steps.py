"""Step functions: what one training step computes, apart from the loop that runs it.

The fit loop (:func:`probgen.train.fit`) needs only three things of a step:
the module that holds the parameters, ``loss(batch)`` (a differentiable
scalar, the mean loss per example) and ``eval_loss(batch)``. A Pyro
model/guide pair is trained by :class:`SVIStep` (stochastic variational
inference: the negative ELBO of one of Pyro's objectives); a plain PyTorch
network by :class:`LossStep`. Both run through the same loop.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from probgen.infer.objectives import make_elbo


def _batch_size(batch) -> int:
    for item in batch:
        if torch.is_tensor(item):
            return item.shape[0]
    raise ValueError("a batch needs at least one tensor")


class SVIStep:
    """Negative ELBO per example of a Pyro model/guide pair.

    Args:
        module: the ``nn.Module`` holding every parameter of model and guide.
        model, guide: Pyro callables taking the batch's tensors as arguments;
            default to ``module.model`` and ``module.guide``.
        objective: a name in :data:`probgen.infer.OBJECTIVES`.
        num_particles: samples per example in the ELBO estimate.
    """

    def __init__(self, module: nn.Module, model: Optional[Callable] = None,
                 guide: Optional[Callable] = None, objective: str = "trace",
                 num_particles: int = 1, eval_particles: Optional[int] = None):
        self.module = module
        self.model = model if model is not None else module.model
        self.guide = guide if guide is not None else module.guide
        self.objective = objective
        self.elbo = make_elbo(objective, num_particles)
        self.eval_elbo = make_elbo(objective, eval_particles or num_particles, eager=True)

    def loss(self, batch) -> torch.Tensor:
        return self.elbo.differentiable_loss(self.model, self.guide, *batch) / _batch_size(batch)

    def eval_loss(self, batch) -> torch.Tensor:
        return self.eval_elbo.differentiable_loss(self.model, self.guide, *batch) / _batch_size(batch)


class LossStep:
    """A plain PyTorch loss: ``loss_fn(module, *batch)`` -> mean loss per example."""

    def __init__(self, module: nn.Module, loss_fn: Callable[..., torch.Tensor]):
        self.module = module
        self.loss_fn = loss_fn

    def loss(self, batch) -> torch.Tensor:
        return self.loss_fn(self.module, *batch)

    eval_loss = loss
