"""Likelihood metrics: masked Bernoulli NLL, the ELBO, importance-sampled log-likelihood.

These work on any Pyro model/guide pair whose latent and observed sites are
local to one data plate (one value per example along the first dimension of
the arguments), which is how every probgen model is written.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from probgen.data.tensors import TensorData
from probgen.errors import ConfigError


def masked_bernoulli_nll(logits: torch.Tensor, targets: torch.Tensor,
                         mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-example ``-sum_i m_i log Bernoulli(t_i | sigmoid(logits_i))`` -> shape ``(B,)``.

    Targets may be grey levels in [0, 1] (the cross-entropy of Pyro's CVAE
    example); ``mask`` selects the pixels that count (all when ``None``).
    """
    t = targets.reshape(logits.shape)
    nll = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    if mask is not None:
        nll = nll * mask.reshape(logits.shape).to(nll.dtype)
    return nll.reshape(nll.shape[0], -1).sum(1)


def _repeat(args, k: int):
    return tuple(a.repeat((k,) + (1,) * (a.dim() - 1)) if torch.is_tensor(a) else a for a in args)


def _num_examples(args) -> int:
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
        lp = lp * site["mask"] if torch.is_tensor(site["mask"]) else (lp if site["mask"] else 0 * lp)
    n = shape[-1]
    if lp.dim() < len(shape) or tuple(lp.shape[:len(shape)]) != tuple(shape):
        raise _NotPerExample(
            f"site {name!r} has log_prob of shape {tuple(lp.shape)}, not one value per example "
            f"({n}); importance sampling here needs every latent and observed site inside the "
            f"data plate along the first dimension.")
    return lp.reshape(*shape, -1).sum(-1)


def broadcast_failure(err: BaseException) -> bool:
    """Whether ``err``, raised by a vectorized pass over a leading axis of draws, says that
    the model does not broadcast over that axis (then a caller falls back to one draw at a
    time) rather than that the machine failed: out of memory (``torch.OutOfMemoryError`` is
    a ``RuntimeError``), a CUDA error, tensors on two devices. Those are re-raised: a slow
    path would hide them, or run out of memory in turn."""
    device_errors = (torch.OutOfMemoryError,) + ((torch.AcceleratorError,)
                                                 if hasattr(torch, "AcceleratorError") else ())
    if isinstance(err, device_errors):
        return False
    text = str(err)
    return not any(s in text for s in ("same device", "CUDA", "out of memory",
                                       "device-side assert"))


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
            f"or score an autoencoder by its reconstruction error (probgen.metrics.mse_per_image).")


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


def log_importance_weights(model: Callable, guide: Callable, *args,
                           num_particles: Optional[int] = None,
                           vectorize: Optional[bool] = None) -> torch.Tensor:
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
    n = _num_examples(args)
    if num_particles is None:
        return _joint_log_weights(model, guide, args, (n,))
    k = int(num_particles)
    if k < 1:
        raise ConfigError(f"num_particles must be at least 1, got {num_particles}.")
    if vectorize is not False and k > 1:
        try:
            return _joint_log_weights(model, guide, args, (k, n), particle_plate=k)
        except (_NotPerExample, RuntimeError, ValueError, IndexError) as err:
            # The model does not broadcast over a particle dimension (it reshapes or
            # concatenates with tensors of the data's shape): repeat the arguments.
            if vectorize or not broadcast_failure(err):
                raise
    return _joint_log_weights(model, guide, _repeat(args, k), (k * n,)).reshape(k, n)


