r"""zuko's normalizing flows in probgen, through Pyro's bridge ``ZukoToPyro``.

A zuko flow (Rozet et al., ``probabilists/zuko``) is a *lazy distribution*: a module
whose call ``flow(c)`` returns the torch distribution :math:`p(x \mid c)` for a context
``c`` (or :math:`p(x)` for ``flow()``), a ``NormalizingFlow`` of a transform ``f``
(data to noise) and a base :math:`p(u)`:
:math:`\log p(x \mid c) = \log p(f(x; c)) + \log |\det \partial f / \partial x|`.
Pyro 1.9 wraps such a distribution as a Pyro one with
:class:`pyro.contrib.zuko.ZukoToPyro`, which draws through zuko's
``rsample_and_log_prob`` (the draw and its density in one pass) and remembers the
density of each draw, so a guide's own draws are scored without inverting the flow.

probgen uses zuko's flows in three places, each named ``"zuko:<flow>"`` (the names
of :data:`ZUKO_FLOWS`) with settings that are JSON data, so that a model built from them
is recorded by the model registry and reloads (``probgen.load``, ``save_pretrained``):

=======================  ==================================================================
where                    how
=======================  ==================================================================
a VAE's guide            ``VAE(guide_flow="zuko:nsf", guide_flow_depth=4,
                         guide_flow_kwargs={"hidden_features": [256]})``: the encoder's
                         Gaussian through a zuko flow conditioned on the encoder's features
                         (:class:`probgen.infer.guides.ZukoGuideFlow`)
a VAE's prior            ``VAE(prior_flow="zuko:maf", prior_flow_depth=3)``: a learned
                         :math:`p(z)` in place of :math:`N(0, I)`
a ``FlowModel``          ``FlowModel("zuko:nsf", event_shape=(1, 28, 28), depth=4)``: an
                         unconditional zuko flow over the flattened (logit-space) pixels,
                         :class:`ZukoDensity`, bits/dim as for probgen's own flows
=======================  ==================================================================

zuko is an optional dependency (``pip install 'probgen[zuko]'``), imported only when a
zuko flow is built. Importing zuko changes two things in torch for the whole process
(it adds ``call_and_ladj`` to ``torch.distributions.Transform`` and renames the class of
inverse transforms to ``Inverse``); probgen cannot avoid that, so it imports zuko only
for a model that uses it.

Why :class:`ZukoDistribution` extends Pyro's bridge rather than using it as it is: Pyro's
``ZukoToPyro`` draws only through ``__call__`` (what ``pyro.sample`` calls); its
``rsample`` and ``sample`` are torch's unimplemented ones, and its ``expand`` returns the
parent class. probgen also draws through a ``TransformedDistribution`` over it (a
``FlowModel``'s pixels) and hands the distribution to users (``vae.posterior(x)``), so the
subclass adds those, plus the flow's latent for ``FlowModel``'s ``z`` site.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Sequence
from typing import Any, ClassVar

import pyro.distributions as dist
import torch
from pyro.contrib.zuko import ZukoToPyro
from torch import nn
from torch.distributions import constraints
from torch.distributions.transforms import ReshapeTransform

from probgen import checks
from probgen.errors import ConfigError
from probgen.flows.builders import FLOWS, _event_shape
from probgen.flows.core import DensityFlow, _numel
from probgen.flows.transforms import reset_caches
from probgen.registry import Registry

INSTALL = "pip install 'probgen[zuko]'"

#: The zuko flows probgen builds by name: ``"zuko:<name>"`` -> the class in ``zuko.flows``.
#: Each is exactly invertible both ways (affine or rational-quadratic spline steps), so a
#: guide scores any code and a density samples exactly; each takes ``transforms`` (the
#: depth). zuko's other flows (NAF, SOSPF, BPF, ...) invert by bisection; pass one as an
#: object to :class:`ZukoDensity` if you want it.
ZUKO_FLOWS: Registry = Registry("zuko flow")
ZUKO_FLOWS.register("zuko:maf", "MAF")
ZUKO_FLOWS.register("zuko:nsf", "NSF")
ZUKO_FLOWS.register("zuko:nice", "NICE")
ZUKO_FLOWS.register("zuko:realnvp", "RealNVP")

# Settings probgen itself passes to zuko's constructors.
_OWN = ("features", "context", "transforms")


def import_zuko():
    """The ``zuko`` package, or one :class:`ConfigError` line saying how to install it."""
    first = "zuko" not in sys.modules
    # zuko's import switches torch's distribution validation off for the whole process
    # (``Distribution._validate_args = False`` in zuko.distributions); probgen importing it
    # must not change the user's setting, so the first import puts it back. zuko's own
    # distributions pass ``validate_args=False`` themselves and do not need the switch.
    validate = torch.distributions.Distribution._validate_args
    try:
        return importlib.import_module("zuko")
    except ImportError:
        raise ConfigError(
            f"zuko flows need the zuko package, which is not installed: {INSTALL}."
        ) from None
    finally:
        if first:
            torch.distributions.Distribution._validate_args = validate


def _json_data(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def zuko_settings(kwargs: dict[str, Any] | None, what: str = "zuko flow settings") -> dict:
    """Check settings for a zuko flow's constructor before anything is built.

    They must be JSON data (numbers, strings, lists, dicts), because a model records its
    settings to be rebuilt from them; ``activation`` is the name of a ``torch.nn`` module
    class (``"ELU"``). ``features``, ``context`` and ``transforms`` are probgen's to set
    (the latent or data size, the context size, the depth).

    Returns:
        A copy of the settings.
    """
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise ConfigError(
            f"{what} must be a dict of zuko's constructor settings, got a {type(kwargs).__name__}."
        )
    own = sorted(set(kwargs) & set(_OWN))
    if own:
        raise ConfigError(
            f"{what} set {own}, which probgen sets itself (the size, the "
            f"context size, and the depth as the model's flow depth); "
            f"leave them out."
        )
    for key, value in kwargs.items():
        if not _json_data(value):
            raise ConfigError(
                f"{what}[{key!r}] is a {type(value).__name__}; give settings "
                f"as JSON data (numbers, strings, lists), which a saved model "
                f"records and rebuilds from."
            )
    act = kwargs.get("activation")
    if act is not None and not (
        isinstance(act, str)
        and isinstance(getattr(nn, act, None), type)
        and issubclass(getattr(nn, act), nn.Module)
    ):
        raise ConfigError(
            f"{what}['activation'] must name a torch.nn module class such as "
            f"'ReLU' or 'ELU', got {act!r}."
        )
    return dict(kwargs)


def zuko_flow(
    name: str, features: int, /, context: int = 0, depth: int = 3, **kwargs: Any
) -> nn.Module:
    """Build the zuko flow ``name`` (a name in :data:`ZUKO_FLOWS`).

    Args:
        name: ``"zuko:maf"``, ``"zuko:nsf"``, ``"zuko:nice"`` or ``"zuko:realnvp"``.
        features: size of the variable the flow models.
        context: size of the context it is conditioned on (0: unconditional).
        depth: number of transformations (zuko's ``transforms``).
        **kwargs: the zuko class's own settings, as JSON data (:func:`zuko_settings`):
            ``hidden_features`` (default ``[64, 64]``), ``bins`` (NSF), ``randperm``,
            ``passes``, ``activation``, ...

    Returns:
        The zuko lazy distribution (an ``nn.Module``; ``flow(c)`` is ``p(x | c)``).

    Raises:
        ConfigError: an unknown name, a bad size or depth, settings that are not JSON
            data or that zuko's constructor refuses, or zuko not installed.
    """
    cls_name = ZUKO_FLOWS.get(name)
    features = checks.positive_int("the zuko flow's features", features)
    context = checks.nonnegative_int("the zuko flow's context size", context)
    depth = checks.positive_int("the zuko flow's depth", depth)
    kwargs = zuko_settings(kwargs)
    zuko = import_zuko()
    cls = getattr(importlib.import_module("zuko.flows"), cls_name)
    built = dict(kwargs)
    if "activation" in built:
        built["activation"] = getattr(nn, built["activation"])
    try:
        return cls(features, context=context, transforms=depth, **built)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or ["no detail"])[0]
        raise ConfigError(
            f"zuko {zuko.__version__}'s {cls_name} refuses the settings "
            f"{sorted(kwargs)} ({type(err).__name__}: {first}); see "
            f"zuko.flows.{cls_name}."
        ) from None


class ZukoDistribution(ZukoToPyro):
    """Pyro's :class:`~pyro.contrib.zuko.ZukoToPyro` with the draws probgen also needs.

    Everything ``ZukoToPyro`` does is kept: ``pyro.sample`` draws through ``__call__``
    (zuko's ``rsample_and_log_prob``), and ``log_prob`` of a draw returns the density
    computed with it, so a guide never inverts its flow to score its own draws. Added:
    ``rsample`` (the same cached draw, for a ``TransformedDistribution`` over this one and
    for users), ``sample`` (no gradient, no cache), ``expand`` that keeps this class,
    ``support``, and :meth:`log_prob_and_latent`.

    Built as ``ZukoToPyro`` is, from ``dist``: a zuko ``NormalizingFlow`` (what
    ``flow(c)`` returns), or any torch distribution over vectors.
    """

    arg_constraints: ClassVar[dict] = {}

    def rsample(self, sample_shape: Sequence[int] = ()) -> torch.Tensor:
        """A reparameterised draw of shape ``sample_shape + batch_shape + event_shape``
        whose density is remembered (as ``pyro.sample``'s draws are)."""
        return self(torch.Size(sample_shape))

    def sample(self, sample_shape: Sequence[int] = ()) -> torch.Tensor:
        with torch.no_grad():
            return self.dist.sample(torch.Size(sample_shape))

    def expand(
        self, batch_shape: Sequence[int], _instance: ZukoDistribution | None = None
    ) -> ZukoDistribution:
        """The distribution with ``batch_shape``; the densities of earlier draws stay
        remembered (a plate that expands a distribution after a model computed ``x``'s
        density, as ``FlowModel`` does for its ``z`` site, does not run the flow again)."""
        new = type(self)(self.dist.expand(torch.Size(batch_shape)))
        new.cache = dict(self.cache)
        return new

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if x in self.cache:  # a remembered density, broadcast as log_prob would
            lp = self.cache[x]
            shape = torch.broadcast_shapes(
                x.shape[: x.dim() - len(self.event_shape)], self.batch_shape
            )
            return lp if lp.shape == shape else lp.expand(shape)
        return self.dist.log_prob(x)

    @property
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, len(self.event_shape))

    def log_prob_and_latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p(x), f(x))``: the density and the flow's noise-side value, from one pass
        of the transform (zuko's ``log_prob`` computes both and keeps only the first).
        The density is remembered for ``log_prob(x)`` of this very tensor."""
        d = self.dist
        if not hasattr(d, "transform") or not hasattr(d, "base"):
            raise ConfigError(
                f"the latent of a {type(d).__name__} is not defined; a zuko "
                f"NormalizingFlow has one."
            )
        u, ladj = d.transform.call_and_ladj(x)
        k = getattr(d, "reinterpreted", 0)  # event dims of the transform beyond the base's
        if k:
            ladj = ladj.reshape(ladj.shape[: ladj.dim() - k] + (-1,)).sum(-1)
        lp = d.base.log_prob(u) + ladj
        self.cache[x] = lp
        return lp, u


class ZukoDensity(DensityFlow):
    """A zuko flow as a probgen density (for :class:`~probgen.models.flow.FlowModel`).

    The zuko flow models the flattened event, ``D = prod(event_shape)`` values; its
    distribution is :class:`ZukoDistribution` (Pyro's bridge) under a reshape to
    ``event_shape``::

        log p(x) = log p_zuko(flatten(x)) = log p_base(f(x)) + log|det df/dx|.

    A ``FlowModel`` puts its logit preprocessing after the reshape, so its ``log p(x)``
    and bits/dim count that map's log-determinant as they do for probgen's own flows.

    Args:
        flow: an unconditional zuko lazy distribution over ``D`` features (``flow()``
            returns the distribution), e.g. ``zuko.flows.NSF(784, transforms=4)`` or
            one from :func:`zuko_flow`.
        event_shape: shape of one data point, ``(D,)`` or ``(C, H, W)``.
    """

    exact = True

    def __init__(self, flow: nn.Module, event_shape: Sequence[int]):
        super().__init__(_event_shape(event_shape))
        if not isinstance(flow, nn.Module) or not callable(flow):
            raise ConfigError(
                f"ZukoDensity takes a zuko flow (a module whose call returns a "
                f"distribution), got a {type(flow).__name__}."
            )
        self.flow = flow
        d = flow()
        dim = _numel(self.event_shape)
        if tuple(d.batch_shape) != () or tuple(d.event_shape) != (dim,):
            raise ConfigError(
                f"this zuko flow models events of shape {tuple(d.event_shape)} "
                f"(batch {tuple(d.batch_shape)}); data of shape "
                f"{self.event_shape} need an unconditional flow over {dim} "
                f"features."
            )
        like = next(
            (t for t in list(flow.parameters()) + list(flow.buffers()) if t.is_floating_point()),
            self._anchor,
        )
        try:  # a conditional flow builds its distribution without a context, then fails
            with torch.no_grad():
                d.log_prob(like.new_zeros(dim))
        except (RuntimeError, ValueError, TypeError) as err:
            first = (str(err).strip().splitlines() or ["no detail"])[0]
            raise ConfigError(
                f"this zuko flow cannot score data without a context "
                f"({type(err).__name__}: {first}); a density needs an "
                f"unconditional flow (context=0)."
            ) from None
        self.latent_shape = (dim,)

    def transforms(self) -> list:
        """The map from the flow's vectors to the data's shape (none for vectors)."""
        if len(self.event_shape) == 1:
            return []
        return [ReshapeTransform(self.latent_shape, self.event_shape, cache_size=1)]

    def _zuko_distribution(self, temperature: float = 1.0):
        d = self.flow()
        if temperature == 1.0:
            return d
        checks.positive_float("temperature", temperature)
        base = d.base
        inner = getattr(base, "base_dist", None)
        if not isinstance(inner, torch.distributions.Normal):
            raise ConfigError(
                f"temperature scales a Gaussian base; this zuko flow's base is "
                f"a {type(base).__name__}: sample it with temperature=1.0."
            )
        scaled = torch.distributions.Independent(
            torch.distributions.Normal(inner.loc, inner.scale * temperature),
            base.reinterpreted_batch_ndims,
        )
        return type(d)(d.transform, scaled)

    def density_parts(
        self, temperature: float = 1.0
    ) -> tuple[dist.TorchDistribution, list[torch.distributions.Transform]]:
        """``(base, transforms)``: :class:`ZukoDistribution` over the flattened event and
        the reshape to ``event_shape``; the base's standard deviation times
        ``temperature`` (a Gaussian base only)."""
        return ZukoDistribution(self._zuko_distribution(temperature)), self.transforms()

    def distribution(self, temperature: float = 1.0) -> dist.TransformedDistribution:
        """The data distribution (caches cleared)."""
        reset_caches(self)
        base, transforms = self.density_parts(temperature)
        return dist.TransformedDistribution(base, transforms)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x)``, shape ``x.shape[:-len(event_shape)]``."""
        self.check_input(x)
        return self.distribution().log_prob(x)

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        k = len(self.event_shape)
        return x.reshape(x.shape[: x.dim() - k] + self.latent_shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The flow's noise-side value ``f(flatten(x))``, shape ``(..., D)``."""
        self.check_input(x)
        return self.flow().transform(self._flatten(x))

    def decode(self, u: torch.Tensor) -> torch.Tensor:
        """The data point ``f^{-1}(u)`` of noise-side values ``u`` ``(..., D)``."""
        x = self.flow().transform.inv(u)
        return x.reshape(x.shape[:-1] + self.event_shape)

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}"


def _density_builder(name: str):
    cls_name = ZUKO_FLOWS.get(name)

    def build(event_shape: Sequence[int], depth: int = 3, **kwargs: Any) -> ZukoDensity:
        shape = _event_shape(event_shape)
        kwargs = zuko_settings(kwargs, f"the {name} flow's settings")
        return ZukoDensity(zuko_flow(name, _numel(shape), 0, depth, **kwargs), shape)

    build.__name__ = name.replace(":", "_")
    build.__qualname__ = build.__name__
    build.__doc__ = (
        f"zuko's ``{cls_name}`` over the flattened event, ``depth`` "
        f"transformations; ``kwargs``: zuko's settings (JSON data). See "
        f":class:`ZukoDensity` and :func:`zuko_flow`."
    )
    return build


for _name in ZUKO_FLOWS.names():
    FLOWS.register(_name, _density_builder(_name))

__all__ = [
    "ZUKO_FLOWS",
    "ZukoDensity",
    "ZukoDistribution",
    "import_zuko",
    "zuko_flow",
    "zuko_settings",
]
