"""The one place probgen hands arrays to ArviZ.

Everything in :mod:`probgen.inspect` gathers plain arrays (``(chain, draw, ...)``
per variable, per group) and the dims and coords that name their axes, then calls
:func:`to_inference_data`, which calls ``az.from_dict``. ArviZ 1.x drops the Pyro
converter (``from_pyro``) and moves ``from_dict`` to ``arviz_base`` with a
dict-of-groups signature; a move to 1.x changes this function only.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from arviz import InferenceData
else:  # arviz is imported on first use (see arviz()); at run time the hint reads Any
    InferenceData = Any

GROUPS = (
    "posterior",
    "posterior_predictive",
    "log_likelihood",
    "observed_data",
    "sample_stats",
    "prior",
    "constant_data",
)


def arviz() -> ModuleType:
    """The ``arviz`` module, imported on first use (its import announces the 1.x
    refactor with a FutureWarning, which says nothing about this code's use of it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az


def to_inference_data(
    groups: Mapping[str, Mapping[str, np.ndarray]],
    dims: Mapping[str, list[str]] | None = None,
    coords: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> InferenceData:
    """ArviZ ``InferenceData`` from ``{group: {variable: array}}``.

    Arrays of the sampled groups (posterior, posterior_predictive, log_likelihood,
    sample_stats, prior) are ``(chain, draw, *shape)``; observed and constant data
    are ``shape``. ``dims`` names each variable's axes after ``(chain, draw)``; a
    variable that appears in two groups with fewer axes in one (the pointwise
    log-likelihood of an observed site holds its batch axes only) takes the first
    names of its list. Empty groups are left out.
    """
    az = arviz()
    kw = {g: {k: np.asarray(v) for k, v in vs.items()} for g, vs in groups.items() if vs}
    unknown = set(kw) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown InferenceData groups {sorted(unknown)}; use {GROUPS}.")
    with warnings.catch_warnings():
        # ArviZ warns when a variable in one group has fewer axes than its dims list
        # (the pointwise log-likelihood): that truncation is intended here.
        warnings.simplefilter("ignore", UserWarning)
        return az.from_dict(
            **kw, dims=dict(dims or {}), coords=dict(coords or {}), attrs=dict(attrs or {})
        )
