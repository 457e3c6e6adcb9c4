"""Pyro models, guides and MCMC draws as ArviZ ``InferenceData``.

Three entry points, one core:

* :func:`from_guide` -- posterior draws from a guide (``pyro.infer.Predictive`` with the
  guide): one chain;
* :func:`from_mcmc` -- draws of a Pyro ``MCMC`` run or of :func:`probgen.infer.mcmc.run_nuts`
  (a chain dimension, and the divergent transitions in ``sample_stats``);
* :func:`from_vae` -- either of them for probgen's VAE, its axes named ``example``,
  ``latent`` and ``pixel``.

Each fills the groups ``posterior`` (the latent sites), ``posterior_predictive`` (the
observed sites drawn again under each posterior draw: the model run with its
observations lifted, ``poutine.uncondition``), ``log_likelihood`` (each observed
site's log-density per draw and per element of its plates: per example for a
model with a data plate, what ``az.loo`` reads) and ``observed_data``. Axes are
named after the model's plates (a site in ``pyro.plate("data", N)`` gets a ``data``
axis) and ``<site>_dim_<i>`` otherwise; ``dims`` and ``coords`` override.

The ArviZ call itself is :func:`probgen.inspect.arviz.to_inference_data`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import MCMC, Predictive
from pyro.poutine.util import site_is_subsample

from probgen import checks
from probgen.errors import ConfigError
from probgen.infer.mcmc import Chains
from probgen.inspect.arviz import InferenceData, to_inference_data
from probgen.metrics.likelihood import broadcast_failure
from probgen.models.vae import VAE

Draws = dict[str, torch.Tensor]


def _is_latent(site) -> bool:
    return (
        site["type"] == "sample"
        and not site["is_observed"]
        and not site_is_subsample(site)
        and not site["infer"].get("is_auxiliary", False)
    )


def _is_observed(site) -> bool:
    return (
        site["type"] == "sample"
        and site["is_observed"]
        and not site_is_subsample(site)
        and not site["infer"].get("_deterministic", False)
    )


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu").numpy()


class _Structure:
    """The model's sites under one posterior draw: shapes, plates, observations."""

    def __init__(self, model, first: Draws, args, kwargs):
        with torch.no_grad():
            tr = poutine.trace(poutine.condition(model, data=first)).get_trace(*args, **kwargs)
        self.sites = {
            n: s for n, s in tr.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)
        }
        # (conditioning on the draws marks their sites observed: they are not data)
        self.observed = [n for n, s in self.sites.items() if _is_observed(s) and n not in first]
        missing = [n for n in first if n not in self.sites]
        if missing:
            raise ConfigError(
                f"the posterior draws hold sites {missing} that the model does not "
                f"sample; pass draws of the model's own latent sites."
            )
        self.max_plate_nesting = max(
            [len(s["fn"].batch_shape) for s in self.sites.values()]
            + [
                -f.dim
                for s in self.sites.values()
                for f in s["cond_indep_stack"]
                if f.dim is not None
            ]
            + [0]
        )

    def batch_shape(self, name) -> torch.Size:
        return self.sites[name]["fn"].batch_shape

    def value_shape(self, name) -> torch.Size:
        return self.sites[name]["value"].shape

    def dims(self, name) -> list[str]:
        """Axis names of a site's value: plate names on its batch axes, then
        ``<site>_dim_<i>``."""
        site = self.sites[name]
        batch = len(site["fn"].batch_shape)
        plates = {f.dim: f.name for f in site["cond_indep_stack"] if f.dim is not None}
        out, extra = [], 0
        for i in range(len(site["value"].shape)):
            d = i - batch
            if d < 0 and d in plates:
                out.append(plates[d])
            else:
                out.append(f"{name}_dim_{extra}")
                extra += 1
        return out


