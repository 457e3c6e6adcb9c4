"""Likelihood metrics: masked Bernoulli NLL, the ELBO, importance-sampled log-likelihood.

These work on any Pyro model/guide pair whose latent and observed sites are
local to one data plate (one value per example along the first dimension of
the arguments), which is how every probgen model is written.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import pyro
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import Trace_ELBO
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


def _site_log_prob(name, site, n: int) -> torch.Tensor:
    # The unscaled log-density. Masks count on observed sites (pixels left out of the
    # likelihood); on latent sites a scale or mask only weights a training objective
    # (beta of a beta-VAE, beta = 0 of an autoencoder), so the joint uses the full density.
    lp = site["fn"].log_prob(site["value"])
    if site["mask"] is not None and site["is_observed"]:
        lp = lp * site["mask"] if torch.is_tensor(site["mask"]) else (lp if site["mask"] else 0 * lp)
    if lp.dim() == 0 or lp.shape[0] != n:
        raise ConfigError(
            f"site {name!r} has log_prob of shape {tuple(lp.shape)}, not one value per example "
            f"({n}); importance sampling here needs every latent and observed site inside the "
            f"data plate along the first dimension.")
    return lp.reshape(n, -1).sum(1)


def log_importance_weights(model: Callable, guide: Callable, *args) -> torch.Tensor:
    """``log p(x, z) - log q(z | x)`` per example for one draw z ~ q.

    Densities are unscaled: a KL weight (beta) on the latent site does not change the
    model's marginal likelihood, which this estimates.
    """
    n = next(a for a in args if torch.is_tensor(a)).shape[0]
    guide_tr = poutine.trace(guide).get_trace(*args)
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args)
    lw = 0.0
    for tr, sign in ((model_tr, 1.0), (guide_tr, -1.0)):
        for name, site in tr.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if site["infer"].get("_deterministic"):
                continue
            if tr is guide_tr and site["is_observed"]:
                continue
            lw = lw + sign * _site_log_prob(name, site, n)
    return lw


@torch.no_grad()
def iw_log_likelihood(model: Callable, guide: Callable, *args, num_samples: int = 100,
                      chunk_size: Optional[int] = None) -> torch.Tensor:
    """Importance-sampled ``log p(x)`` per example (Burda et al. 2016).

    ``log (1/k) sum_j p(x, z_j) / q(z_j | x)``, ``z_j ~ q(z | x)``: a lower bound
    of ``log p(x)`` in expectation that tends to it as ``k = num_samples`` grows
    (for k = 1 it is the ELBO). The k draws are made ``chunk_size`` at a time,
    so memory stays bounded for any k.
    """
    if num_samples < 1:
        raise ConfigError(f"num_samples must be at least 1, got {num_samples}.")
    n = next(a for a in args if torch.is_tensor(a)).shape[0]
    chunk = chunk_size or max(1, min(num_samples, 8192 // max(n, 1)))
    acc = None
    with pyro.validation_enabled(False):
        done = 0
        while done < num_samples:
            k = min(chunk, num_samples - done)
            lw = log_importance_weights(model, guide, *_repeat(args, k)).reshape(k, n)
            part = torch.logsumexp(lw, 0)
            acc = part if acc is None else torch.logaddexp(acc, part)
            done += k
    return acc - math.log(num_samples)


def iw_nll(model: Callable, guide: Callable, data: TensorData, num_samples: int = 100,
           batch_size: int = 100, chunk_size: Optional[int] = None,
           progress: bool = False) -> float:
    """Mean importance-sampled negative log-likelihood over a data set."""
    from tqdm.auto import tqdm

    total, count = 0.0, 0
    for batch in tqdm(data.batches(batch_size), total=data.num_batches(batch_size),
                      desc=f"IW NLL (k={num_samples})", disable=not progress, leave=False):
        ll = iw_log_likelihood(model, guide, *batch, num_samples=num_samples,
                               chunk_size=chunk_size)
        total -= float(ll.sum())
        count += ll.shape[0]
    return total / count


@torch.no_grad()
def negative_elbo(model: Callable, guide: Callable, data: TensorData, num_particles: int = 10,
                  batch_size: int = 500, elbo=None) -> float:
    """Mean ``-ELBO`` per example over a data set, ``num_particles`` samples each."""
    elbo = elbo or Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1,
                              max_plate_nesting=1)
    total, count = 0.0, 0
    with pyro.validation_enabled(False):
        for batch in data.batches(batch_size):
            b = batch[0].shape[0]
            total += float(elbo.differentiable_loss(model, guide, *batch))
            count += b
    return total / count


@torch.no_grad()
def elbo_per_example(model: Callable, guide: Callable, data: TensorData, num_particles: int = 1,
                     batch_size: int = 500) -> torch.Tensor:
    """The ELBO of each example, ``(N,)``, averaged over ``num_particles`` draws of q.

    Densities are unscaled (a beta on the latent site does not enter), so for any
    model this is a lower bound of ``log p(x)`` per example: the anomaly score of
    an image is its negative.
    """
    if num_particles < 1:
        raise ConfigError(f"num_particles must be at least 1, got {num_particles}.")
    out = []
    with pyro.validation_enabled(False):
        for batch in data.batches(batch_size):
            n = batch[0].shape[0]
            lw = log_importance_weights(model, guide, *_repeat(batch, num_particles))
            out.append(lw.reshape(num_particles, n).mean(0))
    return torch.cat(out)
