"""Plain PyTorch multilayer perceptrons (no Pyro inside)."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn

from probgen.errors import ConfigError

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "softplus": nn.Softplus,
               "leaky_relu": nn.LeakyReLU}


def _check_sizes(sizes: Sequence[int]) -> None:
    if len(sizes) < 2:
        raise ConfigError(f"an MLP needs input and output sizes, got {list(sizes)}.")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ConfigError(f"layer sizes must be positive integers, got {list(sizes)}.")


class MLP(nn.Sequential):
    """``Linear -> act -> ... -> Linear``; the last layer has no activation.

    Args:
        sizes: ``[in, hidden..., out]``.
        activation: a name in :data:`ACTIVATIONS`.
    """

    def __init__(self, sizes: Sequence[int], activation: str = "relu"):
        _check_sizes(sizes)
        if activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}.")
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(ACTIVATIONS[activation]())
        super().__init__(*layers)
        self.sizes = tuple(sizes)


class GaussianMLP(nn.Module):
    """An MLP whose output is a diagonal Gaussian's ``(loc, scale)``, ``scale = exp(.)``.

    Args:
        sizes: ``[in, hidden..., out]``; the last hidden layer feeds two heads of size ``out``.
    """

    def __init__(self, sizes: Sequence[int], activation: str = "relu"):
        super().__init__()
        _check_sizes(sizes)
        *body, out = sizes
        self.body = MLP(body, activation) if len(body) > 1 else nn.Identity()
        if len(body) > 1:
            # MLP's last layer has no activation: add it, the heads follow a hidden layer.
            self.body.append(ACTIVATIONS[activation]())
        self.loc = nn.Linear(body[-1], out)
        self.log_scale = nn.Linear(body[-1], out)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.loc(h), self.log_scale(h).exp()
