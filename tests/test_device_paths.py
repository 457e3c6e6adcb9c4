"""Device paths that tests/test_device.py's per-model cases do not reach: resume on CUDA,
evaluate's sum under NCCL, the CVAE baseline's step, dequantized data, gradient averaging
under torchrun, the graded digits' device and a bare model/guide pair under "auto" on a
GPU machine. Each test fails with the defect it names put back (checked by hand)."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor

import probgen
from probgen.data import TensorData
from probgen.infer.context import running_steps
from probgen.train import as_step
from tests.conftest import QUIET
from tests.test_device import _cuda, _value, fake_cuda

# ------------------------------------------------------------------- resume on CUDA


class _MappedToGpu(torch.Tensor):
    """A tensor that answers ``.numpy()`` as a CUDA tensor does (what a checkpoint loaded
    with ``map_location="cuda"`` holds); ``.cpu()`` gives the plain CPU tensor. What it
    cannot see: a real copy from a GPU."""

    def numpy(self, *args, **kwargs):
        raise TypeError(
            "can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() "
            "to copy the tensor to host memory first."
        )

    def cpu(self, *args, **kwargs):
        return self.as_subclass(torch.Tensor)


def _on_gpu(x):
    if torch.is_tensor(x):
        return x.as_subclass(_MappedToGpu)
    if isinstance(x, dict):
        return {k: _on_gpu(v) for k, v in x.items()}
    return x


def test_rng_states_are_read_on_the_cpu_wherever_the_checkpoint_was_mapped():
    """set_rng_state copies each state to the CPU before reading it (``.numpy()`` of the
    NumPy state on a CUDA tensor raised: every resume on CUDA crashed)."""
    from probgen.train import device

    before = np.random.get_state()
    try:
        np.random.seed(3)
        state = device.rng_state(torch.Generator())
        expected = np.random.rand(3)
        np.random.seed(4)
        device.set_rng_state(_on_gpu(state), torch.Generator())
        assert np.array_equal(np.random.rand(3), expected)
    finally:
        np.random.set_state(before)


def test_resume_on_fake_cuda_reads_the_checkpoint_on_the_cpu(tmp_path):
    """A run trained on (fake) CUDA, killed after an epoch and resumed on CUDA: the loop
    maps the checkpoint to the CPU (mapped to the run's device, the RNG states came back
    as CUDA tensors, which torch's and NumPy's generators do not take)."""
    from probgen.models import VAE
    from tests.test_examples_device import fake_cuda_run

    x = (torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    ck = tmp_path / "run.pt"
    state = torch.random.get_rng_state()
    try:
        with pyro.get_param_store().scope(), fake_cuda_run():
            vae = VAE(z_dim=2, hidden=(8,))
            probgen.fit(
                vae,
                TensorData(x),
                epochs=1,
                batch_size=16,
                device="cuda",
                seed=1,
                checkpoint=str(ck),
                **QUIET,
            )
            res = probgen.fit(
                VAE(z_dim=2, hidden=(8,)),
                TensorData(x),
                epochs=2,
                batch_size=16,
                device="cuda",
                seed=1,
                checkpoint=str(ck),
                resume=True,
                **QUIET,
            )
    finally:
        torch.random.set_rng_state(state)
    assert res.epochs_run == 2


# ------------------------------------------------------------------- evaluate under NCCL


def test_evaluate_of_a_bare_svi_step_sums_on_the_gpu_under_nccl(monkeypatch):
    """evaluate's cross-process sum for a step without a module runs where NCCL can
    (this process's GPU), not on the CPU: the wiring of reduce_device into evaluate."""
    from probgen.train import SVIStep, evaluate
    from probgen.train import distributed as ddp

    def model(x):
        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    def guide(x):
        pass

    summed_on = []
    monkeypatch.setattr(ddp, "is_distributed", lambda: True)
    monkeypatch.setattr(ddp, "rank", lambda: 0)
    monkeypatch.setattr(ddp, "world_size", lambda: 1)
    monkeypatch.setattr(
        ddp, "all_reduce_sum", lambda values, device: summed_on.append(device) or list(values)
    )
    monkeypatch.setattr(torch.distributed, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with pyro.get_param_store().scope():
        evaluate(SVIStep(model, guide), TensorData(torch.randn(10)), batch_size=5)
    assert summed_on == [torch.device("cuda", 0)]


# ------------------------------------------------------------------- host syncs


def test_cvae_baseline_step_on_fake_cuda_has_no_sync(mnist_small):
    """The CVAE's baseline network (trained by fit before the CVAE, examples/cvae.py)
    checks its inputs' values outside the fit loop only."""
    from probgen.data import quadrant_task
    from probgen.models import Baseline

    torch.manual_seed(0)
    model = Baseline(hidden=(16,))
    batch = next(quadrant_task(mnist_small["train"], 1).batches(8))
    step = as_step(model, probgen.FitConfig(patience=None, restore_best=False))
    with (
        fake_cuda(model, batch) as (_mode, syncs, (_, fb)),
        running_steps(data_checked=True, module=step.declared_module),
    ):
        for phase in step.phases:
            loss = _value(phase.loss(fb, {}))
            assert loss.device.type == "cuda" and loss.requires_grad
    assert syncs.events == [], syncs.report()


def test_dequantized_training_data_draws_without_syncs(mnist_small):
    """``dequantized(data)`` (a fresh draw per batch) checks the grey levels once, when
    it is made, not in every batch the loader draws."""
    from probgen.data.dequantize import dequantized

    x, y = next(mnist_small["train"].batches(8))
    data = dequantized(TensorData(x, y))
    with fake_cuda(x, y) as (_mode, syncs, (fx, fy)):
        out = data.transform((fx, fy), torch.Generator().manual_seed(0))
        assert _cuda(out)
    assert syncs.events == [], syncs.report()


def test_averaging_gradients_reads_the_flags_only_when_a_gradient_is_missing(monkeypatch):
    """Under DDP each phase's gradients are averaged in one all-reduce; the flags of
    which parameters had a gradient are read back to the host (``.tolist()``, a sync)
    only when this process lacks one."""
    from probgen.train import distributed as ddp

    reads = []
    monkeypatch.setattr(ddp, "is_distributed", lambda: True)
    monkeypatch.setattr(ddp.dist, "all_reduce", lambda t, *a, **k: None)
    monkeypatch.setattr(ddp.dist, "get_world_size", lambda *a: 2)
    lin = torch.nn.Linear(3, 2)
    original = FakeTensor.tolist
    with fake_cuda(lin) as (_mode, syncs, _), pytest.MonkeyPatch.context() as m:
        tolist = FakeTensor.tolist  # (fake_cuda's zeros; undone before fake_cuda's patch)
        m.setattr(FakeTensor, "tolist", lambda self: reads.append(1) or tolist(self))
        for p in lin.parameters():
            p.grad = torch.ones_like(p)
        ddp.average_gradients(list(lin.parameters()))
        assert len(reads) == 0 and syncs.events == [], syncs.report()
        lin.bias.grad = None
        ddp.average_gradients(list(lin.parameters()))
        assert len(reads) == 1
    assert FakeTensor.tolist is original


# ------------------------------------------------------------------- graded digits


@pytest.mark.parametrize("cached", [False, True])
def test_graded_mnist_puts_every_split_on_the_device_asked(cached, tmp_path):
    """Both paths of graded_mnist (computed, read from the cache) move the splits to
    ``device`` (``meta``: a device other than the CPU that this machine has)."""
    from probgen.data.faces import graded_mnist

    if cached:
        graded_mnist("thickness", 3, val_size=16, limit=32, cache=tmp_path)
    splits = graded_mnist("thickness", 3, val_size=16, limit=32, cache=tmp_path, device="meta")
    for s in splits.values():
        assert s.images.device.type == "meta" and s.digits.device.type == "meta"


# ------------------------------------------------------------------- the README's SVI snippet


def test_the_readme_svi_snippet_trains_on_a_gpu_machine(monkeypatch):
    """The README's model/guide pair (AutoNormal, CPU data) under ``device="auto"`` on a
    machine where "auto" means CUDA (fake): a bare pair trains where its data is, as
    Pyro's SVI moves nothing, so the guide's parameters and the data meet on one device
    and ``guide.median()`` works after fit."""
    from pyro.infer import Trace_ELBO
    from pyro.infer.autoguide import AutoNormal

    from probgen.train import SVIStep
    from tests.test_examples_device import fake_cuda_run

    def model(x, y=None):
        w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(x @ w, sigma), obs=y)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5])
    state = torch.random.get_rng_state()
    try:
        with pyro.get_param_store().scope(), fake_cuda_run():
            guide = AutoNormal(model)
            result = probgen.fit(
                SVIStep(model, guide, loss=Trace_ELBO()),
                TensorData(x, y),
                epochs=2,
                lr=0.05,
                batch_size=20,
                **QUIET,
            )
            w = guide.median()["w"]
    finally:
        torch.random.set_rng_state(state)
    assert result.epochs_run == 2 and w.device.type == "cpu"
