"""Training: one fit loop, callbacks, trackers, checkpoints, torchrun, and the opt-in speed
settings for a GPU (:mod:`probgen.train.speed`).

The steps and phases the loop runs live in :mod:`probgen.infer` (below the models, which
define their own steps) and are re-exported here: ``probgen.train.SVIStep`` is
``probgen.infer.SVIStep``.
"""

from probgen.infer.phases import OPTIMIZERS, Phase
from probgen.infer.steps import ELBOLoss, LossStep, PhasedStep, Step, SVIStep, as_step
from probgen.train.callbacks import (
    AVERAGES,
    Callback,
    Metric,
    Snapshots,
    TrainingCPUTime,
    WeightAverage,
    training_seconds,
)
from probgen.train.checkpoint import (
    RestoredRun,
    load,
    load_checkpoint,
    load_model,
    save_checkpoint,
    save_model,
)
from probgen.train.config import FitConfig, FitResult
from probgen.train.device import resolve_device, set_seed
from probgen.train.distributed import is_main_process
from probgen.train.loop import Run, fit
from probgen.train.schedules import SCHEDULES
from probgen.train.trackers import (
    TRACKERS,
    CSVLogger,
    MLflow,
    TensorBoard,
    Tracker,
    WandB,
    make_trackers,
)
from probgen.train.validation import evaluate

__all__ = [
    "AVERAGES",
    "OPTIMIZERS",
    "SCHEDULES",
    "TRACKERS",
    "CSVLogger",
    "Callback",
    "ELBOLoss",
    "FitConfig",
    "FitResult",
    "LossStep",
    "MLflow",
    "Metric",
    "Phase",
    "PhasedStep",
    "RestoredRun",
    "Run",
    "SVIStep",
    "Snapshots",
    "Step",
    "TensorBoard",
    "Tracker",
    "TrainingCPUTime",
    "WandB",
    "WeightAverage",
    "as_step",
    "evaluate",
    "fit",
    "is_main_process",
    "load",
    "load_checkpoint",
    "load_model",
    "make_trackers",
    "resolve_device",
    "save_checkpoint",
    "save_model",
    "set_seed",
    "training_seconds",
]
