"""Device handling without a GPU: every model and the examples' post-training paths on
fake CUDA tensors, and each training step's budget of host-device synchronisations.

**Why fake CUDA is a faithful stand-in.** torch's ``FakeTensorMode`` builds tensors with
``device="cuda"`` on a CPU-only machine: each holds a shape, dtype, device and autograd
history but no data, and every operator runs through the same device-propagation rules
as on a GPU -- an operator that mixes a CPU tensor of more than zero dimensions with a
CUDA one raises (``FakeTensorDeviceMismatchError``) where CUDA would raise, and a
factory call without a device (``torch.zeros(n)``) makes a CPU tensor that then fails
the next operator, as on a GPU. A model's parameters become fake CUDA tensors with
``module._apply`` (the path of ``module.to``), its batches with ``from_tensor(...).to``.
Reading a value back to the host needs data, so ``FakeTensorMode`` refuses it; the
dispatch mode :class:`HostSyncs` sits above it, records every operation that would
synchronise with a GPU -- ``.item()``/``bool()``/``float()`` (``_local_scalar_dense``),
``nonzero`` and other operators whose output shape depends on the data, boolean-mask
indexing, blocking copies between host and device (a draw made on the CPU and copied
to the GPU each step stalls as well) -- and answers a scalar read as "nothing
found" (``False``/``0``), which is how probgen writes its value checks ("is anything
bad?", :func:`probgen.models.checks.found`). A training step's count is its budget:
a new synchronisation in a hot path fails the budget test. The steps run in the fit
loop's context (:mod:`probgen.infer.context`, data checked once) with Pyro's
validation off, as :func:`probgen.fit` runs them.

**What it cannot see.** No kernel runs: neither the backward pass (the loop's
``loss.backward()``; autograd's engine needs a real device, so a gradient penalty's
``autograd.grad`` is left out here), nor cuDNN/cuBLAS kernels and their numerics, nor
the real asynchrony of the stream (a copy that is ``non_blocking`` in name but from
pageable memory still waits on a GPU; the count here takes the flag at its word),
nor allocator pressure, nor the fit loop itself (checkpoint, resume, moving the
module and data). ``benchmarks/gpu_check.sh`` runs those on a lent GPU, under
``torch.cuda.set_sync_debug_mode("warn")``.
"""

from __future__ import annotations

import contextlib
import traceback

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import Predictive
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import probgen
from probgen.data import TensorData
from probgen.infer.context import running_steps
from probgen.models import MODELS
from probgen.train import as_step
from tests.test_models import ADVERSARIAL, TINY

aten = torch.ops.aten

# operators whose output shape depends on the data: the host must read it first
_DATA_DEPENDENT = {
    aten.nonzero.default,
    aten.masked_select.default,
    aten.unique_dim.default,
    aten._unique2.default,
    aten.unique_consecutive.default,
    aten.bincount.default,
    aten.repeat_interleave.Tensor,
    aten.equal.default,
}
_INDEXING = {
    aten.index.Tensor,
    aten.index_put.default,
    aten.index_put_.default,
    aten._index_put_impl_.default,
}


def _on_device(t) -> bool:
    return torch.is_tensor(t) and t.device.type != "cpu"


