"""Exceptions raised by probgen.

Every error probgen raises on bad input derives from :class:`ProbgenError` and
says what was wrong and what to do about it.
"""


class ProbgenError(Exception):
    """Base class of probgen's errors."""


class DataError(ProbgenError, ValueError):
    """Input data of the wrong shape, range or type."""


class DataNotFoundError(ProbgenError, FileNotFoundError):
    """A data set is not on disk and cannot be downloaded."""


class ConfigError(ProbgenError, ValueError):
    """An invalid setting (model size, quadrant count, objective name, ...)."""


class CheckpointError(ProbgenError):
    """A checkpoint file that is truncated, foreign or does not fit the model."""


class TrainingDivergedError(ProbgenError, FloatingPointError):
    """The training loss became NaN or infinite.

    Attributes:
        epoch: the (0-based) epoch in which it happened.
        step: the (0-based) step within that epoch.
        checkpoint: path of the last good checkpoint, or ``None``.
    """

    def __init__(self, message, epoch=None, step=None, checkpoint=None):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.checkpoint = checkpoint
