"""Inference gaps (Cremer, Li & Duvenaud 2018, "Inference Suboptimality in Variational
Autoencoders").

For an image ``x``, a model ``p`` and a guide family ``Q`` whose amortized member
(the encoder's choice) is ``q_phi(z | x)``::

    log p(x)  >=  ELBO[q*]  >=  ELBO[q_phi]        q* = argmax_{q in Q} ELBO[q] for this x

    approximation gap = log p(x) - ELBO[q*]          how far the family is from p(z | x)
    amortization gap  = ELBO[q*] - ELBO[q_phi]       what sharing one encoder costs
    inference gap     = log p(x) - ELBO[q_phi]       the two together

``q*`` is a :class:`LocalGuide`: the family's parameters held per image (not
computed by an encoder), fitted by :func:`optimise_local_guide` with the model
fixed. ``log p(x)`` is estimated by importance sampling with ``iw_samples`` draws
from each of the two guides; per image the estimate whose weights have the larger
effective sample size ``(sum w)^2 / sum w^2`` is kept. Each is a stochastic lower
bound of ``log p(x)`` that tends to it as ``k`` grows. (Cremer et al. keep the
largest of their estimators, but a maximum of noisy estimates can overshoot
``log p(x)``; averaging the two estimates of ``p(x)`` costs up to ``log 2`` when one
proposal is poor. A choice by the spread of the weights, not by the estimate's
value, does neither.)

For probgen's VAE, :func:`vae_local_guide` builds the local member of the VAE's
own family: a diagonal Gaussian (``loc``, ``log_scale`` per image), or with a
flow guide the base Gaussian *and* the context the trained flow steps are
conditioned on (so ``Q`` is every q(z|x) that the trained flow networks can
express); both start from the encoder's output. :func:`vae_gap_table` makes the
table for several trained VAEs.

On a linear-Gaussian model (probabilistic PCA) ``log p(x)`` and ``p(z | x)`` are in
closed form, which the tests use to check this machinery exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import pyro
import pyro.distributions as dist
import torch

from probgen import checks
from probgen.errors import ConfigError

# elbo_and_log_px is the estimate of one batch that likelihood.elbo_and_iw_nll makes too
from probgen.metrics.likelihood import elbo_and_log_px, log_importance_weights


class _StickTheLanding(dist.TorchDistribution):
    """Draws of ``live`` scored by ``frozen`` (the same distribution with its parameters
    detached): the ELBO's value is unchanged, and its gradient loses the score term,
    whose mean is zero, so at the exact posterior every draw's gradient is zero
    (Roeder, Wu & Duvenaud 2017, "Sticking the Landing")."""

    has_rsample = True

    def __init__(self, live, frozen):
        self.live, self.frozen = live, frozen
        super().__init__(live.batch_shape, live.event_shape, validate_args=False)

    @property
    def support(self):
        return self.live.support

    def rsample(self, sample_shape=torch.Size()):
        return self.live.rsample(sample_shape)

    def sample(self, sample_shape=torch.Size()):
        return self.live.sample(sample_shape)

    def log_prob(self, value):
        return self.frozen.log_prob(value)

    def expand(self, batch_shape, _instance=None):
        return _StickTheLanding(self.live.expand(batch_shape), self.frozen.expand(batch_shape))


class LocalGuide:
    """A guide with free parameters per example: ``z_i ~ make_q(**params_i)``.

    Args:
        site: the latent site it samples (``"z"`` for the VAE).
        make_q: ``make_q(**params)`` -> a distribution with batch shape ``(N,)``.
        init: the starting parameters, each a tensor ``(N, ...)`` (copied).
        plate: the name of the model's data plate.
        stick_the_landing: score draws with the parameters detached (Roeder et al.
            2017): the same ELBO, a gradient without the zero-mean score term, so
            optimisation settles exactly where q can equal the posterior. Needs a
            family that scores any point (a Gaussian, an invertible flow); the planar
            and Sylvester flows score only their own draws.

    Callable as a Pyro guide with the model's arguments (which it ignores).
    """

    def __init__(
        self,
        site: str,
        make_q: Callable[..., dist.Distribution],
        init: Mapping[str, torch.Tensor],
        plate: str = "data",
        stick_the_landing: bool = False,
    ):
        if not init:
            raise ConfigError("a LocalGuide needs at least one parameter tensor (N, ...).")
        self.site, self.make_q, self.plate = site, make_q, plate
        self.stick_the_landing = stick_the_landing
        self.params = {k: v.detach().clone().requires_grad_(True) for k, v in init.items()}
        sizes = {v.shape[0] if v.dim() else None for v in self.params.values()}
        if len(sizes) != 1 or None in sizes:
            raise ConfigError(
                f"every LocalGuide parameter needs the examples along its first "
                f"axis, the same number for all; got shapes "
                f"{ {k: tuple(v.shape) for k, v in self.params.items()} }."
            )
        self.num_examples = sizes.pop()

    def distribution(self) -> dist.Distribution:
        q = self.make_q(**self.params)
        if not self.stick_the_landing:
            return q
        return _StickTheLanding(q, self.make_q(**{k: v.detach() for k, v in self.params.items()}))

    def __call__(self, *args, **kwargs):
        with pyro.plate(self.plate, self.num_examples):
            return pyro.sample(self.site, self.distribution())


def optimise_local_guide(
    model: Callable,
    guide: LocalGuide,
    *args,
    steps: int = 2000,
    lr: float = 1e-2,
    num_particles: int = 10,
    **kwargs,
) -> list[float]:
    """Maximise each example's ELBO over its own guide parameters, the model fixed.

    Adam on ``guide.params`` only (the model's weights are read, never moved, and get
    no gradients), ``num_particles`` reparameterized draws per example and step, the
    learning rate decayed to zero on a cosine over the steps (the gradient is noisy:
    a constant rate leaves the parameters jittering around the optimum). The
    examples' bounds are independent, so one summed loss optimises each.
    Returns the mean ``-ELBO`` per example at every step.
    """
    steps = checks.positive_int("steps", steps)
    num_particles = checks.positive_int("num_particles", num_particles)
    lr = checks.positive_float("lr", lr)
    params = list(guide.params.values())
    opt = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    history = []
    with pyro.validation_enabled(False):
        for _ in range(steps):
            lw = log_importance_weights(model, guide, *args, num_particles=num_particles, **kwargs)
            loss = -lw.mean(0).sum()
            grads = torch.autograd.grad(loss, params)
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
            schedule.step()
            history.append(float(loss.detach()) / guide.num_examples)
    for p in params:
        p.grad = None
    return history


def inference_gaps(
    model: Callable,
    amortized_guide: Callable,
    local_guide: Callable,
    *args,
    elbo_particles: int = 1000,
    iw_samples: int = 5000,
    chunk: int = 100,
    **kwargs,
) -> dict[str, torch.Tensor]:
    """The gaps of Cremer et al. (2018) per example, for a fitted ``local_guide``.

    Returns ``{log_px, elbo_local, elbo_amortized, approximation_gap,
    amortization_gap, inference_gap, log_px_local, log_px_amortized, ess_local,
    ess_amortized}``, tensors ``(N,)`` in nats (effective sample sizes in draws);
    ``log_px`` is, per example, the importance-sampled estimate of the guide whose
    weights have the larger effective sample size.
    """
    a = elbo_and_log_px(
        model,
        amortized_guide,
        *args,
        elbo_particles=elbo_particles,
        iw_samples=iw_samples,
        chunk=chunk,
        **kwargs,
    )
    b = elbo_and_log_px(
        model,
        local_guide,
        *args,
        elbo_particles=elbo_particles,
        iw_samples=iw_samples,
        chunk=chunk,
        **kwargs,
    )
    log_px = torch.where(b["ess"] >= a["ess"], b["log_px"], a["log_px"])
    return {
        "log_px": log_px,
        "elbo_local": b["elbo"],
        "elbo_amortized": a["elbo"],
        "approximation_gap": log_px - b["elbo"],
        "amortization_gap": b["elbo"] - a["elbo"],
        "inference_gap": log_px - a["elbo"],
        "log_px_local": b["log_px"],
        "log_px_amortized": a["log_px"],
        "ess_local": b["ess"],
        "ess_amortized": a["ess"],
    }


# -- probgen's VAE ------------------------------------------------------------------------


def _diag(loc, log_scale):
    return dist.Normal(loc, log_scale.exp()).to_event(1)


def vae_local_guide(vae, x: torch.Tensor, labels: torch.Tensor | None = None) -> LocalGuide:
    """The per-image member of a VAE's guide family, started at the encoder's output:
    ``(loc, log_scale)``, plus the flow's context with a flow guide."""
    if vae.encoder_kind != "gaussian":
        raise ConfigError(
            "the inference gaps need a density q(z|x); this VAE's encoder is a "
            "point mass (an autoencoder)."
        )
    flat = vae._flat(x)
    with torch.no_grad():
        h = vae.encoder.body(flat, vae._onehot(labels, flat.shape[0]))
        init = {"loc": vae.encoder.loc(h), "log_scale": vae.encoder.log_scale(h)}
    if vae.guide_flow is None:
        return LocalGuide("z", _diag, init, stick_the_landing=True)
    flow = vae.guide_flow

    def make_q(loc, log_scale, context):
        return flow.distribution(loc, log_scale.exp(), context)

    return LocalGuide("z", make_q, {**init, "context": h})


