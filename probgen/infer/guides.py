"""Amortized flow guides: ``q(z | x)`` as the encoder's Gaussian pushed through flows.

A flow guide draws ``z0 ~ N(loc(x), scale(x))`` from the encoder and pushes it
through ``K`` invertible maps whose parameters are functions of an encoder
context ``h(x)`` (the encoder's last hidden layer)::

    z = T_K(. ; h) o ... o T_1(z0 ; h),
    log q(z | x) = log N(z0; loc, scale) - sum_k log |det dT_k / dz_{k-1}|.

The result is a :class:`pyro.distributions.TransformedDistribution`, so a
guide samples it at a Pyro site and every Pyro objective (``Trace_ELBO``,
``TraceMeanField_ELBO`` with a Monte Carlo KL, the IWAE bound) trains it. Each
sample's density comes from the transforms' cache (the draw remembers its
``z0``), so flows without an analytic inverse (planar, Sylvester) score their
own draws exactly; scoring an arbitrary ``z`` needs an invertible flow
(``iaf``, ``spline``, the zuko flows). A zuko guide is zuko's own ``NormalizingFlow``
wrapped for Pyro (Pyro's ``ZukoToPyro``), whose draws carry their density the same way.

The families, registered by name in :data:`GUIDE_FLOWS`:

===============  =====================================================================
name             each of the ``K`` steps
===============  =====================================================================
``planar``       ``z + u tanh(w^T z + b)``, ``(u, w, b)`` from the context: Pyro's
                 ``ConditionalPlanar`` (Rezende & Mohamed 2015, "Variational
                 Inference with Normalizing Flows")
``iaf``          inverse autoregressive flow: Pyro's ``ConditionalAffineAutoregressive``
                 (a MADE that sees ``z`` and the context; the numerically stable,
                 sigmoid-gated update), the variable order reversed between steps
                 (Kingma et al. 2016, "Improved Variational Inference with Inverse
                 Autoregressive Flow")
``sylvester``    ``z + Q R tanh(R~ Q^T z + b)`` with ``Q`` a product of Householder
                 reflections and ``R, R~`` upper triangular, all from the context
                 (van den Berg et al. 2018, "Sylvester Normalizing Flows for
                 Variational Inference"): :class:`ConditionalHouseholderSylvester`
``spline``       autoregressive rational-spline flow: Pyro's
                 ``ConditionalSplineAutoregressive`` (Durkan et al. 2019, "Neural
                 Spline Flows"; Pyro's linear rational splines, Dolatabadi et al.
                 2020), the order reversed between steps
``zuko:<flow>``  a zuko flow (``zuko:maf``, ``zuko:nsf``, ``zuko:nice``,
                 ``zuko:realnvp``) of ``K`` transformations conditioned on the context,
                 through Pyro's ``ZukoToPyro`` (:class:`ZukoGuideFlow`); zuko is
                 imported only when one is built (``pip install 'probgen[zuko]'``)
===============  =====================================================================

Why the Sylvester flow is written here: Pyro's ``Sylvester`` holds its
parameters as free tensors (one flow for every input) and has no conditional
form; zuko has no Sylvester flow. The amortized version computes every
parameter from the context, as the paper does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro.distributions as dist
import torch
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.transforms import (
    ConditionalAffineAutoregressive,
    ConditionalPlanar,
    ConditionalSplineAutoregressive,
)
from pyro.nn import ConditionalAutoRegressiveNN, DenseNN
from torch import nn
from torch.distributions import Transform, constraints

from probgen import checks
from probgen.errors import ConfigError
from probgen.flows.zuko_bridge import (
    ZUKO_FLOWS,
    ZukoDistribution,
    import_zuko,
    zuko_flow,
    zuko_settings,
)
from probgen.registry import Registry

GUIDE_FLOWS: Registry = Registry("flow guide")


def _order(z_dim: int, step: int) -> torch.Tensor:
    # Kingma et al. (2016) reverse the variable order between IAF steps; a fixed order
    # (not Pyro's random default) rebuilds the same flow from the settings alone.
    idx = torch.arange(z_dim)
    return idx if step % 2 == 0 else idx.flip(0)


def _hidden(hidden: Sequence[int] | None, default: list[int], z_dim: int, name: str):
    h = list(default if hidden is None else hidden)
    h = list(checks.sizes("guide_flow_kwargs['hidden']", h))
    if name in ("iaf", "spline") and min(h) < z_dim:
        raise ConfigError(
            f"the {name} flow's autoregressive network needs hidden layers at least "
            f"as wide as z_dim = {z_dim}, got {h}; widen them or leave "
            f"guide_flow_kwargs['hidden'] unset."
        )
    return h


@GUIDE_FLOWS.register("planar")
def planar_steps(
    z_dim: int, context_dim: int, depth: int, hidden: Sequence[int] | None = None
) -> list[nn.Module]:
    """``depth`` amortized planar steps; each step's ``(b, u, w)`` come from a dense
    network of the context (default hidden layer: ``[10 z_dim]``)."""
    h = _hidden(hidden, [10 * z_dim], z_dim, "planar")
    return [
        ConditionalPlanar(DenseNN(context_dim, h, param_dims=[1, z_dim, z_dim]))
        for _ in range(depth)
    ]


@GUIDE_FLOWS.register("iaf")
def iaf_steps(
    z_dim: int,
    context_dim: int,
    depth: int,
    hidden: Sequence[int] | None = None,
    stable: bool = True,
) -> list[nn.Module]:
    """``depth`` IAF steps, each a conditional MADE (default hidden layer ``[10 z_dim]``,
    Pyro's default), the order reversed between steps; ``stable``: Kingma et al.'s
    sigmoid-gated update ``z' = s z + (1 - s) m``."""
    h = _hidden(hidden, [10 * z_dim], z_dim, "iaf")
    return [
        ConditionalAffineAutoregressive(
            ConditionalAutoRegressiveNN(z_dim, context_dim, h, permutation=_order(z_dim, k)),
            stable=stable,
        )
        for k in range(depth)
    ]


@GUIDE_FLOWS.register("spline")
def spline_steps(
    z_dim: int,
    context_dim: int,
    depth: int,
    hidden: Sequence[int] | None = None,
    count_bins: int = 8,
    bound: float = 3.0,
    order: str = "linear",
) -> list[nn.Module]:
    """``depth`` autoregressive spline steps (``count_bins`` segments on
    ``[-bound, bound]``, identity outside), order reversed between steps."""
    h = _hidden(hidden, [10 * z_dim], z_dim, "spline")
    out = []
    for k in range(depth):
        param_dims = [count_bins, count_bins, count_bins - 1, count_bins]
        arn = ConditionalAutoRegressiveNN(
            z_dim, context_dim, h, param_dims=param_dims, permutation=_order(z_dim, k)
        )
        out.append(
            ConditionalSplineAutoregressive(
                z_dim, arn, count_bins=count_bins, bound=bound, order=order
            )
        )
    return out


# -- Sylvester flows (van den Berg et al. 2018), amortized ----------------------------------


def _reflect(z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``H z = z - 2 v (v^T z)`` for unit ``v``; ``v`` broadcasts against ``z``."""
    return z - 2.0 * v * (v * z).sum(-1, keepdim=True)


class ConditionedSylvester(Transform):
    """One Householder-Sylvester step with given parameters (a conditioned transform).

    ``y = x + Q R tanh(R~ Q^T x + b)``, ``Q = H_1 ... H_M`` (unit Householder vectors
    ``v``, shape ``(..., M, D)``), ``R, R~`` upper triangular ``(..., D, D)`` whose
    diagonals lie in ``(-1, 1)``, so ``R_ii R~_ii > -1`` and the map is invertible.
    ``log|det dy/dx| = sum_i log(1 + tanh'(a_i) R_ii R~_ii)`` (the paper's Eq. 11 with
    the triangular product). The parameters broadcast over leading dimensions of
    ``x`` (particles in front of the batch). There is no analytic inverse: a draw is
    scored from the cache its forward pass left, as Pyro's planar flow does.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, v: torch.Tensor, r: torch.Tensor, r_tilde: torch.Tensor, b: torch.Tensor):
        super().__init__(cache_size=1)
        self.v, self.r, self.r_tilde, self.b = v, r, r_tilde, b
        self._cached_log_det = None

    def _call(self, x):
        u = x
        for m in range(self.v.shape[-2]):  # Q^T x = H_M ... H_1 x
            u = _reflect(u, self.v[..., m, :])
        a = (self.r_tilde @ u.unsqueeze(-1)).squeeze(-1) + self.b
        h = torch.tanh(a)
        w = (self.r @ h.unsqueeze(-1)).squeeze(-1)
        for m in reversed(range(self.v.shape[-2])):  # Q w = H_1 ... H_M w
            w = _reflect(w, self.v[..., m, :])
        diag = torch.diagonal(self.r, dim1=-2, dim2=-1) * torch.diagonal(
            self.r_tilde, dim1=-2, dim2=-1
        )
        self._cached_log_det = torch.log1p((1.0 - h.pow(2)) * diag).sum(-1)
        return x + w

    def _inverse(self, y):
        raise KeyError(
            "the Sylvester flow has no analytic inverse: it scores only its own "
            "draws (from the cache of the forward pass)."
        )

    def log_abs_det_jacobian(self, x, y):
        x_old, y_old = self._cached_x_y
        if x is not x_old or y is not y_old:
            self(x)
        return self._cached_log_det


class ConditionalHouseholderSylvester(ConditionalTransformModule):
    """An amortized Householder-Sylvester step: every parameter is a linear function of
    the context ``h`` (van den Berg et al. 2018 compute them from the encoder's last
    hidden layer the same way).

    Args:
        z_dim: ``D``.
        context_dim: size of the context vector.
        num_householder: reflections ``M`` in ``Q`` (the paper's H-SNF).
    """

    def __init__(self, z_dim: int, context_dim: int, num_householder: int = 4):
        super().__init__()
        num_householder = checks.positive_int(
            "guide_flow_kwargs['householder'] (reflections per Sylvester step)", num_householder
        )
        self.z_dim, self.num_householder = z_dim, num_householder
        rows, cols = torch.triu_indices(z_dim, z_dim, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        n_off = rows.numel()
        self.sizes = [num_householder * z_dim, z_dim, z_dim, n_off, n_off, z_dim]
        self.net = nn.Linear(context_dim, sum(self.sizes))
        with torch.no_grad():  # start near the identity map
            self.net.weight.mul_(0.1)
            self.net.bias.zero_()
            self.net.bias[: num_householder * z_dim].normal_()  # distinct reflections

    def _triangular(self, diag: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
        d = self.z_dim
        r = diag.new_zeros(diag.shape[:-1] + (d, d))
        r[..., self.rows, self.cols] = off
        return r + torch.diag_embed(diag)

    def condition(self, context: torch.Tensor) -> ConditionedSylvester:
        v, d1, d2, o1, o2, b = self.net(context).split(self.sizes, dim=-1)
        v = v.reshape(v.shape[:-1] + (self.num_householder, self.z_dim))
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        r = self._triangular(torch.tanh(d1), o1)
        r_tilde = self._triangular(torch.tanh(d2), o2)
        return ConditionedSylvester(v, r, r_tilde, b)


@GUIDE_FLOWS.register("sylvester")
def sylvester_steps(
    z_dim: int, context_dim: int, depth: int, householder: int = 4
) -> list[nn.Module]:
    """``depth`` amortized Householder-Sylvester steps of ``householder`` reflections."""
    return [ConditionalHouseholderSylvester(z_dim, context_dim, householder) for _ in range(depth)]


# -- zuko's flows, through Pyro's ZukoToPyro -------------------------------------------------


class ZukoGuideFlow(nn.Module):
    r"""``q(z | x)`` as the encoder's Gaussian through a zuko flow conditioned on the context.

    With ``f_c`` the zuko flow's transform (its data-to-noise map) conditioned on the
    context ``c = h(x)``, ``q`` is zuko's own ``NormalizingFlow`` whose base is the
    encoder's ``N(loc, scale)``, wrapped for Pyro by
    :class:`~probgen.flows.zuko_bridge.ZukoDistribution` (Pyro's ``ZukoToPyro``)::

        inverse=True:   z = f_c(z0),       log q(z|x) = log N(z0; loc, scale) - log|det df_c/dz0|
        inverse=False:  z = f_c^{-1}(z0),  log q(z|x) = log N(f_c(z); loc, scale) + log|det df_c/dz|

    ``inverse=True`` (the default) is the direction of Kingma et al. (2016)'s inverse
    autoregressive flow: for zuko's autoregressive flows (MAF, NSF) a draw costs one pass
    of the network, and a guide scores only its own draws (their density comes with
    them). Scoring a code it did not draw (``vae.posterior(x).log_prob(z)``) then costs
    ``z_dim`` passes. ``inverse=False`` is zuko's density direction (scoring any code in
    one pass, drawing in ``z_dim``). Coupling flows (NICE, RealNVP) cost one pass either
    way.

    Args:
        name: a name in :data:`probgen.flows.zuko_bridge.ZUKO_FLOWS` (``"zuko:nsf"``).
        z_dim: latent size.
        context_dim: size of the encoder features the flow is conditioned on.
        depth: zuko's ``transforms``.
        inverse: see above.
        **kwargs: the zuko class's settings, as JSON data (``hidden_features``, ``bins``,
            ...; :func:`~probgen.flows.zuko_bridge.zuko_flow`).
    """

    def __init__(
        self,
        name: str,
        z_dim: int,
        context_dim: int,
        depth: int,
        inverse: bool = True,
        **kwargs: Any,
    ):
        super().__init__()
        checks.flag("guide_flow_kwargs['inverse']", inverse)
        kwargs = zuko_settings(kwargs, "guide_flow_kwargs")
        self.flow = zuko_flow(name, z_dim, context_dim, depth, **kwargs)
        self.inverse = inverse

    def _q_transform(self, context: torch.Tensor) -> Transform:
        """``q``'s map from ``z`` to the base side, conditioned on ``context``."""
        f = self.flow.transform(context)
        return f.inv if self.inverse else f

    def condition(self, context: torch.Tensor) -> Transform:
        """The map from the base draw ``z0`` to ``z`` (a torch transform)."""
        return self._q_transform(context).inv

    def distribution(
        self, loc: torch.Tensor, scale: torch.Tensor, context: torch.Tensor
    ) -> ZukoDistribution:
        """``q(z | x)``, batch ``(B,)``, event ``(z_dim,)``."""
        import_zuko()
        from zuko.distributions import DiagNormal, NormalizingFlow

        return ZukoDistribution(NormalizingFlow(self._q_transform(context), DiagNormal(loc, scale)))


def _zuko_guide(name: str):
    def zuko_steps(
        z_dim: int, context_dim: int, depth: int, inverse: bool = True, **kwargs: Any
    ) -> list[nn.Module]:
        return [ZukoGuideFlow(name, z_dim, context_dim, depth, inverse=inverse, **kwargs)]

    zuko_steps.__doc__ = (
        f"The ``{name}`` guide: one :class:`ZukoGuideFlow` of ``depth`` transformations."
    )
    return zuko_steps


for _name in ZUKO_FLOWS.names():
    GUIDE_FLOWS.register(_name, _zuko_guide(_name))


class AmortizedFlow(nn.Module):
    """The flow part of a flow guide: ``depth`` conditional steps of one family.

    Args:
        kind: a name in :data:`GUIDE_FLOWS`.
        z_dim: latent size.
        context_dim: size of the encoder context the steps are conditioned on.
        depth: number of steps ``K >= 1``.
        **kwargs: the family's settings (``hidden``; ``stable`` for ``iaf``;
            ``householder`` for ``sylvester``; ``count_bins``, ``bound``, ``order``
            for ``spline``; zuko's settings and ``inverse`` for ``zuko:<flow>``,
            see :class:`ZukoGuideFlow`).

    Example::

        flow = AmortizedFlow("iaf", z_dim=50, context_dim=200, depth=2)
        q = flow.distribution(loc, scale, h)     # TransformedDistribution, batch (B,)
        z = q.rsample(); log_q = q.log_prob(z)
    """

    def __init__(self, kind: str, z_dim: int, context_dim: int, depth: int = 2, **kwargs: Any):
        super().__init__()
        build = GUIDE_FLOWS.get(kind)
        depth = checks.positive_int("guide_flow_depth (flow steps)", depth)
        try:
            steps = build(z_dim, context_dim, depth, **kwargs)
        except TypeError as err:
            raise ConfigError(
                f"guide_flow_kwargs {sorted(kwargs)} do not fit the {kind!r} flow "
                f"({err}); see probgen.infer.guides.{build.__name__}."
            ) from None
        self.kind, self.depth = kind, depth
        self.steps = nn.ModuleList(steps)

    def transforms(self, context: torch.Tensor) -> list[Transform]:
        """The ``K`` steps conditioned on ``context`` ``(B, C)``, in sampling order."""
        return [step.condition(context) for step in self.steps]

    def distribution(self, loc: torch.Tensor, scale: torch.Tensor, context: torch.Tensor):
        """``q(z | x)``: ``N(loc, scale)`` (``(B, D)``, one event per row) through the
        steps conditioned on ``context`` ``(B, C)``: a Pyro ``TransformedDistribution``,
        or for a zuko flow a :class:`~probgen.flows.zuko_bridge.ZukoDistribution`."""
        if isinstance(self.steps[0], ZukoGuideFlow):  # one zuko flow: zuko scores it
            return self.steps[0].distribution(loc, scale, context)
        base = dist.Normal(loc, scale).to_event(1)
        return dist.TransformedDistribution(base, self.transforms(context))


def flow_settings(kind: str | None, depth: int, kwargs: dict[str, Any] | None) -> dict:
    """Check a model's flow-guide settings before building anything (one-line errors)."""
    if kind is None:
        return {}
    if kind not in GUIDE_FLOWS:
        raise ConfigError(f"guide_flow must be None or one of {GUIDE_FLOWS.names()}, got {kind!r}.")
    checks.positive_int("guide_flow_depth (flow steps)", depth)
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ConfigError(
            f"guide_flow_kwargs must be a dict of the flow's settings, got {type(kwargs).__name__}."
        )
    return dict(kwargs or {})
