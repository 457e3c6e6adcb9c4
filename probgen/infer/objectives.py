"""Variational objectives by name.

Every objective is one of Pyro's ELBO implementations; probgen only names
them so that the objective is a run setting (``--objective``) and a config
value:

=================  ==========================================  ======================
name               Pyro class                                  KL term
=================  ==========================================  ======================
``trace``          :class:`pyro.infer.Trace_ELBO`              Monte Carlo
``meanfield``      :class:`pyro.infer.TraceMeanField_ELBO`     analytic where known
``jit``            :class:`pyro.infer.JitTrace_ELBO`           Monte Carlo, compiled
``jit_meanfield``  :class:`pyro.infer.JitTraceMeanField_ELBO`  analytic, compiled
=================  ==========================================  ======================

``num_particles > 1`` averages that many samples per example, vectorized.
"""

from __future__ import annotations

import pyro.infer as infer

from probgen.errors import ConfigError
from probgen.registry import Registry

OBJECTIVES: Registry = Registry("objective")
OBJECTIVES.register("trace", infer.Trace_ELBO)
OBJECTIVES.register("meanfield", infer.TraceMeanField_ELBO)
OBJECTIVES.register("jit", infer.JitTrace_ELBO)
OBJECTIVES.register("jit_meanfield", infer.JitTraceMeanField_ELBO)

# The uncompiled twin of each objective (evaluation runs without gradients,
# where a compiled trace buys nothing).
_EAGER = {"trace": "trace", "meanfield": "meanfield", "jit": "trace",
          "jit_meanfield": "meanfield"}


def make_elbo(name: str = "trace", num_particles: int = 1, max_plate_nesting: int = 1,
              eager: bool = False):
    """Build the Pyro ELBO called ``name`` with ``num_particles`` vectorized particles.

    Args:
        max_plate_nesting: plates a model nests (probgen's models use one data plate).
        eager: return the uncompiled counterpart of a ``jit*`` objective.
    """
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise ConfigError(f"num_particles must be a positive integer, got {num_particles!r}.")
    cls = OBJECTIVES.get(_EAGER.get(name, name) if eager else name)
    kwargs = dict(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                  vectorize_particles=num_particles > 1)
    if name.startswith("jit") and not eager:
        kwargs["ignore_jit_warnings"] = True
    return cls(**kwargs)