def vae_gaps(
    vae,
    x: torch.Tensor,
    labels: torch.Tensor | None = None,
    steps: int = 2000,
    lr: float = 1e-2,
    opt_particles: int = 10,
    elbo_particles: int = 1000,
    iw_samples: int = 5000,
    chunk: int = 100,
) -> dict[str, torch.Tensor]:
    """:func:`inference_gaps` of a trained VAE on the images ``x`` (its own guide family,
    :func:`vae_local_guide`), the VAE in eval mode and its weights untouched."""
    steps = checks.positive_int("steps", steps)
    lr = checks.positive_float("lr", lr)
    opt_particles = checks.positive_int("opt_particles", opt_particles)
    elbo_particles = checks.positive_int("elbo_particles", elbo_particles)
    iw_samples = checks.positive_int("iw_samples", iw_samples)
    chunk = checks.positive_int("chunk", chunk)
    was_training = vae.training
    vae.eval()
    flags = [(p, p.requires_grad) for p in vae.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        local = vae_local_guide(vae, x, labels)
        history = optimise_local_guide(
            vae.model, local, x, labels, steps=steps, lr=lr, num_particles=opt_particles
        )
        out = inference_gaps(
            vae.model,
            vae.guide,
            local,
            x,
            labels,
            elbo_particles=elbo_particles,
            iw_samples=iw_samples,
            chunk=chunk,
        )
        out["history"] = torch.tensor(history)
        return out
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        vae.train(was_training)


def vae_gap_table(
    models: Mapping[str, object], x: torch.Tensor, labels: torch.Tensor | None = None, **options
) -> list[dict[str, float]]:
    """One row per trained VAE (``{name: vae}``): mean ``log p(x)``, local and amortized
    ELBO, approximation, amortization and inference gaps over the images ``x`` (nats),
    and the seconds it took. ``options`` as for :func:`vae_gaps`."""
    rows = []
    for name, vae in models.items():
        t0 = time.perf_counter()
        g = vae_gaps(vae, x, labels, **options)
        rows.append(
            {
                "guide": name,
                "images": int(x.shape[0]),
                **{
                    k: float(g[k].mean())
                    for k in (
                        "log_px",
                        "elbo_local",
                        "elbo_amortized",
                        "approximation_gap",
                        "amortization_gap",
                        "inference_gap",
                    )
                },
                "seconds": time.perf_counter() - t0,
            }
        )
    return rows
