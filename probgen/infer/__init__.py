"""Inference: objectives by name, adversarial losses."""

from probgen.infer.adversarial import (ADVERSARIAL_LOSSES, AdversarialLoss, adversarial_phases,
                                       discriminator_loss, generator_loss, gradient_penalty)
from probgen.infer.objectives import IWAE_ELBO, OBJECTIVES, Trace_ELBO, make_elbo

__all__ = ["ADVERSARIAL_LOSSES", "AdversarialLoss", "IWAE_ELBO", "OBJECTIVES", "Trace_ELBO",
           "adversarial_phases",
           "discriminator_loss", "generator_loss", "gradient_penalty", "make_elbo"]
