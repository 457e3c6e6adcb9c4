import json
import math

import pytest
import torch
from torch import nn

import probgen
from probgen.data import TensorData, quadrant_task
from probgen.errors import (
    CheckpointError,
    CheckpointWriteError,
    ConfigError,
    DataError,
    TrainingDivergedError,
)
from probgen.models import CVAE, Baseline
from probgen.train import (
    FitConfig,
    LossStep,
    SVIStep,
    load_checkpoint,
    load_model,
    save_checkpoint,
    save_model,
)
from tests.conftest import QUIET


def mse(module, x, y):
    return ((module(x) - y) ** 2).mean()


def conflicting_data():
    x = torch.ones(64, 1)
    return TensorData(x, torch.ones(64, 1)), TensorData(x, -torch.ones(64, 1))


def test_early_stopping_restores_best_weights():
    net = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(net.weight)
    train, val = conflicting_data()
    weights = []
    res = probgen.fit(
        LossStep(net, mse),
        train,
        val,
        epochs=20,
        patience=2,
        batch_size=16,
        lr=0.05,
        device="cpu",
        callbacks=[lambda e: weights.append(net.weight.item())],
        **QUIET,
    )
    # val loss (w + 1)^2 grows as w moves towards the training target 1
    assert res.val_loss == sorted(res.val_loss)
    assert res.stopped_early and res.epochs_run == 3 and res.best_epoch == 0
    assert net.weight.item() == pytest.approx(weights[0]) and weights[-1] > weights[0]
    assert res.best_loss == pytest.approx((weights[0] + 1) ** 2, rel=1e-5)


def test_monitors_train_loss_without_validation():
    net = nn.Linear(1, 1, bias=False)
    train, _ = conflicting_data()
    res = probgen.fit(LossStep(net, mse), train, epochs=5, lr=0.1, device="cpu", **QUIET)
    assert res.val_loss == [None] * 5
    assert res.train_loss[-1] < res.train_loss[0]
    assert res.best_epoch == 4


def small_cvae_task(mnist_small):
    task = {k: quadrant_task(v, 2) for k, v in mnist_small.items()}
    baseline = Baseline(hidden=(32,))
    return task, baseline


def test_resume_equals_uninterrupted_run(mnist_small, tmp_path):
    task, _ = small_cvae_task(mnist_small)

    def run(epochs, ckpt, resume=False, seed_model=1):
        torch.manual_seed(seed_model)
        model = CVAE(Baseline(hidden=(32,)), z_dim=4, hidden=(32,))
        result = probgen.fit(
            model,
            task["train"],
            task["val"],
            epochs=epochs,
            batch_size=64,
            device="cpu",
            seed=3,
            checkpoint=str(ckpt),
            resume=resume,
            restore_best=False,
            patience=None,
            **QUIET,
        )
        return model, result

    full, _ = run(4, tmp_path / "a.pt")
    _, first = run(2, tmp_path / "b.pt")  # "killed" after two epochs
    resumed, second = run(
        4, tmp_path / "b.pt", resume=True, seed_model=99
    )  # other init: weights come from disk
    # the training time of a resumed run counts the epochs of the first process too
    assert second.train_seconds > first.train_seconds > 0
    assert second.epochs_run == 4
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    sa, sb = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    assert sa["epoch"] == sb["epoch"] == 4
    assert [h["train_loss"] for h in sa["history"]] == [h["train_loss"] for h in sb["history"]]


def test_resume_refuses_a_checkpoint_of_another_run(mnist_small, tmp_path):
    task, _ = small_cvae_task(mnist_small)
    ckpt = str(tmp_path / "c.pt")

    def run(**kw):
        model = CVAE(Baseline(hidden=(16,)), z_dim=2, hidden=(16,))
        return probgen.fit(
            model,
            task["train"],
            epochs=1,
            batch_size=64,
            device="cpu",
            checkpoint=ckpt,
            resume=True,
            **kw,
            **QUIET,
        )

    run(objective="trace", num_particles=1)
    assert run(objective="trace", num_particles=1).epochs_run == 1  # the same run: nothing to do
    with pytest.raises(CheckpointError, match="objective: 'trace' in the checkpoint, 'iwae' now"):
        run(objective="iwae", num_particles=1)
    with pytest.raises(CheckpointError, match="num_particles"):
        run(objective="trace", num_particles=3)
    with pytest.raises(CheckpointError, match="model: CVAE in the checkpoint, Linear now"):
        probgen.fit(
            LossStep(nn.Linear(784, 784), mse),
            task["train"],
            epochs=1,
            device="cpu",
            checkpoint=ckpt,
            resume=True,
            **QUIET,
        )


