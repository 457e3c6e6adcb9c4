"""The speed settings for a GPU (probgen.train.speed), checked on the CPU.

No GPU is needed for what is tested here: bfloat16 autocast runs on the CPU as on CUDA
(the networks' layers in bfloat16, everything after them in float32), ``torch.compile``'s
``aot_eager`` backend traces the same graphs (forward and backward) as inductor without a
C compiler, the matmul-precision setting is process state readable anywhere, and the
pinned-memory path of host data is exercised with fake CUDA tensors (torch's
``FakeTensorMode``) and a stand-in for the pinned allocator (which needs a driver). What
they cannot show -- the speed, TF32 itself, real asynchronous copies -- is measured by
``benchmarks/gpu_check.sh`` on a lent GPU.
"""

import copy
import pickle
import subprocess
import sys
import textwrap

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

import probgen
import probgen.data.tensors as tensors
import probgen.train.speed as speed
from probgen.data import TensorData
from probgen.errors import ConfigError
from probgen.models import VAE
from probgen.models.flow import FlowModel
from probgen.train import Callback, FitConfig, LossStep, SVIStep, WeightAverage
from probgen.train.speed import NetworkSpeed, find_networks, place_on_device
from tests.conftest import QUIET, ROOT

# --------------------------------------------------------------------------- TF32


