r"""Likelihood estimates a model makes of itself: the importance-sampled log-likelihood of
a Pyro model/guide pair, and bits per dimension.

They sit below the models (a flow scores dequantized images by importance sampling and
reports bits/dim) and are re-exported by :mod:`probgen.metrics.likelihood` and
:mod:`probgen.metrics.density`, where the data-set-level metrics built on them live.

Importance sampling works on any Pyro model/guide pair whose latent and observed sites
are local to one data plate (one value per example along the first dimension of the
arguments), which is how every probgen model is written.

Bits per dimension: for data dequantized from ``L`` levels to :math:`x \in [0, 1)^D`
(:mod:`probgen.data.dequantize`) and a model density :math:`p` on :math:`[0, 1]^D` --
with every preprocessing Jacobian (logit, scaling) inside ``log p`` --

.. math::
    \text{bits/dim} = \frac{-\log p(x) + D \log L}{D \log 2}
    \;\ge\; \frac{-\log P(k)}{D \log 2},

an upper bound of the discrete code length. For continuous data (``L = None``) it is the
differential entropy rate :math:`-\log p(x) / (D \log 2)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from tqdm.auto import tqdm

from probgen import checks
from probgen.data.tensors import TensorData
from probgen.errors import ConfigError

__all__ = [
    "bits_per_dim",
    "broadcast_failure",
    "iw_log_likelihood",
    "log_importance_weights",
    "mean_bits_per_dim",
]


# --------------------------------------------------------------------------- importance sampling


def _repeat(args, k: int):
    return tuple(a.repeat((k,) + (1,) * (a.dim() - 1)) if torch.is_tensor(a) else a for a in args)


def num_examples(args) -> int:
    """The number of examples in a model's arguments: the first tensor's first dimension."""
    for a in args:
        if torch.is_tensor(a):
            return a.shape[0]
    raise ConfigError("the model's arguments hold no tensor, so there are no examples to score.")


class _NotPerExample(ConfigError):
    """A site's log-density is not one value per example (and particle)."""


def _site_log_prob(name, site, shape) -> torch.Tensor:
    # The unscaled log-density. Masks count on observed sites (pixels left out of the
    # likelihood); on latent sites a scale or mask only weights a training objective
    # (beta of a beta-VAE, beta = 0 of an autoencoder), so the joint uses the full density.
    lp = site["fn"].log_prob(site["value"])
    if site["mask"] is not None and site["is_observed"]:
        lp = (
            lp * site["mask"] if torch.is_tensor(site["mask"]) else (lp if site["mask"] else 0 * lp)
        )
    n = shape[-1]
    if lp.dim() < len(shape) or tuple(lp.shape[: len(shape)]) != tuple(shape):
        raise _NotPerExample(
            f"site {name!r} has log_prob of shape {tuple(lp.shape)}, not one value per example "
            f"({n}); importance sampling here needs every latent and observed site inside the "
            f"data plate along the first dimension."
        )
    return lp.reshape(*shape, -1).sum(-1)


def broadcast_failure(err: BaseException) -> bool:
    """Whether ``err``, raised by a vectorized pass over a leading axis of draws, says that
    the model does not broadcast over that axis (then a caller falls back to one draw at a
    time) rather than that the machine failed: out of memory (``torch.OutOfMemoryError`` is
    a ``RuntimeError``), a CUDA error, tensors on two devices. Those are re-raised: a slow
    path would hide them, or run out of memory in turn."""
    device_errors = (torch.OutOfMemoryError,) + (
        (torch.AcceleratorError,) if hasattr(torch, "AcceleratorError") else ()
    )
    if isinstance(err, device_errors):
        return False
    text = str(err)
    return not any(
        s in text for s in ("same device", "CUDA", "out of memory", "device-side assert")
    )


def _point_mass(fn) -> bool:
    while True:
        if isinstance(fn, dist.Delta):
            return True
        base = getattr(fn, "base_dist", None)
        if base is None:
            return False
        fn = base


def _check_guide_site(name, site) -> None:
    if _point_mass(site["fn"]):
        raise ConfigError(
            f"the guide's site {name!r} is a point mass ({type(site['fn']).__name__}), as in a "
            f"plain autoencoder: log q(z|x) is not a density, so the ELBO and importance-sampled "
            f"log-likelihood estimate nothing. Use a Gaussian encoder (a VAE) for these metrics, "
            f"or score an autoencoder by its reconstruction error (probgen.metrics.mse_per_image)."
        )


def _joint_log_weights(model, guide, args, shape, particle_plate=None) -> torch.Tensor:
    def run(fn, **kw):
        if particle_plate is None:
            return poutine.trace(fn).get_trace(*args)

        def wrapped(*a):
            with pyro.plate("_iw_particles", particle_plate, dim=-2):
                return fn(*a)

        return poutine.trace(wrapped).get_trace(*args)

    guide_tr = run(guide)
    for name, site in guide_tr.nodes.items():
        if site["type"] == "sample" and not site["is_observed"]:
            _check_guide_site(name, site)
    if particle_plate is None:
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args)
    else:

        def wrapped_model(*a):
            with pyro.plate("_iw_particles", particle_plate, dim=-2):
                return model(*a)

        model_tr = poutine.trace(poutine.replay(wrapped_model, trace=guide_tr)).get_trace(*args)
    lw = 0.0
    for tr, sign in ((model_tr, 1.0), (guide_tr, -1.0)):
        for name, site in tr.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if site["infer"].get("_deterministic"):
                continue
            if tr is guide_tr and site["is_observed"]:
                continue
            lw = lw + sign * _site_log_prob(name, site, shape)
    if not torch.is_tensor(lw):
        raise ConfigError("the model and guide have no sample sites to score.")
    return lw


