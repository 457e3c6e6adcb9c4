"""The flow pieces that Pyro lacks, as Pyro ``TransformModule`` s.

Direction convention (Pyro's): a transform's ``__call__`` maps the base side to
the data side (sampling), ``.inv`` maps data to base (density evaluation), and
``log_abs_det_jacobian(x, y)`` is ``log|det dy/dx|`` of the base-to-data map, one
value per batch element. :class:`~pyro.distributions.TransformedDistribution`
computes ``log p(y) = log p_base(x) - log|det dy/dx|`` with ``x = t.inv(y)``.

What is here and why it is written by hand:

* :class:`ElementwiseAffine` and :class:`ActNorm` -- a learned per-dimension
  (or per-channel) scale and shift: NICE's scaling layer, and Glow's ActNorm with
  its data-dependent start. Pyro has neither (its ``AffineTransform`` holds fixed
  tensors, not parameters, and nothing starts from data).
* :class:`InvertibleLinear` -- Glow's LU-parameterised invertible 1x1 convolution
  on images, and the same matrix on vectors. Pyro's ``GeneralizedChannelPermute``
  has this parameterisation but evaluates densities by triangular solves over every
  pixel (about a hundred times slower per training step here); this one is a single
  ``conv2d`` in the density direction.
* :class:`NormflowsTransform` -- an adapter that makes any normflows ``Flow`` (whose
  ``forward`` is also base-to-data and returns ``(z, log_det)``) a Pyro transform,
  for users who bring their own normflows layers. probgen's builders do not use it:
  they depend on no normflows internals.
* :class:`Permute` -- Pyro's ``Permute`` with its index tensors as buffers:
  Pyro keeps them as plain attributes, which ``module.to(device)`` does not move.
* :func:`squeeze2d` -- RealNVP's space-to-depth reshaping, which the multiscale
  builders use, and :class:`Squeeze`, the same as a Pyro transform for flows
  composed by hand; normflows' ``Squeeze`` works on a batch of exactly one leading
  dimension only.
* :class:`CheckerboardAffineCoupling` -- RealNVP's spatial checkerboard coupling.
  Pyro's ``AffineCoupling`` splits along one tensor dimension (so it serves as the
  *channel* coupling); normflows' ``MaskedAffineFlow`` evaluates two separate
  networks for scale and shift. This one computes both with one network.
* :class:`MultiscaleTransform` -- one scale of the multiscale architecture as a
  single shape-preserving bijection (squeeze, steps, factor out half, recurse on
  the other half), so that a whole multiscale flow is one Pyro transform under
  one standard-normal base. normflows' ``MultiscaleFlow`` is a complete model with
  a base distribution per level, not a transform; Pyro has no multiscale transform.
* :class:`CrossUnitCoupling` -- DenseFlow's noise augmentation (Grcic et al. 2021);
  no library has it. It changes the dimension, so it is a module with
  ``augment``/``drop`` rather than a bijective transform.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.distributions.torch_transform import TransformModule
from pyro.distributions.transforms import Permute as PyroPermute
from pyro.distributions.transforms.utils import clamp_preserve_gradients
from torch import nn
from torch.distributions import Transform

from probgen import checks
from probgen.errors import ConfigError, DataError
from probgen.flows.nets import ConvNet, InputDtypeDenseNN, near_zero_

LOG_SCALE_CLIP = (-5.0, 3.0)  # as Pyro's AffineCoupling


# ---------------------------------------------------------------------------- helpers


def squeeze2d(x: torch.Tensor) -> torch.Tensor:
    """Space-to-depth: ``(..., C, H, W)`` -> ``(..., 4C, H/2, W/2)``.

    Output channel ``4c + 2i + j`` holds input channel ``c`` at rows ``2r + i``,
    columns ``2s + j`` (normflows' and RealNVP's order).
    """
    *batch, c, h, w = x.shape
    if h % 2 or w % 2:
        raise DataError(f"squeezing needs even height and width, got {h}x{w}.")
    x = x.reshape(*batch, c, h // 2, 2, w // 2, 2)
    n = len(batch)
    x = x.permute(*range(n), n, n + 2, n + 4, n + 1, n + 3)
    return x.reshape(*batch, 4 * c, h // 2, w // 2)


def unsqueeze2d(x: torch.Tensor) -> torch.Tensor:
    """Depth-to-space, the inverse of :func:`squeeze2d`."""
    *batch, c, h, w = x.shape
    if c % 4:
        raise DataError(f"unsqueezing needs a channel count divisible by 4, got {c}.")
    n = len(batch)
    x = x.reshape(*batch, c // 4, 2, 2, h, w)
    x = x.permute(*range(n), n, n + 3, n + 1, n + 4, n + 2)
    return x.reshape(*batch, c // 4, 2 * h, 2 * w)


def _to_batch(ladj: torch.Tensor, x: torch.Tensor, event_dim: int) -> torch.Tensor:
    """Sum a log-determinant over whatever event dimensions it still has."""
    batch_dim = x.dim() - event_dim
    if ladj.dim() > batch_dim:
        ladj = ladj.reshape(ladj.shape[:batch_dim] + (-1,)).sum(-1)
    return ladj.expand(x.shape[:batch_dim])


def apply_forward(t: Transform, x: torch.Tensor, event_dim: int):
    """``(t(x), log|det dt(x)/dx|)`` with the log-determinant summed to the batch shape."""
    y = t(x)
    return y, _to_batch(t.log_abs_det_jacobian(x, y), x, event_dim)


def apply_inverse(t: Transform, y: torch.Tensor, event_dim: int):
    """``(t.inv(y), log|det dt.inv(y)/dy|)`` (minus the forward log-determinant)."""
    x = t.inv(y)
    return x, -_to_batch(t.log_abs_det_jacobian(x, y), x, event_dim)


def reset_caches(module: nn.Module) -> None:
    """Forget every cached ``(x, y)`` pair of the transforms inside ``module``.

    Pyro's transforms cache their last input/output pair and look it up by
    identity. That saves the second pass :class:`TransformedDistribution` makes,
    but a tensor evaluated again after an optimizer step (or first under
    ``no_grad``) would get a stale result; probgen's models call this at the start
    of every evaluation.
    """
    for m in module.modules():
        if isinstance(m, Transform) and getattr(m, "_cache_size", 0) == 1:
            m._cached_x_y = (None, None)
            if hasattr(m, "_cached_log_scale"):
                m._cached_log_scale = None
            if hasattr(m, "_cached_ladj"):
                m._cached_ladj = None


def chain(density_order: Sequence[Transform]) -> TransformModule:
    """A Pyro composition from parts listed in *density* order (data side first).

    Flows are easiest to read from the data towards the latent (Glow's step is
    "ActNorm, 1x1 convolution, coupling"); Pyro lists transforms from the base to
    the data. ``chain`` reverses the list into a ``ComposeTransformModule``.
    """
    from pyro.distributions.torch_transform import ComposeTransformModule

    return ComposeTransformModule(list(reversed(list(density_order))))


# ----------------------------------------------------------------------- base class


class CachedLogDetTransform(TransformModule):
    """A bijection that computes its output and log-determinant in one pass.

    Subclasses implement :meth:`forward_and_log_det` (base to data) and
    :meth:`inverse_and_log_det` (data to base, returning the *forward* map's
    log-determinant); the log-determinant of the last call is cached with Pyro's
    ``(x, y)`` pair, like Pyro's own ``AffineCoupling``.

    Args:
        event_dim: number of rightmost dimensions forming one event.
    """

    bijective = True

    def __init__(self, event_dim: int):
        super().__init__(cache_size=1)
        self._event_dim = event_dim
        self._cached_ladj = None

    @constraints.dependent_property(is_discrete=False)
    def domain(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, self._event_dim)

    @constraints.dependent_property(is_discrete=False)
    def codomain(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, self._event_dim)

    def forward_and_log_det(
        self,
        x: torch.Tensor,  # pragma: no cover - abstract
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def inverse_and_log_det(
        self,
        y: torch.Tensor,  # pragma: no cover - abstract
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _call(self, x):
        y, ladj = self.forward_and_log_det(x)
        self._cached_ladj = ladj
        return y

    def _inverse(self, y):
        x, ladj = self.inverse_and_log_det(y)
        self._cached_ladj = ladj
        return x

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_old, y_old = self._cached_x_y
        if self._cached_ladj is not None and x is x_old and y is y_old:
            return self._cached_ladj
        return self.forward_and_log_det(x)[1]

    def with_cache(self, cache_size: int = 1) -> Transform:
        if cache_size != 1:
            raise ValueError(f"{type(self).__name__} always caches its last call.")
        return self


# -------------------------------------------------------------------------- adapters


class NormflowsTransform(CachedLogDetTransform):
    """A normflows ``Flow`` as a Pyro transform.

    normflows' ``flow(z) -> (x, log_det)`` maps base to data with
    ``log_det = log|det dx/dz|`` and ``flow.inverse(x) -> (z, log|det dz/dx|)``,
    over a batch of exactly one leading dimension. The adapter flattens any batch
    shape to one dimension and back, and broadcasts normflows' scalar log-dets.

    Args:
        flow: a ``normflows.flows.Flow``, e.g. ``ActNorm((C, 1, 1))``.
        event_shape: the shape of one event, e.g. ``(C, H, W)`` or ``(D,)``;
            ``None`` entries match any size (a 1x1 convolution takes any H and W).
    """

    def __init__(self, flow: nn.Module, event_shape: Sequence[int]):
        super().__init__(len(event_shape))
        self.flow = flow
        self.event_shape = tuple(event_shape)

    def _flat(self, x):
        k = x.dim() - self._event_dim
        event = tuple(x.shape[k:])
        if k < 0 or any(e is not None and e != s for e, s in zip(self.event_shape, event)):
            raise DataError(
                f"{type(self.flow).__name__} takes events of shape "
                f"{self.event_shape}, got a tensor of shape {tuple(x.shape)}."
            )
        return x.reshape((-1,) + event), x.shape[:k]

    def _log_det(self, ld, xf, batch):
        return (xf.new_zeros(xf.shape[0]) + ld).reshape(batch)

    def forward_and_log_det(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xf, batch = self._flat(x)
        y, ld = self.flow(xf)
        return y.reshape(batch + y.shape[1:]), self._log_det(ld, xf, batch)

    def inverse_and_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        yf, batch = self._flat(y)
        x, ld = self.flow.inverse(yf)
        return x.reshape(batch + x.shape[1:]), -self._log_det(ld, yf, batch)

    def __repr__(self):
        return f"NormflowsTransform({type(self.flow).__name__}, event_shape={self.event_shape})"


def _check_event(x: torch.Tensor, event_shape: Sequence[int | None], what: str):
    """Raise :class:`DataError` unless ``x`` ends in ``event_shape`` (``None`` matches any size)."""
    k = len(event_shape)
    if x.dim() < k or any(
        e is not None and e != s for e, s in zip(event_shape, x.shape[x.dim() - k :])
    ):
        shown = tuple("any" if e is None else e for e in event_shape)
        raise DataError(
            f"{what} takes events of shape {shown}, got a tensor of shape {tuple(x.shape)}."
        )


class ElementwiseAffine(CachedLogDetTransform):
    r"""A learned scale and shift, :math:`y = x \odot e^{s} + t`, base to data.

    ``s`` and ``t`` have ``param_shape``, broadcast over the event: ``(C, 1, 1)`` for
    one value per image channel, the event shape for one per dimension.
    :math:`\log|\det \partial y / \partial x| = \sum s` times the number of event
    entries that share each parameter (``H W`` per channel). Both start at zero
    (the identity).

    Args:
        event_shape: ``(C, H, W)`` or ``(D,)``.
        param_shape: shape of ``s`` and ``t``, broadcastable to ``event_shape``.
        shift: learn ``t`` (else ``t = 0``: NICE's scaling layer).
    """

    def __init__(self, event_shape: Sequence[int], param_shape: Sequence[int], shift: bool = True):
        super().__init__(len(event_shape))
        self.event_shape = tuple(event_shape)
        param_shape = tuple(param_shape)
        if len(param_shape) != len(self.event_shape) or any(
            p not in (1, e) for p, e in zip(param_shape, self.event_shape)
        ):
            raise ConfigError(
                f"parameters of shape {param_shape} do not broadcast over events "
                f"of shape {self.event_shape}."
            )
        self.log_scale = nn.Parameter(torch.zeros(param_shape))
        self.shift = nn.Parameter(torch.zeros(param_shape)) if shift else None
        self._repeats = math.prod(self.event_shape) // math.prod(param_shape)

    def _log_det(self, x):
        ld = self.log_scale.sum() * self._repeats
        return ld.expand(x.shape[: x.dim() - self._event_dim])

    def forward_and_log_det(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_event(x, self.event_shape, type(self).__name__)
        y = x * torch.exp(self.log_scale)
        return (y if self.shift is None else y + self.shift), self._log_det(x)

    def inverse_and_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_event(y, self.event_shape, type(self).__name__)
        x = y if self.shift is None else y - self.shift
        return x * torch.exp(-self.log_scale), self._log_det(y)

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}, param_shape={tuple(self.log_scale.shape)}"


class ActNorm(ElementwiseAffine):
    """Glow's activation normalisation (Kingma & Dhariwal 2018): a per-channel scale and
    shift that start from data.

    The first batch of at least two examples that passes (either way) sets them so
    that the output has zero mean and unit standard deviation per channel; until
    then the layer is the identity. (From one example the standard deviation is
    undefined, and Pyro runs a guide once with a single sample to count its plates.)
    The buffer ``initialized`` records the start and travels with the state dict; a
    Python flag keeps later passes from reading it (on a GPU each read is a
    host-device synchronisation), and loading a state dict makes it look again.

    Args:
        event_shape: ``(C, H, W)`` (one scale per channel) or ``(D,)`` (one per dimension).
    """

    def __init__(self, event_shape: Sequence[int]):
        shape = tuple(event_shape)
        super().__init__(shape, (shape[0],) + (1,) * (len(shape) - 1), shift=True)
        self.register_buffer("initialized", torch.tensor(False))
        self._started = False

    def _is_started(self) -> bool:
        if not self._started and bool(self.initialized):
            self._started = True
        return self._started

    def _load_from_state_dict(self, *args, **kwargs):
        self._started = False
        super()._load_from_state_dict(*args, **kwargs)

    @torch.no_grad()
    def _start(self, v: torch.Tensor, density: bool) -> None:
        channel = v.dim() - self._event_dim
        dims = [d for d in range(v.dim()) if d != channel]
        mean = v.mean(dims).reshape(self.log_scale.shape)
        std = v.std(dims).reshape(self.log_scale.shape) + 1e-6
        if density:  # base = (data - mean) / std
            self.log_scale.copy_(torch.log(std))
            self.shift.copy_(mean)
        else:  # data = (base - mean) / std
            self.log_scale.copy_(-torch.log(std))
            self.shift.copy_(-mean / std)
        self.initialized.fill_(True)
        self._started = True

    def _wait_or_start(self, v: torch.Tensor, density: bool) -> None:
        if not self._is_started():
            _check_event(v, self.event_shape, "ActNorm")
            if math.prod(v.shape[: v.dim() - self._event_dim]) >= 2:
                self._start(v.detach(), density)

    def forward_and_log_det(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._wait_or_start(x, density=False)
        return super().forward_and_log_det(x)

    def inverse_and_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._wait_or_start(y, density=True)
        return super().inverse_and_log_det(y)


class InvertibleLinear(CachedLogDetTransform):
    r"""An invertible ``C x C`` matrix on the channels of an image (Glow's invertible 1x1
    convolution, Kingma & Dhariwal 2018) or on a vector, LU-parameterised.

    :math:`W = P L (U + \operatorname{diag}(\operatorname{sign}(s) e^{\log|s|}))` with a
    fixed permutation :math:`P`, unit lower-triangular :math:`L` and strictly upper
    :math:`U`, started from a random rotation. The density direction (data to base)
    maps every pixel's channels by :math:`W`, one ``conv2d``, with
    :math:`\log|\det| = H W \sum \log|s|`; sampling applies :math:`W^{-1}`, from two
    triangular solves of ``C x C`` matrices (in float64).

    Args:
        channels: ``C``.
        event_dim: 3 for images ``(C, H, W)`` (any H and W), 1 for vectors ``(C,)``.
    """

    def __init__(self, channels: int, event_dim: int = 3):
        super().__init__(event_dim)
        if event_dim not in (1, 3):
            raise ConfigError(
                f"InvertibleLinear works on (C, H, W) or (C,) events, got event_dim={event_dim}."
            )
        self.channels = checks.positive_int("channels", channels)
        self.event_shape = (channels,) + (None, None) * (event_dim == 3)
        q, _ = torch.linalg.qr(torch.randn(channels, channels))
        p, lower, upper = torch.linalg.lu(q)
        s = upper.diagonal()
        self.register_buffer("permutation", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.lower = nn.Parameter(lower)  # only the strictly lower part is used
        self.upper = nn.Parameter(torch.triu(upper, 1))  # only the strictly upper part
        self.log_abs_s = nn.Parameter(torch.log(torch.abs(s)))

    def _factors(self):
        eye = torch.eye(self.channels, dtype=self.lower.dtype, device=self.lower.device)
        lower = torch.tril(self.lower, -1) + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign_s * torch.exp(self.log_abs_s))
        return lower, upper

    def weight(self) -> torch.Tensor:
        """:math:`W`, the density direction's matrix."""
        lower, upper = self._factors()
        return self.permutation @ lower @ upper

    def inverse_weight(self) -> torch.Tensor:
        """:math:`W^{-1} = U^{-1} L^{-1} P^T`, the sampling direction's matrix."""
        lower, upper = (f.double() for f in self._factors())
        w = torch.linalg.solve_triangular(
            lower, self.permutation.double().T, upper=False, unitriangular=True
        )
        return torch.linalg.solve_triangular(upper, w, upper=True).to(self.lower.dtype)

    def _map_channels(self, w, x):
        # in x's precision even under autocast: a C x C map costs little, and rounding the
        # latent to bfloat16 would cost the flow its invertibility to three digits
        with torch.autocast(x.device.type, enabled=False):
            if self._event_dim == 1:
                return x @ w.T.to(x.dtype)
            flat = x.reshape((-1,) + x.shape[-3:])
            return F.conv2d(
                flat, w.to(x.dtype).reshape(self.channels, self.channels, 1, 1)
            ).reshape(x.shape)

    def _log_det(self, x):
        per_pixel = x.shape[-2] * x.shape[-1] if self._event_dim == 3 else 1
        return (self.log_abs_s.sum() * per_pixel).expand(x.shape[: x.dim() - self._event_dim])

    def forward_and_log_det(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_event(x, self.event_shape, "InvertibleLinear")
        return self._map_channels(self.inverse_weight(), x), -self._log_det(x)

    def inverse_and_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_event(y, self.event_shape, "InvertibleLinear")
        return self._map_channels(self.weight(), y), -self._log_det(y)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, event_dim={self._event_dim}"


def actnorm(event_shape: Sequence[int]) -> ActNorm:
    """Glow's :class:`ActNorm` for events of ``event_shape``: ``(C, H, W)`` (one scale
    and shift per channel) or ``(D,)``; it starts from the first batch of two or more."""
    return ActNorm(event_shape)


def scaling(event_shape: Sequence[int]) -> ElementwiseAffine:
    """NICE's diagonal scaling layer ``y = exp(s) * x``, one ``s`` per dimension."""
    shape = tuple(event_shape)
    return ElementwiseAffine(shape, shape, shift=False)


def invertible_linear(dim: int) -> InvertibleLinear:
    """An LU-parameterised invertible matrix on vectors ``(D,)`` (Glow's 1x1 convolution
    for data without pixels)."""
    return InvertibleLinear(dim, event_dim=1)


def invertible_conv1x1(channels: int) -> InvertibleLinear:
    """Glow's invertible 1x1 convolution on images ``(C, H, W)`` of any height and width."""
    return InvertibleLinear(channels, event_dim=3)


def is_initialized(module: nn.Module) -> bool:
    """False while any :class:`ActNorm` inside ``module`` waits for its first data batch."""
    return all(m._is_started() for m in module.modules() if isinstance(m, ActNorm))


# ------------------------------------------------------------------- small bijections


class Permute(PyroPermute, TransformModule):
    """Pyro's :class:`~pyro.distributions.transforms.Permute` with the index
    tensors stored as buffers, so that ``.to(device)`` moves them.

    Args:
        permutation: a permutation of ``range(n)`` (a list or a tensor).
        dim: the (negative) dimension to permute; the event has ``-dim`` dimensions.
    """

    def __init__(self, permutation: Sequence[int] | torch.Tensor, dim: int = -1):
        perm = torch.as_tensor(permutation, dtype=torch.long)
        if perm.dim() != 1 or not torch.equal(perm.sort().values, torch.arange(len(perm))):
            raise ConfigError(f"not a permutation of range({len(perm)}): {perm.tolist()}.")
        super().__init__(perm, dim=dim)
        del self.permutation
        self.register_buffer("permutation", perm)
        self.register_buffer("_inv_permutation", torch.argsort(perm))

    @property
    def inv_permutation(self) -> torch.Tensor:
        return self._inv_permutation

    def with_cache(self, cache_size: int = 1) -> Transform:
        return self

    @staticmethod
    def reverse(n: int, dim: int = -1) -> Permute:
        """Reverse the order along ``dim``: alternates which half a coupling conditions on."""
        return Permute(torch.arange(n - 1, -1, -1), dim=dim)

    @staticmethod
    def even_odd(n: int) -> Permute:
        """NICE's partition as contiguous halves: in the density direction (``.inv``,
        which is how :func:`chain` runs it) even positions come first, then odd ones."""
        order = torch.cat([torch.arange(0, n, 2), torch.arange(1, n, 2)])
        return Permute(torch.argsort(order))


class Squeeze(TransformModule):
    """Space-to-depth as a Pyro transform: ``(C, H, W)`` -> ``(4C, H/2, W/2)``, volume preserving.

    As written (``__call__`` squeezes), it belongs on the *data* side; in a list of
    transforms from base to data use ``Squeeze().inv``.

    Examples:
        >>> import torch
        >>> from probgen.flows import Squeeze
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> y = Squeeze()(x)
        >>> y.shape
        torch.Size([1, 4, 2, 2])
        >>> y[0, :, 0, 0]          # the top-left 2x2 block of x, as four channels
        tensor([0., 1., 4., 5.])
        >>> torch.equal(Squeeze().inv(y), x)
        True
    """

    bijective = True
    volume_preserving = True
    domain = constraints.independent(constraints.real, 3)
    codomain = constraints.independent(constraints.real, 3)

    def __init__(self):
        super().__init__(cache_size=1)

    def _call(self, x):
        return squeeze2d(x)

    def _inverse(self, y):
        return unsqueeze2d(y)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[:-3])

    def forward_shape(self, shape: Sequence[int]) -> torch.Size:
        *b, c, h, w = shape
        return torch.Size((*b, 4 * c, h // 2, w // 2))

    def inverse_shape(self, shape: Sequence[int]) -> torch.Size:
        *b, c, h, w = shape
        return torch.Size((*b, c // 4, 2 * h, 2 * w))

    def with_cache(self, cache_size: int = 1) -> Transform:
        return self


# --------------------------------------------------------------------- checkerboard


def checkerboard(height: int, width: int, parity: int = 0) -> torch.Tensor:
    """``b[i, j] = (i + j + parity) mod 2``, shape ``(1, H, W)``."""
    i = torch.arange(height).view(-1, 1)
    j = torch.arange(width).view(1, -1)
    return ((i + j + parity) % 2).to(torch.get_default_dtype()).unsqueeze(0)


class CheckerboardAffineCoupling(CachedLogDetTransform):
    r"""RealNVP's checkerboard affine coupling on images.

    With a fixed checkerboard mask :math:`b`,

    .. math::
        y = b \odot x + (1 - b) \odot \big(x \odot e^{s(b \odot x)} + t(b \odot x)\big),
        \qquad \log|\det \partial y / \partial x| = \sum (1 - b) \odot s(b \odot x),

    with :math:`s = \text{scale} \cdot \tanh(\cdot)` (a learned per-channel bound,
    as in RealNVP) and :math:`s, t` from one :class:`ConvNet` that also sees the mask.

    Args:
        event_shape: ``(C, H, W)``.
        parity: 0 or 1, which squares are kept; alternate it between layers.
        hidden: hidden channels of the conditioner.
    """

    def __init__(self, event_shape: Sequence[int], parity: int = 0, hidden: int = 64):
        super().__init__(3)
        c, h, w = _image_shape(event_shape, "CheckerboardAffineCoupling")
        self.event_shape = (c, h, w)
        self.register_buffer("mask", checkerboard(h, w, parity))
        self.net = ConvNet(c + 1, 2 * c, hidden)
        self.scale = nn.Parameter(torch.ones(c, 1, 1))

    def _params(self, x):
        batch = x.shape[:-3]
        b = self.mask.to(x.dtype)
        xm = (x * b).reshape((-1,) + self.event_shape)
        inp = torch.cat([xm, b.expand(xm.shape[0], 1, *self.event_shape[1:])], 1)
        s, t = self.net(inp).chunk(2, dim=1)
        s = self.scale * torch.tanh(s) * (1 - b)
        t = t * (1 - b)
        return s.reshape(batch + self.event_shape), t.reshape(batch + self.event_shape)

    def forward_and_log_det(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._params(x)
        y = x * torch.exp(s) + t  # s = t = 0 where the mask keeps x
        return y, s.flatten(-3).sum(-1)

    def inverse_and_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._params(y)  # b * y == b * x
        return (y - t) * torch.exp(-s), s.flatten(-3).sum(-1)


def _image_shape(shape, what):
    shape = tuple(shape)
    if len(shape) != 3:
        raise ConfigError(f"{what} works on images of shape (C, H, W), got event shape {shape}.")
    return shape


# ----------------------------------------------------------------------- multiscale


class MultiscaleTransform(CachedLogDetTransform):
    r"""One scale of a multiscale flow, as one shape-preserving bijection of ``(C, H, W)``.

    Density direction (data to base), as in RealNVP and Glow::

        x --pre--> squeeze --post--> [split prior] --> (h, z_out) ;  h --inner--> z_h
        latent = unsqueeze(cat(z_h, z_out))

    ``pre`` acts at ``(C, H, W)`` (RealNVP's checkerboard couplings), ``post`` at
    ``(4C, H/2, W/2)`` (channel couplings, Glow steps). Half of the squeezed
    channels, ``z_out``, are factored out: they leave the flow here and go straight
    to the base distribution, while ``h`` continues through ``inner`` (the next
    scale). The optional ``split_prior`` is a transform of the squeezed tensor that
    changes only ``z_out`` given ``h`` (Glow's learned conditional prior
    :math:`z_{out} \sim N(\mu(h), \sigma(h))`, written as Pyro's ``AffineCoupling``).
    Without ``inner`` nothing is factored out (the last scale).

    The latent is unsqueezed back to ``(C, H, W)``, so every scale maps a shape to
    itself and the whole flow has one standard-normal base of the data's shape.

    Args:
        event_shape: ``(C, H, W)``, with H and W even.
        post: transform on ``(4C, H/2, W/2)`` (base-to-data convention, e.g. :func:`chain`).
        pre: optional transform on ``(C, H, W)``.
        inner: optional transform on ``(2C, H/2, W/2)``; ``None`` for the last scale.
        split_prior: optional transform on ``(4C, H/2, W/2)`` conditioned on the first 2C channels.
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        post: Transform,
        pre: Transform | None = None,
        inner: Transform | None = None,
        split_prior: Transform | None = None,
    ):
        super().__init__(3)
        c, h, w = _image_shape(event_shape, "MultiscaleTransform")
        if h % 2 or w % 2:
            raise ConfigError(
                f"a scale squeezes 2x2 pixels into channels and needs even "
                f"height and width; got {h}x{w}. Use fewer levels."
            )
        if split_prior is not None and inner is None:
            raise ConfigError("a split prior needs an inner scale (something to factor out).")
        self.event_shape = (c, h, w)
        self.pre, self.post, self.inner, self.split_prior = pre, post, inner, split_prior

    def forward_and_log_det(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ld = z.new_zeros(z.shape[:-3])
        v = squeeze2d(z)
        if self.inner is not None:
            k = v.shape[-3] // 2
            zh, zo = v.split([k, v.shape[-3] - k], dim=-3)
            h, l = apply_forward(self.inner, zh, 3)
            ld = ld + l
            v = torch.cat([h, zo], dim=-3)
            if self.split_prior is not None:
                v, l = apply_forward(self.split_prior, v, 3)
                ld = ld + l
        v, l = apply_forward(self.post, v, 3)
        x = unsqueeze2d(v)
        ld = ld + l
        if self.pre is not None:
            x, l = apply_forward(self.pre, x, 3)
            ld = ld + l
        return x, ld

    def inverse_and_log_det(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ld = x.new_zeros(x.shape[:-3])
        if self.pre is not None:
            x, l = apply_inverse(self.pre, x, 3)
            ld = ld + l
        v, l = apply_inverse(self.post, squeeze2d(x), 3)
        ld = ld + l
        if self.inner is not None:
            if self.split_prior is not None:
                v, l = apply_inverse(self.split_prior, v, 3)
                ld = ld + l
            k = v.shape[-3] // 2
            h, zo = v.split([k, v.shape[-3] - k], dim=-3)
            zh, l = apply_inverse(self.inner, h, 3)
            ld = ld + l
            v = torch.cat([zh, zo], dim=-3)
        return unsqueeze2d(v), -ld  # ld is log|det dz/dx|; report the forward's


# ------------------------------------------------------------------------- DenseFlow


class CrossUnitCoupling(nn.Module):
    r"""DenseFlow's cross-unit coupling (Grcic, Grubisic & Segvic 2021): noise augmentation.

    The current latent :math:`z` (everything the flow has computed so far from the
    data, so a function of all earlier latents) is extended by ``growth`` new
    channels (or dimensions) of noise :math:`e \sim N(0, I)`, moved and scaled by
    a learned map of :math:`z`:

    .. math::
        z^{aug} = [z,\; \mu(z) + \sigma(z) \odot e], \qquad
        \log|\det \partial z^{aug} / \partial [z, e]| = \textstyle\sum \log \sigma(z).

    The flow density then bounds the data likelihood (eqs. 2.39-2.42 of the source):
    :math:`\ln p(z) \ge E_e[\ln p(z^{aug}) + \sum \log\sigma - \ln N(e; 0, I)]`.
    Sampling drops the added channels (:meth:`drop`).

    Args:
        event_shape: ``(C, H, W)`` or ``(D,)`` of ``z``.
        growth: channels (images) or dimensions (vectors) added.
        hidden: conditioner width: hidden channels (int) for images, layer sizes for vectors.
    """

    def __init__(self, event_shape: Sequence[int], growth: int, hidden: int | Sequence[int] = 64):
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.growth = checks.positive_int("growth", growth)
        if len(self.event_shape) == 3:
            self.net = ConvNet(self.event_shape[0], 2 * growth, hidden)
        elif len(self.event_shape) == 1:
            hidden = (hidden,) if isinstance(hidden, int) else hidden
            self.net = InputDtypeDenseNN(
                self.event_shape[0],
                list(checks.sizes("hidden layer sizes", hidden)),
                param_dims=[2 * growth],
            )
            near_zero_(self.net.layers[-1])
        else:
            raise ConfigError(
                f"CrossUnitCoupling works on (C, H, W) or (D,) events, got {self.event_shape}."
            )

    @property
    def event_dim(self) -> int:
        return len(self.event_shape)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.event_shape[0] + self.growth,) + self.event_shape[1:]

    def noise_shape(self, batch: Sequence[int]) -> tuple[int, ...]:
        return tuple(batch) + (self.growth,) + self.event_shape[1:]

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, log_sigma)`` of the added noise, each of the noise's shape."""
        batch = z.shape[: z.dim() - self.event_dim]
        out = self.net(z.reshape((-1,) + self.event_shape))
        mu, log_sigma = out.chunk(2, dim=1)
        log_sigma = clamp_preserve_gradients(log_sigma, *LOG_SCALE_CLIP)
        shape = self.noise_shape(batch)
        return mu.reshape(shape), log_sigma.reshape(shape)

    def augment(
        self, z: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(z_aug, sum log sigma, e)``: ``e`` is drawn unless given."""
        mu, log_sigma = self(z)
        if noise is None:
            noise = torch.randn_like(mu)
        elif noise.shape != mu.shape:
            raise DataError(
                f"noise of shape {tuple(noise.shape)} does not fit this "
                f"augmentation, which needs {tuple(mu.shape)}."
            )
        u = mu + torch.exp(log_sigma) * noise
        ld = log_sigma.reshape(log_sigma.shape[: z.dim() - self.event_dim] + (-1,)).sum(-1)
        return torch.cat([z, u], dim=-self.event_dim), ld, noise

    def drop(self, z_aug: torch.Tensor) -> torch.Tensor:
        """Remove the added channels: the sampling direction."""
        return z_aug.narrow(-self.event_dim, 0, self.event_shape[0])


def standard_normal_log_prob(x: torch.Tensor, event_dim: int) -> torch.Tensor:
    """``log N(x; 0, I)`` summed over the last ``event_dim`` dimensions."""
    lp = -0.5 * (x * x + math.log(2 * math.pi))
    return lp.reshape(lp.shape[: x.dim() - event_dim] + (-1,)).sum(-1)
