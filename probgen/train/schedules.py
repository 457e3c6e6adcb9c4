"""Learning-rate schedules by name (a run setting: ``FitConfig.lr_schedule``).

Each entry builds a :class:`torch.optim.lr_scheduler.LRScheduler` for one optimizer,
given the run's total number of optimizer steps and the steps in one epoch; the fit
loop steps it after every optimizer step, so the schedule is the same whatever the
batch size. Every phase of a multi-phase step gets its own scheduler.

==================  ==================================================================
``cosine``          cosine decay from ``lr`` to 0 over the run (Loshchilov & Hutter 2017)
``warmup_cosine``   linear warm-up over ``warmup_epochs``, then cosine decay
``onecycle``        Smith & Topin 2019, "Super-Convergence": up to ``lr``, then down
                    (torch's ``OneCycleLR``; rising share ``warmup_epochs`` of the run
                    when given, else 0.3)
``linear``          linear decay from ``lr`` to 0
``step``            times 0.1 after half and after three quarters of the run
==================  ==================================================================
"""

from __future__ import annotations

import math

from torch.optim import lr_scheduler

from probgen.registry import Registry

SCHEDULES: Registry = Registry("learning-rate schedule")


def _warmup_steps(warmup_epochs: float, steps_per_epoch: int, total: int) -> int:
    return min(round(warmup_epochs * steps_per_epoch), max(total - 1, 0))


@SCHEDULES.register("cosine")
def cosine(optimizer, total_steps: int, steps_per_epoch: int, warmup_epochs: float = 0.0):
    return lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
    )


@SCHEDULES.register("warmup_cosine")
def warmup_cosine(optimizer, total_steps: int, steps_per_epoch: int, warmup_epochs: float = 1.0):
    warm = _warmup_steps(warmup_epochs, steps_per_epoch, total_steps)

    def factor(s):
        if s < warm:
            return (s + 1) / warm
        rest = max(total_steps - warm, 1)
        return 0.5 * (1 + math.cos(math.pi * min(s - warm, rest) / rest))

    return lr_scheduler.LambdaLR(optimizer, factor)


@SCHEDULES.register("onecycle")
def onecycle(optimizer, total_steps: int, steps_per_epoch: int, warmup_epochs: float = 0.0):
    share = 0.3
    if warmup_epochs:
        share = min(max(warmup_epochs * steps_per_epoch / total_steps, 0.01), 0.99)
    max_lr = [g["lr"] for g in optimizer.param_groups]
    return lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total_steps + 1, pct_start=share, cycle_momentum=False
    )


@SCHEDULES.register("linear")
def linear(optimizer, total_steps: int, steps_per_epoch: int, warmup_epochs: float = 0.0):
    return lr_scheduler.LambdaLR(optimizer, lambda s: max(1.0 - s / total_steps, 0.0))


@SCHEDULES.register("step")
def step(optimizer, total_steps: int, steps_per_epoch: int, warmup_epochs: float = 0.0):
    return lr_scheduler.MultiStepLR(
        optimizer, milestones=[total_steps // 2, 3 * total_steps // 4], gamma=0.1
    )
