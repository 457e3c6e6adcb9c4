"""Inference: objectives by name, adversarial losses, and the training step a model is
trained by (phases, steps, the step context the fit loop applies as a Pyro handler)."""

from probgen.infer.adversarial import (
    ADVERSARIAL_LOSSES,
    AdversarialLoss,
    adversarial_phases,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    player_optim,
)
from probgen.infer.batches import BatchArguments, batch_len, default_batch_to_args
from probgen.infer.context import StepContext, current_step
from probgen.infer.objectives import IWAE_ELBO, OBJECTIVES, Trace_ELBO, make_elbo
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

__all__ = [
    "ADVERSARIAL_LOSSES",
    "IWAE_ELBO",
    "OBJECTIVES",
    "OPTIMIZERS",
    "STEP_SETTINGS",
    "AdversarialLoss",
    "BatchArguments",
    "ELBOLoss",
    "LossStep",
    "Phase",
    "PhasedStep",
    "SVIStep",
    "Step",
    "StepContext",
    "Trace_ELBO",
    "adversarial_phases",
    "as_step",
    "batch_len",
    "current_step",
    "default_batch_to_args",
    "discriminator_loss",
    "generator_loss",
    "gradient_penalty",
    "make_elbo",
    "player_optim",
    "traced_params",
]
