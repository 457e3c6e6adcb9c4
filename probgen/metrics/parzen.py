r"""Sample-based estimators: the Parzen-window log-likelihood and the maximum mean discrepancy.

**Parzen window.** A model that can only be sampled (a GAN, an adversarial autoencoder) is
given a density by placing an isotropic Gaussian of width :math:`\sigma` on each of its
:math:`n` samples :math:`s_i`:

.. math::
    \log \hat p(x) = \operatorname{logsumexp}_i\Big(-\frac{\|x - s_i\|^2}{2\sigma^2}\Big)
    - \log n - \frac{D}{2}\log(2\pi\sigma^2),

with :math:`\sigma` chosen to maximise the mean log-likelihood of a validation split, then
reported on the test set (Breuleux, Bengio & Vincent 2011, "Quickly Generating
Representative Samples from an RBM-Derived Process"; the protocol of Goodfellow et al.
2014, "Generative Adversarial Nets", Table 1, and Makhzani et al. 2015, "Adversarial
Autoencoders", Table 1, whose numbers probgen's anchors quote).

*Why it is a poor estimator* (Theis, van den Oord & Bethge 2016, "A note on the evaluation
of generative models"): in high dimensions a kernel density of even a million samples is far
from the model's own density, so the number measures the sample set and the window more
than the model; it can rank models in the opposite order to their true log-likelihoods;
a model that merely stores (k-means centroids of) the training set scores well; and it grows
with the number of samples. probgen reports it only because the anchors do, and always with
the sample count and the window it chose.

**Maximum mean discrepancy.** How well an adversarial autoencoder's codes match its prior
(two sets of samples, no densities): the unbiased estimate of

.. math::
    \mathrm{MMD}^2(P, Q) = E\,k(z, z') + E\,k(w, w') - 2 E\,k(z, w), \quad
    k(a, b) = \exp\big(-\|a - b\|^2 / (2h^2)\big)

(Gretton et al. 2012, "A Kernel Two-Sample Test", Lemma 6), with the bandwidth :math:`h` the
median distance between the pooled samples unless given. It is zero in expectation exactly
when the two distributions agree. Written here because torchmetrics' KID is an MMD with a
polynomial kernel on image features, and Pyro's ``Trace_MMD`` computes a biased estimate
inside an objective only; neither takes two sets of codes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from probgen import checks
from probgen.errors import ConfigError, DataError

# Default window widths tried on the validation split (data in [0, 1], as MNIST's grey
# levels): geometric, 0.05 to 1. A width at either end of the grid is reported as such.
DEFAULT_SIGMAS = tuple(0.05 * 20.0 ** (i / 18) for i in range(19))


def _flat(x, name: str) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise DataError(f"{name} must be a tensor, got {type(x).__name__}.")
    if x.dim() < 1 or x.shape[0] < 1:
        raise DataError(f"{name} must hold at least one example, got shape {tuple(x.shape)}.")
    flat = x.reshape(x.shape[0], -1)
    if flat.dtype.is_floating_point or flat.dtype.is_complex:
        bad = ~torch.isfinite(flat).all(1)
        if bool(bad.any()):
            raise DataError(
                f"{name} hold NaN or infinite values ({int(bad.sum())} of "
                f"{flat.shape[0]} examples, the first at index "
                f"{int(bad.nonzero()[0])}); drop or fix them before estimating."
            )
    return flat


@torch.no_grad()
def _parzen_grid(
    samples, data, sigmas: Sequence[float], batch_size: int, dtype: torch.dtype, name: str = "data"
) -> torch.Tensor:
    """``(len(sigmas), m)`` log-densities: the distances are computed once for every width."""
    s, x = _flat(samples, "samples"), _flat(data, name)
    if s.shape[1] != x.shape[1]:
        raise DataError(
            f"samples have {s.shape[1]} values each but data {x.shape[1]}; the "
            f"window compares examples of one size."
        )
    batch_size = checks.positive_int("batch_size", batch_size)
    s = s.to(device=x.device, dtype=dtype)
    x = x.to(dtype)
    n, d = s.shape
    sig = torch.tensor(list(sigmas), dtype=dtype, device=x.device)
    const = -math.log(n) - 0.5 * d * torch.log(2 * math.pi * sig**2)  # (S,)
    s_sq = s.pow(2).sum(1)
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size]
        dist2 = (xb.pow(2).sum(1, keepdim=True) + s_sq - 2.0 * xb @ s.T).clamp_min(0.0)
        lse = torch.stack(
            [torch.logsumexp(dist2 * (-0.5 / float(v) ** 2), dim=1) for v in sig]
        )  # (S, b)
        out.append(lse + const[:, None])
    return torch.cat(out, 1)


@torch.no_grad()
def parzen_log_likelihood(
    samples: torch.Tensor,
    data: torch.Tensor,
    sigma: float,
    batch_size: int = 100,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``log p^(x)`` of each example of ``data`` under the Parzen window of ``samples``.

    Args:
        samples: ``(n, ...)`` model samples (flattened to ``(n, D)``).
        data: ``(m, ...)`` examples of the same size ``D``.
        sigma: the window's standard deviation.
        batch_size: examples of ``data`` per pass (memory ``batch_size x n``).
        dtype: of the distances (float64 by default: with hundreds of dimensions the
            exponents run to thousands and float32 rounding moves the result by a
            noticeable fraction of a nat).

    Returns:
        ``(m,)`` log-densities in nats, on ``data``'s device, in ``dtype``.

    Examples:
        The window of one sample is a normal density around it:

        >>> import torch
        >>> from probgen.metrics import parzen_log_likelihood
        >>> parzen_log_likelihood(torch.zeros(1, 1), torch.tensor([[0.0], [1.0]]), sigma=1.0)
        tensor([-0.9189, -1.4189], dtype=torch.float64)
    """
    sigma = checks.positive_float("sigma (the Parzen window's width)", sigma)
    return _parzen_grid(samples, data, [sigma], batch_size, dtype)[0]


