"""Encoder and decoder networks for autoencoders (plain PyTorch, no Pyro inside).

Two architectures, picked by name from :data:`NETS`:

* ``mlp``: fully connected, ``D -> hidden... -> z`` and back (the IWAE paper's
  784-200-200-50 with ``activation="tanh"``);
* ``conv``: two stride-2 convolutions (``H, W`` divisible by 4) and a hidden
  dense layer, mirrored by transposed convolutions in the decoder.

Both take an optional one-hot label of ``num_labels`` classes (a conditional
model): the encoder sees it next to the image, the decoder next to ``z``.
The encoder returns ``(loc, scale)`` when ``stochastic`` (a Gaussian code),
else ``(loc, None)`` (a point code: no scale head, so every parameter is used).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from probgen import checks
from probgen.errors import ConfigError
from probgen.nn.heads import GaussianHead
from probgen.nn.mlp import ACTIVATIONS, MLP
from probgen.registry import Registry

NETS: Registry = Registry("network architecture")


def _numel(shape: Sequence[int]) -> int:
    return int(torch.Size(shape).numel())


def _with_label(h: torch.Tensor, onehot: torch.Tensor | None) -> torch.Tensor:
    if onehot is None:
        return h
    # z may carry extra leading (particle) dimensions: broadcast the label to them.
    onehot = onehot.to(h.dtype).expand(h.shape[:-1] + onehot.shape[-1:])
    return torch.cat([h, onehot], -1)


class Encoder(GaussianHead):
    """``x (B, *image_shape) [, onehot (B, L)] -> (loc (B, z), scale (B, z) | None)``: a
    body's ``features`` through the :class:`~probgen.nn.heads.GaussianHead`."""

    def __init__(self, body: nn.Module, features: int, z_dim: int, stochastic: bool = True):
        super().__init__()
        self.body = body
        self.add_head(features, z_dim, stochastic)

    def forward(
        self, x: torch.Tensor, onehot: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.gaussian(self.body(x, onehot))


class _MLPBody(nn.Module):
    def __init__(self, in_dim: int, hidden: Sequence[int], num_labels: int, activation: str):
        super().__init__()
        self.net = nn.Sequential(
            MLP([in_dim + num_labels, *hidden], activation), ACTIVATIONS[activation]()
        )

    def forward(self, x, onehot=None):
        return self.net(_with_label(x.reshape(x.shape[0], -1), onehot))


class _MLPDecoder(nn.Module):
    def __init__(self, z_dim, hidden, out_dim, num_labels, activation):
        super().__init__()
        self.net = MLP([z_dim + num_labels, *reversed(list(hidden)), out_dim], activation)

    def forward(self, z, onehot=None):
        return self.net(_with_label(z, onehot))


def _check_conv_shape(image_shape, channels):
    if len(image_shape) != 3:
        raise ConfigError(
            f"the conv network takes images (C, H, W), got shape {tuple(image_shape)}."
        )
    _c, h, w = image_shape
    f = 2 ** len(channels)
    if h % f or w % f:
        raise ConfigError(
            f"the conv network halves the image {len(channels)} times, so H and W "
            f"must be divisible by {f}; got {h}x{w}. Pad the images or use net='mlp'."
        )


class _ConvBody(nn.Module):
    def __init__(self, image_shape, hidden, num_labels, activation, channels=(32, 64)):
        super().__init__()
        _check_conv_shape(image_shape, channels)
        c, h, w = image_shape
        layers, prev = [], c
        for ch in channels:
            layers += [nn.Conv2d(prev, ch, 4, stride=2, padding=1), ACTIVATIONS[activation]()]
            prev = ch
        self.conv = nn.Sequential(*layers, nn.Flatten())
        self.image_shape = tuple(image_shape)
        flat = prev * (h // 2 ** len(channels)) * (w // 2 ** len(channels))
        self.dense = nn.Sequential(
            nn.Linear(flat + num_labels, hidden[-1]), ACTIVATIONS[activation]()
        )

    def forward(self, x, onehot=None):
        return self.dense(
            _with_label(self.conv(x.reshape((x.shape[0],) + self.image_shape)), onehot)
        )


class _ConvDecoder(nn.Module):
    def __init__(self, z_dim, hidden, image_shape, num_labels, activation, channels=(32, 64)):
        super().__init__()
        _check_conv_shape(image_shape, channels)
        c, h, w = image_shape
        f = 2 ** len(channels)
        self.start = (channels[-1], h // f, w // f)
        self.dense = nn.Sequential(
            nn.Linear(z_dim + num_labels, hidden[-1]),
            ACTIVATIONS[activation](),
            nn.Linear(hidden[-1], _numel(self.start)),
            ACTIVATIONS[activation](),
        )
        layers = []
        chans = list(reversed(channels)) + [c]
        for i, (a, b) in enumerate(itertools.pairwise(chans)):
            layers.append(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1))
            if i < len(chans) - 2:
                layers.append(ACTIVATIONS[activation]())
        self.deconv = nn.Sequential(*layers, nn.Flatten())

    def forward(self, z, onehot=None):
        h = self.dense(_with_label(z, onehot))
        batch = h.shape[:-1]  # leading (particle, batch) dimensions
        out = self.deconv(h.reshape((-1,) + self.start))
        return out.reshape(batch + out.shape[-1:])


def _check(image_shape, z_dim, hidden, num_labels, activation):
    checks.positive_int("the latent size z_dim", z_dim)
    checks.sizes("hidden layer sizes", hidden)
    checks.nonnegative_int("num_labels", num_labels)
    checks.choice("activation", activation, sorted(ACTIVATIONS))


@NETS.register("mlp")
def mlp_coders(
    image_shape: Sequence[int],
    z_dim: int,
    hidden: Sequence[int] = (200, 200),
    num_labels: int = 0,
    activation: str = "tanh",
    stochastic: bool = True,
):
    """Fully connected encoder and decoder; returns ``(encoder, decoder)``.

    The decoder returns ``(B, D)`` pre-activations (logits or means) of the pixels.
    """
    _check(image_shape, z_dim, hidden, num_labels, activation)
    d = _numel(image_shape)
    enc = Encoder(_MLPBody(d, hidden, num_labels, activation), hidden[-1], z_dim, stochastic)
    return enc, _MLPDecoder(z_dim, hidden, d, num_labels, activation)


@NETS.register("conv")
def conv_coders(
    image_shape: Sequence[int],
    z_dim: int,
    hidden: Sequence[int] = (256,),
    num_labels: int = 0,
    activation: str = "relu",
    stochastic: bool = True,
):
    """Convolutional encoder (two stride-2 convs, 32 and 64 channels) and its mirror decoder."""
    _check(image_shape, z_dim, hidden, num_labels, activation)
    enc = Encoder(
        _ConvBody(image_shape, hidden, num_labels, activation), hidden[-1], z_dim, stochastic
    )
    return enc, _ConvDecoder(z_dim, hidden, image_shape, num_labels, activation)
