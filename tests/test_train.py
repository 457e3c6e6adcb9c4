import json
import math

import pytest
import torch
from torch import nn

import probgen
from probgen.data import TensorData, quadrant_task
from probgen.errors import CheckpointError, ConfigError, TrainingDivergedError
from probgen.models import CVAE, Baseline
from probgen.train import (FitConfig, LossStep, load_checkpoint, load_model, save_checkpoint,
                           save_model)
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
    res = probgen.fit(LossStep(net, mse), train, val, epochs=20, patience=2, batch_size=16,
                      lr=0.05, device="cpu", callbacks=[lambda e: weights.append(net.weight.item())],
                      **QUIET)
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
        result = probgen.fit(model, task["train"], task["val"], epochs=epochs, batch_size=64,
                             device="cpu", seed=3, checkpoint=str(ckpt), resume=resume,
                             restore_best=False, patience=None, **QUIET)
        return model, result

    full, _ = run(4, tmp_path / "a.pt")
    _, first = run(2, tmp_path / "b.pt")         # "killed" after two epochs
    resumed, second = run(4, tmp_path / "b.pt", resume=True, seed_model=99)  # other init: weights come from disk
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
        return probgen.fit(model, task["train"], epochs=1, batch_size=64, device="cpu",
                           checkpoint=ckpt, resume=True, **kw, **QUIET)

    run(objective="trace", num_particles=1)
    assert run(objective="trace", num_particles=1).epochs_run == 1  # the same run: nothing to do
    with pytest.raises(CheckpointError, match="objective: 'trace' in the checkpoint, 'iwae' now"):
        run(objective="iwae", num_particles=1)
    with pytest.raises(CheckpointError, match="num_particles"):
        run(objective="trace", num_particles=3)
    with pytest.raises(CheckpointError, match="model: CVAE in the checkpoint, Linear now"):
        probgen.fit(LossStep(nn.Linear(784, 784), mse), task["train"], epochs=1, device="cpu",
                    checkpoint=ckpt, resume=True, **QUIET)


def test_resume_without_checkpoint_file_starts_fresh(tmp_path):
    net = nn.Linear(1, 1)
    train, _ = conflicting_data()
    res = probgen.fit(LossStep(net, mse), train, epochs=2, device="cpu", resume=True,
                      checkpoint=str(tmp_path / "new.pt"), **QUIET)
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
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]   # no temporary left behind


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
        probgen.fit(net, train, epochs=10, batch_size=16, lr=0.1, device="cpu",
                    checkpoint=str(ckpt), **QUIET)
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
    res = probgen.fit(model, task["train"], task["val"], epochs=3, batch_size=64, lr=3e-3,
                      objective=objective, num_particles=2, device="cpu", **QUIET)
    assert all(math.isfinite(v) for v in res.train_loss)
    assert res.train_loss[-1] < res.train_loss[0]
