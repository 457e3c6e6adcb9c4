"""A checkpoint written before the fit loop was split into parts resumes as it did.

``tests/data/before_split/`` holds what probgen wrote at commit 7398e78 (the loop in one
file, early stopping and best weights inside ``Run``): ``run.pt``, the checkpoint of a
run stopped after 3 of its epochs, and ``reference.pt``, the same run made uninterrupted
(its data, final weights and Pyro parameters, history, best epoch). The run is a user's
Pyro model (a network registered with ``pyro.module``, a ``pyro.param`` with a
constraint, a global latent under an AutoNormal guide) with early stopping on a figure a
callback adds, so that the checkpoint's early-stopping state matters: the best epoch (1)
comes before the checkpoint, one check without improvement is counted in it, and the run
stops early after its 5th epoch with the best weights restored.

The files are made by running this module from a checkout of that commit::

    OMP_NUM_THREADS=1 python tests/test_resume_compat.py tests/data/before_split
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from torch import nn

import probgen
from probgen.data import TensorData
from probgen.train import Callback, SVIStep

DATA = Path(__file__).resolve().parent / "data" / "before_split"
SCORES = [5.0, 1.0, 4.0, 3.0, 6.0, 7.0]  # best at epoch 1; patience 3 stops after epoch 4
SETTINGS = dict(
    batch_size=8,
    lr=0.05,
    seed=0,
    monitor="score",
    mode="min",
    patience=3,
    restore_best=True,
    device="cpu",
    progress=False,
    verbose=False,
)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 1)


class Scores(Callback):
    """Adds the epoch's figure that early stopping follows."""

    def on_validation_end(self, run, entry):
        entry["score"] = SCORES[entry["epoch"]]


def make_run():
    net = Net()

    def model(x, y):
        pyro.module("net", net)
        scale = pyro.param("scale", torch.tensor(1.0), constraint=dist.constraints.positive)
        shift = pyro.sample("shift", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(net.linear(x).squeeze(-1) + shift, scale), obs=y)

    guide = AutoNormal(model)
    return net, SVIStep(model, guide, module=net, loss=Trace_ELBO())


def fit(step, x, y, epochs, **kw):
    return probgen.fit(
        step,
        TensorData(x[:24], y[:24]),
        TensorData(x[24:], y[24:]),
        epochs=epochs,
        callbacks=[Scores()],
        **SETTINGS,
        **kw,
    )


def _store() -> dict:
    store = pyro.get_param_store()
    return {name: store[name].detach().clone() for name in store}


def test_a_checkpoint_of_the_loop_before_the_split_resumes_as_the_uninterrupted_run(tmp_path):
    reference = torch.load(DATA / "reference.pt", weights_only=True)
    ckpt = tmp_path / "run.pt"
    shutil.copy(DATA / "run.pt", ckpt)
    pyro.clear_param_store()
    try:
        net, step = make_run()
        result = fit(
            step, reference["x"], reference["y"], epochs=6, checkpoint=str(ckpt), resume=True
        )
        params = _store()
    finally:
        pyro.clear_param_store()
    assert result.epochs_run == reference["epochs_run"] == 5 and result.stopped_early
    assert result.best_epoch == reference["best_epoch"] == 1
    for key in ("train_loss", "val_loss"):
        assert torch.allclose(
            torch.tensor(result.curve(key)), reference[key], rtol=1e-6, atol=1e-7
        ), key
    for name, value in net.state_dict().items():  # epoch 1's weights, restored
        assert torch.allclose(value, reference["module"][name], rtol=1e-6, atol=1e-7), name
    assert sorted(params) == sorted(reference["params"])
    for name, value in params.items():
        assert torch.allclose(value, reference["params"][name], rtol=1e-6, atol=1e-7), name


def write(folder: Path) -> None:
    """The fixture, written by the probgen on the path (the one before the split)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(36, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 + 0.5 * torch.randn(36, generator=g)
    pyro.clear_param_store()
    torch.manual_seed(1)  # the network's initial weights
    _, step = make_run()
    fit(step, x, y, epochs=3, checkpoint=str(folder / "run.pt"))
    pyro.clear_param_store()
    torch.manual_seed(1)
    net, step = make_run()
    result = fit(step, x, y, epochs=6)
    torch.save(
        {
            "x": x,
            "y": y,
            "module": net.state_dict(),
            "params": _store(),
            "train_loss": torch.tensor(result.curve("train_loss")),
            "val_loss": torch.tensor(result.curve("val_loss")),
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
        },
        folder / "reference.pt",
    )
    pyro.clear_param_store()


if __name__ == "__main__":
    write(Path(sys.argv[1]))
