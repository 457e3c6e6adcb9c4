"""The library's metric callbacks: Metric's number and dict forms and its own timing,
TrainingCPUTime's clock, Snapshots over training and over a resume."""

import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import probgen
from probgen.data import TensorData
from probgen.errors import ConfigError
from probgen.train import LossStep, Metric
from probgen.train.callbacks import Snapshots, TrainingCPUTime
from tests.conftest import QUIET


def _fit(callbacks, epochs=3, **kw):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Dropout(0.5))
    data = TensorData(torch.ones(16, 1), torch.ones(16, 1))
    res = probgen.fit(
        LossStep(net, lambda m, x, y: ((m(x) - y) ** 2).mean()),
        data,
        epochs=epochs,
        lr=0.1,
        batch_size=8,
        device="cpu",
        callbacks=callbacks,
        **QUIET,
        **kw,
    )
    return net, res


def _burn(seconds):
    """Spend ``seconds`` of this process's CPU time."""
    end = time.process_time() + seconds
    x = 0
    while time.process_time() < end:
        x += 1
    return x


def test_metric_records_a_number_or_a_dict_and_times_itself():
    seen = []

    def report(net):
        seen.append((net.training, torch.is_grad_enabled()))
        _burn(0.05)
        return {"weight": net[0].weight.item(), "nothing": None, "count": torch.tensor(3)}

    net, res = _fit([Metric("report", report, every=2), Metric("plain", lambda m: 2.5)])
    assert net.training  # the mode is given back
    assert seen == [(False, False), (False, False)]  # eval mode, no gradients
    hist = res.history
    # every second epoch and the last: epochs 2 and 3 (1-based)
    assert [h.get("weight") is not None for h in hist] == [False, True, True]
    assert "report_seconds" not in hist[0]
    for h in hist[1:]:
        assert h["nothing"] is None and h["count"] == 3.0 and isinstance(h["count"], float)
        assert "report" not in h  # a dict's keys, not the name
        assert h["report_cpu_seconds"] >= 0.05 and h["report_seconds"] >= 0.04
    # the number form as before, with its own timing
    assert res.curve("plain") == [2.5, 2.5, 2.5]
    assert all(0 <= h["plain_cpu_seconds"] < 0.05 for h in hist)
    # the weight recorded is the one after that epoch's training
    final = net[0].weight.item()
    assert hist[-1]["weight"] == pytest.approx(final)


def test_metric_dict_figure_can_be_monitored():
    scores = iter([{"score": 1.0}, {"score": 3.0}, {"score": 2.0}])
    _, res = _fit(
        [Metric("s", lambda m: next(scores))], monitor="score", mode="max", restore_best=True
    )
    assert res.best_epoch == 1 and res.best_loss == 3.0


def test_metric_refuses_a_bad_every():
    with pytest.raises(ConfigError, match=r"^Metric 'm': every must be at least 1, got 0\.$"):
        Metric("m", lambda m: 0.0, every=0)
    with pytest.raises(ConfigError, match=r"every must be an integer, got 2\.5"):
        Metric("m", lambda m: 0.0, every=2.5)


def test_snapshots_refuse_an_epoch_they_would_never_reach():
    """Epochs count from 1: a 0 was kept and silently never taken."""
    with pytest.raises(
        ConfigError, match="each of epochs must be at least 1, got 0; epochs are counted from 1"
    ):
        Snapshots([0, 5], lambda m: {})
    assert Snapshots([1, 5], lambda m: {}).epochs == {1, 5}
    with pytest.raises(ConfigError, match="n must be at least 1, got 0"):
        Snapshots.spread(10, 0)


def test_the_callback_protocol_sits_below_the_callbacks_and_keeps_its_old_path():
    from probgen.train import callbacks, hooks, trackers

    for name in ("Callback", "LambdaCallback", "as_callback"):
        assert getattr(callbacks, name) is getattr(hooks, name)
    assert issubclass(Metric, hooks.Callback) and issubclass(trackers.CSVLogger, hooks.Callback)
    assert callbacks.CSVLogger is trackers.CSVLogger
    assert callbacks.TensorBoard is trackers.TensorBoard


