"""One call that measures an autoencoder-family model with the papers' metrics."""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

import torch

from probgen.data.tensors import TensorData
from probgen.metrics.images import mse_per_image
from probgen.metrics.latent import active_units, collect_codes, kl_per_dimension
from probgen.metrics.likelihood import elbo_per_example, iw_nll


@torch.no_grad()
def autoencoder_report(model, data: TensorData, elbo_particles: int = 10,
                       iw_samples: int = 0, iw_size: Optional[int] = None,
                       progress: bool = False) -> Dict[str, Any]:
    """Metrics of a :class:`probgen.models.VAE` (or any model with ``encode``/``reconstruct``
    and a Pyro ``model``/``guide``) on ``data``, per example, in nats:

    * ``neg_elbo``: ``-ELBO`` with ``elbo_particles`` samples and beta = 1 (the bound on
      ``-log p(x)``, whatever beta the model was trained with): the number
      :func:`probgen.metrics.negative_elbo` gives; skipped for a point-mass encoder
      (an autoencoder), whose ``log q(z|x)`` is no density;
    * ``iw_nll``: importance-sampled ``-log p(x)`` with ``k = iw_samples`` on the first
      ``iw_size`` examples (skipped for ``iw_samples = 0`` or a point-mass encoder);
    * ``kl``, ``kl_per_dim``: ``KL(q(z|x) || p(z))`` in total and per latent dimension;
    * ``active_units``: dimensions whose code mean varies over the data (> 0.01);
    * ``recon_mse``: mean squared error per pixel of the mean reconstruction.

    ``data`` is moved to the model's device first.
    """
    model.eval()
    param = next(model.parameters(), None)
    if param is not None and data.device != param.device:
        data = data.to(param.device)  # e.g. trained on a GPU, test set on the CPU
    out: Dict[str, Any] = {}
    codes = collect_codes(model.encode, data)
    au = active_units(codes["loc"])
    out["active_units"] = int(au.sum())
    if codes["scale"] is not None:
        kl = kl_per_dimension(codes["loc"], codes["scale"])
        out["kl"] = float(kl.sum())
        out["kl_per_dim"] = [float(v) for v in kl]
        # unscaled densities: the bound on log p(x), not the (beta-weighted) training objective
        out["neg_elbo"] = -float(elbo_per_example(model.model, model.guide, data,
                                                  num_particles=elbo_particles).mean())
    mse, n = 0.0, 0
    for batch in data.batches(1000):
        rec = model.reconstruct(*batch)
        mse += float(mse_per_image(rec, batch[0].reshape(rec.shape)).sum())
        n += batch[0].shape[0]
    out["recon_mse"] = mse / n
    if iw_samples and codes["scale"] is not None:
        subset = data if iw_size is None or iw_size >= len(data) else \
            data.subset(slice(0, iw_size))
        t0 = time.perf_counter()
        out["iw_nll"] = iw_nll(model.model, model.guide, subset, num_samples=iw_samples,
                               progress=progress)
        out["iw_samples"], out["iw_size"] = iw_samples, len(subset)
        out["iw_seconds"] = time.perf_counter() - t0
    return out
