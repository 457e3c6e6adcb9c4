"""MCMC on a model's latents: several NUTS chains, run one after another in this process.

:func:`run_nuts` runs Pyro's :class:`~pyro.infer.NUTS` kernel (Hoffman & Gelman 2014,
"The No-U-Turn Sampler") as ``num_chains`` independent Pyro :class:`~pyro.infer.MCMC`
runs and keeps their draws side by side (:class:`Chains`, grouped by chain as ArviZ
wants them). Why not ``MCMC(num_chains=...)``: on a machine with spare cores Pyro
runs the chains in worker processes, which must unpickle the model (a trained
network with it) and draw from their own random generators; one process keeps the
chains reproducible from the caller's seed and works for any model. Every network
parameter stays fixed: NUTS moves the latent sample sites only, so for a trained
VAE :func:`vae_nuts` samples the exact posterior p(z | x) under the fixed decoder.

:func:`probgen.inspect.from_mcmc` turns a :class:`Chains` (or a Pyro ``MCMC``) into
ArviZ ``InferenceData``, whose ``az.summary`` gives R-hat and effective sample size.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro.infer import MCMC, NUTS

from probgen import checks
from probgen.errors import ConfigError


@dataclass
class Chains:
    """Draws of several independent MCMC chains of one model.

    Attributes:
        samples: ``{site: tensor (chains, draws, *site_shape)}``.
        model, args, kwargs: the model and the arguments it was sampled with.
        diverging: ``(chains, draws)`` bool, the divergent transitions after warm-up.
        acceptance: ``(chains,)`` mean acceptance probability per chain.
        step_size: ``(chains,)`` adapted step size per chain.
        seconds: wall time of each chain (warm-up included).
    """

    samples: dict[str, torch.Tensor]
    model: Callable
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    diverging: torch.Tensor | None = None
    acceptance: list[float] = field(default_factory=list)
    step_size: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def num_chains(self) -> int:
        return next(iter(self.samples.values())).shape[0]

    @property
    def num_draws(self) -> int:
        return next(iter(self.samples.values())).shape[1]

    def get_samples(self, group_by_chain: bool = False) -> dict[str, torch.Tensor]:
        """As Pyro's ``MCMC.get_samples``: ``(chains, draws, ...)`` or ``(chains * draws, ...)``."""
        if group_by_chain:
            return dict(self.samples)
        return {k: v.reshape((-1,) + v.shape[2:]) for k, v in self.samples.items()}


def run_nuts(
    model: Callable,
    *args,
    num_chains: int = 4,
    num_samples: int = 500,
    warmup_steps: int = 500,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    jit_compile: bool = False,
    init_strategy: Callable | None = None,
    progress: bool = False,
    **kwargs,
) -> Chains:
    """Sample a Pyro model's latent sites with NUTS, ``num_chains`` chains.

    Args:
        model: a Pyro model; ``*args, **kwargs`` are passed to it (the observed data).
        num_chains: independent chains.
        num_samples: kept draws per chain.
        warmup_steps: warm-up steps per chain (step size and diagonal mass matrix
            adaptation), discarded.
        target_accept_prob: NUTS' target acceptance probability of the step size
            adaptation.
        max_tree_depth: NUTS' largest tree depth (at most ``2**depth`` leapfrog steps).
        jit_compile: let Pyro JIT-compile the potential energy.
        init_strategy: NUTS' initialisation (``None``: Pyro's default, uniform in
            ``(-2, 2)`` in the unconstrained space, a different start for every chain).
        progress: Pyro's progress bar.

    Parameters (``pyro.param`` / ``pyro.module`` sites) are read, never moved: a
    model whose weights live in Pyro's param store (trained by SVI) is sampled with
    them. Draws come from torch's global generator: seed it first for a
    reproducible run.
    """
    num_chains = checks.positive_int("num_chains", num_chains)
    num_samples = checks.positive_int("num_samples", num_samples)
    warmup_steps = checks.nonnegative_int("warmup_steps", warmup_steps)
    kernel_kw = dict(
        target_accept_prob=target_accept_prob,
        max_tree_depth=max_tree_depth,
        jit_compile=jit_compile,
        ignore_jit_warnings=True,
    )
    if init_strategy is not None:
        kernel_kw["init_strategy"] = init_strategy
    per_chain: list[dict[str, torch.Tensor]] = []
    divergent: list[torch.Tensor] = []
    out = Chains({}, model, args, dict(kwargs))
    for _ in range(num_chains):
        t0 = time.perf_counter()
        kernel = NUTS(model, **kernel_kw)
        mcmc = MCMC(
            kernel,
            num_samples=num_samples,
            warmup_steps=warmup_steps,
            num_chains=1,
            disable_progbar=not progress,
        )
        with warnings.catch_warnings():
            # torch deprecates jit.trace, which Pyro's jit_compile uses: say nothing of it
            warnings.filterwarnings(
                "ignore", message=".*torch.jit.trace.*deprecated", category=FutureWarning
            )
            mcmc.run(*args, **kwargs)
        samples = mcmc.get_samples()
        if not samples:
            raise ConfigError(
                "the model has no latent sample sites for NUTS to sample (every site is observed)."
            )
        per_chain.append(samples)
        diag = mcmc.diagnostics()
        flags = torch.zeros(num_samples, dtype=torch.bool)
        for idx in diag.get("divergences", {}).values():
            flags[list(idx)] = True
        divergent.append(flags)
        out.acceptance.append(
            float(next(iter(diag.get("acceptance rate", {0: float("nan")}).values())))
        )
        out.step_size.append(float(kernel.step_size))
        out.seconds.append(time.perf_counter() - t0)
    out.samples = {k: torch.stack([s[k] for s in per_chain]) for k in per_chain[0]}
    out.diverging = torch.stack(divergent)
    return out


def vae_nuts(vae, x: torch.Tensor, labels: torch.Tensor | None = None, **nuts_kwargs) -> Chains:
    """The exact posterior ``p(z | x)`` of a trained VAE, decoder fixed, by NUTS.

    ``x`` holds a handful of images ``(N, *image_shape)``; their codes are sampled
    jointly (independent given the decoder) as site ``z`` of shape ``(N, z_dim)``.
    ``nuts_kwargs`` as for :func:`run_nuts`. The model runs in eval mode (as it came
    back afterwards) and without gradients reaching the networks' weights.
    """
    was_training = vae.training
    vae.eval()
    flags = [(p, p.requires_grad) for p in vae.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)  # NUTS differentiates z only: skip the weights' graph
        return run_nuts(vae.model, x, labels, **nuts_kwargs)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        vae.train(was_training)