def test_resume_without_checkpoint_file_starts_fresh(tmp_path):
    net = nn.Linear(1, 1)
    train, _ = conflicting_data()
    res = probgen.fit(
        LossStep(net, mse),
        train,
        epochs=2,
        device="cpu",
        resume=True,
        checkpoint=str(tmp_path / "new.pt"),
        **QUIET,
    )
    assert res.epochs_run == 2 and (tmp_path / "new.pt").exists()


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"value": torch.tensor([1.0])})

    def broken_save(obj, f):
        f.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"value": torch.tensor([2.0])})
    monkeypatch.undo()
    assert load_checkpoint(path)["value"].item() == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary left behind


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "ck.pt"
    save_model(nn.Linear(3, 3), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


def test_foreign_checkpoints(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not a probgen checkpoint"):
        load_checkpoint(plain)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint file"):
        load_checkpoint(text)
    pickled = tmp_path / "objects.pt"
    torch.save({"format": "probgen.checkpoint", "model": nn.Linear(2, 2)}, pickled)
    with pytest.raises(CheckpointError, match="holds Python objects other than tensors") as err:
        load_checkpoint(pickled)
    assert "truncated" not in str(err.value)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")
    ok = tmp_path / "ok.pt"
    save_model(nn.Linear(3, 3), ok)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(nn.Linear(4, 3), ok)


def test_save_load_round_trip(tmp_path):
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    save_model(a, tmp_path / "m.pt", note="x")
    load_model(b, tmp_path / "m.pt")
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


class Exploding(nn.Module):
    def __init__(self, at_call):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.calls, self.at = 0, at_call

    def loss(self, x, y):
        self.calls += 1
        out = ((self.w * x - y) ** 2).mean()
        return out * float("nan") if self.calls >= self.at else out


def test_nan_loss_stops_with_epoch_and_step_and_keeps_checkpoint(tmp_path):
    train, _ = conflicting_data()  # 64 examples, batch 16: 4 steps per epoch
    net = Exploding(at_call=4 * 2 + 3)  # third step of the third epoch
    ckpt = tmp_path / "run.pt"
    with pytest.raises(TrainingDivergedError) as err:
        probgen.fit(
            net,
            train,
            epochs=10,
            batch_size=16,
            lr=0.1,
            device="cpu",
            checkpoint=str(ckpt),
            **QUIET,
        )
    e = err.value
    assert (e.epoch, e.step) == (2, 2)
    assert "epoch 3, step 3" in str(e) and str(ckpt) in str(e) and "nan" in str(e)
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 2 and all(math.isfinite(h["train_loss"]) for h in state["history"])
    assert torch.isfinite(net.w).all()


def test_config_round_trip_and_errors():
    cfg = FitConfig(epochs=3, lr=0.01, objective="meanfield", checkpoint="x.pt")
    assert FitConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["objective"] == "meanfield"
    with pytest.raises(ConfigError, match="unknown FitConfig"):
        FitConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="objective"):
        FitConfig(objective="elbo").check()
    with pytest.raises(ConfigError, match="batch_size"):
        FitConfig(batch_size=0).check()
    with pytest.raises(ConfigError, match="resume"):
        FitConfig(resume=True).check()
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            FitConfig(device="cuda").check()


def test_fit_rejects_objects_it_cannot_train():
    train, _ = conflicting_data()
    with pytest.raises(ConfigError, match="LossStep"):
        probgen.fit(nn.Linear(1, 1), train, epochs=1, **QUIET)


@pytest.mark.parametrize("objective", probgen.infer.OBJECTIVES.names())
def test_every_objective_trains_the_cvae(objective, mnist_small):
    task, baseline = small_cvae_task(mnist_small)
    model = CVAE(baseline, z_dim=4, hidden=(32,))
    res = probgen.fit(
        model,
        task["train"],
        task["val"],
        epochs=3,
        batch_size=64,
        lr=3e-3,
        objective=objective,
        num_particles=2,
        device="cpu",
        **QUIET,
    )
    assert all(math.isfinite(v) for v in res.train_loss)
    assert res.train_loss[-1] < res.train_loss[0]


# --------------------------------------------------------------------------- devices (no GPU here)


def _as_if_written_on_a_gpu(monkeypatch):
    """torch.save tags every storage with the device it lives on; tagging them 'cuda:0'
    writes the file a GPU run writes (loading it without map_location on this CPU-only
    machine fails as it would). What this cannot see: real CUDA tensors' bytes."""
    import torch.serialization as serialization

    monkeypatch.setattr(serialization, "location_tag", lambda storage: "cuda:0")


def test_a_gpu_checkpoint_loads_on_the_cpu_by_default(tmp_path, monkeypatch):
    from probgen.models import VAE

    vae = VAE(z_dim=2, hidden=(8,))
    with monkeypatch.context() as m:
        _as_if_written_on_a_gpu(m)
        save_model(vae, tmp_path / "gpu.pt")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / "gpu.pt", weights_only=True)  # the file is a GPU one
    saved = load_checkpoint(tmp_path / "gpu.pt")["module"]
    assert all(t.device.type == "cpu" for t in saved.values())
    back = probgen.load(tmp_path / "gpu.pt")
    assert all(p.device.type == "cpu" for p in back.parameters())
    other = VAE(z_dim=2, hidden=(8,))
    load_model(other, tmp_path / "gpu.pt")
    for a, b in zip(vae.parameters(), other.parameters()):
        assert torch.equal(a, b)


