"""Flows as densities: a Pyro transform under a base distribution, or DenseFlow's
augmented flow whose log-likelihood is a bound.

:class:`Flow` holds one Pyro transform (base to data) and names its base
distribution; ``flow.distribution(temperature)`` is a
:class:`pyro.distributions.TransformedDistribution`, usable as
``pyro.sample("x", flow.distribution(), obs=x)``. :class:`AugmentedFlow`
(DenseFlow) adds noise dimensions on the way to the latent; its
``distribution`` is an :class:`AugmentedFlowDistribution` whose ``log_prob`` is
the stochastic lower bound and whose samples are exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints
from torch import nn
from torch.distributions import Transform
from torch.distributions.utils import clamp_probs

from probgen import checks
from probgen.errors import ConfigError, DataError
from probgen.flows.transforms import (
    CrossUnitCoupling,
    apply_inverse,
    is_initialized,
    reset_caches,
    squeeze2d,
    standard_normal_log_prob,
    unsqueeze2d,
)

BASES = ("normal", "logistic", "uniform")


class FiniteLogistic(dist.Logistic):
    """Pyro's ``Logistic`` whose draws are always finite.

    Pyro draws a logistic by the inverse CDF of ``uniform_()``, which returns exactly 0
    about once in 2**24 draws, and ``icdf(0) = -inf``: a NICE flow (logistic base, 784
    values per MNIST image) then turned about one image in 21,000 (784 / 2**24) into NaN
    through its inverse pass (one of the 10,000 an FID drew). The uniform is clamped to
    ``[eps, 1 - eps]`` first, as torch's own distributions do
    (``torch.distributions.utils.clamp_probs``); the tail this cuts off (beyond
    ``|z| = log(1/eps - 1)``, about 15.9 in float32) holds 2.4e-7 of the mass.
    The density is Pyro's, unchanged."""

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        return self.icdf(clamp_probs(self.loc.new_empty(shape).uniform_()))


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


