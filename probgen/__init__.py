"""probgen: deep generative models as Pyro model/guide pairs.

Quick start::

    import probgen
    from probgen.models import CVAE, Baseline

    splits = probgen.data.image_splits("mnist", val_size=10000)
    task = {k: probgen.data.quadrant_task(v, num_visible=2) for k, v in splits.items()}
    baseline = Baseline()
    probgen.fit(baseline, task["train"], task["val"], epochs=10)
    cvae = CVAE(baseline)
    result = probgen.fit(cvae, task["train"], task["val"], epochs=10)
"""

from probgen import data, errors, flows, infer, metrics, models, nn, train
from probgen.models.registry import from_pretrained
from probgen.train import FitConfig, FitResult, LossStep, Phase, PhasedStep, SVIStep, fit, load

__version__ = "0.1.0"

__all__ = [
    "FitConfig",
    "FitResult",
    "LossStep",
    "Phase",
    "PhasedStep",
    "SVIStep",
    "__version__",
    "data",
    "errors",
    "fit",
    "flows",
    "from_pretrained",
    "infer",
    "load",
    "metrics",
    "models",
    "nn",
    "train",
]
