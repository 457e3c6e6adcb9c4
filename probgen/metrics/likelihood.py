"""Likelihood metrics: masked Bernoulli NLL, the ELBO, importance-sampled log-likelihood.

These work on any Pyro model/guide pair whose latent and observed sites are
local to one data plate (one value per example along the first dimension of
the arguments), which is how every probgen model is written.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import torch

from probgen import checks
from probgen.data.tensors import TensorData

# The estimators the models use themselves live below them; re-exported here.
from probgen.infer.likelihood import (  # noqa: F401
    broadcast_failure,
    default_chunk,
    iw_log_likelihood,
    log_importance_weights,
    num_examples,
)
from probgen.models.likelihoods import masked_bernoulli_nll  # noqa: F401


def iw_nll(
    model: Callable,
    guide: Callable,
    data: TensorData,
    num_samples: int = 100,
    batch_size: int = 100,
    chunk_size: int | None = None,
    progress: bool = False,
    vectorize: bool | None = None,
) -> float:
    """Mean importance-sampled negative log-likelihood over a data set (see
    :func:`iw_log_likelihood`).

    Examples:
        A linear-Gaussian model whose likelihood is known: ``z ~ N(0, 1)``, ``x | z ~
        N(z, 1)``, so ``p(x) = N(x; 0, 2)`` and ``-log p(x)`` is 1.2655 at ``x = 0`` and
        2.2655 at ``x = 2`` (mean 1.7655). With the exact posterior ``N(x / 2, 1 / 2)`` as
        the guide every importance weight is ``p(x)``: the estimate is exact whatever the
        draws. With the prior as the guide the ELBO is loose (its exact value: 2.4189)
        and 1,000 importance samples close most of the gap:

        >>> import math, pyro, pyro.distributions as dist, torch
        >>> from probgen.data import TensorData
        >>> from probgen.metrics import iw_nll, negative_elbo
        >>> def model(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def posterior(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)))
        >>> def prior(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> data = TensorData(torch.tensor([0.0, 2.0]))
        >>> round(iw_nll(model, posterior, data, num_samples=10), 4)
        1.7655
        >>> with pyro.poutine.seed(rng_seed=0):   # reproducible draws, the global state kept
        ...     loose = negative_elbo(model, prior, data, num_particles=1000)
        ...     tight = iw_nll(model, prior, data, num_samples=1000)
        >>> round(loose, 2), round(tight, 2)
        (2.4, 1.78)
    """
    from tqdm.auto import tqdm

    batch_size = checks.positive_int("batch_size", batch_size)
    chunk_size = checks.optional(
        checks.positive_int, "chunk_size", chunk_size, hint="or None for a size that fits memory"
    )
    total, count = 0.0, 0
    for batch in tqdm(
        data.batches(batch_size),
        total=data.num_batches(batch_size),
        desc=f"IW NLL (k={num_samples})",
        disable=not progress,
        leave=False,
    ):
        ll = iw_log_likelihood(
            model,
            guide,
            *batch,
            num_samples=num_samples,
            chunk_size=chunk_size,
            vectorize=vectorize,
        )
        total -= float(ll.sum())
        count += ll.shape[0]
    return total / count


@torch.no_grad()
def elbo_per_example(
    model: Callable,
    guide: Callable,
    data: TensorData,
    num_particles: int = 1,
    batch_size: int = 500,
    vectorize: bool | None = None,
) -> torch.Tensor:
    """The ELBO of each example, ``(N,)``, averaged over ``num_particles`` draws of q.

    ``E_q[log p(x, z) - log q(z | x)]`` with unscaled densities (a beta on the latent
    site does not enter), so for any model this is a lower bound of ``log p(x)`` per
    example: the anomaly score of an image is its negative. The estimator is Pyro's
    ``Trace_ELBO`` (Monte Carlo KL) of the beta = 1 model.
    """
    num_particles = checks.positive_int("num_particles", num_particles)
    batch_size = checks.positive_int("batch_size", batch_size)
    out = []
    with pyro.validation_enabled(False):
        for batch in data.batches(batch_size):
            lw = log_importance_weights(
                model, guide, *batch, num_particles=num_particles, vectorize=vectorize
            )
            out.append(lw.mean(0))
    return torch.cat(out)


@torch.no_grad()
def negative_elbo(
    model: Callable,
    guide: Callable,
    data: TensorData,
    num_particles: int = 10,
    batch_size: int = 500,
    vectorize: bool | None = None,
) -> float:
    """Mean ``-ELBO`` per example over a data set, ``num_particles`` samples each.

    The unscaled bound, whatever KL weight the model was trained with:
    ``-mean(elbo_per_example(...))`` (what :func:`probgen.metrics.report.autoencoder_report`
    reports as ``neg_elbo``). For a beta = 1 model it is Pyro's ``Trace_ELBO`` loss per
    example. The example of :func:`iw_nll` computes both on a model of known likelihood.
    """
    return -float(
        elbo_per_example(
            model,
            guide,
            data,
            num_particles=num_particles,
            batch_size=batch_size,
            vectorize=vectorize,
        ).mean()
    )


@torch.no_grad()
def elbo_and_log_px(
    model: Callable,
    guide: Callable,
    *args,
    elbo_particles: int = 1000,
    iw_samples: int = 5000,
    chunk: int = 100,
    **kwargs,
) -> dict[str, torch.Tensor]:
    """Per example: the ELBO (mean of the first ``elbo_particles`` log weights), the
    importance-sampled ``log p(x)`` (all ``max(elbo_particles, iw_samples)``) and the
    effective sample size of those weights, from one set of draws, ``chunk`` particles
    at a time. Returns ``{"elbo", "log_px", "ess"}``, each ``(N,)``. ``kwargs`` go to
    :func:`log_importance_weights` (``vectorize``). The estimate of one batch that
    :func:`elbo_and_iw_nll` averages over a data set, and that the inference gaps
    (:mod:`probgen.metrics.gaps`) compare per example.

    Examples:
        The linear-Gaussian model of :func:`probgen.metrics.iw_nll`'s example
        (``log p(x) = log N(x; 0, 2)``): with the exact posterior as the guide the ELBO is
        ``log p(x)`` and every draw counts fully (an effective sample size of all 100):

        >>> import math, pyro, pyro.distributions as dist, torch
        >>> from probgen.metrics.likelihood import elbo_and_log_px
        >>> def model(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def posterior(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)))
        >>> out = elbo_and_log_px(model, posterior, torch.tensor([0.0, 2.0]),
        ...                       elbo_particles=10, iw_samples=100)
        >>> [[round(v, 2) for v in out[k].tolist()] for k in ("elbo", "log_px", "ess")]
        [[-1.27, -2.27], [-1.27, -2.27], [100.0, 100.0]]
    """
    elbo_particles = checks.positive_int("elbo_particles", elbo_particles)
    iw_samples = checks.positive_int("iw_samples", iw_samples)
    chunk = checks.positive_int("chunk", chunk)
    total = max(elbo_particles, iw_samples)
    done, elbo, acc, acc2 = 0, 0.0, None, None
    with pyro.validation_enabled(False):
        while done < total:
            k = min(chunk, total - done)
            lw = log_importance_weights(model, guide, *args, num_particles=k, **kwargs)
            used = min(k, max(elbo_particles - done, 0))
            if used:
                elbo = elbo + lw[:used].sum(0)
            part, part2 = torch.logsumexp(lw, 0), torch.logsumexp(2 * lw, 0)
            acc = part if acc is None else torch.logaddexp(acc, part)
            acc2 = part2 if acc2 is None else torch.logaddexp(acc2, part2)
            done += k
    return {
        "elbo": elbo / elbo_particles,
        "log_px": acc - math.log(total),
        "ess": (2 * acc - acc2).exp(),
    }


@torch.no_grad()
def elbo_and_iw_nll(
    model: Callable,
    guide: Callable,
    data: TensorData,
    elbo_particles: int = 10,
    iw_samples: int = 100,
    batch_size: int = 100,
    chunk_size: int | None = None,
    vectorize: bool | None = None,
    progress: bool = False,
) -> dict[str, float]:
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

    elbo_particles = checks.positive_int("elbo_particles", elbo_particles)
    iw_samples = checks.positive_int("iw_samples", iw_samples)
    batch_size = checks.positive_int("batch_size", batch_size)
    chunk_size = checks.optional(
        checks.positive_int, "chunk_size", chunk_size, hint="or None for a size that fits memory"
    )
    k_total = max(elbo_particles, iw_samples)
    elbo_sum, nll_sum, count = 0.0, 0.0, 0
    for batch in tqdm(
        data.batches(batch_size),
        total=data.num_batches(batch_size),
        desc=f"ELBO and IW NLL (k={k_total})",
        disable=not progress,
        leave=False,
    ):
        n = num_examples(batch)
        out = elbo_and_log_px(
            model,
            guide,
            *batch,
            elbo_particles=elbo_particles,
            iw_samples=iw_samples,
            vectorize=vectorize,
            chunk=default_chunk(k_total, n) if chunk_size is None else chunk_size,
        )
        elbo_sum += float(out["elbo"].sum())
        nll_sum -= float(out["log_px"].sum())
        count += n
    return {
        "neg_elbo": -elbo_sum / count,
        "iw_nll": nll_sum / count,
        "elbo_particles": elbo_particles,
        "iw_samples": k_total,
    }