class HostSyncs(TorchDispatchMode):
    """Records the operations that would synchronise the host with the GPU (see the
    module docstring); under fake tensors a scalar read answers ``False``/``0``."""

    def __init__(self):
        super().__init__()
        self.events = []

    def _note(self, kind, func):
        where = [
            f"{f.filename.rsplit('/probgen/', 1)[-1]}:{f.lineno}"
            for f in traceback.extract_stack()[:-2]
            if "/probgen/" in f.filename
        ]
        self.events.append((kind, str(func), where[-3:]))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default:
            t = args[0]
            if _on_device(t):
                self._note("item/bool/float", func)
            if isinstance(t, FakeTensor):  # no data to read: "nothing found"
                return False if t.dtype == torch.bool else (0.0 if t.is_floating_point() else 0)
        elif func in _DATA_DEPENDENT and any(_on_device(a) for a in args):
            self._note("data-dependent shape", func)
        elif (
            func in _INDEXING
            and _on_device(args[0])
            and any(
                torch.is_tensor(i) and i.dtype in (torch.bool, torch.uint8) for i in (args[1] or ())
            )
        ):
            self._note("boolean mask", func)
        elif (
            func is aten._to_copy.default
            and not kwargs.get("non_blocking", False)
            and torch.is_tensor(args[0])
            and "device" in kwargs
            and _on_device(args[0]) != (torch.device(kwargs["device"]).type != "cpu")
        ):
            self._note(
                "device-to-host copy" if _on_device(args[0]) else "host-to-device copy", func
            )
        elif (
            func is aten.copy_.default
            and not (args[2:] and args[2])
            and _on_device(args[0]) != _on_device(args[1])
        ):
            self._note(
                "device-to-host copy" if _on_device(args[1]) else "host-to-device copy", func
            )
        return func(*args, **kwargs)

    def report(self) -> str:
        return "\n".join(
            f"  {kind} ({op}) at {' <- '.join(reversed(w))}" for kind, op, w in self.events
        )


def _fake(obj, mode: FakeTensorMode):
    """Modules, tensors, TensorData and tuples of them as fake CUDA objects."""
    if isinstance(obj, torch.nn.Module):
        with mode:
            obj._apply(lambda t: mode.from_tensor(t).to("cuda"))
        return obj
    if torch.is_tensor(obj):
        with mode:
            return mode.from_tensor(obj).to("cuda")
    if isinstance(obj, TensorData):
        return TensorData(*_fake(obj.tensors, mode), transform=obj.transform, names=obj.names)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_fake(o, mode) for o in obj)
    return obj


def _cuda(x) -> bool:
    """Every tensor in ``x`` (nested dicts/tuples) is a CUDA tensor."""
    if torch.is_tensor(x):
        return x.device.type == "cuda"
    if isinstance(x, dict):
        return all(_cuda(v) for v in x.values())
    if isinstance(x, (tuple, list)):
        return all(_cuda(v) for v in x)
    return True


@contextlib.contextmanager
def fake_cuda(*objs):
    """``(mode, syncs, fakes)``: the objects as fake CUDA objects, the fake mode and a
    :class:`HostSyncs` recorder active; Pyro's param store scoped and validation off (as
    in the fit loop); NumPy conversions of fake tensors give zeros of their shape (the
    end of a figure's or an ArviZ table's data)."""
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    fakes = [_fake(o, mode) for o in objs]
    syncs = HostSyncs()
    mp = pytest.MonkeyPatch()
    mp.setattr(
        FakeTensor, "numpy", lambda self, *a, **k: np.zeros(tuple(self.shape)), raising=False
    )
    mp.setattr(
        FakeTensor, "tolist", lambda self: np.zeros(tuple(self.shape)).tolist(), raising=False
    )
    try:
        with pyro.get_param_store().scope(), pyro.validation_enabled(False), mode, syncs:
            yield mode, syncs, fakes
    finally:
        mp.undo()


# --------------------------------------------------------------------------- the cases


def _glow(mnist):
    from probgen.models.flow import FlowModel

    x, _ = next(mnist["train"].batches(8))
    x = x[:, :, :8, :8].contiguous()
    return FlowModel("glow", event_shape=(1, 8, 8), depth=4, hidden=8, levels=2), (x,)


def _flow_dequantized(mnist):
    from probgen.models.flow import FlowModel

    x, _ = next(mnist["train"].batches(8))
    x = x[:, :, :8, :8].contiguous()
    return FlowModel(
        "realnvp",
        event_shape=(1, 8, 8),
        depth=2,
        hidden=8,
        dequantization="variational",
        dequantizer_hidden=4,
    ), (x,)


def _vae(mnist, **kw):
    from probgen.models import VAE

    x, y = next(mnist["train"].batches(8))
    return VAE(**{"z_dim": 3, "hidden": (16,), "likelihood": "continuous_bernoulli", **kw}), (x, y)