def test_matmul_precision_holds_during_fit_and_the_users_setting_comes_back_exactly():
    """In a fresh process (the setting is process-wide): from torch's default, from a
    setting made with the old global function, and from one made with the per-backend
    attributes (after which the old getter raises), fit(matmul_precision=...) runs with
    the asked precision and leaves every getter answering as before."""
    script = textwrap.dedent("""
        import torch, probgen
        from torch import nn
        from probgen.data import TensorData
        from probgen.train import Callback, LossStep
        B = torch.backends
        SLOTS = [B, B.cuda.matmul, B.cudnn, B.cudnn.conv, B.cudnn.rnn, B.mkldnn,
                 B.mkldnn.matmul, B.mkldnn.conv, B.mkldnn.rnn]

        def state():
            out = [s.fp32_precision for s in SLOTS]
            for read in (torch.get_float32_matmul_precision,
                         lambda: B.cuda.matmul.allow_tf32, lambda: B.cudnn.allow_tf32):
                try:
                    out.append(read())
                except RuntimeError:
                    out.append("unreadable")
            return out

        class Seen(Callback):
            def on_epoch_end(self, run, entry):
                self.during = (torch.get_float32_matmul_precision(),
                               B.cuda.matmul.fp32_precision)

        x = torch.randn(32, 3)
        data = TensorData(x, x.sum(1, keepdim=True))
        setups = {"default": lambda: None,
                  "old function": lambda: torch.set_float32_matmul_precision("medium"),
                  "per-backend": lambda: setattr(B.cuda.matmul, "fp32_precision", "ieee")}
        for name, setup in setups.items():
            setup()
            before = state()
            for asked, want in (("high", "tf32"), ("highest", "ieee")):
                seen = Seen()
                probgen.fit(LossStep(nn.Linear(3, 1), lambda m, a, b: ((m(a) - b) ** 2).mean()),
                            data, epochs=1, device="cpu", progress=False, verbose=False,
                            matmul_precision=asked, callbacks=[seen])
                assert seen.during == (asked, want), (name, asked, seen.during)
                assert state() == before, (name, asked, before, state())
            print("ok", name, before)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
        env={"OMP_NUM_THREADS": "1", "PATH": "", "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("ok ") == 3, proc.stdout


# --------------------------------------------------------------------------- bf16


def binary_images(n=64, size=16):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, 1, size, size, generator=g) > 0.5).float()


def conv_vae():
    torch.manual_seed(0)
    return VAE(image_shape=(1, 16, 16), net="conv", z_dim=4, hidden=[8, 16])


def tiny_glow():
    torch.manual_seed(0)
    return FlowModel(
        "glow",
        event_shape=(1, 8, 8),
        preprocess="none",
        num_levels=None,
        depth=2,
        hidden=8,
        levels=2,
    )


def flow_data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(64, 1, 8, 8, generator=g) * 0.5


class Dtypes(Callback):
    """During the first step's hook: the dtype of every sample site's value and
    log-density in a trace of the guide and of the model replayed on it, and the dtype
    of what the networks' inner layers computed (a forward hook on each conv/linear)."""

    def __init__(self, module, batch):
        self.module, self.batch = module, batch
        self.sites, self.layers = {}, set()
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                m.register_forward_hook(lambda mod, i, out: self.layers.add(out.dtype))

    def on_train_batch_end(self, run, step_index, losses):
        if step_index:
            return
        assert losses is None or all(v.dtype == torch.float32 for v in losses.values())
        guide = poutine.trace(self.module.guide).get_trace(self.batch)
        model = poutine.trace(poutine.replay(self.module.model, guide)).get_trace(self.batch)
        for name, site in list(guide.nodes.items()) + list(model.nodes.items()):
            if site["type"] == "sample" and site["value"].is_floating_point():  # no plate
                lp = site["fn"].log_prob(site["value"])
                self.sites[name] = (site["value"].dtype, lp.dtype)


@pytest.mark.parametrize(
    "make,data", [(conv_vae, binary_images), (tiny_glow, flow_data)], ids=["conv-vae", "glow"]
)
def test_bf16_runs_the_networks_in_bfloat16_and_the_elbo_in_float32(make, data):
    """A bf16 fit: the networks' layers compute in bfloat16, every latent, observation
    and log-density the ELBO sums is float32, the parameters stay float32, and the epoch
    losses are within 5e-4 (relative) of the float32 run's from the same start. (Observed
    here: <= 6e-5. Autocasting the whole loss instead, reductions included, moves the
    flow's by 1.3e-3-2.2e-3; leaving the networks' outputs in bfloat16 makes the latent z
    a bfloat16 site.)"""
    x = data()
    losses, params = {}, {}
    for precision in (None, "bf16"):
        model = make()
        probe = Dtypes(model, x[:8])
        res = probgen.fit(
            model,
            TensorData(x),
            epochs=3,
            batch_size=16,
            device="cpu",
            seed=0,
            precision=precision,
            callbacks=[probe],
            **QUIET,
        )
        losses[precision] = res.train_loss
        params[precision] = [p.detach() for p in model.parameters()]
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert probe.layers == ({torch.bfloat16} if precision else {torch.float32})
        assert probe.sites and all(
            d == (torch.float32, torch.float32) for d in probe.sites.values()
        ), probe.sites
        # no trace of the run is left on the networks
        assert not any("forward" in m.__dict__ for m in model.modules())
    for a, b in zip(losses[None], losses["bf16"]):
        assert abs(a - b) <= 5e-4 * abs(a), (losses[None], losses["bf16"])
    assert any(not torch.equal(p, q) for p, q in zip(params[None], params["bf16"]))
    # after fit the bf16-trained model computes in float32 again
    probe.layers.clear()
    with pyro.get_param_store().scope():
        model.guide(x[:8])
        model.model(x[:8])
    assert probe.layers == {torch.float32}


def test_bf16_networks_are_the_plain_parts_and_copies_made_during_fit_come_back_too():
    """The networks are the plain nn.Module parts (not Pyro's): a VAE's encoder and
    decoder, a flow's coupling networks and no transform. A forward the user set on an
    instance is put back; a copy made during fit (a weight average) is restored too."""
    vae = conv_vae()
    assert find_networks([vae]) == [vae.encoder, vae.decoder]
    glow = tiny_glow()
    nets = find_networks([glow])
    assert nets and not any(isinstance(n, torch.distributions.Transform) for n in nets)
    assert all(
        not any(isinstance(s, torch.distributions.Transform) for s in n.modules()) for n in nets
    )
    net = nn.Sequential(nn.Linear(3, 1))
    assert find_networks([net]) == [net]  # a plain network trained by a LossStep

    x = binary_images()
    own = vae.encoder.forward  # bound method, set on the instance
    vae.encoder.forward = own
    avg = WeightAverage("ema", decay=0.5)
    probgen.fit(
        vae,
        TensorData(x),
        epochs=2,
        batch_size=32,
        device="cpu",
        seed=0,
        precision="bf16",
        callbacks=[avg],
        **QUIET,
    )
    assert vae.encoder.__dict__["forward"] is own
    assert "forward" not in vae.decoder.__dict__
    copied = avg.averaged  # the user's forward is copied with the module, bound to it
    assert copied.encoder.__dict__["forward"].__self__ is copied.encoder
    assert not any(
        isinstance(m.__dict__.get("forward"), speed.NetworkCall) for m in copied.modules()
    )
    assert "forward" not in copied.decoder.__dict__


def test_network_call_survives_deepcopy_of_the_module_during_the_run():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    run = NetworkSpeed([net], "cpu", autocast=torch.bfloat16)
    with run.active():
        twin = copy.deepcopy(net)
        seen = []
        twin[0].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
        out = twin(torch.randn(2, 3))
        assert seen == [torch.bfloat16] and out.dtype == torch.float32
        # the twin runs its own weights, not the original's
        with torch.no_grad():
            twin[2].bias.add_(100.0)
        assert (twin(torch.zeros(1, 3)) - net(torch.zeros(1, 3))).abs().min() > 50
        # pickled during the run (torch.save(model) in a callback): a plain module
        stored = pickle.loads(pickle.dumps(net))
        assert torch.equal(stored(torch.ones(1, 3)), type(net).forward(net, torch.ones(1, 3)))
    assert "forward" not in twin.__dict__ and "forward" not in net.__dict__


def test_speed_settings_without_networks_or_with_float64_networks_are_refused():
    def model(x):
        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    def guide(x):
        pass

    x = torch.randn(16)
    pyro.clear_param_store()
    for setting in (dict(precision="bf16"), dict(compile=True)):
        with pytest.raises(ConfigError, match="concerns the networks of the model") as err:
            probgen.fit(
                SVIStep(model, guide), TensorData(x), epochs=1, device="cpu", **setting, **QUIET
            )
        assert "\n" not in str(err.value)
    assert "loc" not in pyro.get_param_store()  # refused before the first step
    net = nn.Linear(2, 1).double()
    with pytest.raises(ConfigError, match="float64 parameters"):
        probgen.fit(
            LossStep(net, lambda m, a: m(a).sum()),
            TensorData(torch.randn(4, 2).double()),
            epochs=1,
            device="cpu",
            precision="bf16",
            **QUIET,
        )
    for bad, says in (
        (dict(precision="fp16"), "precision must be None"),
        (dict(matmul_precision="low"), "matmul_precision must be one of"),
        (dict(compile="yes"), "compile must be True, False or a dict"),
        (dict(compile={"mode": "fastest"}), "compile: mode must be one of"),
        (dict(compile={"backend": "nope"}), "is not one of torch's"),
        (dict(compile={"fast": 1}), "are not torch.compile arguments"),
        (dict(data_on_device="host"), "data_on_device must be"),
    ):
        with pytest.raises(ConfigError, match=says):
            FitConfig(**bad).check()


def test_speed_settings_round_trip_through_json_and_may_change_on_resume(tmp_path, capsys):
    c = FitConfig(
        matmul_precision="high",
        precision="bf16",
        compile={"backend": "aot_eager"},
        data_on_device=False,
    )
    assert FitConfig.from_json(c.to_json()) == c
    x = binary_images(32)
    ckpt = tmp_path / "ck.pt"
    probgen.fit(
        conv_vae(),
        TensorData(x),
        epochs=1,
        batch_size=16,
        device="cpu",
        seed=0,
        checkpoint=str(ckpt),
        precision="bf16",
        progress=False,
    )
    capsys.readouterr()
    res = probgen.fit(
        conv_vae(),
        TensorData(x),
        epochs=2,
        batch_size=16,
        device="cpu",
        seed=0,
        checkpoint=str(ckpt),
        resume=True,
        progress=False,
    )
    assert res.epochs_run == 2
    assert "with precision None (the checkpoint ran with 'bf16')" in capsys.readouterr().out


# --------------------------------------------------------------------------- compile


def compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


class Graphs(Callback):
    def __init__(self):
        self.after = []

    def on_train_batch_end(self, run, step_index, losses):
        self.after.append(compiled_graphs())


def test_a_compiled_fit_equals_the_eager_one_and_compiles_after_a_first_eager_step():
    """compile with torch's aot_eager backend (the graphs inductor would get, forward and
    backward, run without code generation): the same parameters as the eager run to
    float32 rounding, graphs compiled from the second step on, none left after fit."""
    torch._dynamo.reset()
    x = binary_images(48)
    out = {}
    for setting in (False, {"backend": "aot_eager"}):
        torch.manual_seed(0)
        vae = VAE(image_shape=(1, 16, 16), z_dim=4, hidden=[32])
        graphs = Graphs()
        start = compiled_graphs()
        res = probgen.fit(
            vae,
            TensorData(x),
            TensorData(x[:16]),
            epochs=2,
            batch_size=16,
            device="cpu",
            seed=0,
            compile=setting,
            callbacks=[graphs],
            **QUIET,
        )
        out[bool(setting)] = ([p.detach() for p in vae.parameters()], res.val_loss)
        if setting:
            # step 1 eager (Pyro's lazy parameters, tracing), then encoder and decoder
            assert graphs.after[0] == start and graphs.after[1] >= start + 2, graphs.after
        else:
            assert graphs.after[-1] == start
        assert not any("forward" in m.__dict__ for m in vae.modules())
    for p, q in zip(out[False][0], out[True][0]):
        assert torch.allclose(p, q, atol=1e-5, rtol=1e-5)
    assert out[False][1] == pytest.approx(out[True][1], rel=1e-5)


def test_compile_and_bf16_together_on_a_pair_with_an_autoguide():
    """A user's Pyro model whose network is a plain module and whose guide is an
    AutoNormal (a PyroModule, parameters created on the first step): the network is
    compiled and run in bfloat16, the AutoGuide is not touched, and the result is close
    to the plain run's."""
    from pyro.infer.autoguide import AutoNormal

    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    y = torch.sin(x).sum(1)

    def run(**kw):
        torch.manual_seed(0)
        pyro.clear_param_store()
        net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))

        def model(x, y=None):
            pyro.module("net", net)
            scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
            with pyro.plate("data", x.shape[0]):
                pyro.sample("y", dist.Normal(net(x).squeeze(-1), scale), obs=y)

        guide = AutoNormal(model)
        probgen.fit(
            SVIStep(model, guide, module=net),
            TensorData(x, y),
            epochs=4,
            batch_size=32,
            lr=0.01,
            device="cpu",
            seed=0,
            **kw,
            **QUIET,
        )
        assert find_networks([net]) == [net] and not find_networks([guide])
        return [p.detach().clone() for p in net.parameters()], {
            k: v.detach().clone() for k, v in pyro.get_param_store().items()
        }

    plain = run()
    start = compiled_graphs()
    fast = run(compile={"backend": "aot_eager"}, precision="bf16")
    assert compiled_graphs() > start
    for p, q in zip(plain[0], fast[0]):
        assert torch.allclose(p, q, atol=2e-2)
    assert set(plain[1]) == set(fast[1]) and all(v.dtype == torch.float32 for v in fast[1].values())


