r"""Bits per dimension: the likelihood metric of density models of images.

For data dequantized from ``L`` levels to :math:`x \in [0, 1)^D`
(:mod:`probgen.data.dequantize`) and a model density :math:`p` on
:math:`[0, 1]^D` -- with every preprocessing Jacobian (logit, scaling) inside
``log p`` --

.. math::
    \text{bits/dim} = \frac{-\log p(x) + D \log L}{D \log 2}
    \;\ge\; \frac{-\log P(k)}{D \log 2},

an upper bound of the discrete code length. For continuous data (``L = None``)
it is the differential entropy rate :math:`-\log p(x) / (D \log 2)`. A
model whose ``log_prob`` is itself a lower bound (DenseFlow) gives a further
upper bound.
"""

from __future__ import annotations

import math
from typing import Any

# bits_per_dim and mean_bits_per_dim live below the models (a flow reports its bits/dim);
# re-exported here.
from probgen.infer.likelihood import bits_per_dim, mean_bits_per_dim  # noqa: F401
from probgen.infer.likelihood import check_dims_and_levels as _check


def nats_to_bits_per_dim(nll: float, num_dims: int, num_levels: int | None = 256) -> float:
    """Bits/dim of a mean negative log-likelihood in nats per example (e.g. a training loss).

    Examples:
        The uniform density on [0, 1]^D (``-log p(x) = 0``) codes 256 levels in 8 bits;
        a density twice as high along each dimension saves one bit per dimension:

        >>> import math, torch
        >>> from probgen.metrics import bits_per_dim, nats_to_bits_per_dim
        >>> nats_to_bits_per_dim(0.0, num_dims=784)
        8.0
        >>> nats_to_bits_per_dim(-784 * math.log(2), num_dims=784)
        7.0
        >>> bits_per_dim(torch.tensor([0.0, 784 * math.log(2)]), num_dims=784)  # log p(x)
        tensor([8., 7.])

        Continuous data (``num_levels=None``): the standard normal's differential entropy,
        in bits:

        >>> round(nats_to_bits_per_dim(0.5 * math.log(2 * math.pi * math.e), 1, None), 4)
        2.0471
    """
    return float(bits_per_dim(-nll, num_dims, num_levels))


def neg_log_density(bits: float, num_dims: int, num_levels: int = 256) -> float:
    """``-log p(x)`` in nats of data dequantized into [0, 1]^D, from its bits/dim.

    Bits/dim counts the ``L``-level data's probability, ``-log P(k) = -log p(x) + D log L``
    (the density of ``x = (k + u) / L`` on a bin of volume ``L^-D``), so ``-log p(x) =
    (bits/dim - log2 L) D ln 2`` (averaged over the dequantization noise, and a bound where
    the bits/dim is one). It is not the NLL of the discrete data (that is ``bits/dim * D
    ln 2``) and may be negative. The inverse of :func:`bits_per_dim`.

    Examples:
        >>> from probgen.metrics import neg_log_density
        >>> neg_log_density(8.0, num_dims=784)    # the uniform density: log p(x) = 0
        0.0
        >>> round(neg_log_density(7.0, num_dims=784), 2)   # p(x) = 2^784
        -543.43
    """
    _check(num_dims, num_levels)
    return (bits - math.log2(num_levels)) * num_dims * math.log(2)


def history_in_bits_per_dim(
    history: list[dict[str, Any]], num_dims: int, num_levels: int | None = 256
) -> list[dict[str, Any]]:
    """A fit's history (``FitResult.history``) with its ``train_loss`` and ``val_loss`` in
    nats per example turned into bits/dim (each entry's ``epoch`` and ``seconds`` kept), for
    :func:`probgen.viz.learning_curves`.

    Examples:
        >>> from probgen.metrics import history_in_bits_per_dim
        >>> history = [{"epoch": 0, "train_loss": 0.0, "val_loss": None, "seconds": 2.5}]
        >>> history_in_bits_per_dim(history, num_dims=784)
        [{'epoch': 0, 'train_loss': 8.0, 'val_loss': None, 'seconds': 2.5}]
    """
    return [
        {
            "epoch": h["epoch"],
            "train_loss": nats_to_bits_per_dim(h["train_loss"], num_dims, num_levels),
            "val_loss": (
                nats_to_bits_per_dim(h["val_loss"], num_dims, num_levels)
                if h["val_loss"] is not None
                else None
            ),
            "seconds": h["seconds"],
        }
        for h in history
    ]
