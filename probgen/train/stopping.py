"""Early stopping and the best weights: two callbacks that the fit loop adds from its
settings (``FitConfig``'s ``monitor``, ``mode``, ``min_delta``, ``patience`` and
``restore_best``), after the run's own callbacks, so that they follow figures those add.

Their state goes into the run's checkpoint as top-level entries (``bad_epochs``,
``best_state``), beside the run's ``best_epoch``, ``best_loss`` and ``stopped_early``,
as the loop has always written them: a checkpoint of an earlier probgen resumes as it did.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from probgen.train import distributed as ddp
from probgen.train.callbacks import Callback
from probgen.train.phases import pyro_params

__all__ = ["BestWeights", "EarlyStopping"]


class EarlyStopping(Callback):
    """Follows the monitored figure of each epoch's entry: records the best value and its
    epoch in the run's result, counts the checks without an improvement, and stops the run
    (``result.stopped_early``) after ``patience`` of them.

    Epochs whose entry lacks the figure are not checks; ``val_loss`` without validation
    data falls back to ``train_loss``. Every process of a torchrun job takes rank 0's
    figure, so all stop together.

    Args:
        monitor: the history entry to follow.
        mode: ``"min"`` (lower is better) or ``"max"``.
        min_delta: an improvement must exceed this.
        patience: checks without improvement before stopping; ``None`` never stops (the
            best epoch is still recorded).
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "min",
        min_delta: float = 0.0,
        patience: int | None = None,
    ):
        self.monitor, self.mode, self.min_delta, self.patience = monitor, mode, min_delta, patience
        self.bad_epochs = 0
        self.improved = False  # whether the last check improved on the best
        self.monitored = monitor  # the figure the last check read

    def on_validation_end(self, run, entry: dict[str, Any]) -> None:
        self.improved = self.check(run.result, entry)

    def check(self, result, entry: dict[str, Any]) -> bool:
        """Update ``result``'s best figure and the patience count; True when it improved."""
        key = self.monitor
        if key == "val_loss" and entry.get("val_loss") is None:
            key = "train_loss"
        self.monitored = key
        value = ddp.broadcast_object(entry.get(key))  # every process takes rank 0's decision
        if value is None:
            return False
        value = float(value)
        sign = 1.0 if self.mode == "min" else -1.0
        best = result.best_loss
        improved = (
            best is None or not math.isfinite(best) or sign * value < sign * best - self.min_delta
        )
        if improved:
            result.best_loss, result.best_epoch = value, entry["epoch"]
            result.best_value = value
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        if self.patience is not None and self.bad_epochs >= self.patience:
            result.stopped_early = True
        return improved

    def stop_line(self, result, entry: dict[str, Any], epochs: int | None, held: str) -> str:
        """The one line ``fit`` prints when this stopped the run (``held``: which weights
        the model holds now)."""
        best = result.best_epoch
        of = f" of {epochs}" if epochs is not None else ""
        p = self.patience
        return (
            f"fit: stopped early after epoch {entry['epoch'] + 1}{of}: {self.monitored} did "
            f"not improve on {result.best_loss:.6g} (epoch {best + 1}) for {p} "
            f"check{'s' if p != 1 else ''} (patience={p}); {held}."
        )

    def state_dict(self) -> dict[str, Any]:
        return {"bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bad_epochs = state["bad_epochs"]


class BestWeights(Callback):
    """Keeps a copy of the weights (the step's module and the Pyro parameters no module
    holds) of the epoch an :class:`EarlyStopping` found best, to put back when the run
    ends (``restore_best``) or diverges.

    Args:
        stopping: the callback whose checks say which epoch is best (it runs first).
        enabled: take copies (``FitConfig.restore_best``); a copy loaded from a checkpoint
            is kept either way.
    """

    def __init__(self, stopping: EarlyStopping, enabled: bool = True):
        self.stopping = stopping
        self.enabled = bool(enabled)
        self.state: dict[str, Any] | None = None

    def on_validation_end(self, run, entry: dict[str, Any]) -> None:
        if self.enabled and self.stopping.improved:
            self.state = _snapshot(run.module, pyro_params(run.phases))

    def restore(self, run) -> bool:
        """Put the kept weights back into the run's module and Pyro parameters; False when
        there are none."""
        snap = self.state
        if snap is None:
            return False
        if "pyro_params" not in snap:  # a checkpoint of the first edition: module only
            snap = {"module": snap, "pyro_params": {}}
        if run.module is not None and snap.get("module") is not None:
            run.module.load_state_dict(snap["module"])
        params = pyro_params(run.phases)
        with torch.no_grad():
            for k, v in snap["pyro_params"].items():
                if k in params:
                    params[k].copy_(v)
        return True

    def held(self, epoch: int | None) -> str:
        """Which weights the model holds after the run, for messages."""
        if self.enabled and self.state is not None:
            return f"the model holds epoch {epoch + 1}'s weights (restore_best)"
        return "the model holds the last epoch's weights"

    def state_dict(self) -> dict[str, Any]:
        return {"best_state": self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = state.get("best_state")


def _snapshot(module, params: dict[str, torch.Tensor]) -> dict[str, Any]:
    snap = {
        "module": {k: v.detach().clone() for k, v in module.state_dict().items()}
        if module is not None
        else None
    }
    snap["pyro_params"] = {k: v.detach().clone() for k, v in params.items()}
    return snap
