"""Run under torchrun by tests/test_distributed.py: trains the same small regression net on
2 processes (gloo, CPU) three ways and writes rank 0's parameters and figures to argv[1]."""

import contextlib
import sys

import torch
from torch import nn

import probgen
from probgen.data import TensorData
from probgen.train import LossStep, distributed


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    y = torch.sin(x @ torch.tensor([[1.0], [-0.5], [0.3], [2.0]]))
    return TensorData(x[:192], y[:192]), TensorData(x[192:], y[192:])


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))


def mse(m, x, y):
    return ((m(x) - y) ** 2).mean()


def run(model, batch_size, epochs=3, **kw):
    train, val = data()
    return probgen.fit(
        LossStep(model, mse),
        train,
        val,
        epochs=epochs,
        batch_size=batch_size,
        lr=0.01,
        device="cpu",
        seed=0,
        patience=None,
        restore_best=False,
        progress=False,
        verbose=False,
        **kw,
    )


class Killed(Exception):
    pass


def gradient_flags():
    """average_gradients on three parameters: a gradient on both processes, on rank 0
    only, on neither. Returns what rank 0 holds afterwards."""
    rank = distributed.rank()
    both, one, none = (nn.Parameter(torch.zeros(3)) for _ in range(3))
    both.grad = torch.full((3,), float(rank + 1))  # 1 and 2: mean 1.5
    if rank == 0:
        one.grad = torch.full((3,), 4.0)  # 4 and (missing) 0: mean 2
    distributed.average_gradients([both, one, none])
    return [None if p.grad is None else p.grad.clone() for p in (both, one, none)]


def main(out, ckpt):
    a = net()
    res = run(a, batch_size=16)  # 16 per process: global batches of 32
    flags = gradient_flags()  # (fit has set up the process group)
    b = net()

    def kill(entry):
        if entry["epoch"] == 0:
            raise Killed()

    with contextlib.suppress(Killed):
        run(b, batch_size=16, checkpoint=ckpt, callbacks=[kill])
    c = net()
    run(c, batch_size=16, checkpoint=ckpt, resume=True)
    if distributed.is_main_process():
        torch.save(
            {
                "params": [p.detach() for p in a.parameters()],
                "resumed": [p.detach() for p in c.parameters()],
                "val_loss": res.val_loss,
                "train_loss": res.train_loss,
                "world_size": res.world_size,
                "grads": flags,
                "main": distributed.is_main_process(),
            },
            out,
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
