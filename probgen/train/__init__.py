"""Training: one fit loop, step functions, checkpoints."""

from probgen.train.checkpoint import (load_checkpoint, load_model, save_checkpoint,
                                      save_model)
from probgen.train.loop import (OPTIMIZERS, FitConfig, FitResult, evaluate, fit,
                                resolve_device, set_seed)
from probgen.train.steps import LossStep, SVIStep

__all__ = ["FitConfig", "FitResult", "LossStep", "OPTIMIZERS", "SVIStep", "evaluate", "fit",
           "load_checkpoint", "load_model", "resolve_device", "save_checkpoint", "save_model",
           "set_seed"]