def _cvae_completed(mnist):
    from probgen.data import quadrant_task
    from probgen.models import CVAE, Baseline

    model = CVAE(Baseline(hidden=(16,)), z_dim=3, hidden=(16,))
    data = model.with_completions(quadrant_task(mnist["train"], 1).subset(slice(0, 8)))
    return model, data.all()


def _dcgan(mnist):
    from probgen.models import GAN

    x, _ = next(mnist["train"].batches(8))
    return GAN(z_dim=4, net="dcgan", g_width=4, d_width=4, ema=0.9), (x,)


# Every registered model (test_models' tiny instances) and variants whose step differs.
CASES = {
    **TINY,
    **ADVERSARIAL,
    "glow": _glow,
    "flow_dequantized": _flow_dequantized,
    "cvae_completed": _cvae_completed,
    "dcgan_ema": _dcgan,
    "vae_meanfield": lambda m: _vae(m),
    "vae_iwae": lambda m: _vae(m),
    "vae_conv_blocks": lambda m: _vae(
        m, net="conv", encoder="delta", beta=0.0, corruption="blocks"
    ),
    "vae_noise_gaussian": lambda m: _vae(m, corruption="noise", likelihood="gaussian"),
    "vae_iaf": lambda m: _vae(m, guide_flow="iaf"),
    "vae_planar_beta": lambda m: _vae(m, guide_flow="planar", beta=2.0),
    "vae_zuko_guide": lambda m: _vae(
        m, guide_flow="zuko:nsf", guide_flow_kwargs={"hidden_features": [16]}
    ),
    "vae_zuko_prior": lambda m: _vae(
        m, prior_flow="zuko:maf", prior_flow_kwargs={"hidden_features": [8]}
    ),
}
CONFIG = {
    "vae_meanfield": dict(objective="meanfield"),
    "vae_iwae": dict(objective="iwae", num_particles=3),
}

# Host synchronisations per training step (every phase, with its repeats) in the fit
# loop's context over data it checked. The semi-supervised AAE's classification phase
# reads whether a batch has a labelled example (see its classification_loss).
BUDGET = dict.fromkeys(CASES, 0)
BUDGET["semi_supervised_aae"] = 1


# Models whose batches have no values to check (continuous vectors, no labels).
UNCHECKED = {"flow"}


def test_every_registered_model_has_a_device_case():
    assert set(MODELS.names()) <= set(CASES)


def _step(name, mnist):
    torch.manual_seed(0)
    model, batch = CASES[name](mnist)
    step = as_step(
        model, probgen.FitConfig(patience=None, restore_best=False, **CONFIG.get(name, {}))
    )
    # one real step on the CPU first: lazily made state (ActNorm's start, Pyro's params)
    with pyro.get_param_store().scope(), pyro.validation_enabled(False):
        ctx = {}
        for phase in step.phases:
            phase.loss(batch, ctx)
    if hasattr(model, "pop_term_means"):  # Flow-GAN's running sums, emptied every epoch
        model.pop_term_means()
    return model, batch, step


