"""Exceptions raised by probgen.

Every error probgen raises on bad input derives from :class:`ProbgenError` and
says what was wrong and what to do about it.
"""

import os


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


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint that the file system would not take (no space left, a quota, a
    read-only file system, an I/O error). The previous checkpoint file is intact.

    Both a :class:`CheckpointError` (probgen's one-line message) and an ``OSError``
    with the file system's ``errno`` and the checkpoint's ``filename``, so a script can
    treat it as the file-system error it is (``probgen.cli.run``: exit status 1, as
    any other write error) rather than as a bad setting.
    """

    def __init__(
        self, message: str, errno: int | None = None, filename: str | os.PathLike | None = None
    ):
        super().__init__(message)
        self.errno = errno
        self.strerror = os.strerror(errno) if errno is not None else None
        self.filename = None if filename is None else str(filename)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TrainingDivergedError(ProbgenError, FloatingPointError):
    """The training loss became NaN or infinite.

    Attributes:
        epoch: the (0-based) epoch in which it happened.
        step: the (0-based) step within that epoch.
        checkpoint: path of the last good checkpoint, or ``None``.
    """

    def __init__(
        self,
        message: str,
        epoch: int | None = None,
        step: int | None = None,
        checkpoint: str | os.PathLike | None = None,
    ):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.checkpoint = checkpoint
