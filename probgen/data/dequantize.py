r"""Dequantization and logit preprocessing for density models of images.

A flow is a density on continuous values; images are integers. With ``L`` grey
levels (256 for 8-bit images), uniform dequantization replaces the level
:math:`k \in \{0, \dots, L-1\}` by :math:`x = (k + u) / L`, :math:`u \sim U(0, 1)^D`,
a point of the level's bin in :math:`[0, 1)^D`. Any density :math:`p` on
:math:`[0,1]^D` then bounds the discrete likelihood (Theis et al. 2016):

.. math::
    \log P(k) \ge E_u[\log p((k + u) / L)] - D \log L,

which is what bits/dim report (:mod:`probgen.metrics.density`).

The logit preprocessing of RealNVP maps :math:`x \in [0, 1]` to
:math:`y = \operatorname{logit}(\alpha + (1 - 2\alpha) x)`, so the flow works on
the real line; its log-determinant
:math:`\sum_i \log(1-2\alpha) - \log z_i - \log(1 - z_i)`, :math:`z = \alpha + (1-2\alpha)x`,
is part of the density of ``x``. :func:`logit_transform` is the same map as a
torch transform (logit space to data), placed last in a
``TransformedDistribution`` so that ``log_prob`` counts it automatically.

probgen's image data sets hold grey levels ``k / (L - 1)`` in [0, 1] (what
:func:`probgen.data.image_splits` returns); these functions recover ``k`` from them.
:class:`VariationalDequantizer` learns the dequantization noise instead (a guide).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.distributions.transforms import AffineTransform, ComposeTransform, SigmoidTransform

from probgen import checks
from probgen.data.draws import rand_like
from probgen.data.tensors import TensorData, Transform
from probgen.errors import ConfigError, DataError

# The variational dequantizer's noise lies in [U_MARGIN, 1 - U_MARGIN], never on the
# edge of the uniform prior's support.
U_MARGIN = 1e-6


def _check_levels(num_levels: int) -> int:
    return checks.integer("num_levels", num_levels, low=2)


def check_unit_interval(x: torch.Tensor, what: str = "images") -> None:
    """Raise :class:`DataError` unless every value of ``x`` is in [0, 1]."""
    if not torch.is_tensor(x):
        raise DataError(f"{what} must be a tensor, got {type(x).__name__}.")
    if torch.jit.is_tracing():
        return
    if x.numel() and bool((~((x >= 0) & (x <= 1))).any()):  # (NaN counts as outside)
        raise DataError(
            f"{what} must be grey levels in [0, 1]; found values in [{x.min().item():.4g}, "
            f"{x.max().item():.4g}]. Scale 8-bit images by 1/255 (probgen.data.image_splits "
            f"does) or dequantize them with probgen.data.dequantize.uniform_dequantize."
        )


def to_levels(x: torch.Tensor, num_levels: int = 256, check: bool = True) -> torch.Tensor:
    """Integer levels ``k`` (as floats) of grey levels ``x = k / (L - 1)`` in [0, 1].

    Args:
        check: check the values (one host read: a synchronisation on a GPU); ``False``
            for data checked before (a whole data set, once).

    Raises:
        DataError: values outside [0, 1], or values off the grid of ``L`` levels
            (data that are dequantized already, or were never quantized).
    """
    _check_levels(num_levels)
    if not torch.is_tensor(x):
        check_unit_interval(x)  # raises: not a tensor
    k = torch.round(x * (num_levels - 1))
    if not check or torch.jit.is_tracing() or not x.numel():
        return k
    outside = ~((x >= 0) & (x <= 1))
    if bool((outside | ((x * (num_levels - 1) - k).abs() > 1e-3)).any()):
        check_unit_interval(x)  # the values outside [0, 1] have their own message
        raise DataError(
            f"these images are not on the grid of {num_levels} grey levels (k / {num_levels - 1}); "
            f"they may be dequantized already. Pass the quantized grey levels, or skip "
            f"dequantization."
        )
    return k


def uniform_dequantize(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    num_levels: int = 256,
    check: bool = True,
) -> torch.Tensor:
    """``(k + u) / L`` with ``u ~ U(0, 1)``, for grey levels ``x = k / (L - 1)``.

    Args:
        x: grey levels in [0, 1], any shape.
        generator: a CPU generator drives CPU tensors (reproducible); on an
            accelerator the device's own random stream is used.
        num_levels: ``L``.
        check: check ``x`` (see :func:`to_levels`).

    Returns:
        A tensor like ``x`` with values in ``[0, 1)``.
    """
    k = to_levels(x, num_levels, check)
    return (k + rand_like(x, generator)) / num_levels


def uniform_dequantization(num_levels: int = 256, check: bool = True) -> Transform:
    """A :class:`TensorData` batch transform: dequantize the first tensor afresh per draw.

    ``check=False`` skips the per-batch check of the grey levels (a host read each batch):
    for data checked whole before (:func:`dequantized` does). Every draw lies in [0, 1),
    so checking one draw of the transformed data checks them all (``one_draw_checks``)."""
    _check_levels(num_levels)

    def transform(batch, generator=None):
        return (uniform_dequantize(batch[0], generator, num_levels, check),) + tuple(batch[1:])

    transform.one_draw_checks = True
    return transform


def dequantized(data: TensorData, seed: int | None = None, num_levels: int = 256) -> TensorData:
    """``data`` with its images (first tensor) uniformly dequantized.

    Args:
        seed: ``None``: a new draw every time a batch is drawn (training);
            an integer: one fixed draw made now (evaluation sets, comparable runs).
    """
    if seed is None:
        if data.transform is None:  # the grey levels the transform will read, once
            to_levels(data.tensors[0], num_levels)
        return data.with_transform(
            uniform_dequantization(num_levels, check=data.transform is not None)
        )
    if data.transform is not None:
        raise DataError("a fixed dequantization needs data without a batch transform.")
    g = torch.Generator(device="cpu").manual_seed(seed)
    images = data.tensors[0]
    k = to_levels(images, num_levels)
    u = torch.rand(images.shape, generator=g, dtype=images.dtype).to(images.device)
    return TensorData((k + u) / num_levels, *data.tensors[1:], names=data.names)


def _check_alpha(alpha: float) -> float:
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 0.5):
        raise ConfigError(f"the logit preprocessing needs 0 < alpha < 0.5, got {alpha!r}.")
    return float(alpha)


def logit_transform(alpha: float = 0.05) -> ComposeTransform:
    r"""The map from logit space to data, :math:`x = (\sigma(y) - \alpha) / (1 - 2\alpha)`.

    torch's ``SigmoidTransform`` and ``AffineTransform`` (caching their last pair,
    so a model that inverts once and then scores runs them once). Put it last in
    a ``TransformedDistribution``'s list (data side); the distribution's
    ``log_prob`` of ``x`` then includes the log-determinant of the logit map.
    """
    alpha = _check_alpha(alpha)
    beta = 1.0 - 2.0 * alpha
    return ComposeTransform(
        [SigmoidTransform(cache_size=1), AffineTransform(-alpha / beta, 1.0 / beta, cache_size=1)],
        cache_size=1,
    )


def logit_preprocess(
    x: torch.Tensor, alpha: float = 0.05, event_dim: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(y, log_det)``: :math:`y = \operatorname{logit}(\alpha + (1-2\alpha)x)` and
    :math:`\log|\det \partial y / \partial x|` summed over the last ``event_dim`` dimensions.

    Args:
        x: values in [0, 1], shape ``(..., *event)``.
    """
    alpha = _check_alpha(alpha)
    check_unit_interval(x)
    beta = 1.0 - 2.0 * alpha
    z = alpha + beta * x
    y = torch.log(z) - torch.log1p(-z)
    ld = math.log(beta) - torch.log(z) - torch.log1p(-z)
    ld = ld.reshape(ld.shape[: ld.dim() - event_dim] + (-1,)).sum(-1)
    return y, ld