# --------------------------------------------------------------------------- data


def test_data_stays_on_the_device_when_it_fits_and_in_host_memory_when_it_does_not(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(speed, "device_free_memory", lambda device: 10 * 2**30)  # 10 GiB
    mnist = 60000 * 784 * 4 + 60000 * 8  # float32 images and int64 labels: 189 MB
    assert place_on_device({"train_data": mnist, "val_data": mnist // 6}, cuda, "auto") == {
        "train_data": True,
        "val_data": True,
    }
    big = 6 * 2**30  # more than half of the free 10 GiB
    assert place_on_device({"train_data": big, "val_data": mnist}, cuda, "auto") == {
        "train_data": False,
        "val_data": True,
    }
    # the training data's share counts against the validation data's
    assert place_on_device({"val_data": 3.5 * 2**30}, cuda, "auto") == {"val_data": True}
    assert place_on_device({"train_data": 4 * 2**30, "val_data": 3.5 * 2**30}, cuda, "auto") == {
        "train_data": True,
        "val_data": False,
    }
    assert place_on_device({"train_data": big}, cuda, True) == {"train_data": True}
    assert place_on_device({"train_data": 10}, cuda, False) == {"train_data": False}
    monkeypatch.setattr(speed, "device_free_memory", lambda device: None)  # the CPU
    assert place_on_device({"train_data": big}, torch.device("cpu"), "auto") == {"train_data": True}


def test_the_loop_moves_small_data_once_and_stages_large_data(monkeypatch):
    """Run._place_data with a GPU target (the move itself recorded, not made): the data
    that fits is moved whole, the rest left in host memory and its batches staged."""
    from probgen.train.loop import Run

    moved = []
    monkeypatch.setattr(
        TensorData,
        "to",
        lambda self, device=None, dtype=None: moved.append((len(self), device)) or self,
    )
    monkeypatch.setattr(speed, "device_free_memory", lambda device: 2**20)  # 1 MiB
    small = TensorData(torch.zeros(1000, 10))  # 40 kB
    large = TensorData(torch.zeros(200000))  # 800 kB > half of 1 MiB
    run = Run(
        LossStep(nn.Linear(1, 1), lambda m, x: x.sum()), large, small, FitConfig(verbose=False)
    )
    run.batch_device, run.is_main = torch.device("cuda", 0), True
    run._place_data()
    assert moved == [(1000, torch.device("cuda", 0))]
    assert run.staged == {"train_data": torch.device("cuda", 0), "val_data": None}
    moved.clear()
    run.config = FitConfig(verbose=False, data_on_device=True)
    run.train_data, run.val_data = large, small
    run._place_data()
    assert [n for n, _ in moved] == [200000, 1000]


def test_staged_batches_equal_the_resident_ones_with_the_transform_after_the_copy(monkeypatch):
    """The pinned path's gathering: the same batches in the same order, the transform
    drawing the same noise from the generator, whether a batch is sliced where the data
    is or gathered into a (stand-in) pinned buffer and copied."""
    pinned = []

    def fake_pinned(shape, dtype):
        pinned.append(tuple(shape))
        return torch.empty(shape, dtype=dtype)

    monkeypatch.setattr(tensors, "_pinned_empty", fake_pinned)

    def noisy(batch, generator):
        x, y = batch
        return x + torch.rand(x.shape, generator=generator), y

    x, y = torch.randn(50, 3), torch.arange(50)
    data = TensorData(x, y, transform=noisy)
    for shuffle in (False, True):
        resident = list(data.batches(16, shuffle, torch.Generator().manual_seed(3)))
        monkeypatch.setattr(tensors, "same_device", lambda a, b: False)  # "another device"
        staged = list(data.batches(16, shuffle, torch.Generator().manual_seed(3), device="cpu"))
        monkeypatch.undo()
        monkeypatch.setattr(tensors, "_pinned_empty", fake_pinned)
        assert len(staged) == len(resident) == 4
        for a, b in zip(resident, staged):
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # every tensor of every batch went through a pinned buffer, twice (two passes)
    assert pinned == [(16, 3), (16,), (16, 3), (16,), (16, 3), (16,), (2, 3), (2,)] * 2


def test_staged_batches_of_host_data_reach_the_gpu_by_asynchronous_copies(monkeypatch):
    """On fake CUDA tensors: each batch of host data arrives on the GPU through one
    non_blocking copy per tensor (from the pinned buffer), the transform runs there, and
    the host data stays where it is."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten

    class Copies(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is aten._to_copy.default and "device" in kwargs:
                self.seen.append(
                    (
                        args[0].device.type,
                        torch.device(kwargs["device"]).type,
                        kwargs.get("non_blocking", False),
                    )
                )
            return func(*args, **kwargs)

    monkeypatch.setattr(
        tensors, "_pinned_empty", lambda shape, dtype: torch.empty(shape, dtype=dtype)
    )
    where = []

    def transform(batch, generator):
        where.append(batch[0].device.type)
        return batch

    mode = FakeTensorMode(allow_non_fake_inputs=False)
    with mode:
        x = mode.from_tensor(torch.randn(40, 3))
        y = mode.from_tensor(torch.arange(40))
    data = TensorData(x, y, transform=transform)
    copies = Copies()
    with mode, copies:
        batches = list(data.batches(16, shuffle=True, generator=torch.Generator(), device="cuda"))
    assert all(t.device.type == "cuda" for b in batches for t in b)
    assert copies.seen == [("cpu", "cuda", True)] * 6
    assert where == ["cuda"] * 3 and data.device.type == "cpu"