def log_importance_weights(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int | None = None,
    vectorize: bool | None = None,
) -> torch.Tensor:
    """``log p(x, z) - log q(z | x)`` per example for draws ``z ~ q``.

    With ``num_particles=None``: one draw, shape ``(N,)``. With ``num_particles=k``:
    ``k`` independent draws per example, shape ``(k, N)``. The k draws are made in one
    pass with a particle plate outside the model's plates (``vectorize=True``: the
    networks that only see the data run once per example, not k times; the model
    must broadcast over a leading particle dimension, with its plates at ``dim=-1``)
    or by repeating the arguments k times (``vectorize=False``: works for any model
    written per example). ``None`` tries the particle plate and repeats the
    arguments when the model does not broadcast.

    Densities are unscaled: a KL weight (beta) on the latent site does not change the
    model's marginal likelihood, which this estimates. Guides with a point-mass site
    (``dist.Delta``, a plain autoencoder) are refused with a :class:`ConfigError`.
    """
    n = num_examples(args)
    if num_particles is None:
        return _joint_log_weights(model, guide, args, (n,))
    k = checks.positive_int("num_particles", num_particles)
    if vectorize is not False and k > 1:
        try:
            return _joint_log_weights(model, guide, args, (k, n), particle_plate=k)
        except (_NotPerExample, RuntimeError, ValueError, IndexError) as err:
            # The model does not broadcast over a particle dimension (it reshapes or
            # concatenates with tensors of the data's shape): repeat the arguments.
            if vectorize or not broadcast_failure(err):
                raise
    return _joint_log_weights(model, guide, _repeat(args, k), (k * n,)).reshape(k, n)


def default_chunk(num_samples: int, n: int) -> int:
    """How many draws of ``num_samples`` to make at once for ``n`` examples."""
    return max(1, min(num_samples, 8192 // max(n, 1)))


@torch.no_grad()
def iw_log_likelihood(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 100,
    chunk_size: int | None = None,
    vectorize: bool | None = None,
) -> torch.Tensor:
    """Importance-sampled ``log p(x)`` per example (Burda et al. 2016).

    ``log (1/k) sum_j p(x, z_j) / q(z_j | x)``, ``z_j ~ q(z | x)``: a lower bound
    of ``log p(x)`` in expectation that tends to it as ``k = num_samples`` grows
    (for k = 1 it is the ELBO). The k draws are made ``chunk_size`` at a time,
    so memory stays bounded for any k; ``vectorize`` as in
    :func:`log_importance_weights`. Guides with a point-mass site are refused
    (:class:`ConfigError`): there is no density to weight by.
    """
    num_samples = checks.positive_int("num_samples", num_samples)
    chunk_size = checks.optional(
        checks.positive_int, "chunk_size", chunk_size, hint="or None for a size that fits memory"
    )
    n = num_examples(args)
    chunk = chunk_size or default_chunk(num_samples, n)
    acc = None
    with pyro.validation_enabled(False):
        done = 0
        while done < num_samples:
            k = min(chunk, num_samples - done)
            lw = log_importance_weights(model, guide, *args, num_particles=k, vectorize=vectorize)
            part = torch.logsumexp(lw, 0)
            acc = part if acc is None else torch.logaddexp(acc, part)
            done += k
    return acc - math.log(num_samples)


# --------------------------------------------------------------------------- bits/dim


def check_dims_and_levels(num_dims: int, num_levels: int | None) -> None:
    """Refuse a non-positive ``num_dims`` or fewer than 2 ``num_levels`` (ConfigError)."""
    checks.positive_int("num_dims", num_dims)
    checks.optional(
        checks.integer, "num_levels", num_levels, low=2, hint="or None for continuous data"
    )


def bits_per_dim(
    log_prob: torch.Tensor | float, num_dims: int, num_levels: int | None = 256
) -> torch.Tensor | float:
    """Bits/dim of log-densities (nats) of data in [0, 1]^D dequantized from ``num_levels``.

    Args:
        log_prob: a tensor or float of ``log p(x)`` per example.
        num_dims: ``D``.
        num_levels: ``L``; ``None`` for continuous data.

    Returns:
        Same type and shape as ``log_prob``.

    Examples:
        The uniform density on ``[0, 1]^D`` (``log p = 0``) spreads each dimension over
        all 256 levels: 8 bits/dim.

        >>> from probgen.metrics import bits_per_dim
        >>> bits_per_dim(0.0, num_dims=784)
        8.0
    """
    check_dims_and_levels(num_dims, num_levels)
    offset = num_dims * math.log(num_levels) if num_levels is not None else 0.0
    return (offset - log_prob) / (num_dims * math.log(2.0))


@torch.no_grad()
def mean_bits_per_dim(
    log_prob_fn: Callable[[torch.Tensor], torch.Tensor],
    data: TensorData,
    num_dims: int,
    num_levels: int | None = 256,
    batch_size: int = 500,
    progress: bool = False,
) -> float:
    """Mean bits/dim over a data set (first tensor of each batch), no gradients.

    ``log_prob_fn(x)`` returns ``log p(x)`` per example, including every
    preprocessing Jacobian; ``data`` holds what ``log_prob_fn`` takes (dequantized
    values, see :func:`probgen.data.dequantize.dequantized`, or grey levels for a model
    that dequantizes them itself).
    """
    check_dims_and_levels(num_dims, num_levels)
    total, count = 0.0, 0
    for batch in tqdm(
        data.batches(batch_size),
        total=data.num_batches(batch_size),
        desc="bits/dim",
        disable=not progress,
        leave=False,
    ):
        lp = log_prob_fn(batch[0])
        total += float(bits_per_dim(lp, num_dims, num_levels).sum())
        count += lp.shape[0]
    if count == 0:
        raise ConfigError("the data set is empty.")
    return total / count
