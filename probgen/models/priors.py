"""Priors over an adversarial autoencoder's codes (Makhzani et al. 2015, "Adversarial
Autoencoders", figure 4): the distributions :class:`~probgen.models.AAE` matches its
aggregated posterior to.

An adversarial autoencoder needs only samples of its prior (the discriminator sees draws,
never densities), so a prior may be any Pyro distribution, a sampler, or one of the named
priors of :data:`PRIORS`:

============== ==========================================================================
``normal``     ``N(0, scale^2 I)`` (:class:`NormalPrior`)
``uniform``    ``U(low, high)`` in every coordinate (:class:`UniformPrior`)
``mixture``    10 Gaussians on a circle, one per class (:class:`CircleMixturePrior`)
``swiss_roll`` a 2-D swiss roll, a segment per class (:class:`SwissRollPrior`)
============== ==========================================================================

A prior is a :class:`CodePrior`: ``distribution(like)`` is ``p(z)`` on the device and
dtype of ``like``, and a prior with one component per class (``has_components``) also
gives ``conditional(labels, like, num_labels)``, each label's own component (what a
label-conditional AAE with the label at the discriminator draws from).

Examples:
    >>> import torch
    >>> from probgen.models.priors import make_prior
    >>> prior = make_prior("mixture", 2)
    >>> prior.distribution(torch.zeros(())).sample((5,)).shape
    torch.Size([5, 2])
    >>> prior.conditional(torch.tensor([0, 3]), torch.zeros(()), num_labels=10).batch_shape
    torch.Size([2])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistributionMixin

from probgen import checks
from probgen.errors import ConfigError, DataError
from probgen.registry import Registry


class SwissRoll(dist.TorchDistribution):
    """Points on a 2-D swiss roll: ``u ~ U(low, high)``, angle ``2 pi turns u``, radius
    ``radius (0.2 + 0.8 u)``, plus ``N(0, noise^2 I)``. ``low``/``high`` select a segment of
    the roll (a class's own segment in a conditional AAE; the whole roll is ``[0, 1]``).

    Only sampling is defined: the roll has no density in closed form, and an adversarial
    autoencoder needs none (``log_prob`` raises :class:`NotImplementedError`).
    """

    arg_constraints: ClassVar[dict[str, Any]] = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(
        self,
        low,
        high,
        turns: float = 1.5,
        radius: float = 4.0,
        noise: float = 0.05,
        validate_args=None,
    ):
        self.low, self.high = torch.broadcast_tensors(torch.as_tensor(low), torch.as_tensor(high))
        self.turns, self.radius, self.noise = turns, radius, noise
        super().__init__(self.low.shape, torch.Size([2]), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return SwissRoll(
            self.low.expand(batch_shape),
            self.high.expand(batch_shape),
            self.turns,
            self.radius,
            self.noise,
        )

    def sample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.batch_shape
        u = self.low + (self.high - self.low) * torch.rand(
            shape, dtype=self.low.dtype, device=self.low.device
        )
        angle = 2 * math.pi * self.turns * u
        r = self.radius * (0.2 + 0.8 * u)
        point = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], -1)
        return point + self.noise * torch.randn_like(point)

    def log_prob(self, value):
        raise NotImplementedError(
            "the swiss-roll prior has no density in closed form; an "
            "adversarial autoencoder needs only its samples."
        )


class CodePrior:
    """A prior over codes of ``z_dim`` values, built on the model's device and dtype.

    ``distribution(like)`` is ``p(z)`` (batch shape ``()``, event shape ``(z_dim,)``);
    ``conditional(labels, like, num_labels)`` is one distribution per example (batch
    ``(B,)``): the component of each label of ``num_labels`` classes, for priors with
    ``has_components`` (a conditional AAE with the label at the discriminator needs one).

    A prior holds its settings only: the number of classes comes with each call, so one
    prior object can serve several models.
    """

    num_components: int | None = None
    has_components: bool = False

    def __init__(self, z_dim: int):
        self.z_dim = z_dim

    def distribution(self, like: torch.Tensor) -> dist.Distribution:
        raise NotImplementedError

    def conditional(
        self, labels: torch.Tensor, like: torch.Tensor, num_labels: int
    ) -> dist.Distribution:
        raise ConfigError(f"the {type(self).__name__} has no component per class.")

    def check_labels(self, num_labels: int) -> None:
        """Raise unless each of ``num_labels`` classes can have its own component."""
        if not self.has_components:
            raise ConfigError(
                f"label_to_discriminator maps each class to its own component of the prior, "
                f"but the {type(self).__name__} has none (every class would draw from the "
                f"whole prior): use prior='mixture' or 'swiss_roll', or give the label to the "
                f"decoder only (label_to_discriminator=False, label_to_decoder=True)."
            )
        if self.num_components is not None and self.num_components != num_labels:
            raise ConfigError(
                f"the prior has {self.num_components} components but the model {num_labels} "
                f"classes; each class is mapped to its own component, so give the prior "
                f"num_components={num_labels} (prior_kwargs)."
            )


PRIORS: Registry = Registry("AAE prior")


def _need_2d(z_dim: int, name: str) -> None:
    if z_dim != 2:
        raise ConfigError(
            f"the {name} prior lives in two dimensions; it needs z_dim=2, got "
            f"z_dim={z_dim} (use prior='normal' or 'uniform' for other sizes)."
        )


@PRIORS.register("normal")
class NormalPrior(CodePrior):
    """``N(0, scale^2 I)``."""

    def __init__(self, z_dim: int, scale: float = 1.0):
        super().__init__(z_dim)
        self.scale = checks.positive_float("the normal prior's scale", scale)

    def distribution(self, like):
        zero = like.new_zeros(self.z_dim)
        return dist.Normal(zero, zero + self.scale).to_event(1)


@PRIORS.register("uniform")
class UniformPrior(CodePrior):
    """``U(low, high)`` in every coordinate."""

    def __init__(self, z_dim: int, low: float = -1.0, high: float = 1.0):
        super().__init__(z_dim)
        self.low = checks.real("the uniform prior's low", low)
        self.high = checks.real(
            "the uniform prior's high",
            high,
            low=self.low,
            low_open=True,
            hint="the uniform prior needs low < high",
        )

    def distribution(self, like):
        zero = like.new_zeros(self.z_dim)
        return dist.Uniform(zero + self.low, zero + self.high).to_event(1)


@PRIORS.register("mixture")
class CircleMixturePrior(CodePrior):
    """A mixture of ``num_components`` equally weighted 2-D Gaussians whose means lie on a
    circle of ``radius``, each elongated along its radius (standard deviations
    ``radial_scale`` along it, ``tangential_scale`` across): the prior of Makhzani et al.'s
    figure 4 (10 components; the paper gives no sizes, these are probgen's)."""

    has_components = True

    def __init__(
        self,
        z_dim: int,
        num_components: int = 10,
        radius: float = 4.0,
        radial_scale: float = 1.0,
        tangential_scale: float = 0.25,
    ):
        super().__init__(z_dim)
        _need_2d(z_dim, "mixture")
        self.num_components = checks.positive_int(
            "the mixture prior's num_components", num_components
        )
        self.radius = checks.positive_float("the mixture prior's radius", radius)
        self.radial_scale = checks.positive_float("radial_scale", radial_scale)
        self.tangential_scale = checks.positive_float("tangential_scale", tangential_scale)

    def components(self, like) -> dist.MultivariateNormal:
        """The components as one MultivariateNormal of batch shape ``(num_components,)``."""
        angle = torch.arange(self.num_components, dtype=like.dtype, device=like.device) * (
            2 * math.pi / self.num_components
        )
        radial = torch.stack([torch.cos(angle), torch.sin(angle)], -1)  # (K, 2)
        tangent = torch.stack([-torch.sin(angle), torch.cos(angle)], -1)
        loc = self.radius * radial
        # covariance R diag(s_r^2, s_t^2) R^T, R = [radial, tangent] as columns
        rot = torch.stack([radial, tangent], -1)  # (K, 2, 2)
        variances = torch.cat(
            [
                like.new_full((1,), self.radial_scale**2),  # (filled on the
                like.new_full((1,), self.tangential_scale**2),
            ]
        )  # device)
        cov = (
            rot
            @ torch.diag_embed(variances).expand(self.num_components, 2, 2)
            @ rot.transpose(-1, -2)
        )
        return dist.MultivariateNormal(loc, covariance_matrix=cov)

    def distribution(self, like):
        mix = dist.Categorical(logits=like.new_zeros(self.num_components))
        return dist.MixtureSameFamily(mix, self.components(like))

    def conditional(self, labels, like, num_labels=None):
        comps = self.components(like)
        return dist.MultivariateNormal(comps.loc[labels], scale_tril=comps.scale_tril[labels])


@PRIORS.register("swiss_roll")
class SwissRollPrior(CodePrior):
    """The 2-D swiss roll of Makhzani et al.'s figure 4 (:class:`SwissRoll`); with labels,
    class ``k`` of ``K`` takes the segment ``u in [k/K, (k+1)/K]``."""

    has_components = True

    def __init__(self, z_dim: int, turns: float = 1.5, radius: float = 4.0, noise: float = 0.05):
        super().__init__(z_dim)
        _need_2d(z_dim, "swiss_roll")
        self.turns = checks.positive_float("the swiss roll's turns", turns)
        self.radius = checks.positive_float("the swiss roll's radius", radius)
        self.noise = checks.nonnegative_float("the swiss roll's noise", noise)

    def distribution(self, like):
        return SwissRoll(like.new_zeros(()), like.new_ones(()), self.turns, self.radius, self.noise)

    def conditional(self, labels, like, num_labels=None):
        n = float(
            checks.positive_int(
                "num_labels",
                num_labels,
                hint="the swiss roll's segments need the number of classes",
            )
        )
        k = labels.to(like.dtype)
        return SwissRoll(k / n, (k + 1) / n, self.turns, self.radius, self.noise)


class _Sampled(dist.TorchDistribution):
    """A distribution known by a sampler alone: ``fn(n) -> (n, z_dim)``."""

    arg_constraints: ClassVar[dict[str, Any]] = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(
        self,
        fn: Callable[[int], torch.Tensor],
        z_dim: int,
        like: torch.Tensor,
        batch_shape=torch.Size(),
    ):
        self.fn, self.like = fn, like
        super().__init__(torch.Size(batch_shape), torch.Size([z_dim]), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return _Sampled(self.fn, self.event_shape[0], self.like, batch_shape)

    def sample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.batch_shape
        n = shape.numel()
        z = self.fn(n)
        if not torch.is_tensor(z) or tuple(z.shape) != (n,) + tuple(self.event_shape):
            got = tuple(z.shape) if torch.is_tensor(z) else type(z).__name__
            raise DataError(
                f"the prior's sampler, asked for {n} draws, returned {got}; it must "
                f"return a tensor ({n}, {self.event_shape[0]})."
            )
        return z.to(self.like).reshape(shape + self.event_shape)

    def log_prob(self, value):
        raise NotImplementedError("this prior is known by its sampler alone; it has no density.")


class GivenPrior(CodePrior):
    """A prior the user passes: a Pyro distribution with event shape ``(z_dim,)``, an object
    with ``sample(sample_shape)``, or a callable ``f(n) -> (n, z_dim)``."""

    def __init__(self, z_dim: int, prior: Any):
        super().__init__(z_dim)
        if isinstance(prior, torch.distributions.Distribution):
            if not isinstance(prior, TorchDistributionMixin):
                raise ConfigError(
                    f"the prior {type(prior).__name__} is a torch distribution; "
                    f"pass its pyro.distributions version (Pyro's plates need it)."
                )
            if tuple(prior.event_shape) != (z_dim,) or tuple(prior.batch_shape) != ():
                raise ConfigError(
                    f"the prior must have batch shape () and event shape ({z_dim},), got "
                    f"{tuple(prior.batch_shape)} and {tuple(prior.event_shape)}; e.g. "
                    f"dist.Normal(torch.zeros({z_dim}), 1).to_event(1)."
                )
            self.prior, self.fn = prior, None
        elif callable(getattr(prior, "sample", None)):
            self.prior, self.fn = None, lambda n: prior.sample((n,))
        elif callable(prior):
            self.prior, self.fn = None, prior
        else:
            raise ConfigError(
                f"prior must be a name in {PRIORS.names()}, a Pyro distribution or "
                f"a sampler, got {type(prior).__name__}."
            )

    def distribution(self, like):
        return self.prior if self.prior is not None else _Sampled(self.fn, self.z_dim, like)


def make_prior(
    prior: str | Any, z_dim: int, prior_kwargs: dict[str, Any] | None = None
) -> CodePrior:
    """A :class:`CodePrior` from a name in :data:`PRIORS` (with its settings) or an object."""
    if isinstance(prior, str):
        try:
            return PRIORS.get(prior)(z_dim, **(prior_kwargs or {}))
        except TypeError as err:
            raise ConfigError(
                f"prior {prior!r}: bad prior_kwargs {prior_kwargs!r} ({err})."
            ) from None
    if prior_kwargs:
        raise ConfigError(
            "prior_kwargs are settings of a named prior; pass them to the object "
            "you give as prior instead."
        )
    return prior if isinstance(prior, CodePrior) else GivenPrior(z_dim, prior)


__all__ = [
    "PRIORS",
    "CircleMixturePrior",
    "CodePrior",
    "GivenPrior",
    "NormalPrior",
    "SwissRoll",
    "SwissRollPrior",
    "UniformPrior",
    "make_prior",
]
