"""Scoring a step on data without training it: the fit loop's validation pass and
:func:`evaluate`, the same pass for a user."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import ExitStack
from typing import Any

import pyro
import torch

from probgen.data.tensors import TensorData, same_device
from probgen.errors import DataError
from probgen.infer.batches import batch_len
from probgen.infer.context import StepContext
from probgen.infer.steps import as_step
from probgen.train import distributed as ddp
from probgen.train.batches import as_batch, check_data_once, shard
from probgen.train.config import FitConfig
from probgen.train.device import module_device, reduce_device

__all__ = ["evaluate", "evaluate_pass"]


@torch.no_grad()
def evaluate(
    step: Any,
    data: TensorData | Iterable[Any],
    batch_size: int = 1000,
    device: torch.device | str | None = None,
) -> float | None:
    """Mean per-example ``step.eval_loss`` over ``data`` (no gradients, eval mode).

    ``step`` is what :func:`fit` takes (a probgen model, an :class:`SVIStep`, a
    :class:`LossStep`, ...). It runs as the fit loop's validation runs it: a probgen
    model in a scope of Pyro's param store of its own (the user's store is left as it
    was), in the fit loop's step context (:class:`~probgen.infer.context.StepContext`),
    with a :class:`TensorData` checked whole once (so the model skips its per-batch checks).
    ``data`` is a :class:`TensorData` or any iterable of batches. Under torchrun each
    process scores its share and the mean is over all of them (summed on ``device``, the
    module's by default: NCCL takes CUDA tensors only). The losses are summed where they
    are and read once, at the end (one host sync per pass on a GPU).

    Args:
        device: where the batches go and the sums are reduced; default the step's
            module's device (a step without a module: batches stay where they are). A
            TensorData elsewhere (in host memory for a model on a GPU) stays where it is,
            each batch copied through pinned memory.

    Raises:
        DataError: the data gave no batch, or failed the model's data check.
    """
    step = as_step(step, FitConfig())
    batch_device = torch.device(device) if device is not None else module_device(step.module)
    with ExitStack() as stack:
        if step.isolate_param_store:
            stack.enter_context(pyro.get_param_store().scope())
        checked = check_data_once(step, data)
        stack.enter_context(StepContext(data_checked=checked, module=step.declared_module))
        return evaluate_pass(step, data, batch_size, batch_device, reduce_device(batch_device))


def evaluate_pass(step, data, batch_size: int, batch_device, sum_device) -> float | None:
    """One pass of ``step.eval_loss`` over ``data`` in eval mode (the fit loop's validation
    and :func:`evaluate`), reduced over processes on ``sum_device``; ``None`` when the
    step has no validation loss."""
    module = step.module
    was_training = module.training if module is not None else None
    if module is not None:
        module.eval()
    # tensors summed where they are (no read per batch), numbers on the host
    total: Any = 0.0
    n = 0
    rank, world = ddp.rank(), ddp.world_size()
    try:
        if isinstance(data, TensorData):
            if world > 1:
                data = data.subset(slice(rank, None, world))
            # data elsewhere than the batches' device (host data for a GPU): each batch
            # copied through pinned memory, the data set left where it is
            staged = (
                batch_device
                if batch_device is not None and not same_device(data.device, batch_device)
                else None
            )
            batches = data.batches(batch_size, device=staged)
        else:
            batches = (
                shard(as_batch(b, batch_device), rank, world)
                if world > 1
                else as_batch(b, batch_device)
                for b in data
            )
        seen = False
        for batch in batches:
            seen = True
            value = step.eval_loss(batch)
            if value is None:
                return None
            b = batch_len(batch)
            if torch.is_tensor(value):
                total = total + value.detach() * b
            else:  # a number already on the host (a Pyro ELBO's .loss): no read
                total = total + float(value) * b
            n += b
        if not seen and world == 1:
            raise DataError(
                "the validation data gave no batch (an empty DataLoader or data "
                "set?); give data with at least one example, or val=None."
            )
    finally:
        if module is not None:
            module.train(was_training)
    # one read of the sum (a host sync on a GPU) per pass, not one per batch
    total, n = ddp.all_reduce_sum([float(total), n], sum_device)
    if n == 0:
        raise DataError(
            "the validation data gave no batch on any process; give data with at "
            "least one example, or val=None."
        )
    return total / n