class DensityFlow(nn.Module):
    """What every probgen flow offers.

    Attributes:
        event_shape: shape of one data point.
        exact: whether ``log_prob`` is the exact log-density (False: a lower bound).
    """

    exact = True

    def __init__(self, event_shape: Sequence[int]):
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        # A zero-size reference for the device and dtype of draws from the base.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    @property
    def num_dims(self) -> int:
        """``D``, the dimension of one data point."""
        return _numel(self.event_shape)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`DataError` unless ``x`` is a batch ``(..., *event_shape)``."""
        if not torch.is_tensor(x):
            raise DataError(f"a flow takes a tensor, got {type(x).__name__}.")
        k = len(self.event_shape)
        if x.dim() <= k - 1 or tuple(x.shape[x.dim() - k :]) != self.event_shape:
            raise DataError(
                f"this flow models events of shape {self.event_shape}; got a tensor of shape "
                f"{tuple(x.shape)}. Pass a batch of shape "
                f"(B, {', '.join(map(str, self.event_shape))})."
            )

    def check_initialized(self) -> None:
        if not is_initialized(self):
            raise ConfigError(
                "this flow has ActNorm layers that are initialised from the first data batch "
                "and have not seen one; call flow.initialize(x) with a batch of data (or train "
                "it) before sampling."
            )

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> DensityFlow:
        """Run one batch through the density direction (ActNorm's data-dependent start)."""
        if x.shape[0] < 2:
            raise DataError("data-dependent initialisation needs a batch of at least 2 examples.")
        self.log_prob(x)
        return self

    def base_distribution(
        self, shape: Sequence[int], temperature: float = 1.0, base: str = "normal"
    ) -> dist.TorchDistribution:
        """Base of ``shape`` on this flow's device and dtype, scaled by ``temperature``."""
        temperature = checks.positive_float("temperature", temperature)
        loc = self._anchor.new_zeros(tuple(shape))
        if base == "normal":
            d = dist.Normal(loc, loc.new_full((), temperature))  # (a float: a host copy)
        elif base == "logistic":
            d = FiniteLogistic(loc, loc.new_full((), temperature))
        elif base == "uniform":
            if temperature != 1.0:
                raise ConfigError(
                    "a uniform base has no temperature; sample it with "
                    "temperature=1.0 (or use a normal or logistic base)."
                )
            d = dist.Uniform(loc, loc + 1.0)
        else:
            checks.choice("base", base, BASES)
        return d.to_event(len(shape))

    @torch.no_grad()
    def sample(self, num_samples: int, temperature: float = 1.0) -> torch.Tensor:
        """``num_samples`` draws, ``(num_samples, *event_shape)``, the base scaled by
        ``temperature``."""
        self.check_initialized()
        return self.distribution(temperature).sample((num_samples,))  # caches cleared there


class Flow(DensityFlow):
    """A normalizing flow: a Pyro transform from a base distribution to the data.

    Args:
        transform: a Pyro ``Transform`` (usually a ``TransformModule`` or a
            ``ComposeTransformModule``) mapping base samples to data; ``None`` is
            the identity.
        event_shape: shape of one data point.
        latent_shape: shape of the base; defaults to ``event_shape``.
        base: ``normal`` (standard normal), ``logistic`` (NICE) or ``uniform`` (on [0, 1]).

    ``log p(x) = log p_base(f^{-1}(x)) + log|det d f^{-1}(x) / dx|`` exactly.
    """

    exact = True

    def __init__(
        self,
        transform: Transform | None,
        event_shape: Sequence[int],
        latent_shape: Sequence[int] | None = None,
        base: str = "normal",
    ):
        super().__init__(event_shape)
        checks.choice("base", base, BASES)
        self.transform = transform
        self.latent_shape = tuple(latent_shape) if latent_shape is not None else self.event_shape
        self.base = base

    def transforms(self) -> list[Transform]:
        return [] if self.transform is None else [self.transform]

    def density_parts(
        self, temperature: float = 1.0
    ) -> tuple[dist.TorchDistribution, list[Transform]]:
        """``(base distribution, transforms)`` of :meth:`distribution` (a model adds its
        preprocessing transforms after these)."""
        return (
            self.base_distribution(self.latent_shape, temperature, self.base),
            self.transforms(),
        )

    def distribution(self, temperature: float = 1.0) -> dist.TransformedDistribution:
        """``TransformedDistribution(base, [transform])``; the base's scale is ``temperature``.

        The transforms' caches are cleared, so a distribution built in each step of a
        user's own Pyro model never reuses a value computed with older parameters.
        """
        reset_caches(self)
        return dist.TransformedDistribution(*self.density_parts(temperature))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x)``, shape ``x.shape[:-len(event_shape)]``."""
        self.check_input(x)
        return self.distribution().log_prob(x)  # caches cleared there

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The latent ``f^{-1}(x)``, shape ``(..., *latent_shape)``."""
        self.check_input(x)
        reset_caches(self)
        return x if self.transform is None else self.transform.inv(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The data point ``f(z)`` of a latent."""
        reset_caches(self)
        return z if self.transform is None else self.transform(z)


# ------------------------------------------------------------------------- DenseFlow


class DenseLevel(nn.Module):
    """One scale of DenseFlow, on events of shape ``(C, H, W)`` or ``(D,)``.

    Density direction::

        x --[squeeze]--> z ; for each unit: z <- steps^{-1}(augment(z))
        then, if there is an inner level: [split prior], split z = (h, z_out),
        h --inner--> latents ; z_out is a latent of this scale.

    Args:
        units: ``(CrossUnitCoupling, steps)`` pairs; ``steps`` is a shape-preserving
            Pyro transform on the augmented tensor (base-to-data convention).
        squeeze: squeeze 2x2 pixels into channels first (images only).
        inner: the next, coarser scale, or ``None`` (nothing factored out).
        split_prior: transform of the whole tensor that changes only the factored-out
            half given the other (Glow's conditional prior).
        event_dim: 3 for images, 1 for vectors.
    """

    def __init__(
        self,
        units: Sequence[tuple[CrossUnitCoupling, Transform]],
        squeeze: bool,
        inner: DenseLevel | None = None,
        split_prior: Transform | None = None,
        event_dim: int = 3,
    ):
        super().__init__()
        self.augments = nn.ModuleList([u[0] for u in units])
        self.steps = nn.ModuleList([u[1] for u in units])
        self.squeeze = squeeze
        self.inner = inner
        self.split_prior = split_prior
        self.event_dim = event_dim

    def encode(
        self, x: torch.Tensor, noise: Iterator[torch.Tensor] | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
        """``(latents, log_det, noises)``.

        ``log_det`` is ``log|det d latents / d [x, e]|`` of the (bijective) map from the
        data and the noise to the latents; ``noises`` are the ``e`` used (drawn
        unless ``noise`` yields them in order).
        """
        ed = self.event_dim
        z = squeeze2d(x) if self.squeeze else x
        ld = z.new_zeros(z.shape[: z.dim() - ed])
        used = []
        for aug, steps in zip(self.augments, self.steps):
            z, l, e = aug.augment(z, next(noise) if noise is not None else None)
            used.append(e)
            ld = ld + l
            z, l = apply_inverse(steps, z, ed)
            ld = ld + l
        if self.inner is None:
            return [z], ld, used
        if self.split_prior is not None:
            z, l = apply_inverse(self.split_prior, z, ed)
            ld = ld + l
        k = z.shape[-ed] // 2
        h, z_out = z.split([k, z.shape[-ed] - k], dim=-ed)
        latents, l, more = self.inner.encode(h, noise)
        return latents + [z_out], ld + l, used + more

    def shapes(
        self, in_shape: Sequence[int]
    ) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
        """``(latent shapes, noise shapes)`` for events of ``in_shape``, in :meth:`encode`'s
        order."""
        shape = tuple(in_shape)
        if self.squeeze:
            c, h, w = shape
            shape = (4 * c, h // 2, w // 2)
        noises = []
        for aug in self.augments:
            noises.append(aug.noise_shape(()))
            shape = aug.out_shape
        if self.inner is None:
            return [shape], noises
        k = shape[0] // 2
        latents, more = self.inner.shapes((k,) + shape[1:])
        return latents + [(shape[0] - k,) + shape[1:]], noises + more

    def decode(self, latents: Sequence[torch.Tensor]) -> torch.Tensor:
        """Data from latents (the sampling direction; the added noise is dropped)."""
        ed = self.event_dim
        if self.inner is None:
            z = latents[0]
        else:
            h = self.inner.decode(latents[:-1])
            z = torch.cat([h, latents[-1]], dim=-ed)
            if self.split_prior is not None:
                z = self.split_prior(z)
        for aug, steps in zip(reversed(list(self.augments)), reversed(list(self.steps))):
            z = aug.drop(steps(z))
        return unsqueeze2d(z) if self.squeeze else z


class AugmentedFlow(DensityFlow):
    r"""DenseFlow: a multiscale flow with incremental noise augmentation.

    ``log_prob`` is the variational lower bound (eq. 2.42 of the source, summed over
    every cross-unit coupling) estimated with ``num_samples`` noise draws:

    .. math::
        \log p(x) \ge \log \frac{1}{K}\sum_{k=1}^{K}
            \frac{N(w_k; 0, I)\,|\det \partial w_k / \partial [x, e_k]|}{N(e_k; 0, I)},
        \qquad w_k = F(x, e_k),

    the ELBO for ``K = 1`` and an importance-weighted bound, tightening towards
    :math:`\log p(x)` as ``K`` grows. Sampling is exact: draw the latents, run the
    steps backwards, drop the augmented channels.

    Args:
        level: the outermost :class:`DenseLevel`.
        event_shape: shape of one data point.
    """

    exact = False

    def __init__(self, level: DenseLevel, event_shape: Sequence[int]):
        super().__init__(event_shape)
        self.level = level
        self.latent_shapes, self.noise_shapes = level.shapes(self.event_shape)

    @property
    def latent_dim(self) -> int:
        return sum(_numel(s) for s in self.latent_shapes)

    def encode(
        self, x: torch.Tensor, noise: Sequence[torch.Tensor] | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
        """``(latents, log_det, noises)`` of one noise draw (see :meth:`DenseLevel.encode`)."""
        self.check_input(x)
        reset_caches(self)
        return self.level.encode(x, iter(noise) if noise is not None else None)

    def decode(self, latents: Sequence[torch.Tensor]) -> torch.Tensor:
        reset_caches(self)
        return self.level.decode(list(latents))

    def log_weight(
        self, x: torch.Tensor, noise: Sequence[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One importance weight ``log N(w) + log|det| - log N(e)`` per example, and the latents."""
        latents, ld, noises = self.encode(x, noise)
        ed = len(self.event_shape)
        lw = ld
        for w in latents:
            lw = lw + standard_normal_log_prob(w, ed)
        for e in noises:
            lw = lw - standard_normal_log_prob(e, ed)
        return lw, latents

    def log_prob(self, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """Lower bound of ``log p(x)`` from ``num_samples`` noise draws (see class doc)."""
        num_samples = checks.positive_int("num_samples", num_samples)
        self.check_input(x)
        return self.log_weight_mean(x, num_samples)[0]

    def log_weight_mean(
        self, x: torch.Tensor, num_samples: int = 1
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(log mean_k exp(log_weight_k), latents of the first draw)`` over
        ``num_samples`` noise draws: the importance-weighted bound (1: the ELBO)."""
        lw, latents = self.log_weight(x)
        if num_samples > 1:
            more = [self.log_weight(x)[0] for _ in range(num_samples - 1)]
            lw = torch.logsumexp(torch.stack([lw] + more), 0) - math.log(num_samples)
        return lw, latents

    def draw_latents(self, n: int, temperature: float = 1.0) -> list[torch.Tensor]:
        temperature = checks.positive_float("temperature", temperature)
        return [
            self._anchor.new_empty((n,) + s).normal_() * temperature for s in self.latent_shapes
        ]

    def distribution(
        self, temperature: float = 1.0, num_samples: int = 1
    ) -> AugmentedFlowDistribution:
        """The data distribution (:class:`AugmentedFlowDistribution`), caches cleared."""
        reset_caches(self)
        return AugmentedFlowDistribution(self, temperature, num_samples)


class AugmentedFlowDistribution(TorchDistribution):
    """A Pyro distribution over the data of an :class:`AugmentedFlow`.

    ``log_prob`` is the flow's stochastic lower bound (``num_samples`` noise draws);
    ``rsample`` is exact and differentiable. The last ``(x, log_prob, latents)`` is
    kept so that a model which asks for the latents and then scores ``x`` runs the
    flow once.
    """

    arg_constraints: ClassVar[dict[str, Any]] = {}
    has_rsample = True

    def __init__(self, flow: AugmentedFlow, temperature: float = 1.0, num_samples: int = 1):
        self.flow = flow
        self.temperature = temperature
        self.num_samples = num_samples
        self._last = (None, None, None)
        super().__init__(torch.Size(), torch.Size(flow.event_shape), validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, len(self.flow.event_shape))

    def _flat(self, x):
        k = len(self.flow.event_shape)
        batch = x.shape[: x.dim() - k]
        return x.reshape((-1,) + self.flow.event_shape), batch

    def log_prob_and_latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_prob bound, flattened latent of one draw (..., latent_dim))``."""
        if self._last[0] is x:
            return self._last[1], self._last[2]
        xf, batch = self._flat(x)
        lw, latents = self.flow.log_weight_mean(xf, self.num_samples)
        z = torch.cat([w.reshape(w.shape[0], -1) for w in latents], 1)
        lp, z = lw.reshape(batch), z.reshape(batch + (-1,))
        self._last = (x, lp, z)
        return lp, z

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob_and_latent(x)[0]

    def rsample(self, sample_shape: Sequence[int] = torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        n = _numel(shape)
        x = self.flow.decode(self.flow.draw_latents(n, self.temperature))
        return x.reshape(shape + self.event_shape)