def test_resume_from_a_gpu_checkpoint_on_the_cpu_says_what_it_cannot_restore(
    tmp_path, monkeypatch, capsys
):
    """Resume maps the checkpoint to the CPU first (the numpy RNG state must be a CPU
    tensor), and a checkpoint with CUDA generator states on a machine without CUDA gets
    one line saying so."""
    train, _ = conflicting_data()
    ck = tmp_path / "r.pt"
    with monkeypatch.context() as m:
        _as_if_written_on_a_gpu(m)
        probgen.fit(
            LossStep(nn.Linear(1, 1), mse),
            train,
            epochs=1,
            device="cpu",
            seed=1,
            checkpoint=str(ck),
            **QUIET,
        )
        state = load_checkpoint(ck)
        state["rng"]["cuda"] = [torch.get_rng_state()]  # a GPU run's generator state
        save_checkpoint(ck, state)
    res = probgen.fit(
        LossStep(nn.Linear(1, 1), mse),
        train,
        epochs=2,
        device="cpu",
        seed=1,
        checkpoint=str(ck),
        resume=True,
        progress=False,
    )
    out = capsys.readouterr().out
    assert res.epochs_run == 2
    if not torch.cuda.is_available():
        assert out.count("random-generator states of CUDA devices") == 1


def test_cuda_generator_states_are_restored_where_cuda_is(monkeypatch):
    from probgen.train import device

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: restored.append((s, i)))
    state = device.rng_state(torch.Generator())
    fake = torch.arange(8, dtype=torch.uint8)
    state["cuda"] = [fake, fake + 1]
    note = device.set_rng_state(state, torch.Generator())
    monkeypatch.undo()
    assert len(restored) == 1 and torch.equal(restored[0][0], fake) and restored[0][1] == 0
    assert "2 CUDA devices and this machine has 1" in note


class VirtualDevice(nn.Linear):
    """A network that says it lives on ``cuda:0`` and records where fit moves it, while
    its tensors stay on this machine's CPU (no GPU here). What this cannot see: a real
    copy between devices."""

    def __init__(self):
        super().__init__(1, 1)
        self.virtual = torch.device("cuda", 0)
        self.moves = []

    def to(self, *args, **kwargs):
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        self.moves.append(device)
        self.virtual = device
        return self


@pytest.mark.parametrize("fails", [False, True])
def test_fit_returns_the_module_on_the_device_and_in_the_mode_it_came_in(fails, monkeypatch):
    from probgen.train import loop

    real = loop.module_device
    monkeypatch.setattr(loop, "module_device", lambda m: getattr(m, "virtual", None) or real(m))
    net = VirtualDevice().eval()
    train, _ = conflicting_data()

    def boom(entry):
        raise RuntimeError("a callback failed")

    if fails:
        with pytest.raises(RuntimeError, match="a callback failed"):
            probgen.fit(
                LossStep(net, mse), train, epochs=2, device="cpu", callbacks=[boom], **QUIET
            )
    else:
        probgen.fit(LossStep(net, mse), train, epochs=2, device="cpu", **QUIET)
    assert net.moves == [torch.device("cpu"), torch.device("cuda", 0)]
    assert net.virtual == torch.device("cuda", 0) and not net.training