def test_training_cpu_time_leaves_the_named_metrics_out(monkeypatch):
    assert TrainingCPUTime("fid").leave_out == ("fid",)
    clock = iter([10.0, 15.0, 21.0, 30.0])
    monkeypatch.setattr("probgen.train.callbacks.time.process_time", lambda: next(clock))
    cb = TrainingCPUTime(leave_out=["fid"])  # reads the clock once: 10
    cb.on_fit_start(None)  # 15: the start
    first = {"epoch": 0, "fid_cpu_seconds": 2.0, "other_cpu_seconds": 1.0}
    cb.on_validation_end(None, first)  # 21: 6 s, 2 of them the FID's
    second = {"epoch": 1}
    cb.on_validation_end(None, second)  # 30: 9 s, no FID this epoch
    assert first["cpu_seconds"] == 4.0 and second["cpu_seconds"] == 9.0


def test_training_cpu_time_in_a_fit_subtracts_the_metric_it_follows():
    _, res = _fit(
        [Metric("slow", lambda m: _burn(0.2)), TrainingCPUTime(leave_out=["slow"])], epochs=2
    )
    for h in res.history:
        # the metric's 0.2 s left out: the tiny training costs far less
        assert h["slow_cpu_seconds"] >= 0.2 and 0 <= h["cpu_seconds"] < 0.15


def test_snapshots_take_the_chosen_epochs_and_survive_a_resume(tmp_path):
    assert Snapshots.spread(10, 3) == [1, 3, 7, 10]
    assert Snapshots.spread(1, 5) == [1]
    shots = Snapshots(
        [1, 3], lambda net: {"w": net[0].weight.detach().clone(), "grad": torch.is_grad_enabled()}
    )
    net, res = _fit([shots], epochs=2, checkpoint=str(tmp_path / "run.pt"))
    assert list(shots.taken) == ["epoch 1"] and shots.taken["epoch 1"]["grad"] is False
    first = shots.taken["epoch 1"]["w"]
    # a resumed run continues: the first snapshot comes back from the checkpoint
    again = Snapshots([1, 3], lambda net: {"w": net[0].weight.detach().clone()})
    net, res = _fit([again], epochs=3, checkpoint=str(tmp_path / "run.pt"), resume=True)
    assert list(again.taken) == ["epoch 1", "epoch 3"]
    assert torch.equal(again.taken["epoch 1"]["w"], first)
    assert torch.equal(again.taken["epoch 3"]["w"], net[0].weight.detach())
    assert len(res.history) == 3


def test_snapshots_only_on_the_main_process():
    shots = Snapshots([1], lambda m: {"x": torch.zeros(1)})
    shots.on_epoch_end(SimpleNamespace(is_main=False, module=None), {"epoch": 0})
    assert shots.taken == {}
    shots.on_epoch_end(SimpleNamespace(is_main=True, module=None), {"epoch": 0})
    assert list(shots.taken) == ["epoch 1"]


def test_training_seconds_of_a_history():
    from probgen.train.callbacks import training_seconds

    hist = [
        {"seconds": 10.0, "fid_seconds": 4.0, "cpu_seconds": 5.0},
        {"seconds": 8.0, "cpu_seconds": 6.0},
    ]
    assert training_seconds(hist) == (14.0, 11.0)
    assert training_seconds(hist, leave_out=()) == (18.0, 11.0)
    wall, cpu = training_seconds([{"seconds": 3.0}, {"seconds": 2.0, "cpu_seconds": 1.0}])
    assert wall == 5.0 and cpu != cpu  # not every epoch has CPU seconds
    assert training_seconds([])[0] == 0.0
