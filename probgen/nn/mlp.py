"""Plain PyTorch multilayer perceptrons (no Pyro inside)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from probgen import checks
from probgen.nn.heads import GaussianHead

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
}


def _check_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    return checks.sizes(
        "layer sizes", sizes, min_len=2, hint="an MLP needs [input, hidden..., output]"
    )


class MLP(nn.Sequential):
    """``Linear -> act -> ... -> Linear``; the last layer has no activation.

    Args:
        sizes: ``[in, hidden..., out]``.
        activation: a name in :data:`ACTIVATIONS`.
    """

    def __init__(self, sizes: Sequence[int], activation: str = "relu"):
        sizes = _check_sizes(sizes)
        checks.choice("activation", activation, sorted(ACTIVATIONS))
        layers = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(ACTIVATIONS[activation]())
        super().__init__(*layers)
        self.sizes = tuple(sizes)


class GaussianMLP(GaussianHead):
    """An MLP whose output is a diagonal Gaussian's ``(loc, scale)``, ``scale = exp(.)``
    (its last hidden layer through the :class:`~probgen.nn.heads.GaussianHead`).

    Args:
        sizes: ``[in, hidden..., out]``; the last hidden layer feeds two heads of size ``out``.
    """

    def __init__(self, sizes: Sequence[int], activation: str = "relu"):
        super().__init__()
        *body, out = _check_sizes(sizes)
        self.body = MLP(body, activation) if len(body) > 1 else nn.Identity()
        if len(body) > 1:
            # MLP's last layer has no activation: add it, the heads follow a hidden layer.
            self.body.append(ACTIVATIONS[activation]())
        self.add_head(body[-1], out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.gaussian(self.body(x))
