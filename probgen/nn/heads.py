"""The diagonal-Gaussian head that probgen's encoders share.

An encoder maps an input to features ``h`` with a body of its own (an MLP, a conv net),
then to a diagonal Gaussian: ``loc = loc(h)`` and ``scale = exp(log_scale(h))``, two
linear maps of ``h`` (a point-mass encoder has no ``log_scale``). The autoencoders' encoders
(:class:`probgen.nn.coders.Encoder`) and the CVAE's prior and recognition networks
(:class:`probgen.nn.mlp.GaussianMLP`) are such heads with a body before them; so the models
that read a head's features themselves (a flow guide, a semi-supervised class code) call
:meth:`GaussianHead.gaussian` on them instead of writing the head again.

Examples:
    >>> import torch
    >>> from torch import nn
    >>> from probgen.nn.heads import GaussianHead
    >>> class Net(GaussianHead):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.body = nn.Linear(4, 8)
    ...         self.add_head(8, 2)
    ...     def forward(self, x):
    ...         return self.gaussian(self.body(x))
    >>> loc, scale = Net()(torch.zeros(3, 4))
    >>> loc.shape, bool((scale > 0).all())
    (torch.Size([3, 2]), True)
"""

from __future__ import annotations

import torch
from torch import nn


class GaussianHead(nn.Module):
    """A network whose output is a diagonal Gaussian's ``(loc, scale)`` of its features.

    A subclass builds its body first, then calls :meth:`add_head`: the head's layers are
    registered after the body's and keep the names ``loc`` and ``log_scale`` (the state
    of the encoders written before the head was shared loads as it was, and their
    parameters are drawn in the same order).

    Attributes:
        loc: ``Linear(features, out)``, the mean.
        log_scale: ``Linear(features, out)``, the log standard deviation (``None`` for a
            point mass).
    """

    loc: nn.Linear
    log_scale: nn.Linear | None

    def add_head(self, features: int, out: int, stochastic: bool = True) -> None:
        """Register the head: ``loc`` and (``stochastic``) ``log_scale``, ``features -> out``."""
        self.loc = nn.Linear(features, out)
        self.log_scale = nn.Linear(features, out) if stochastic else None

    def gaussian(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(loc, scale)`` of the features ``h`` (``scale`` is ``None`` for a point mass)."""
        # loc first: where h feeds more than the head (a flow's context, a class head), the
        # order its gradients are summed in follows the order of these calls
        loc = self.loc(h)
        return loc, self.log_scale(h).exp() if self.log_scale is not None else None


__all__ = ["GaussianHead"]
