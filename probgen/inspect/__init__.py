"""Posterior inspection: Pyro models, guides and MCMC draws as ArviZ ``InferenceData``.

``from_guide`` (draws of a guide through ``Predictive``), ``from_mcmc`` (a Pyro ``MCMC``
or :class:`probgen.infer.mcmc.Chains`, by chain), ``from_draws`` (any draws grouped by
chain) and ``from_vae`` (probgen's VAE, axes ``example``/``latent``/``pixel``) fill the
posterior, posterior predictive, pointwise log-likelihood and observed data groups;
then ``az.summary``, ``az.plot_posterior``, ``az.plot_pair``, ``az.plot_ppc`` and
``az.loo`` work on them. ArviZ is called in one place, :mod:`probgen.inspect.arviz`.
"""

from probgen.inspect.arviz import arviz, to_inference_data
from probgen.inspect.convert import (
    from_draws,
    from_guide,
    from_mcmc,
    from_vae,
    latent_sites,
    vae_names,
)

__all__ = [
    "arviz",
    "from_draws",
    "from_guide",
    "from_mcmc",
    "from_vae",
    "latent_sites",
    "to_inference_data",
    "vae_names",
]
