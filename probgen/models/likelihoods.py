"""Observation models p(x | decoder output) for image models, picked by name.

Each likelihood is an ``nn.Module`` (a learned scale is a parameter of it)
that turns the decoder's ``(B, D)`` output into a Pyro distribution with
event shape ``(D,)``, gives the image that distribution stands for
(``mean``), and checks that data fit its support before training starts
(``check``, one host read), so that bad data fail with a message instead of a NaN.

=========================  =====================================  =================
name                       distribution                           data
=========================  =====================================  =================
``bernoulli``              Bernoulli(logits)                      binary {0, 1}
``continuous_bernoulli``   ContinuousBernoulli(logits)            grey levels [0, 1]
``gaussian``               Normal(sigmoid(out), fixed scale)      grey levels [0, 1]
``gaussian_learned``       Normal(sigmoid(out), learned scale)    grey levels [0, 1]
=========================  =====================================  =================

:func:`masked_bernoulli_nll` is the Bernoulli term of a conditional model whose loss counts
some pixels only (the CVAE's baseline; re-exported by :mod:`probgen.metrics.likelihood`).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from probgen.errors import ConfigError, DataError
from probgen.models.checks import found, outside_unit_interval
from probgen.registry import Registry

LIKELIHOODS: Registry = Registry("likelihood")


def _check_unit_interval(x: torch.Tensor, name: str) -> None:
    if found(outside_unit_interval(x)):
        raise DataError(
            f"the {name} likelihood needs pixels in [0, 1]; found values from {x.min().item():.3g} "
            f"to {x.max().item():.3g}. Scale images to [0, 1] (e.g. divide uint8 pixels by 255)."
        )


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(nn.Module):
    """Bernoulli pixels with logits from the decoder; data must be binary."""

    def forward(self, out: torch.Tensor):
        return dist.Bernoulli(logits=out, validate_args=False).to_event(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out)

    def check(self, x: torch.Tensor) -> None:
        bad = (x != 0) & (x != 1)
        if found(bad):
            bad = x[bad].flatten()[0].item()
            raise DataError(
                f"the bernoulli likelihood needs binary pixels (0 or 1); found {bad:.4g}. "
                f"Binarize the data (image_splits(..., binarize='dynamic' or 'static')) or use "
                f"likelihood='continuous_bernoulli' or 'gaussian' for grey levels."
            )


@LIKELIHOODS.register("continuous_bernoulli")
class ContinuousBernoulliLikelihood(nn.Module):
    """The continuous Bernoulli (Loaiza-Ganem & Cunningham 2019): a proper density on [0, 1]."""

    def forward(self, out: torch.Tensor):
        return dist.ContinuousBernoulli(logits=out, validate_args=False).to_event(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return dist.ContinuousBernoulli(logits=out, validate_args=False).mean

    def check(self, x: torch.Tensor) -> None:
        _check_unit_interval(x, "continuous_bernoulli")


@LIKELIHOODS.register("gaussian")
class GaussianLikelihood(nn.Module):
    """Normal pixels with mean ``sigmoid(out)`` and one scale for every pixel.

    Args:
        scale: the standard deviation (its starting value when ``learn_scale``).
        learn_scale: make the scale a trained parameter (kept above ``min_scale``).
    """

    def __init__(self, scale: float = 0.1, learn_scale: bool = False, min_scale: float = 1e-3):
        super().__init__()
        if not scale > 0:
            raise ConfigError(f"the Gaussian likelihood's scale must be positive, got {scale!r}.")
        self.min_scale = min_scale
        if learn_scale:
            self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))
        else:
            self.register_buffer("log_scale", torch.tensor(math.log(scale)))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(min=self.min_scale)

    def forward(self, out: torch.Tensor):
        return dist.Normal(
            torch.sigmoid(out), self.scale.to(out.dtype), validate_args=False
        ).to_event(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out)

    def check(self, x: torch.Tensor) -> None:
        _check_unit_interval(x, "gaussian")


@LIKELIHOODS.register("gaussian_learned")
class LearnedGaussianLikelihood(GaussianLikelihood):
    """:class:`GaussianLikelihood` with a learned scale."""

    def __init__(self, scale: float = 0.1, min_scale: float = 1e-3):
        super().__init__(scale, learn_scale=True, min_scale=min_scale)


def masked_bernoulli_nll(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-example ``-sum_i m_i log Bernoulli(t_i | sigmoid(logits_i))`` -> shape ``(B,)``.

    Targets may be grey levels in [0, 1] (the cross-entropy of Pyro's CVAE
    example); ``mask`` selects the pixels that count (all when ``None``).
    """
    t = targets.reshape(logits.shape)
    nll = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    if mask is not None:
        nll = nll * mask.reshape(logits.shape).to(nll.dtype)
    return nll.reshape(nll.shape[0], -1).sum(1)
