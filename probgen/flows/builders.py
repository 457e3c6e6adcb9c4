"""Builders of the four flows of the NICE -> RealNVP -> Glow -> DenseFlow line.

Each builder takes the event shape of the data -- ``(D,)`` for vectors (the 2-D
toy densities) or ``(C, H, W)`` for images -- and picks network sizes from it
unless told otherwise. Every builder returns a :class:`~probgen.flows.core.Flow`
(a Pyro transform under a base distribution) or, for DenseFlow, an
:class:`~probgen.flows.core.AugmentedFlow`. They are registered in :data:`FLOWS`.

Which library piece each one uses:

============  ==============================================================================
piece         from
============  ==============================================================================
coupling      Pyro ``AffineCoupling`` (vectors: hypernet Pyro ``DenseNN``; images: ``dim=-3``
              channel split with :class:`~probgen.flows.nets.ConvHypernet`); NICE's additive
              coupling is the same class with a zero log-scale hypernet
reshape       torch ``ReshapeTransform`` (NICE on images works on flat vectors)
base          Pyro ``Normal`` / ``Logistic`` / ``Uniform``
by hand       ActNorm (data-dependent start, flag in the state dict), NICE's scaling,
              the LU-parameterised 1x1 convolution (images) and linear map (vectors),
              checkerboard coupling, squeeze, multiscale factor-out, DenseFlow's
              cross-unit coupling (see :mod:`probgen.flows.transforms` for why)
============  ==============================================================================
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from pyro.distributions.transforms import AffineCoupling
from torch.distributions.transforms import ReshapeTransform

from probgen import checks
from probgen.errors import ConfigError
from probgen.flows.core import AugmentedFlow, DenseLevel, DensityFlow, Flow, _numel
from probgen.flows.nets import AdditiveHypernet, ConvHypernet, dense_hypernet
from probgen.flows.transforms import (
    CheckerboardAffineCoupling,
    CrossUnitCoupling,
    MultiscaleTransform,
    Permute,
    actnorm,
    chain,
    invertible_conv1x1,
    invertible_linear,
    scaling,
)
from probgen.registry import Registry

FLOWS: Registry = Registry("flow")

Hidden = int | Sequence[int] | None


def _event_shape(event_shape) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in event_shape)
    except TypeError:
        raise ConfigError(
            f"event_shape must be a tuple such as (2,) or (1, 28, 28), got {event_shape!r}."
        ) from None
    if len(shape) not in (1, 3) or any(s < 1 for s in shape):
        raise ConfigError(f"flows model vectors (D,) or images (C, H, W); got event shape {shape}.")
    return shape


def _mlp_hidden(hidden: Hidden, dim: int) -> tuple[int, ...]:
    """Hidden layer sizes of a coupling MLP: two layers of ``clip(D/2, 64, 1000)`` by default."""
    if hidden is None:
        width = int(min(1000, max(64, dim // 2)))
        return (width, width)
    return checks.sizes("hidden layer sizes", (hidden,) if isinstance(hidden, int) else hidden)


def _conv_hidden(hidden: Hidden, default: int = 64) -> int:
    if hidden is None:
        return default
    if not isinstance(hidden, int):
        hidden = tuple(hidden)
        if len(hidden) != 1:
            raise ConfigError(f"image flows take one hidden channel count, got {hidden!r}.")
        hidden = hidden[0]
    return checks.positive_int("hidden channels", hidden)


def _max_squeezes(h: int, w: int) -> int:
    n = 0
    while h % 2 == 0 and w % 2 == 0 and h > 1 and w > 1:
        h, w, n = h // 2, w // 2, n + 1
    return n


def _levels(levels: int | None, shape, squeezes_needed, cap: int = 3) -> int:
    """The number of scales: ``levels``, checked, or the most the image allows (at most ``cap``)."""
    _c, h, w = shape
    possible = _max_squeezes(h, w)
    feasible = [l for l in range(1, 9) if squeezes_needed(l) <= possible]
    if not feasible:
        raise ConfigError(
            f"this flow squeezes 2x2 pixels into channels, which needs even "
            f"height and width; {h}x{w} images cannot be squeezed."
        )
    if levels is None:
        return min(cap, max(feasible))
    checks.positive_int("levels", levels)
    if levels not in feasible:
        raise ConfigError(
            f"{levels} levels squeeze {h}x{w} images {squeezes_needed(levels)} times, but "
            f"{h}x{w} halves evenly only {possible} times (each squeeze needs even height and "
            f"width); use at most {max(feasible)} levels."
        )
    return levels


def _check_depth(depth) -> int:
    return checks.positive_int("depth", depth)


def _vector_coupling(dim: int, hidden: tuple[int, ...], additive: bool = False):
    if dim < 2:
        raise ConfigError(
            f"a coupling layer splits the dimensions in two and needs at least 2, got {dim}."
        )
    d1 = dim // 2
    net = (AdditiveHypernet if additive else dense_hypernet)(d1, dim - d1, hidden)
    return AffineCoupling(d1, net)


def _channel_coupling(shape, hidden: int):
    c, h, w = shape
    if c < 2:
        raise ConfigError(
            f"a channel coupling splits the channels in two and needs at least 2, "
            f"got {c}; squeeze first."
        )
    c1 = c // 2
    return AffineCoupling(c1, ConvHypernet((c1, h, w), c - c1, hidden), dim=-3)


def _split_prior(shape, hidden: int):
    """Glow's learned prior of the factored-out half ``z_out ~ N(mu(h), sigma(h))``:
    Pyro's ``AffineCoupling`` from the kept half ``h`` to ``z_out``."""
    c, h, w = shape
    if c % 2:
        raise ConfigError(
            f"factoring out half of the channels needs an even channel count, "
            f"got {c} channels at {h}x{w}; choose settings (growth, units) that leave an "
            f"even channel count at every scale."
        )
    return AffineCoupling(c // 2, ConvHypernet((c // 2, h, w), c // 2, hidden), dim=-3)


def glow_step(shape: Sequence[int], hidden: Hidden) -> list:
    """One Glow step in density order: ActNorm, invertible 1x1 convolution, affine coupling.

    For images ``(C, H, W)`` the 1x1 convolution is :func:`invertible_conv1x1` (LU)
    and the coupling Pyro's ``AffineCoupling`` on channels; for vectors ``(D,)`` the
    same LU matrix (:func:`invertible_linear`) and ``AffineCoupling`` with a ``DenseNN``.
    """
    shape = tuple(shape)
    if len(shape) == 3:
        return [actnorm(shape), invertible_conv1x1(shape[0]), _channel_coupling(shape, hidden)]
    return [actnorm(shape), invertible_linear(shape[0]), _vector_coupling(shape[0], hidden)]


# ---------------------------------------------------------------------------- NICE


@FLOWS.register("nice")
def nice(
    event_shape: Sequence[int], depth: int = 4, hidden: Hidden = None, base: str = "logistic"
) -> Flow:
    r"""NICE (Dinh, Krueger & Bengio 2015): additive couplings and a diagonal scaling.

    Density direction: flatten (images), split into even and odd positions, then
    ``depth`` additive couplings :math:`y_2 = x_2 + m(x_1)` (unit Jacobian), the
    halves swapping roles between layers, then :math:`h = e^{s} \odot y`, whose
    :math:`\sum s` is the whole log-determinant. The base is logistic (as in the
    paper) or Gaussian.

    Reuses Pyro's ``AffineCoupling`` with a shift-only hypernet (``DenseNN``), Pyro's
    ``Permute`` (index tensors as buffers), torch's ``ReshapeTransform`` and the
    scaling layer :func:`~probgen.flows.transforms.scaling`.

    Args:
        event_shape: ``(D,)`` or ``(C, H, W)``.
        depth: number of coupling layers (the paper: 4).
        hidden: MLP hidden sizes; default two layers of ``clip(D/2, 64, 1000)``.
        base: ``logistic`` or ``normal``.
    """
    shape = _event_shape(event_shape)
    _check_depth(depth)
    dim = _numel(shape)
    hidden = _mlp_hidden(hidden, dim)
    checks.choice("NICE's base", base, ("logistic", "normal"))
    layers = []
    if len(shape) > 1:
        layers.append(ReshapeTransform((dim,), shape))
    layers.append(Permute.even_odd(dim))
    for i in range(depth):
        if i:
            layers.append(Permute.reverse(dim))
        layers.append(_vector_coupling(dim, hidden, additive=True))
    layers.append(scaling((dim,)))
    return Flow(chain(layers), shape, latent_shape=(dim,), base=base)


# ------------------------------------------------------------------------- RealNVP


@FLOWS.register("realnvp")
def realnvp(
    event_shape: Sequence[int], depth: int = 3, hidden: Hidden = None, levels: int | None = None
) -> Flow:
    r"""RealNVP (Dinh, Sohl-Dickstein & Bengio 2017): affine couplings, multiscale.

    Images, density direction, at every scale but the last: ``depth`` checkerboard
    couplings (alternating masks), squeeze, ``depth`` channel couplings (alternating
    halves), then half of the channels are factored out and the rest goes to the
    next scale; the last scale has ``depth + 1`` checkerboard couplings. Vectors:
    ``2 * depth`` couplings with alternating halves.

    Each coupling is :math:`y_2 = x_2 \odot e^{s(x_1)} + t(x_1)`,
    :math:`\log|\det| = \sum s(x_1)`. Channel and vector couplings are Pyro's
    ``AffineCoupling``; the checkerboard coupling, squeeze and the factor-out are
    written here (:mod:`probgen.flows.transforms`).

    Args:
        event_shape: ``(D,)`` or ``(C, H, W)``.
        depth: couplings per stage (the paper: 3).
        hidden: conv channels (images; default 64) or MLP sizes (vectors).
        levels: scales; default as many as the image size allows, at most 3
            (MNIST 28x28: 3).
    """
    shape = _event_shape(event_shape)
    _check_depth(depth)
    if len(shape) == 1:
        dim = shape[0]
        h = _mlp_hidden(hidden, dim)
        layers = []
        for i in range(2 * depth):
            if i:
                layers.append(Permute.reverse(dim))
            layers.append(_vector_coupling(dim, h))
        return Flow(chain(layers), shape)
    hidden = _conv_hidden(hidden)
    levels = _levels(levels, shape, lambda l: l - 1)

    def scale(s, remaining):
        if remaining == 1:
            return chain([CheckerboardAffineCoupling(s, i % 2, hidden) for i in range(depth + 1)])
        c, hh, ww = s
        sq = (4 * c, hh // 2, ww // 2)
        pre = chain([CheckerboardAffineCoupling(s, i % 2, hidden) for i in range(depth)])
        post = []
        for i in range(depth):
            if i:
                post.append(Permute.reverse(sq[0], dim=-3))
            post.append(_channel_coupling(sq, hidden))
        inner = scale((2 * c, hh // 2, ww // 2), remaining - 1)
        return MultiscaleTransform(s, chain(post), pre=pre, inner=inner)

    return Flow(scale(shape, levels), shape)


# ---------------------------------------------------------------------------- Glow


@FLOWS.register("glow")
def glow(
    event_shape: Sequence[int],
    depth: int = 8,
    hidden: Hidden = None,
    levels: int | None = None,
    split_prior: bool = True,
) -> Flow:
    r"""Glow (Kingma & Dhariwal 2018): steps of ActNorm, 1x1 convolution, affine coupling.

    Images, density direction, at each of ``levels`` scales: squeeze, ``depth``
    steps, then (except at the last scale) factor out half of the channels with a
    learned conditional prior :math:`z_{out} \sim N(\mu(h), \sigma(h))` given the
    kept half :math:`h`. Vectors: ``depth`` steps.

    Reuses Pyro's ``AffineCoupling`` (also as the split prior); ActNorm (data-dependent
    start, saved flag) and the LU-parameterised 1x1 convolution are
    :class:`~probgen.flows.transforms.ActNorm` and
    :class:`~probgen.flows.transforms.InvertibleLinear` (see there for why not Pyro's
    ``GeneralizedChannelPermute``). The squeeze/factor-out scale is
    :class:`MultiscaleTransform`.

    Args:
        event_shape: ``(D,)`` or ``(C, H, W)``.
        depth: steps per scale (the paper: 32).
        hidden: conv channels (images; default 64) or MLP sizes (vectors).
        levels: scales; default as many as the image allows, at most 3 (MNIST: 2).
        split_prior: learn the prior of factored-out channels (else standard normal).
    """
    shape = _event_shape(event_shape)
    _check_depth(depth)
    if len(shape) == 1:
        if shape[0] < 2:
            raise ConfigError("Glow on vectors needs at least 2 dimensions.")
        h = _mlp_hidden(hidden, shape[0])
        layers = [l for _ in range(depth) for l in glow_step(shape, h)]
        return Flow(chain(layers), shape)
    hidden = _conv_hidden(hidden)
    levels = _levels(levels, shape, lambda l: l)

    def scale(s, remaining):
        c, hh, ww = s
        sq = (4 * c, hh // 2, ww // 2)
        post = chain([l for _ in range(depth) for l in glow_step(sq, hidden)])
        if remaining == 1:
            return MultiscaleTransform(s, post)
        inner = scale((2 * c, hh // 2, ww // 2), remaining - 1)
        prior = _split_prior(sq, hidden) if split_prior else None
        return MultiscaleTransform(s, post, inner=inner, split_prior=prior)

    return Flow(scale(shape, levels), shape)


# ------------------------------------------------------------------------ DenseFlow


@FLOWS.register("denseflow")
def denseflow(
    event_shape: Sequence[int],
    depth: int = 4,
    hidden: Hidden = None,
    levels: int | None = None,
    units: int = 2,
    growth: int | None = None,
) -> AugmentedFlow:
    r"""DenseFlow (Grcic, Grubisic & Segvic 2021), reduced to what runs on a CPU.

    Images, density direction, at each scale: squeeze, then ``units`` times: a
    cross-unit coupling adds ``growth`` channels of noise
    :math:`e \sim N(0, I)`, moved and scaled by a learned function of the current
    latent, followed by ``depth`` Glow steps on the wider tensor; then half of the
    channels are factored out (learned conditional prior) except at the last scale.
    The width therefore grows incrementally, unit by unit and scale by scale.
    Vectors: one scale of ``units`` such blocks.

    The likelihood is the bound of :class:`AugmentedFlow` (eq. 2.42 of the source);
    report bits/dim from it as a bound. The paper's DenseNet-with-attention
    conditioners are replaced by Glow's small convolutional networks.

    Reuses everything of :func:`glow`; the cross-unit coupling
    (:class:`~probgen.flows.transforms.CrossUnitCoupling`) is written here.

    Args:
        event_shape: ``(D,)`` or ``(C, H, W)``.
        depth: Glow steps after each augmentation.
        hidden: conv channels (images; default 64) or MLP sizes (vectors).
        levels: scales (default as for Glow).
        units: augmentations per scale.
        growth: channels (dimensions) of noise per augmentation; must keep the channel
            count even where half is factored out. Default: 4 for images, 2 for vectors.
    """
    shape = _event_shape(event_shape)
    _check_depth(depth)
    checks.positive_int("units", units)
    if len(shape) == 1:
        growth = 2 if growth is None else checks.positive_int("growth", growth)
        h = _mlp_hidden(hidden, shape[0] + units * growth)
        blocks, cur = [], shape
        for _ in range(units):
            aug = CrossUnitCoupling(cur, growth, h)
            cur = aug.out_shape
            blocks.append((aug, chain([l for _ in range(depth) for l in glow_step(cur, h)])))
        return AugmentedFlow(DenseLevel(blocks, squeeze=False, event_dim=1), shape)
    hidden = _conv_hidden(hidden)
    growth = 4 if growth is None else checks.positive_int("growth", growth)
    levels = _levels(levels, shape, lambda l: l)

    def scale(s, remaining):
        c, hh, ww = s
        cur = (4 * c, hh // 2, ww // 2)
        blocks = []
        for _ in range(units):
            aug = CrossUnitCoupling(cur, growth, hidden)
            cur = aug.out_shape
            blocks.append((aug, chain([l for _ in range(depth) for l in glow_step(cur, hidden)])))
        if remaining == 1:
            return DenseLevel(blocks, squeeze=True)
        prior = _split_prior(cur, hidden)
        inner = scale((cur[0] // 2,) + cur[1:], remaining - 1)
        return DenseLevel(blocks, squeeze=True, inner=inner, split_prior=prior)

    return AugmentedFlow(scale(shape, levels), shape)


# ------------------------------------------------------------------------ identity


@FLOWS.register("identity")
def identity(event_shape: Sequence[int], base: str = "normal") -> Flow:
    """No transform: the base distribution itself (closed-form checks, baselines)."""
    return Flow(None, _event_shape(event_shape), base=base)


def build_flow(name: str, event_shape: Sequence[int], **kwargs: Any) -> DensityFlow:
    """``FLOWS.get(name)(event_shape, **kwargs)`` with a clear error for unknown settings.

    Examples:
        >>> import torch
        >>> from probgen.flows import build_flow
        >>> flow = build_flow("realnvp", (2,), depth=2)
        >>> flow.log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
        >>> build_flow("realnvp", (2,), detph=2)
        Traceback (most recent call last):
            ...
        probgen.errors.ConfigError: flow 'realnvp' does not take those settings (...); ...
    """
    builder = FLOWS.get(name)
    try:
        inspect.signature(builder).bind(event_shape, **kwargs)
    except TypeError as err:
        accepted = [p for p in inspect.signature(builder).parameters if p != "event_shape"]
        raise ConfigError(
            f"flow {name!r} does not take those settings ({err}); it takes {', '.join(accepted)}."
        ) from None
    return builder(event_shape, **kwargs)
