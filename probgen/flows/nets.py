"""Conditioner networks of the flows: they compute shifts and log-scales, never invert.

A coupling layer's conditioner can be any network; only the layer around it has
to be invertible. Vector data uses Pyro's :class:`pyro.nn.DenseNN` directly.
Images need convolutions that read the flat vector Pyro's
:class:`~pyro.distributions.transforms.AffineCoupling` hands its hypernet, so
:class:`ConvHypernet` reshapes to ``(C, H, W)`` and back around a small
:class:`ConvNet` (the 3x3 / 1x1 / 3x3 network of Glow).

Every affine network's last layer starts near zero (weights ``N(0, 1e-3^2)``, bias 0),
so a fresh coupling is close to the identity, as in Glow (which uses exact zeros;
a tiny non-zero start keeps a gradient flowing to every layer from the first step).

Under mixed precision (``torch.autocast`` with bfloat16 or float16) the networks' layers
run in the lower precision, and their outputs come back in the dtype of their input
(the data's float32): the coupling's shift and scale, and the log-determinant summed
from hundreds of log-scales per example, stay in float32 (a bfloat16 sum keeps about
three significant digits). Without autocast the cast is a no-op.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro.nn import DenseNN
from torch import nn

from probgen import checks

LAST_LAYER_STD = 1e-3


def near_zero_(layer: nn.Module) -> nn.Module:
    """Initialise a linear or convolutional layer to (almost) zero, in place."""
    nn.init.normal_(layer.weight, std=LAST_LAYER_STD)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class ConvNet(nn.Module):
    """Glow's conditioner: 3x3 conv, ReLU, 1x1 conv, ReLU, 3x3 conv (near-zero start).

    Args:
        in_channels: channels of the input ``(B, in_channels, H, W)``.
        out_channels: channels of the output ``(B, out_channels, H, W)``.
        hidden: channels of the two hidden layers.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64):
        super().__init__()
        checks.positive_int("hidden channels", hidden)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            near_zero_(nn.Conv2d(hidden, out_channels, 3, padding=1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).to(x.dtype)  # (autocast: back to the input's dtype)


class ConvHypernet(nn.Module):
    """Hypernet of Pyro's ``AffineCoupling(split_dim, hypernet, dim=-3)`` on images.

    Pyro flattens the conditioning half to ``(..., C1*H*W)`` before calling the
    hypernet and expects ``(mean, log_scale)`` back, each ``(..., C2*H*W)``.

    Args:
        in_shape: ``(C1, H, W)``, the conditioning channels.
        out_channels: ``C2``, the channels being transformed.
        hidden: hidden channels of the :class:`ConvNet`.
    """

    def __init__(self, in_shape: Sequence[int], out_channels: int, hidden: int = 64):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.out_channels = out_channels
        self.net = ConvNet(self.in_shape[0], 2 * out_channels, hidden)

    def forward(self, x1: torch.Tensor):
        batch = x1.shape[:-1]
        h = self.net(x1.reshape((-1,) + self.in_shape))
        mean, log_scale = h.chunk(2, dim=1)
        return mean.reshape(batch + (-1,)), log_scale.reshape(batch + (-1,))


class InputDtypeDenseNN(DenseNN):
    """Pyro's ``DenseNN`` whose outputs have its input's dtype (float32 under autocast)."""

    def forward(self, x):
        out = super().forward(x)
        if isinstance(out, torch.Tensor):
            return out.to(x.dtype)
        return tuple(o.to(x.dtype) for o in out)


def dense_hypernet(in_dim: int, out_dim: int, hidden: Sequence[int]) -> DenseNN:
    """Pyro's ``DenseNN`` returning ``(mean, log_scale)``, last layer near zero (outputs in
    the input's dtype: :class:`InputDtypeDenseNN`)."""
    net = InputDtypeDenseNN(
        in_dim, list(checks.sizes("hidden layer sizes", hidden)), param_dims=[out_dim, out_dim]
    )
    near_zero_(net.layers[-1])
    return net


class AdditiveHypernet(nn.Module):
    """A shift-only hypernet: ``(m(x1), 0)``, turning Pyro's affine coupling into
    NICE's additive coupling ``y2 = x2 + m(x1)`` (log-scale identically zero, unit Jacobian).

    Unlike the affine couplings, NICE's start with PyTorch's default (random)
    initialisation, as in the paper: a shift that starts at zero sits at a stationary
    point of the likelihood of any density symmetric in ``x2`` given ``x1`` (the
    rings, for instance), where ``E[x2 | x1] = 0``.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int]):
        super().__init__()
        self.net = InputDtypeDenseNN(
            in_dim, list(checks.sizes("hidden layer sizes", hidden)), param_dims=[out_dim]
        )

    def forward(self, x1: torch.Tensor):
        m = self.net(x1)
        return m, torch.zeros_like(m)