def test_evaluate_reduces_on_the_training_device_under_nccl(monkeypatch):
    from probgen.train import device

    monkeypatch.setattr(device.ddp, "is_distributed", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert device.reduce_device(None) == torch.device("cuda", 0)  # a bare SVIStep, no module
    assert device.reduce_device(torch.device("cpu")) == torch.device("cpu")


def _binary_images(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 4, 4, generator=g) < 0.4).float()


def test_evaluate_takes_a_model_as_fit_does_and_equals_pyros_elbo():
    """evaluate(model, data) builds the model's step as fit does (it read ``.module``
    before that, an AttributeError for a VAE) and gives Pyro's own Trace_ELBO mean."""
    import pyro
    from pyro.infer import Trace_ELBO

    from probgen.models import VAE
    from probgen.train import as_step, evaluate

    vae = VAE(z_dim=2, hidden=(8,), image_shape=(1, 4, 4))
    data = TensorData(_binary_images())
    torch.manual_seed(5)
    value = evaluate(vae, data, batch_size=12)
    torch.manual_seed(5)
    assert evaluate(as_step(vae, FitConfig()), data, batch_size=12) == value
    torch.manual_seed(5)
    total = 0.0
    with pyro.get_param_store().scope(), torch.no_grad():
        vae.eval()
        for (x,) in data.batches(12):
            total += Trace_ELBO().loss(vae.model, vae.guide, x)
        vae.train()
    assert value == pytest.approx(total / len(data), rel=1e-5)
    assert vae.training  # given back in the mode it came in


def test_evaluate_outside_fit_keeps_the_users_param_store_and_checks_the_data_once(monkeypatch):
    """A probgen model's step scores in a param-store scope of its own (no ``vae$$$``
    entries left in the user's store, the user's own entries kept) and in the steps'
    context: a TensorData is checked whole once, not batch by batch."""
    import pyro

    from probgen.models import VAE
    from probgen.train import evaluate

    pyro.clear_param_store()
    try:
        mine = pyro.param("mine", torch.tensor(2.0))
        vae = VAE(z_dim=2, hidden=(8,), image_shape=(1, 4, 4))
        calls = []
        check = vae.likelihood.check
        monkeypatch.setattr(vae.likelihood, "check", lambda x: calls.append(len(x)) or check(x))
        data = TensorData(_binary_images())
        # (a jit objective's step registers the module with pyro.module while scoring)
        for step in (SVIStep(vae), vae, SVIStep(vae, loss="jit")):
            calls.clear()
            assert math.isfinite(evaluate(step, data, batch_size=10))
            assert calls == [30]  # the whole data once; no check per batch of 10
            assert list(pyro.get_param_store().keys()) == ["mine"]
            assert pyro.param("mine") is mine and mine.item() == 2.0
        # data the loop cannot check whole (a list of batches): each batch checked
        calls.clear()
        evaluate(vae, [(x,) for (x,) in data.batches(10)])
        assert calls == [10, 10, 10]
        # and bad data is refused before a loss is read
        with pytest.raises(DataError, match="binary"):
            evaluate(vae, TensorData(_binary_images() * 0.5 + 0.25))
    finally:
        pyro.clear_param_store()


# --------------------------------------------------------------------------- data


def test_float64_data_is_converted_once_and_uint8_images_are_refused(capsys):
    x = torch.linspace(-1, 1, 32, dtype=torch.float64).reshape(32, 1)
    data = TensorData(x, 2 * x)
    net = nn.Linear(1, 1)
    res = probgen.fit(
        LossStep(net, mse),
        data,
        TensorData(x[:8], 2 * x[:8]),
        epochs=2,
        lr=0.1,
        device="cpu",
        progress=False,
    )
    out = capsys.readouterr().out
    assert out.count("fit: converted") == 1
    assert "the training data from float64 and the validation data from float64 to float32" in out
    assert res.train_loss[-1] < res.train_loss[0] and x.dtype == torch.float64  # theirs kept
    images = torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8)
    conv = nn.Sequential(nn.Flatten(), nn.Linear(16, 1))
    with pytest.raises(DataError, match=r"uint8 \(levels 0-255\).*to_unit_interval"):
        probgen.fit(
            LossStep(conv, lambda m, x: m(x).mean()),
            TensorData(images),
            epochs=1,
            device="cpu",
            **QUIET,
        )


