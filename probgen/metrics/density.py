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
from typing import Callable, Optional

import torch

from probgen.data.tensors import TensorData
from probgen.errors import ConfigError


def _check(num_dims: int, num_levels: Optional[int]) -> None:
    if isinstance(num_dims, bool) or not isinstance(num_dims, int) or num_dims < 1:
        raise ConfigError(f"num_dims must be a positive integer, got {num_dims!r}.")
    if num_levels is not None and (isinstance(num_levels, bool) or not isinstance(num_levels, int)
                                   or num_levels < 2):
        raise ConfigError(f"num_levels must be None or an integer of at least 2, got {num_levels!r}.")


def bits_per_dim(log_prob, num_dims: int, num_levels: Optional[int] = 256):
    """Bits/dim of log-densities (nats) of data in [0, 1]^D dequantized from ``num_levels``.

    Args:
        log_prob: a tensor or float of ``log p(x)`` per example.
        num_dims: ``D``.
        num_levels: ``L``; ``None`` for continuous data.

    Returns:
        Same type and shape as ``log_prob``.
    """
    _check(num_dims, num_levels)
    offset = num_dims * math.log(num_levels) if num_levels is not None else 0.0
    return (offset - log_prob) / (num_dims * math.log(2.0))


def nats_to_bits_per_dim(nll: float, num_dims: int, num_levels: Optional[int] = 256) -> float:
    """Bits/dim of a mean negative log-likelihood in nats per example (e.g. a training loss)."""
    return float(bits_per_dim(-nll, num_dims, num_levels))


def neg_log_density(bits: float, num_dims: int, num_levels: int = 256) -> float:
    """``-log p(x)`` in nats of data dequantized into [0, 1]^D, from its bits/dim.

    Bits/dim counts the ``L``-level data's probability, ``-log P(k) = -log p(x) + D log L``
    (the density of ``x = (k + u) / L`` on a bin of volume ``L^-D``), so ``-log p(x) =
    (bits/dim - log2 L) D ln 2`` (averaged over the dequantization noise, and a bound where
    the bits/dim is one). It is not the NLL of the discrete data (that is ``bits/dim * D
    ln 2``) and may be negative. The inverse of :func:`bits_per_dim`.
    """
    _check(num_dims, num_levels)
    return (bits - math.log2(num_levels)) * num_dims * math.log(2)


def history_in_bits_per_dim(history, num_dims: int, num_levels: Optional[int] = 256):
    """A fit's history (``FitResult.history``) with its ``train_loss`` and ``val_loss`` in
    nats per example turned into bits/dim (each entry's ``epoch`` and ``seconds`` kept), for
    :func:`probgen.viz.learning_curves`."""
    return [{"epoch": h["epoch"],
             "train_loss": nats_to_bits_per_dim(h["train_loss"], num_dims, num_levels),
             "val_loss": (nats_to_bits_per_dim(h["val_loss"], num_dims, num_levels)
                          if h["val_loss"] is not None else None),
             "seconds": h["seconds"]} for h in history]


@torch.no_grad()
def mean_bits_per_dim(log_prob_fn: Callable[[torch.Tensor], torch.Tensor], data: TensorData,
                      num_dims: int, num_levels: Optional[int] = 256, batch_size: int = 500,
                      progress: bool = False) -> float:
    """Mean bits/dim over a data set (first tensor of each batch), no gradients.

    ``log_prob_fn(x)`` returns ``log p(x)`` per example, including every
    preprocessing Jacobian; ``data`` holds what ``log_prob_fn`` takes (dequantized
    values, see :func:`probgen.data.dequantize.dequantized`, or grey levels for a model
    that dequantizes them itself).
    """
    from tqdm.auto import tqdm

    _check(num_dims, num_levels)
    total, count = 0.0, 0
    for batch in tqdm(data.batches(batch_size), total=data.num_batches(batch_size),
                      desc="bits/dim", disable=not progress, leave=False):
        lp = log_prob_fn(batch[0])
        total += float(bits_per_dim(lp, num_dims, num_levels).sum())
        count += lp.shape[0]
    if count == 0:
        raise ConfigError("the data set is empty.")
    return total / count
