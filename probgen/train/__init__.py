"""Training: one fit loop, step functions and phases, callbacks, trackers, checkpoints,
torchrun, and the opt-in speed settings for a GPU (:mod:`probgen.train.speed`)."""

from probgen.train.callbacks import AVERAGES, Callback, Metric, WeightAverage
from probgen.train.checkpoint import (RestoredRun, load, load_checkpoint, load_model,
                                      save_checkpoint, save_model)
from probgen.train.config import OPTIMIZERS, FitConfig, FitResult
from probgen.train.distributed import is_main_process
from probgen.train.loop import Run, as_step, evaluate, fit, resolve_device, set_seed
from probgen.train.schedules import SCHEDULES
from probgen.train.steps import ELBOLoss, LossStep, Phase, PhasedStep, Step, SVIStep
from probgen.train.trackers import (TRACKERS, CSVLogger, MLflow, TensorBoard, Tracker, WandB,
                                    make_trackers)

__all__ = ["AVERAGES", "CSVLogger", "Callback", "ELBOLoss", "FitConfig", "FitResult", "LossStep",
           "MLflow", "Metric", "OPTIMIZERS", "Phase", "PhasedStep", "RestoredRun", "Run",
           "SCHEDULES", "SVIStep", "Step", "TRACKERS", "TensorBoard", "Tracker", "WandB",
           "WeightAverage", "as_step", "evaluate", "fit", "is_main_process", "load",
           "load_checkpoint", "load_model", "make_trackers", "resolve_device", "save_checkpoint",
           "save_model", "set_seed"]