# --------------------------------------------------------------------------- checkpoints


def test_orphaned_part_files_are_removed_at_the_next_save(tmp_path):
    path = tmp_path / "ck.pt"
    orphan = tmp_path / ".ck.pt.x1y2z3.part"  # what a SIGKILL mid-write leaves
    orphan.write_bytes(b"PK half")
    other = tmp_path / ".other.pt.abc.part"  # another checkpoint's: not ours
    other.write_bytes(b"PK")
    save_checkpoint(path, {"value": torch.tensor([1.0])})
    assert not orphan.exists() and other.exists()
    assert load_checkpoint(path)["value"].item() == 1.0


@pytest.mark.parametrize("how", ["oserror", "torch"])
def test_a_full_disk_is_said_as_such_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, how):
    import errno
    import shutil

    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"value": torch.tensor([1.0])})
    real_save = torch.save

    def full(obj, f):
        f.write(b"PK\x03\x04 part of a file")
        if how == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0"
            " PytorchStreamWriter failed writing file data/0: file write failed"
        )

    monkeypatch.setattr(torch, "save", full)
    if how == "torch":
        monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 0))
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(path, {"value": torch.tensor([2.0])})
    monkeypatch.setattr(torch, "save", real_save)
    text = str(err.value)
    assert (
        text.startswith(
            f"no space left on the device while writing {path}; the previous checkpoint is intact"
        )
        and "\n" not in text
    )
    assert load_checkpoint(path)["value"].item() == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]
    # a file-system error too (cli.run: exit 1, as other write errors), naming the file
    assert isinstance(err.value, CheckpointWriteError) and isinstance(err.value, OSError)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(path)


def test_a_write_the_file_system_refuses_is_an_oserror_and_a_checkpoint_error(
    tmp_path, monkeypatch
):
    import errno

    def refused(obj, f):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(torch, "save", refused)
    with pytest.raises(CheckpointWriteError) as err:
        save_checkpoint(tmp_path / "ck.pt", {"value": torch.tensor([2.0])})
    assert err.value.errno == errno.EROFS and "Read-only file system" in str(err.value)

    def unpicklable(obj, f):
        raise RuntimeError("cannot pickle 'generator' object")

    monkeypatch.setattr(torch, "save", unpicklable)
    with pytest.raises(CheckpointError) as err:  # not the file system's: no OSError
        save_checkpoint(tmp_path / "ck.pt", {"value": torch.tensor([2.0])})
    assert not isinstance(err.value, OSError)


def test_an_unwritable_checkpoint_path_is_refused_before_training(tmp_path):
    (tmp_path / "afile").write_text("x")
    net = nn.Linear(1, 1)
    before = net.weight.detach().clone()
    train, _ = conflicting_data()
    for bad, why in (
        (tmp_path / "afile" / "ck.pt", "is a file, not a folder"),
        (tmp_path, "is a folder"),
    ):
        with pytest.raises(CheckpointError, match=why):
            probgen.fit(
                LossStep(net, mse), train, epochs=1, device="cpu", checkpoint=str(bad), **QUIET
            )
    assert torch.equal(net.weight, before)


def _vae_checkpoint(tmp_path):
    from probgen.models import VAE

    path = tmp_path / "vae.pt"
    save_model(VAE(z_dim=2, hidden=(8,)), path)
    return path, load_checkpoint(path)


@pytest.mark.parametrize(
    "change, says",
    [
        (
            lambda s: s["model"].update({"__probgen_model__": "probgen.models.vae:OldVAE"}),
            "probgen.models.vae:OldVAE, a model class this probgen does not have (AttributeError",
        ),
        (
            lambda s: s["model"].update({"__probgen_model__": "probgen.models.gone:VAE"}),
            "a model class this probgen does not have (ModuleNotFoundError",
        ),
        (
            lambda s: s["model"]["args"].update({"dropout_rate": 0.1}),
            "it records 'dropout_rate', which the constructor no longer takes",
        ),
        (lambda s: s.pop("module"), "no 'module' entry"),
    ],
)
def test_a_checkpoint_of_another_probgen_version_gives_one_line(tmp_path, change, says):
    path, state = _vae_checkpoint(tmp_path)
    change(state)
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError) as err:
        probgen.load(path)
    text = str(err.value)
    assert says in text and "\n" not in text
    assert "another probgen version" in text or "older probgen" in text


