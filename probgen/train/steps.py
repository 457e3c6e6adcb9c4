"""The step types under their older path.

Steps and phases live in :mod:`probgen.infer` (:mod:`probgen.infer.steps`,
:mod:`probgen.infer.phases`, :mod:`probgen.infer.batches`), below the models, so that a
model family defines its own step without reaching up into the training loop; this module
re-exports them for code that imports them from here.
"""

# ruff: noqa: F401  (re-exports)
from probgen.infer.batches import BatchArguments, batch_len, default_batch_to_args
from probgen.infer.phases import OPTIMIZERS, Phase, traced_params
from probgen.infer.steps import (
    STEP_SETTINGS,
    ELBOLoss,
    LossStep,
    PhasedStep,
    Step,
    SVIStep,
    as_step,
)
