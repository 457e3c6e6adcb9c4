"""Normalizing flows as Pyro transforms: NICE, RealNVP, Glow and DenseFlow.

A flow is a Pyro ``TransformModule`` (or a composition of them) under a base
distribution: ``flow.distribution()`` is a
:class:`pyro.distributions.TransformedDistribution`, so
``pyro.sample("x", flow.distribution(), obs=x)`` scores data exactly. DenseFlow
augments its latents with noise; its distribution scores a lower bound.

Builders (registered in :data:`FLOWS`): :func:`nice`, :func:`realnvp`,
:func:`glow`, :func:`denseflow`, :func:`identity`, and zuko's flows by name
(``zuko:maf``, ``zuko:nsf``, ``zuko:nice``, ``zuko:realnvp``; :mod:`probgen.flows.zuko_bridge`,
zuko imported only when one is built). The pieces no library has are in
:mod:`probgen.flows.transforms`.
"""

from probgen.flows.builders import (
    FLOWS,
    build_flow,
    denseflow,
    glow,
    glow_step,
    identity,
    nice,
    realnvp,
)
from probgen.flows.core import (
    AugmentedFlow,
    AugmentedFlowDistribution,
    DenseLevel,
    DensityFlow,
    Flow,
)
from probgen.flows.transforms import (
    ActNorm,
    CachedLogDetTransform,
    CheckerboardAffineCoupling,
    CrossUnitCoupling,
    ElementwiseAffine,
    InvertibleLinear,
    MultiscaleTransform,
    NormflowsTransform,
    Permute,
    Squeeze,
    actnorm,
    chain,
    invertible_conv1x1,
    invertible_linear,
    reset_caches,
    scaling,
    squeeze2d,
    unsqueeze2d,
)
from probgen.flows.zuko_bridge import ZUKO_FLOWS, ZukoDensity, ZukoDistribution, zuko_flow

__all__ = [
    "FLOWS",
    "ZUKO_FLOWS",
    "ActNorm",
    "AugmentedFlow",
    "AugmentedFlowDistribution",
    "CachedLogDetTransform",
    "CheckerboardAffineCoupling",
    "CrossUnitCoupling",
    "DenseLevel",
    "DensityFlow",
    "ElementwiseAffine",
    "Flow",
    "InvertibleLinear",
    "MultiscaleTransform",
    "NormflowsTransform",
    "Permute",
    "Squeeze",
    "ZukoDensity",
    "ZukoDistribution",
    "actnorm",
    "build_flow",
    "chain",
    "denseflow",
    "glow",
    "glow_step",
    "identity",
    "invertible_conv1x1",
    "invertible_linear",
    "nice",
    "realnvp",
    "reset_caches",
    "scaling",
    "squeeze2d",
    "unsqueeze2d",
    "zuko_flow",
]