def test_a_constructor_argument_added_since_is_named():
    """(No registered model has a required argument today; a class that gains one is
    named so.)"""
    from probgen.models.registry import _signature_differences

    class Grown(nn.Module):
        def __init__(self, width, depth, scale=1.0):
            super().__init__()

    assert (
        _signature_differences(Grown, {"width": 3, "scale": 2.0})
        == "the constructor now needs 'depth', which it does not record"
    )
    assert "it records 'old'" in _signature_differences(Grown, {"width": 1, "depth": 2, "old": 0})


def test_resume_refuses_another_elbo_particle_count_or_data(tmp_path):
    import pyro
    import pyro.distributions as dist
    from pyro.infer import Trace_ELBO, TraceGraph_ELBO

    def model(x):
        loc = pyro.param("loc", torch.tensor(0.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    def guide(x):
        pass

    x = torch.randn(16)
    ck = str(tmp_path / "svi.pt")
    data = TensorData(x, settings={"dataset": "toy", "binarize": "static"})
    pyro.clear_param_store()
    probgen.fit(SVIStep(model, guide, loss=Trace_ELBO()), data, epochs=1, checkpoint=ck, **QUIET)
    for loss, says in (
        (TraceGraph_ELBO(), "step elbo: 'Trace_ELBO' in the checkpoint, 'TraceGraph_ELBO' now"),
        (Trace_ELBO(num_particles=3), "step num_particles: 1 in the checkpoint, 3 now"),
    ):
        with pytest.raises(CheckpointError, match=says):
            probgen.fit(
                SVIStep(model, guide, loss=loss),
                data,
                epochs=2,
                checkpoint=ck,
                resume=True,
                **QUIET,
            )
    other = TensorData(x, settings={"dataset": "toy", "binarize": "dynamic"})
    with pytest.raises(
        CheckpointError, match="data binarize: 'static' in the checkpoint, 'dynamic' now"
    ):
        probgen.fit(
            SVIStep(model, guide, loss=Trace_ELBO()),
            other,
            epochs=2,
            checkpoint=ck,
            resume=True,
            **QUIET,
        )
    res = probgen.fit(
        SVIStep(model, guide, loss=Trace_ELBO()),
        data,
        epochs=2,
        checkpoint=ck,
        resume=True,
        **QUIET,
    )
    assert res.epochs_run == 2
    pyro.clear_param_store()


def test_per_step_hooks_get_the_runs_step_count_also_for_data_without_a_length(tmp_path):
    """on_train_batch_end's index is the run's step count (FitResult.steps - 1): unique
    over epochs for data without len() (whose epochs have no known size) and continued by
    a resumed run."""
    from probgen.train import Callback

    class Stream:  # re-iterable, no __len__
        def __iter__(self):
            g = torch.Generator().manual_seed(0)
            for _ in range(4):
                x = torch.randn(8, 1, generator=g)
                yield x, 2 * x

    class Steps(Callback):
        def __init__(self):
            self.seen = []

        def on_train_batch_end(self, run, step_index, losses):
            self.seen.append(step_index)
            assert step_index == run.result.steps - 1

    probe = Steps()
    res = probgen.fit(
        LossStep(nn.Linear(1, 1), mse), Stream(), epochs=3, device="cpu", callbacks=[probe], **QUIET
    )
    assert probe.seen == list(range(12)) and res.steps == 12
    ckpt = tmp_path / "ck.pt"
    probgen.fit(
        LossStep(nn.Linear(1, 1), mse),
        Stream(),
        epochs=1,
        device="cpu",
        checkpoint=str(ckpt),
        **QUIET,
    )
    probe = Steps()
    probgen.fit(
        LossStep(nn.Linear(1, 1), mse),
        Stream(),
        epochs=2,
        device="cpu",
        checkpoint=str(ckpt),
        resume=True,
        callbacks=[probe],
        **QUIET,
    )
    assert probe.seen == [4, 5, 6, 7]