def _vectorized(model, structure: _Structure, flat: Draws, lift: bool):
    """Trace the model once under all ``T`` draws at once (a plate of draws outside the
    model's plates); ``lift`` samples the observed sites afresh."""
    t = next(iter(flat.values())).shape[0]
    mpn = structure.max_plate_nesting
    data = {}
    for name, v in flat.items():
        pad = mpn - len(structure.batch_shape(name))
        data[name] = v.reshape((t,) + (1,) * pad + tuple(structure.value_shape(name)))

    def wrapped(*a, **k):
        with pyro.plate("_inspect_draws", t, dim=-mpn - 1):
            return model(*a, **k)

    fn = poutine.condition(wrapped, data=data)
    return poutine.uncondition(fn) if lift else fn


def _per_draw(model, flat: Draws, lift: bool, i: int):
    fn = poutine.condition(model, data={k: v[i] for k, v in flat.items()})
    return poutine.uncondition(fn) if lift else fn


def _site_log_lik(site, batch: torch.Size, t: int | None) -> torch.Tensor:
    lp = site["fn"].log_prob(site["value"])
    mask = site["mask"]
    if mask is not None:
        lp = lp * mask if torch.is_tensor(mask) else (lp if mask else 0 * lp)
    shape = tuple(batch) if t is None else (t,) + tuple(batch)
    return lp.expand(lp.shape[: -len(batch)] + tuple(batch) if batch else lp.shape).reshape(shape)


@torch.no_grad()
def _pointwise(
    model, structure: _Structure, flat: Draws, args, kwargs, parallel: bool
) -> tuple[Draws, Draws]:
    """``(log_likelihood, posterior_predictive)``, each ``{observed site: (T, ...)}``."""
    t = next(iter(flat.values())).shape[0]
    obs = structure.observed
    if parallel:
        try:
            tr = poutine.trace(_vectorized(model, structure, flat, False)).get_trace(
                *args, **kwargs
            )
            ll = {n: _site_log_lik(tr.nodes[n], structure.batch_shape(n), t) for n in obs}
            tr = poutine.trace(_vectorized(model, structure, flat, True)).get_trace(*args, **kwargs)
            pp = {
                n: tr.nodes[n]["value"].reshape((t,) + tuple(structure.value_shape(n))) for n in obs
            }
            return ll, pp
        except (RuntimeError, ValueError, IndexError) as err:
            if not broadcast_failure(err):  # out of memory, a device fault: not a fallback
                raise
            # the model does not broadcast over a leading axis of draws: one at a time
    ll = {n: [] for n in obs}
    pp = {n: [] for n in obs}
    for i in range(t):
        tr = poutine.trace(_per_draw(model, flat, False, i)).get_trace(*args, **kwargs)
        for n in obs:
            ll[n].append(_site_log_lik(tr.nodes[n], structure.batch_shape(n), None))
        tr = poutine.trace(_per_draw(model, flat, True, i)).get_trace(*args, **kwargs)
        for n in obs:
            pp[n].append(tr.nodes[n]["value"])
    return ({n: torch.stack(v) for n, v in ll.items()}, {n: torch.stack(v) for n, v in pp.items()})


