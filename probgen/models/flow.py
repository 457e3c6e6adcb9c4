"""A normalizing flow as a Pyro model, trained by maximum likelihood.

The model is one observed site::

    pyro.sample("x", TransformedDistribution(base, [flow, logit^{-1}]), obs=x)

with an empty guide, so the ELBO that :func:`probgen.fit` maximises is exactly
``log p(x)`` (nats per example); the logit preprocessing is the last transform
of the distribution, so its log-determinant is part of ``log p(x)``. A
deterministic site ``z`` records the latent code ``f^{-1}(x)`` (flattened), so
``pyro.infer.Predictive`` returns it. For DenseFlow the site's distribution is
the flow's :class:`~probgen.flows.AugmentedFlowDistribution`, whose
``log_prob`` is the lower bound (one noise draw per step during training) --
the augmentation noise plays the part of a latent variable whose variational
distribution is fixed -- and ``z`` is the augmented latent of one draw.

Dequantization. With ``dequantization=None`` the data arrive continuous: images
dequantized beforehand, in [0, 1) (:func:`probgen.data.dequantize.dequantized`),
or toy points. With ``"uniform"`` or ``"variational"`` the model takes the grey
levels ``k / (L - 1)`` themselves and the dequantization noise is a latent site::

    u ~ Uniform(0, 1)^D                 (its prior: the level's bin, density 1)
    x ~ flow,  observed at (k + u) / L

whose guide is ``Uniform(0, 1)`` (then the ELBO is exactly the uniform
dequantization bound) or a learned :class:`~probgen.data.dequantize.VariationalDequantizer`
``q(u | k)`` (variational dequantization). Either way
``ELBO = E_q[log p((k + u) / L) - log q(u | k)] <= log P(k) + D log L``, and
importance sampling over ``u`` tightens it (:meth:`FlowModel.log_prob` with ``num_samples``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from probgen import checks
from probgen.data.dequantize import (
    VariationalDequantizer,
    check_unit_interval,
    logit_transform,
    to_levels,
)
from probgen.data.tensors import TensorData
from probgen.errors import ConfigError, DataError
from probgen.flows.builders import build_flow
from probgen.flows.core import DensityFlow
from probgen.flows.transforms import reset_caches
from probgen.infer.likelihood import bits_per_dim, iw_log_likelihood, mean_bits_per_dim
from probgen.models.checks import loop_checked
from probgen.models.registry import MODELS

PREPROCESS = ("logit", "none")
DEQUANTIZATION = (None, "uniform", "variational")


@MODELS.register("flow")
class FlowModel(nn.Module):
    """A flow density as a Pyro model/guide pair.

    Args:
        flow: a built flow (:mod:`probgen.flows`) or a builder name
            (``nice``, ``realnvp``, ``glow``, ``denseflow``, ``identity``; zuko's flows
            ``zuko:maf``, ``zuko:nsf``, ``zuko:nice``, ``zuko:realnvp`` over the
            flattened event, :class:`~probgen.flows.zuko_bridge.ZukoDensity`).
        event_shape: shape of one data point, when ``flow`` is a name.
        preprocess: ``logit`` (data in [0, 1], modelled in logit space) or ``none``.
        alpha: the logit preprocessing's margin, ``logit(alpha + (1 - 2 alpha) x)``.
        num_levels: grey levels the data were (or are to be) dequantized from, for
            bits/dim; ``None`` for continuous data. Default: 256 with ``logit`` or for
            images ``(C, H, W)``, else ``None``. When set, data must lie in [0, 1].
        dequantization: ``None`` (data arrive continuous), ``uniform`` or ``variational``
            (data arrive as grey levels; the dequantization noise is a latent site,
            see the module doc).
        dequantizer_hidden: hidden channels of the variational dequantizer.
        **flow_kwargs: builder settings (``depth``, ``hidden``, ``levels``, ...; for a
            zuko flow ``depth`` and zuko's own settings such as ``hidden_features``).

    Model arguments: ``x`` of shape ``(B, *event_shape)`` (further batch items such as
    labels are ignored), or ``None`` to sample ``num_samples`` points.
    Sites: ``x`` (observed), ``z`` (deterministic: the latent code, flattened),
    ``u`` (latent dequantization noise, with ``dequantization`` set).
    """

    def __init__(
        self,
        flow: DensityFlow | str = "glow",
        event_shape: Sequence[int] = (1, 28, 28),
        preprocess: str = "logit",
        alpha: float = 0.05,
        num_levels: int | None = -1,
        dequantization: str | None = None,
        dequantizer_hidden: int = 32,
        **flow_kwargs: Any,
    ):
        super().__init__()
        if isinstance(flow, str):
            flow = build_flow(flow, event_shape, **flow_kwargs)
        elif flow_kwargs:
            raise ConfigError(
                f"flow settings {sorted(flow_kwargs)} only apply when the flow is given by name."
            )
        if not isinstance(flow, DensityFlow):
            raise ConfigError(
                f"flow must be a probgen flow or a builder name, got {type(flow).__name__}."
            )
        checks.choice("preprocess", preprocess, PREPROCESS)
        self.flow = flow
        self.preprocess = preprocess
        self.alpha = alpha
        if preprocess == "logit":
            logit_transform(alpha)  # checks alpha
        if num_levels == -1:  # not given: images are 8-bit grey levels, vectors continuous
            num_levels = 256 if preprocess == "logit" or len(flow.event_shape) == 3 else None
        self.num_levels = num_levels
        checks.choice("dequantization", dequantization, DEQUANTIZATION)
        if dequantization is not None and self.num_levels is None:
            raise ConfigError("dequantization needs the number of grey levels (num_levels).")
        self.dequantization = dequantization
        self.dequantizer = (
            VariationalDequantizer(self.event_shape, dequantizer_hidden)
            if dequantization == "variational"
            else None
        )

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.flow.event_shape

    @property
    def num_dims(self) -> int:
        return self.flow.num_dims

    @property
    def exact(self) -> bool:
        """Whether ``log_prob`` is exact (False for DenseFlow: a lower bound)."""
        return self.flow.exact

    def check_data(self, x: torch.Tensor, *rest: torch.Tensor, values: bool = True) -> None:
        """Shape ``(B, *event_shape)``; with logit preprocessing, values in [0, 1]; with
        ``dequantization``, grey levels on the grid of ``num_levels``. Other tensors of a
        batch (labels the model takes and ignores) are not checked. ``values=False``
        checks the shape only (the value checks read the data back to the host; the fit
        loop checks a whole data set once instead of every step)."""
        self.flow.check_input(x)
        if x.dim() != len(self.event_shape) + 1:
            raise DataError(
                f"this model takes a batch of shape (B, "
                f"{', '.join(map(str, self.event_shape))}); got a tensor of shape "
                f"{tuple(x.shape)}."
            )
        if not values:
            return
        if self.dequantization is not None:
            to_levels(x, self.num_levels)  # [0, 1] and on the grid: one read
        elif self.preprocess == "logit":
            check_unit_interval(x, "the data of a flow with logit preprocessing")
        elif self.num_levels is not None:
            check_unit_interval(
                x,
                f"the data of a flow of {self.num_levels} grey levels "
                f"(pass num_levels=None for continuous data)",
            )

    def _data_transforms(self):
        return [logit_transform(self.alpha)] if self.preprocess == "logit" else []

    def distribution(
        self, temperature: float = 1.0, num_samples: int = 1
    ) -> dist.TorchDistribution:
        """The Pyro distribution of the data (including preprocessing).

        Exact flows: ``TransformedDistribution(base, [flow transform, logit^{-1}])``.
        DenseFlow: ``TransformedDistribution(AugmentedFlowDistribution, [logit^{-1}])``
        whose ``log_prob`` is the bound from ``num_samples`` noise draws.
        The transforms' caches are cleared (values from older parameters never leak in).
        """
        reset_caches(self)
        pre = self._data_transforms()
        if self.flow.exact:
            base, transforms = self.flow.density_parts(temperature)
            return dist.TransformedDistribution(base, list(transforms) + pre)
        d = self.flow.distribution(temperature, num_samples)
        return dist.TransformedDistribution(d, pre) if pre else d

    @staticmethod
    def _latent(d, x: torch.Tensor) -> torch.Tensor:
        # Invert the distribution's transforms (each caches its pair, so scoring x
        # afterwards reuses the work), then flatten the base value.
        y = x
        base = d
        if isinstance(d, dist.TransformedDistribution):
            for t in reversed(d.transforms):
                y = t.inv(y)
            base = d.base_dist
        if hasattr(base, "log_prob_and_latent"):  # DenseFlow's bound, a zuko flow's noise
            return base.log_prob_and_latent(y)[1]
        return y.reshape(y.shape[0], -1)

    def _noise_prior(self, like: torch.Tensor):
        zeros = like.new_zeros(like.shape[1:])
        return dist.Uniform(zeros, zeros + 1.0).to_event(len(self.event_shape))

    def model(
        self,
        x: torch.Tensor | None = None,
        *rest: torch.Tensor,
        num_samples: int = 1,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        pyro.module("flow", self.flow)
        checked = loop_checked()
        if x is not None:
            self.check_data(x, values=not checked)
            n = x.shape[0]
        else:
            n = num_samples
        d = self.distribution(temperature)
        with pyro.plate("data", n):
            if x is not None and self.dequantization is not None:
                k = to_levels(x, self.num_levels, check=False)  # checked above
                u = pyro.sample("u", self._noise_prior(x))
                x = (k + u) / self.num_levels
            z = self._latent(d, x) if x is not None else None
            x = pyro.sample("x", d, obs=x)
            if z is None:
                z = self._latent(d, x)
            pyro.deterministic("z", z, event_dim=1)
        return x

    def guide(self, x: torch.Tensor | None = None, *rest: torch.Tensor, **kwargs: Any) -> None:
        """Empty for continuous data (the latent of a flow is a function of the data);
        with dequantization, the distribution of the noise ``u`` given the grey levels."""
        if x is None or self.dequantization is None:
            return
        k = to_levels(x, self.num_levels, check=not loop_checked())
        with pyro.plate("data", x.shape[0]):
            if self.dequantizer is None:
                pyro.sample("u", self._noise_prior(x))
            else:
                pyro.module("dequantizer", self.dequantizer)
                pyro.sample("u", self.dequantizer.distribution(k, self.num_levels))

    # ------------------------------------------------------------------ evaluation

    def log_prob(self, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """``log p(x)`` per example, in nats, with the preprocessing's log-determinant.

        For DenseFlow a lower bound from ``num_samples`` noise draws. With
        ``dequantization`` set (``x`` grey levels), the importance-sampled bound of
        ``log P(k) + D log L`` from ``num_samples`` draws of ``u`` from the guide
        (``num_samples=1``: the ELBO), computed without gradients.
        """
        self.check_data(x)
        if self.dequantization is not None:
            return iw_log_likelihood(
                self.model,
                self.guide,
                x,
                num_samples=num_samples,
                chunk_size=max(1, 512 // max(x.shape[0], 1)),
            )
        if self.flow.exact and num_samples != 1:
            raise ConfigError(
                "num_samples applies to DenseFlow's bound and to dequantization "
                "models only; this flow is exact."
            )
        return self.distribution(num_samples=num_samples).log_prob(x)

    def bits_per_dim(self, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """Bits/dim per example (an upper bound for DenseFlow, see
        :mod:`probgen.infer.likelihood`)."""
        return bits_per_dim(self.log_prob(x, num_samples), self.num_dims, self.num_levels)

    @torch.no_grad()
    def evaluate_bits_per_dim(
        self, data: TensorData, batch_size: int = 500, num_samples: int = 1, progress: bool = False
    ) -> float:
        """Mean bits/dim over ``data`` (first tensor): dequantized images, or grey
        levels in [0, 1] when the model dequantizes them itself (``dequantization``)."""
        was = self.training
        self.eval()
        try:
            device = self.flow._anchor.device  # data may live elsewhere (a CPU test set)
            return mean_bits_per_dim(
                lambda x: self.log_prob(x.to(device), num_samples),
                data,
                self.num_dims,
                self.num_levels,
                batch_size,
                progress,
            )
        finally:
            self.train(was)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> FlowModel:
        """Data-dependent initialisation (ActNorm) from one batch of data."""
        self.check_data(x)
        if x.shape[0] < 2:
            raise DataError("data-dependent initialisation needs a batch of at least 2 examples.")
        if self.dequantization is not None:
            x = (to_levels(x, self.num_levels) + torch.rand_like(x)) / self.num_levels
        self.distribution().log_prob(x)
        return self

    @torch.no_grad()
    def sample(self, num_samples: int, temperature: float = 1.0) -> torch.Tensor:
        """``(num_samples, *event_shape)`` draws; images clamped to [0, 1].

        ``temperature`` scales the base distribution's standard deviation (Glow's
        "temperature" T; T < 1 trades diversity for cleaner samples).
        """
        self.flow.check_initialized()
        x = self.distribution(temperature).sample((num_samples,))
        return x.clamp(0, 1) if self.preprocess == "logit" else x