class VariationalDequantizer(torch.nn.Module):
    r"""A learned dequantization distribution :math:`q(u \mid k)` on the unit cube.

    Uniform dequantization fills each grey level's bin evenly; variational
    dequantization (Ho et al. 2019, Flow++) learns how to fill it, which tightens
    the bound :math:`\log P(k) \ge E_q[\log p((k+u)/L) - \log q(u \mid k)] - D\log L`.
    Here :math:`q` is a logistic-normal per pixel,
    :math:`u = \sigma(\mu(k) + s(k)\,\epsilon)`, :math:`\epsilon \sim N(0, I)`, with
    :math:`\mu, \log s` from a small convolutional network of the image (Flow++ uses
    a conditional flow; a diagonal family is the simplest that learns). It is a
    Pyro ``TransformedDistribution`` (torch's ``SigmoidTransform`` over a Normal, then
    an affine squeeze into ``[U_MARGIN, 1 - U_MARGIN]`` so that float32 rounding never
    puts ``u`` on the edge of the prior's support), so probgen's flow model uses it as the
    guide of the latent dequantization noise.

    Args:
        event_shape: ``(C, H, W)``.
        hidden: hidden channels of the network.
    """

    def __init__(self, event_shape: Sequence[int], hidden: int = 32):
        super().__init__()
        from torch import nn

        shape = tuple(event_shape)
        if len(shape) != 3:
            raise ConfigError(f"variational dequantization works on images (C, H, W), got {shape}.")
        hidden = checks.positive_int("hidden", hidden)
        c = shape[0]
        self.event_shape = shape
        last = nn.Conv2d(hidden, 2 * c, 3, padding=1)
        nn.init.normal_(last.weight, std=1e-3)  # near zero: q starts the same for every image
        with torch.no_grad():  # and near uniform: sigmoid(N(0, 1.6^2)) is roughly flat
            last.bias.zero_()
            last.bias[c:] = math.log(1.6)
        self.net = nn.Sequential(
            nn.Conv2d(c, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
            last,
        )

    def distribution(
        self, levels: torch.Tensor, num_levels: int = 256
    ) -> torch.distributions.TransformedDistribution:
        """``q(u | k)`` for integer levels ``k`` of shape ``(B, C, H, W)`` (batch ``(B,)``)."""
        import pyro.distributions as dist

        x = levels / (num_levels - 1) - 0.5
        h = self.net(x).to(x.dtype)  # (autocast: the distribution in the data's dtype)
        loc, log_scale = h.chunk(2, dim=1)
        base = dist.Normal(loc, torch.exp(log_scale.clamp(-7.0, 5.0))).to_event(3)
        # squeezed into [eps, 1 - eps]: in float32 sigmoid(y) rounds to exactly 1 for
        # y > 16.6, where the uniform prior's density (and the ELBO) would be -inf
        eps = U_MARGIN
        squeeze = AffineTransform(eps, 1.0 - 2.0 * eps, event_dim=3)
        return dist.TransformedDistribution(base, [SigmoidTransform(), squeeze])