def _default_chunk(num_samples: int, n: int) -> int:
    return max(1, min(num_samples, 8192 // max(n, 1)))


@torch.no_grad()
def iw_log_likelihood(model: Callable, guide: Callable, *args, num_samples: int = 100,
                      chunk_size: Optional[int] = None,
                      vectorize: Optional[bool] = None) -> torch.Tensor:
    """Importance-sampled ``log p(x)`` per example (Burda et al. 2016).

    ``log (1/k) sum_j p(x, z_j) / q(z_j | x)``, ``z_j ~ q(z | x)``: a lower bound
    of ``log p(x)`` in expectation that tends to it as ``k = num_samples`` grows
    (for k = 1 it is the ELBO). The k draws are made ``chunk_size`` at a time,
    so memory stays bounded for any k; ``vectorize`` as in
    :func:`log_importance_weights`. Guides with a point-mass site are refused
    (:class:`ConfigError`): there is no density to weight by.
    """
    if num_samples < 1:
        raise ConfigError(f"num_samples must be at least 1, got {num_samples}.")
    n = _num_examples(args)
    chunk = chunk_size or _default_chunk(num_samples, n)
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


def iw_nll(model: Callable, guide: Callable, data: TensorData, num_samples: int = 100,
           batch_size: int = 100, chunk_size: Optional[int] = None,
           progress: bool = False, vectorize: Optional[bool] = None) -> float:
    """Mean importance-sampled negative log-likelihood over a data set (see
    :func:`iw_log_likelihood`)."""
    from tqdm.auto import tqdm

    total, count = 0.0, 0
    for batch in tqdm(data.batches(batch_size), total=data.num_batches(batch_size),
                      desc=f"IW NLL (k={num_samples})", disable=not progress, leave=False):
        ll = iw_log_likelihood(model, guide, *batch, num_samples=num_samples,
                               chunk_size=chunk_size, vectorize=vectorize)
        total -= float(ll.sum())
        count += ll.shape[0]
    return total / count


@torch.no_grad()
def elbo_per_example(model: Callable, guide: Callable, data: TensorData, num_particles: int = 1,
                     batch_size: int = 500, vectorize: Optional[bool] = None) -> torch.Tensor:
    """The ELBO of each example, ``(N,)``, averaged over ``num_particles`` draws of q.

    ``E_q[log p(x, z) - log q(z | x)]`` with unscaled densities (a beta on the latent
    site does not enter), so for any model this is a lower bound of ``log p(x)`` per
    example: the anomaly score of an image is its negative. The estimator is Pyro's
    ``Trace_ELBO`` (Monte Carlo KL) of the beta = 1 model.
    """
    if num_particles < 1:
        raise ConfigError(f"num_particles must be at least 1, got {num_particles}.")
    out = []
    with pyro.validation_enabled(False):
        for batch in data.batches(batch_size):
            lw = log_importance_weights(model, guide, *batch, num_particles=num_particles,
                                        vectorize=vectorize)
            out.append(lw.mean(0))
    return torch.cat(out)


@torch.no_grad()
def negative_elbo(model: Callable, guide: Callable, data: TensorData, num_particles: int = 10,
                  batch_size: int = 500, vectorize: Optional[bool] = None) -> float:
    """Mean ``-ELBO`` per example over a data set, ``num_particles`` samples each.

    The unscaled bound, whatever KL weight the model was trained with:
    ``-mean(elbo_per_example(...))`` (what :func:`probgen.metrics.report.autoencoder_report`
    reports as ``neg_elbo``). For a beta = 1 model it is Pyro's ``Trace_ELBO`` loss per
    example.
    """
    return -float(elbo_per_example(model, guide, data, num_particles=num_particles,
                                   batch_size=batch_size, vectorize=vectorize).mean())


@torch.no_grad()
def elbo_and_iw_nll(model: Callable, guide: Callable, data: TensorData,
                    elbo_particles: int = 10, iw_samples: int = 100, batch_size: int = 100,
                    chunk_size: Optional[int] = None, vectorize: Optional[bool] = None,
                    progress: bool = False) -> Dict[str, float]:
    """``-ELBO`` (``elbo_particles`` draws) and importance-sampled NLL (``iw_samples``
    draws), mean per example, from one set of draws of q.

    Both are estimates from the same log weights ``log p(x, z_j) - log q(z_j | x)``:
    the ``-ELBO`` averages the first ``elbo_particles`` of them (the estimator of
    :func:`negative_elbo`), the NLL takes ``-log mean_j exp`` of all
    ``max(elbo_particles, iw_samples)`` (that of :func:`iw_nll`). Each is unbiased
    for its own quantity; computing them together costs one pass instead of two.
    Returns ``{"neg_elbo", "iw_nll", "elbo_particles", "iw_samples"}``.
    """
    from tqdm.auto import tqdm

    for name, v in (("elbo_particles", elbo_particles), ("iw_samples", iw_samples)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}.")
    k_total = max(elbo_particles, iw_samples)
    elbo_sum, nll_sum, count = 0.0, 0.0, 0
    with pyro.validation_enabled(False):
        for batch in tqdm(data.batches(batch_size), total=data.num_batches(batch_size),
                          desc=f"ELBO and IW NLL (k={k_total})", disable=not progress,
                          leave=False):
            n = _num_examples(batch)
            chunk = chunk_size or _default_chunk(k_total, n)
            done, acc, elbo_part = 0, None, 0.0
            while done < k_total:
                k = min(chunk, k_total - done)
                lw = log_importance_weights(model, guide, *batch, num_particles=k,
                                            vectorize=vectorize)
                used = min(k, max(elbo_particles - done, 0))
                if used:
                    elbo_part = elbo_part + lw[:used].sum(0)
                part = torch.logsumexp(lw, 0)
                acc = part if acc is None else torch.logaddexp(acc, part)
                done += k
            elbo_sum += float((elbo_part / elbo_particles).sum())
            nll_sum -= float((acc - math.log(k_total)).sum())
            count += n
    return {"neg_elbo": -elbo_sum / count, "iw_nll": nll_sum / count,
            "elbo_particles": elbo_particles, "iw_samples": k_total}