def from_draws(
    model: Callable,
    draws: Draws,
    *args: Any,
    dims: Mapping[str, list[str]] | None = None,
    coords: Mapping[str, Any] | None = None,
    posterior_predictive: bool = True,
    log_likelihood: bool = True,
    parallel: bool = True,
    sample_stats: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> InferenceData:
    """InferenceData from posterior draws grouped by chain, ``{site: (chains, draws, ...)}``.

    Args:
        model: the Pyro model the draws belong to; ``*args, **kwargs`` its arguments
            with the observed data (as the draws were made with).
        dims: axis names per variable (override the names taken from the model's
            plates).
        coords: the coordinates of those axes.
        posterior_predictive: fill the ``posterior_predictive`` group.
        log_likelihood: fill the ``log_likelihood`` group.
        parallel: evaluate all draws in one vectorized pass (a plate of draws outside
            the model's plates); falls back to one draw at a time for models that do
            not broadcast.
        sample_stats: extra ``(chains, draws)`` arrays (``diverging``, ...).
    """
    if not draws:
        raise ConfigError("no posterior draws to convert: the draws hold no latent site.")
    first = next(iter(draws.values()))
    if first.dim() < 2:
        raise ConfigError(
            f"posterior draws must be grouped by chain, (chains, draws, ...); "
            f"got shape {tuple(first.shape)}."
        )
    c, s = first.shape[:2]
    for name, v in draws.items():
        if tuple(v.shape[:2]) != (c, s):
            raise ConfigError(
                f"site {name!r} has draws of shape {tuple(v.shape)}, the others "
                f"({c}, {s}, ...): every site needs the same chains and draws."
            )
    flat = {k: v.reshape((c * s,) + v.shape[2:]) for k, v in draws.items()}
    structure = _Structure(model, {k: v[0] for k, v in flat.items()}, args, kwargs)
    names: dict[str, list[str]] = {n: structure.dims(n) for n in list(draws) + structure.observed}
    names.update({k: list(v) for k, v in (dims or {}).items()})
    groups: dict[str, dict[str, np.ndarray]] = {
        "posterior": {k: _numpy(v) for k, v in draws.items()},
        "observed_data": {n: _numpy(structure.sites[n]["value"]) for n in structure.observed},
    }
    if structure.observed and (posterior_predictive or log_likelihood):
        ll, pp = _pointwise(model, structure, flat, args, kwargs, parallel)
        if log_likelihood:
            groups["log_likelihood"] = {
                n: _numpy(v.reshape((c, s) + v.shape[1:])) for n, v in ll.items()
            }
        if posterior_predictive:
            groups["posterior_predictive"] = {
                n: _numpy(v.reshape((c, s) + v.shape[1:])) for n, v in pp.items()
            }
    if sample_stats:
        groups["sample_stats"] = {k: np.asarray(v) for k, v in sample_stats.items()}
    return to_inference_data(groups, dims=names, coords=coords, attrs=attrs)


def latent_sites(guide: Callable, *args: Any, **kwargs: Any) -> list[str]:
    """The latent sample sites a guide draws (auxiliary sites left out); a guide that
    draws none is refused with a one-line :class:`ConfigError`."""
    return list(_latent_shapes(guide, args, kwargs))


def _latent_shapes(guide, args, kwargs) -> dict[str, torch.Size]:
    with torch.no_grad():
        tr = poutine.trace(guide).get_trace(*args, **kwargs)
    names = {n: s["value"].shape for n, s in tr.nodes.items() if _is_latent(s)}
    if not names:
        raise ConfigError(
            f"the guide {getattr(guide, '__name__', type(guide).__name__)!r} has no "
            f"latent sample sites (pyro.sample without obs): it describes no "
            f"posterior; pass the guide that samples the model's latents."
        )
    return names


def from_guide(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 500,
    sites: Sequence[str] | None = None,
    parallel: bool = True,
    **options: Any,
) -> InferenceData:
    """InferenceData of a guide's posterior draws (one chain of ``num_samples``).

    The draws come from ``pyro.infer.Predictive(model, guide=guide)`` with the
    model's arguments ``*args``; ``sites`` limits the posterior to those latent sites
    (default: every latent site the guide draws). Other keyword arguments: those of
    :func:`from_draws` (``dims``, ``coords``, ``posterior_predictive``,
    ``log_likelihood``); any left are passed to the model and guide.
    """
    num_samples = checks.positive_int("num_samples", num_samples)
    conv = {
        k: options.pop(k)
        for k in ("dims", "coords", "posterior_predictive", "log_likelihood", "attrs")
        if k in options
    }
    shapes = _latent_shapes(guide, args, options)
    names = list(shapes)
    if sites is not None:
        unknown = [s for s in sites if s not in names]
        if unknown:
            raise ConfigError(
                f"sites {unknown} are not latent sites of the guide; it draws {names}."
            )
        names = list(sites)

    def predict(vectorize):
        with torch.no_grad():
            return Predictive(
                model, guide=guide, num_samples=num_samples, return_sites=names, parallel=vectorize
            )(*args, **options)

    try:
        drawn = predict(parallel)
    except (RuntimeError, ValueError, IndexError) as err:
        if not parallel or not broadcast_failure(err):
            raise
        drawn = predict(False)  # the model does not broadcast over draws: one at a time
    # (Predictive pads a site outside the plates with unit axes: drop them)
    draws = {n: drawn[n].reshape((1, num_samples) + tuple(shapes[n])) for n in names}
    return from_draws(model, draws, *args, parallel=parallel, **conv, **options)


def from_mcmc(
    mcmc: MCMC | Chains,
    *args: Any,
    model: Callable | None = None,
    parallel: bool = True,
    **options: Any,
) -> InferenceData:
    """InferenceData of MCMC draws, with their chains.

    ``mcmc``: a Pyro ``MCMC`` after ``run`` or a :class:`probgen.infer.mcmc.Chains`.
    The model and its arguments default to those the sampler ran with; pass
    ``model`` and ``*args`` to score the draws under others. Divergent transitions
    go to ``sample_stats.diverging`` where the sampler recorded them. Keyword
    arguments as for :func:`from_draws`.
    """
    get = getattr(mcmc, "get_samples", None)
    if get is None:
        raise ConfigError(
            f"from_mcmc takes a Pyro MCMC or probgen Chains object, got {type(mcmc).__name__}."
        )
    if getattr(mcmc, "_samples", True) is None:
        raise ConfigError(
            "this MCMC object holds no samples: call mcmc.run(...) with the data "
            "before converting it."
        )
    draws = get(group_by_chain=True)
    if not draws:
        raise ConfigError(
            "this MCMC object holds no samples: call mcmc.run(...) with the data "
            "before converting it."
        )
    if model is None:
        model = getattr(mcmc, "model", None) or getattr(
            getattr(mcmc, "kernel", None), "model", None
        )
        if model is None:
            raise ConfigError(
                "the sampler does not record its model (a kernel built from a "
                "potential function): pass model= and its arguments."
            )
    if not args and not any(
        k not in ("dims", "coords", "posterior_predictive", "log_likelihood", "attrs")
        for k in options
    ):
        args = tuple(getattr(mcmc, "args", None) or getattr(mcmc, "_args", None) or ())
        options = {
            **(getattr(mcmc, "kwargs", None) or getattr(mcmc, "_kwargs", None) or {}),
            **options,
        }
    stats = {}
    diverging = getattr(mcmc, "diverging", None)
    if diverging is not None:
        stats["diverging"] = _numpy(diverging)
    return from_draws(model, draws, *args, parallel=parallel, sample_stats=stats, **options)


def vae_names(vae: VAE, n: int, index: Sequence[int] | None = None) -> dict[str, Any]:
    """``dims`` and ``coords`` naming a VAE's axes: ``example`` (``index`` or 0..n-1),
    ``latent`` and ``pixel``."""
    coords = {
        "example": np.asarray(index if index is not None else np.arange(n)),
        "latent": np.arange(vae.z_dim),
        "pixel": np.arange(vae.data_dim),
    }
    if len(coords["example"]) != n:
        raise ConfigError(f"index names {len(coords['example'])} examples for {n} images.")
    return {"dims": {"z": ["example", "latent"], "x": ["example", "pixel"]}, "coords": coords}


def from_vae(
    vae: VAE,
    x: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    mcmc: MCMC | Chains | None = None,
    num_samples: int = 500,
    index: Sequence[int] | None = None,
    **options: Any,
) -> InferenceData:
    """InferenceData of a probgen VAE's posterior over the codes of the images ``x``.

    Without ``mcmc``: ``num_samples`` draws of the model's guide q(z | x) (its
    encoder, or its flow guide). With ``mcmc`` (from :func:`probgen.infer.mcmc.vae_nuts`
    on the same images): the exact posterior's draws, by chain. Axes: ``example``
    (``index``: the images' numbers in their data set), ``latent``, ``pixel``; the
    pointwise log-likelihood is per image. Keyword arguments as for
    :func:`from_draws`.
    """
    names = vae_names(vae, vae._flat(x).shape[0], index)
    for k in ("dims", "coords"):
        names[k].update(options.pop(k, None) or {})
    was_training = vae.training
    vae.eval()
    try:
        if mcmc is not None:
            return from_mcmc(mcmc, x, labels, model=vae.model, **names, **options)
        return from_guide(
            vae.model, vae.guide, x, labels, num_samples=num_samples, **names, **options
        )
    finally:
        vae.train(was_training)