@torch.no_grad()
def parzen_score(
    samples: torch.Tensor,
    test: torch.Tensor,
    val: torch.Tensor,
    sigmas: Sequence[float] | None = None,
    batch_size: int = 100,
    dtype: torch.dtype = torch.float64,
) -> dict[str, object]:
    """The Parzen-window protocol: the width maximising the validation split's mean
    log-likelihood, then the test set's mean and its standard error at that width.

    Args:
        samples: model samples (10,000 in the papers).
        test: test examples, of the samples' size per example.
        val: a validation split (never the test set), of the same size per example.
        sigmas: widths to try (default :data:`DEFAULT_SIGMAS`).
        batch_size: examples of ``test`` and ``val`` per pass
            (:func:`parzen_log_likelihood`).
        dtype: of the distances (:func:`parzen_log_likelihood`).

    Returns:
        ``{"log_likelihood", "std_error", "sigma", "sigma_at_grid_edge", "val_log_likelihood"
        (per width), "sigmas", "num_samples", "num_test"}``, in nats per example.

    Examples:
        Samples of the true density N(0, 1), whose mean log-density is -1.4189: the
        window chosen on the validation split gives about that on the test set:

        >>> import torch
        >>> from probgen.metrics import parzen_score
        >>> g = torch.Generator().manual_seed(0)
        >>> samples, val, test = (torch.randn(1000, 1, generator=g) for _ in range(3))
        >>> score = parzen_score(samples, test, val, sigmas=[0.01, 0.1, 0.3, 1.0])
        >>> score["sigma"], round(score["log_likelihood"], 2), round(score["std_error"], 2)
        (0.3, -1.4, 0.02)
    """
    grid = [
        checks.positive_float("each of sigmas (the Parzen window's widths)", s)
        for s in (DEFAULT_SIGMAS if sigmas is None else sigmas)
    ]
    if not grid:
        raise ConfigError("sigmas must hold at least one window width.")
    val_ll = [
        float(v)
        for v in _parzen_grid(samples, val, grid, batch_size, dtype, "the validation images").mean(
            1
        )
    ]
    best = max(range(len(grid)), key=lambda i: val_ll[i])
    ll = _parzen_grid(samples, test, [grid[best]], batch_size, dtype, "the test images")[0]
    return {
        "log_likelihood": float(ll.mean()),
        "std_error": float(ll.std() / math.sqrt(ll.numel())) if ll.numel() > 1 else 0.0,
        "sigma": grid[best],
        "sigma_at_grid_edge": len(grid) > 1 and best in (0, len(grid) - 1),
        "val_log_likelihood": val_ll,
        "sigmas": grid,
        "num_samples": int(samples.shape[0]),
        "num_test": int(ll.numel()),
    }