def _value(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name", sorted(CASES))
def test_training_step_on_fake_cuda_within_its_sync_budget(name, mnist_small):
    """The step's phase losses run on CUDA tensors without a device mix, and the step reads
    back to the host no more often than its budget (0 for all but one model)."""
    model, batch, step = _step(name, mnist_small)
    with (
        fake_cuda(model, batch) as (_mode, syncs, (_, fb)),
        running_steps(data_checked=True, module=step.declared_module),
    ):
        ctx = {}
        for phase in step.phases:
            for _ in range(phase.repeats):
                loss = _value(phase.loss(fb, ctx))
                assert loss.device.type == "cuda" and loss.dim() == 0, phase.name
                assert loss.requires_grad, phase.name
    assert len(syncs.events) == BUDGET[name], (
        f"{name}: {len(syncs.events)} host syncs per step (budget {BUDGET[name]}):\n"
        + syncs.report()
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_unchecked_step_eval_loss_and_predictive_on_fake_cuda(name, mnist_small):
    """The same step over data the loop did not check (the models check each batch),
    the validation loss, and Pyro's Predictive: all on CUDA, no device mix."""
    model, batch, step = _step(name, mnist_small)
    with fake_cuda(model, batch) as (_mode, syncs, (_, fb)):
        with running_steps(data_checked=False, module=step.declared_module):
            ctx = {}
            for phase in step.phases:
                assert _value(phase.loss(fb, ctx)).device.type == "cuda", phase.name
        if name not in UNCHECKED:  # the per-batch checks still run for data not checked
            assert syncs.events, f"{name} checks nothing of a batch the loop did not check"
        with torch.no_grad(), running_steps(data_checked=True, module=step.declared_module):
            value = step.eval_loss(fb)
            assert value is None or value.device.type == "cuda"
        with torch.no_grad():
            if name in ADVERSARIAL or name == "dcgan_ema":
                draws = Predictive(model.model, num_samples=2)(None, size=3)
            else:
                draws = Predictive(model.model, guide=model.guide, num_samples=2)(*fb)
        assert draws and _cuda(draws), name


def test_batch_transforms_draw_on_the_device_without_syncs(mnist_small):
    """The per-batch transforms the fit loop applies with its CPU generator (dynamic
    binarization, uniform dequantization, corruption, augmentation) draw on the batch's
    device: no host-to-device copy of CPU draws, no boolean selection, output on CUDA."""
    from probgen.data import GaussianNoise, RandomBlocks, RandomShift, dynamic_binarization
    from probgen.data.dequantize import uniform_dequantization

    x, y = next(mnist_small["train"].batches(8))
    y = torch.where(torch.arange(8) % 2 == 0, y, torch.full_like(y, -1))  # half unlabelled
    g = torch.Generator().manual_seed(0)
    transforms = [
        dynamic_binarization,
        uniform_dequantization(256, check=False),
        RandomShift(2),
        RandomShift(2, only_labelled=True),
        lambda b, gen: (RandomBlocks(5)(b[0], gen),) + b[1:],
        lambda b, gen: (GaussianNoise(0.3)(b[0], gen),) + b[1:],
    ]
    with fake_cuda(x, y) as (_mode, syncs, (fx, fy)):
        for t in transforms:
            out = t((fx, fy), g)
            assert _cuda(out) and out[0].shape == fx.shape
    assert syncs.events == [], syncs.report()


# --------------------------------------------------------------------------- post-fit


def _post_fit(name, model, b):
    """The methods a user calls on a trained model of the case ``name`` (batch ``b``)."""
    x = b[0]
    if name in (
        "vae",
        "vae_meanfield",
        "vae_iwae",
        "vae_iaf",
        "vae_planar_beta",
        "vae_noise_gaussian",
        "vae_conv_blocks",
        "vae_zuko_guide",
        "vae_zuko_prior",
    ):
        labels = b[1] if model.num_labels else None
        out = [
            model.reconstruct(x, labels),
            model.encode(x, labels)[0],
            model.posterior(x, labels).sample(),
            model.sample(4, None if not model.num_labels else labels[:4]),
        ]
        if model.num_labels:
            out.append(model.decode(model.encode(x, labels)[0], labels))
        return out
    if name in ("cvae", "cvae_completed"):
        return [model.predict(x, num_samples=2), model.baseline.predict(x), model.complete(x)]
    if name in ("flow", "glow", "flow_dequantized"):
        return [
            model.log_prob(x),
            model.bits_per_dim(x),
            model.sample(3),
            model.flow.encode(model._data_transforms()[0].inv(x))
            if model.preprocess == "logit" and model.flow.exact
            else model.log_prob(x),
        ]
    if name in ("gan", "dcgan_ema"):
        return [
            model.sample(5),
            model.discriminate(model.sample(3)),
            model.sample(4, generator=torch.Generator().manual_seed(0)),
        ]
    if name == "mevae":
        d = model.decompose(x)
        return [d["reconstruction"], d["z"], model.generate(2)["mean"], model.sample(2)]
    if name == "flowgan":
        return [model.sample(2), model.bits_per_dim(x)]
    if name == "aae":
        return [
            model.sample(4, b[1][:4]),
            model.reconstruct(x),
            model.codes(x),
            model.discriminate(model.codes(x), b[1]),
        ]
    if name == "semi_supervised_aae":
        return [
            model.predict(x),
            model.reconstruct(x),
            model.sample(3),
            model.decode(model.prior_sample(3), b[1][:3].clamp(min=0)),
        ]
    if name == "caae":
        return [model.edit(x, 2), model.edit(x, b[1]), model.sample(3)]
    if name == "age_cgan":
        z = model.invert(x, b[1], refine="none")
        return [
            model.sample(b[1]),
            model.sample(1, n=2),
            z,
            model.regenerate(z, 3),
            model.edit(x, b[1], 4),
            model.encoder_pairs(4).tensors[0],
        ]
    raise AssertionError(f"no post-fit calls for {name}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_post_fit_methods_on_fake_cuda(name, mnist_small):
    """What a user calls on a model trained on a GPU, with inputs on that GPU: outputs on
    CUDA, no device mix."""
    model, batch, _ = _step(name, mnist_small)
    model.eval()
    with fake_cuda(model, batch) as (_mode, _syncs, (_, fb)):
        outs = _post_fit(name, model, fb)
    assert outs and _cuda(outs), name


# --------------------------------------------------------------------------- examples


@pytest.fixture
def fused_gru_fake():
    """On a GPU ``nn.GRUCell`` runs one fused kernel, ``aten::_thnn_fused_gru_cell``, for
    which torch registers no fake implementation: its shapes (the new hidden state, and
    the workspace of the five gates) for the duration of a test."""
    lib = torch.library.Library("aten", "FRAGMENT")

    def shapes(input_gates, hidden_gates, hx, input_bias=None, hidden_bias=None):
        return hx.new_empty(hx.shape), hx.new_empty((hx.shape[0], 5 * hx.shape[1]))

    torch.library.register_fake("aten::_thnn_fused_gru_cell", shapes, lib=lib)
    yield
    lib._destroy()


def test_aging_inversion_and_editing_on_fake_cuda(mnist_small, fused_gru_fake):
    """examples/aging.py after training: Age-cGAN's inversion (encoder) and editing at
    every level, the CAAE's edits, the recurrent model's progression."""
    from probgen.models import CAAE, AgeCGAN, RecurrentAger

    x, _y = next(mnist_small["train"].batches(4))
    levels = 3
    cgan = AgeCGAN(num_levels=levels, z_dim=4, g_width=4, d_width=4, e_width=4).eval()
    caae = CAAE(num_levels=levels, z_dim=3, hidden=(16,), d_hidden=(16,), d_img_width=4).eval()
    rec = RecurrentAger(num_levels=levels, hidden=8, embed=8).eval()
    seq = x[:, None].expand(4, levels, 1, 28, 28).contiguous()
    with fake_cuda(cgan, caae, rec, x, seq) as (_mode, _syncs, (_, _, _, fx, fseq)):
        z = cgan.invert(fx, 1, refine="none")
        edits = [
            torch.stack([cgan.regenerate(z, t) for t in range(levels)], 1),
            torch.stack([caae.edit(fx, t) for t in range(levels)], 1),
            rec.progression(fx, 0),
            rec.edit(fx, 0, 2),
            rec.sequence_loss(fseq, start=0),
        ]
    assert _cuda(edits)


def test_manifold_latent_figures_on_fake_cuda(mnist_small):
    """examples/latent_space.py: the manifold's codes are made where the decoder lives;
    the scatter and interpolation figures take CUDA codes."""
    from probgen.models import VAE
    from probgen.viz import interpolation_figure, latent_scatter, manifold_codes
    from probgen.viz.latent import manifold_images

    vae = VAE(z_dim=2, hidden=(16,)).eval()
    x, y = next(mnist_small["train"].batches(8))
    with fake_cuda(vae, x, y) as (_mode, _syncs, (_, fx, fy)):
        images = manifold_images(vae.decode, n=3)
        assert images.shape == (9, 1, 28, 28) and images.device.type == "cuda"
        assert manifold_codes(3, device="cuda").device.type == "cuda"
        codes = vae.encode(fx)[0]
        latent_scatter({"VAE": codes}, fy)
        path = torch.linspace(0, 1, 4, device="cuda")[:, None]
        interpolation_figure({"VAE": vae.decode(codes[:1] * (1 - path) + codes[1:2] * path)})


def test_metrics_on_fake_cuda(mnist_small):
    """The examples' metrics on a model and data on the GPU: the autoencoder report
    (ELBO, importance-sampled NLL, active units), the CVAE's ELBO and NLL, a flow's
    bits/dim, the anomaly score, reconstruction errors."""
    from probgen.data import quadrant_task
    from probgen.metrics import elbo_per_example, mse_per_image
    from probgen.metrics.likelihood import elbo_and_iw_nll
    from probgen.metrics.report import autoencoder_report
    from probgen.models import CVAE, VAE, Baseline

    vae = VAE(z_dim=3, hidden=(16,), likelihood="continuous_bernoulli").eval()
    cvae = CVAE(Baseline(hidden=(16,)), z_dim=3, hidden=(16,)).eval()
    flow, (xf,) = _glow(mnist_small)
    flow.initialize(xf)
    data = mnist_small["val"].subset(slice(0, 16))
    task = cvae.with_completions(quadrant_task(data, 1))
    with fake_cuda(vae, cvae, flow, data, task, xf) as (_mode, _syncs, fakes):
        _, _, _, fdata, ftask, fxf = fakes
        report = autoencoder_report(vae, fdata, elbo_particles=2, iw_samples=3)
        assert set(report) >= {"neg_elbo", "iw_nll", "active_units", "recon_mse"}
        scores = elbo_per_example(vae.model, vae.guide, fdata, num_particles=2)
        assert scores.device.type == "cuda"
        out = elbo_and_iw_nll(cvae.model, cvae.guide, ftask, elbo_particles=2, iw_samples=3)
        assert set(out) >= {"neg_elbo", "iw_nll"}
        flow.evaluate_bits_per_dim(TensorData(fxf), batch_size=4)
        rec = vae.reconstruct(fdata.tensors[0])
        assert mse_per_image(rec, fdata.tensors[0]).device.type == "cuda"


def test_inspect_on_fake_cuda(mnist_small):
    """examples/posterior.py: ArviZ InferenceData of a VAE's guide draws with its pointwise
    log-likelihood, computed on the GPU (the arrays leave for NumPy at the end)."""
    from probgen.inspect import from_vae
    from probgen.models import VAE

    vae = VAE(z_dim=2, hidden=(16,)).eval()
    x = (next(mnist_small["train"].batches(3))[0] > 0.5).float()
    with fake_cuda(vae, x) as (_mode, _syncs, (_, fx)):
        idata = from_vae(vae, fx, num_samples=4)
    assert {"posterior", "log_likelihood", "posterior_predictive"} <= set(idata.groups())


# --------------------------------------------------------------------------- the harness


def test_the_fake_mode_raises_on_a_device_mix_and_the_recorder_counts_syncs():
    """The two properties the tests above rest on."""
    lin = torch.nn.Linear(3, 2)
    x = torch.rand(4, 3)
    with fake_cuda(lin, x) as (_mode, syncs, (_, fx)):
        assert lin(fx).device.type == "cuda"
        with pytest.raises(Exception, match="device"):
            fx + torch.zeros(4, 3)  # a bare CPU tensor meets a CUDA one
        bool((fx > 0).any())
        fx.sum().item()
        fx.to("cpu")
        fx.to("cpu", non_blocking=True)  # (not counted: asynchronous)
        torch.zeros(()).item()  # (not counted: a CPU tensor)
        torch.rand(4).to(fx.device)
    assert [e[0] for e in syncs.events] == [
        "item/bool/float",
        "item/bool/float",
        "device-to-host copy",
        "host-to-device copy",
    ]
