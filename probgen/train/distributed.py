"""Multi-process data-parallel training on ``torch.distributed`` (torchrun).

``torchrun --nproc_per_node N examples/<any>.py ...`` starts N copies of a script;
:func:`probgen.train.fit` sees torchrun's environment (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``), joins the process group (gloo on the CPU, NCCL on GPUs, one GPU per
process) and trains data-parallel:

* every process draws the same global batch order and takes its own slice of each
  global batch of ``batch_size * N`` examples;
* after each phase's backward pass the gradients of that phase's parameters are
  averaged over the processes (one flattened all-reduce per phase, which is what
  :class:`torch.nn.parallel.DistributedDataParallel` does bucket by bucket);
* parameters start equal: rank 0's values are broadcast when training starts and
  whenever Pyro creates a parameter lazily (AutoGuides);
* validation losses and the monitored figure are reduced over the processes, so every
  process takes the same early-stopping decision;
* rank 0 alone writes checkpoints; examples write figures and results only on rank 0
  (:func:`is_main_process`).

Why not the ``DistributedDataParallel`` wrapper itself: it reduces the gradients of
the parameters of one module whose ``forward`` it runs. A probgen step has phases that
share modules (an adversarial autoencoder's encoder is in two phases) and Pyro models
whose parameters Pyro creates lazily as plain tensors in its param store (AutoGuides,
``pyro.param``), which no module holds. Reducing each phase's gradients explicitly
covers both with the same arithmetic. (Pyro's own ``svi_lightning`` example takes the
other route, ``module_local_params=True`` plus an ``ELBOModule``, which fits models
whose parameters all live in modules.)
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist


def env_world_size() -> int:
    """The number of processes torchrun started (1 outside torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True in a single-process run, and on rank 0 of a torchrun job."""
    if is_distributed():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group if there is one; return this process's device.

    Under torchrun, a CUDA device becomes ``cuda:LOCAL_RANK`` (NCCL); a CPU run uses
    gloo. Outside torchrun this does nothing.
    """
    if env_world_size() <= 1 or not dist.is_available():
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        # The group probgen opened, probgen closes, when the process exits: a process that
        # exits with a gloo group still open can abort in interpreter shutdown ("terminate
        # called without an active exception", SIGABRT), since gloo's worker threads
        # outlive the interpreter. Not at the end of fit: a script goes on using the group
        # after it (evaluate's all-reduce, a second fit). A group the user opened is theirs.
        atexit.register(_close_group)
    return device


def _close_group() -> None:
    """Close the process group at exit, all processes together.

    With gloo, the processes first meet at a barrier, so that none destroys its group
    (closing its connections) while another still sends to it or waits on it in a last
    collective: gloo's threads in that other process then fail during interpreter
    shutdown, which aborts it ("terminate called without an active exception",
    SIGABRT). After the barrier no process talks any more, and closing is safe in any
    order. A process that stays longer (rank 0 writing figures) is waited for; one that
    died closes its connections, and gloo's barrier then raises at once (torchrun stops
    the others anyway). The barrier is skipped when this process ends on an uncaught
    exception (the others may never come). NCCL groups are destroyed as they are: NCCL
    aborts its communicators cleanly, and a barrier there could block until NCCL's timeout.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if (
            dist.get_backend() == "gloo"
            and dist.get_world_size() > 1
            and getattr(sys, "last_value", None) is None
        ):
            dist.barrier()
    except Exception:  # a process that did not come: close anyway, as before
        pass
    finally:
        dist.destroy_process_group()


def broadcast_tensors(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Copy rank ``src``'s values of ``tensors`` into every process's (in place)."""
    if not is_distributed() or not tensors:
        return
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src)


def average_gradients(params: Sequence[torch.Tensor]) -> None:
    """Average ``p.grad`` over the processes, in one flattened all-reduce.

    A parameter without a gradient on some process counts there as a zero gradient (so the
    reduction has the same shape everywhere); afterwards it has the averaged one. A
    parameter without a gradient on *every* process keeps ``grad = None`` everywhere, as
    in a one-process run, so the optimizer skips it (a phase whose loss did not touch it
    on any process: e.g. a class head on batches without labelled examples). One flag per
    parameter travels in the same all-reduce.
    """
    if not is_distributed() or not params:
        return
    local = [p.grad is not None for p in params]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    # all ones: filled on the device, no copy from the host
    flags = (
        grads[0].new_ones(len(params))
        if all(local)
        else torch.tensor([float(h) for h in local], dtype=grads[0].dtype, device=grads[0].device)
    )
    flat = torch.cat([g.reshape(-1) for g in grads] + [flags])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    # When this process had every gradient, every flag is set: no need to read them
    # (reading is a host sync on a GPU, once per phase and step).
    seen = local if all(local) else (flat[-len(params) :] > 0).tolist()
    offset = 0
    for p, has in zip(params, seen):
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone() if has else None
        offset += n


def all_reduce_sum(values: Sequence[float], device) -> list[float]:
    """Sum each number over the processes."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (a one-item list outside torchrun)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()