def median_bandwidth(x: torch.Tensor, y: torch.Tensor, max_points: int = 2000) -> float:
    """The median distance between points of the pooled sample (the first ``max_points``
    of each set), a common default bandwidth of the Gaussian kernel. ``y`` is moved to
    ``x``'s device; the distances of distinct pairs are computed once each
    (:func:`torch.nn.functional.pdist`, no square matrix).

    Examples:
        >>> import torch
        >>> from probgen.metrics.parzen import median_bandwidth
        >>> median_bandwidth(torch.tensor([[0.0], [1.0]]), torch.tensor([[3.0]]))  # of 1, 2, 3
        2.0
    """
    max_points = checks.positive_int("max_points", max_points)
    a = _flat(x, "x")[:max_points].double()
    pooled = torch.cat([a, _flat(y, "y")[:max_points].to(device=a.device, dtype=a.dtype)])
    med = float(torch.nn.functional.pdist(pooled).median())
    return med if med > 0 else 1.0


def _kernel_sum(
    p: torch.Tensor, q: torch.Tensor, h: float, block_size: int, drop_diagonal: bool = False
) -> torch.Tensor:
    """``sum_ij exp(-|p_i - q_j|^2 / 2h^2)`` by blocks of ``block_size`` rows of ``p`` (memory
    ``block_size x len(q)``); ``drop_diagonal`` leaves out the terms ``i == j`` (``p is q``)."""
    total = p.new_zeros(())
    for i in range(0, p.shape[0], block_size):
        k = torch.exp(-torch.cdist(p[i : i + block_size], q).pow(2) / (2 * h * h))
        if drop_diagonal:
            k.diagonal(offset=i).zero_()
        total = total + k.sum()
    return total


@torch.no_grad()
def mmd(
    x: torch.Tensor,
    y: torch.Tensor,
    bandwidth: float | None = None,
    max_points: int = 5000,
    block_size: int = 500,
) -> dict[str, float]:
    """Unbiased squared MMD between samples ``x`` ``(n, d)`` and ``y`` ``(m, d)`` with a
    Gaussian kernel (Gretton et al. 2012), e.g. an AAE's codes of a test set and draws of its
    prior.

    Args:
        bandwidth: the kernel's ``h`` (default: :func:`median_bandwidth`).
        max_points: use the first ``max_points`` of each set (the time is quadratic).
        block_size: rows of a kernel matrix computed at once (memory ``block_size x
            max_points`` values, 20 MB at the defaults, not the three dense matrices).

    Returns:
        ``{"mmd2": ..., "bandwidth": h, "n": ..., "m": ...}``; ``mmd2`` can be slightly
        negative when the two distributions agree (the estimate is unbiased).

    Examples:
        Two samples of N(0, I) agree (an unbiased estimate of 0, here slightly below);
        shifting one by 1 along each axis makes them differ:

        >>> import torch
        >>> from probgen.metrics import mmd
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(300, 2, generator=g), torch.randn(300, 2, generator=g)
        >>> round(mmd(x, y, bandwidth=1.0)["mmd2"], 3)
        -0.001
        >>> round(mmd(x, y + 1, bandwidth=1.0)["mmd2"], 3)
        0.203
    """
    block_size = checks.positive_int("block_size", block_size)
    max_points = checks.integer(
        "max_points", max_points, low=2, hint="MMD needs two points of each sample"
    )
    bandwidth = checks.optional(
        checks.positive_float,
        "bandwidth (the MMD kernel's width)",
        bandwidth,
        hint="or None for the median distance",
    )
    a = _flat(x, "x")[:max_points].double()
    b = _flat(y, "y")[:max_points].to(device=a.device, dtype=a.dtype)
    if a.shape[1] != b.shape[1]:
        raise DataError(
            f"the two samples have {a.shape[1]} and {b.shape[1]} values each; MMD "
            f"compares points of one space."
        )
    n, m = a.shape[0], b.shape[0]
    if n < 2 or m < 2:
        raise DataError(f"MMD needs at least two points in each sample, got {n} and {m}.")
    h = median_bandwidth(a, b) if bandwidth is None else bandwidth
    value = (
        _kernel_sum(a, a, h, block_size, drop_diagonal=True) / (n * (n - 1))
        + _kernel_sum(b, b, h, block_size, drop_diagonal=True) / (m * (m - 1))
        - 2 * _kernel_sum(a, b, h, block_size) / (n * m)
    )
    return {"mmd2": float(value), "bandwidth": h, "n": n, "m": m}


__all__ = ["DEFAULT_SIGMAS", "median_bandwidth", "mmd", "parzen_log_likelihood", "parzen_score"]
