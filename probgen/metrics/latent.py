"""Metrics of a model's latent code: KL per dimension and active units.

For a Gaussian encoder ``q(z | x) = N(mu(x), diag sigma(x)^2)`` and the prior
``N(0, I)``, the KL term splits over latent dimensions,
``KL_d(x) = (mu_d^2 + sigma_d^2 - 1 - 2 log sigma_d) / 2``; its mean over the
data shows which dimensions carry information. A dimension is *active*
(Burda et al. 2016, section 5.2) when ``Cov_x(E_q[z_d | x]) > 0.01``: the code
moves with the input; inactive ones sit at the prior.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from probgen.data.tensors import TensorData


@torch.no_grad()
def collect_codes(
    encode: Callable, data: TensorData, batch_size: int = 1000
) -> dict[str, torch.Tensor | None]:
    """Run ``encode(*batch) -> (loc, scale | None)`` over ``data``.

    Returns ``loc`` ``(N, z)``, ``scale`` ``(N, z)`` or ``None``, and ``labels``
    (the batch's second tensor when there is one, else ``None``).
    """
    locs, scales, labels = [], [], []
    for batch in data.batches(batch_size):
        loc, scale = encode(*batch)
        locs.append(loc)
        if scale is not None:
            scales.append(scale)
        if len(batch) > 1:
            labels.append(batch[1])
    return {
        "loc": torch.cat(locs),
        "scale": torch.cat(scales) if scales else None,
        "labels": torch.cat(labels) if labels else None,
    }


def kl_per_dimension(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mean over examples of ``KL(N(loc_d, scale_d^2) || N(0, 1))`` per dimension: ``(z,)``.

    Examples:
        A code at the prior costs nothing; a mean one standard deviation away costs half
        a nat:

        >>> import torch
        >>> from probgen.metrics import kl_per_dimension
        >>> kl_per_dimension(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]]))
        tensor([0.0000, 0.5000])
    """
    kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1.0) - scale.log()
    return kl.mean(0)


def active_units(loc: torch.Tensor, threshold: float = 0.01) -> torch.Tensor:
    """Boolean ``(z,)``: the variance over examples of the code mean exceeds ``threshold``.

    Examples:
        The first dimension's mean is the same for every input (inactive), the
        second's moves with it:

        >>> import torch
        >>> from probgen.metrics import active_units
        >>> active_units(torch.tensor([[0.0, 1.0], [0.0, -1.0], [0.0, 0.5]]))
        tensor([False,  True])
    """
    return loc.var(0, unbiased=True) > threshold
