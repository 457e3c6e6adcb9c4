"""Experiment trackers: what each one logs is read back from its own store.

TensorBoard's event files (EventAccumulator), MLflow's local store (MlflowClient) and
W&B's offline run folder (its .wandb record log, read below) hold the epoch figures of
``FitResult.history``, the per-step losses the loop hands to ``on_train_batch_end``, the
image grids and the run's settings. No test touches the network (see ``no_network``).
"""

import contextlib
import csv
import json
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import probgen
from probgen.data import TensorData
from probgen.errors import ConfigError
from probgen.models import VAE
from probgen.train import Callback, Metric
from probgen.train.trackers import (
    CSVLogger,
    MLflow,
    TensorBoard,
    Tracker,
    WandB,
    image_grid,
    make_trackers,
    model_images,
    run_hparams,
)
from tests.conftest import QUIET

EPOCHS, BATCH, N_TRAIN = 2, 64, 256
STEPS = EPOCHS * N_TRAIN // BATCH


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """W&B offline and quiet, MLflow's telemetry off; a connection from this process (any
    thread) to a host other than this machine fails the test. W&B's service process talks
    to this one over a Unix socket and, offline, to no one else (its debug-core.log)."""
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/not_used.db")
    connect, attempts = socket.socket.connect, []

    def local_only(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in (
            "127.0.0.1",
            "::1",
            "localhost",
        ):
            attempts.append(address)  # seen at teardown, also from a background thread
            raise OSError(f"no network in this test: {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    yield
    assert attempts == [], f"a tracker tried to reach {attempts}"


@pytest.fixture(scope="module")
def images(mnist_small):
    """Binary digits: 256 to train on, 64 to validate on."""
    train = (mnist_small["train"].tensors[0][:N_TRAIN] > 0.5).float()
    val = (mnist_small["val"].tensors[0][:64] > 0.5).float()
    return TensorData(train), TensorData(val)


class Probe(Callback):
    """What the loop hands to ``on_train_batch_end``."""

    def __init__(self):
        self.steps = []

    def on_train_batch_end(self, run, step_index, losses):
        self.steps.append((step_index, {k: float(v) for k, v in losses.items()}))


def fit_vae(data, callbacks, epochs=EPOCHS, **kw):
    torch.manual_seed(0)
    model = VAE(z_dim=2, hidden=(16,))
    probe = Probe()
    result = probgen.fit(
        model,
        *data,
        epochs=epochs,
        batch_size=BATCH,
        device="cpu",
        lr=1e-3,
        callbacks=[*callbacks, probe],
        **{**QUIET, **kw},
    )
    return model, result, probe


def scalars_of(history):
    return [{k: v for k, v in e.items() if k != "epoch" and isinstance(v, float)} for e in history]


def grid_hw(n, nrow=None):
    g = image_grid(torch.zeros(n, 1, 28, 28), nrow)
    return tuple(g.shape[1:])


SAMPLES_HW, RECON_HW = grid_hw(16), grid_hw(32, 16)


def csv_rows(path):
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def check_steps(logged, probe, exact=True):
    """``logged``: [(step, value)] of batch/train_loss; they are the probe's losses."""
    want = [(i + 1, next(iter(d.values()))) for i, d in probe.steps]
    assert [s for s, _ in logged] == [s for s, _ in want]
    for (_, got), (_, v) in zip(logged, want):
        assert got == (v if exact else pytest.approx(v, rel=1e-6))


# --------------------------------------------------------------------------- CSV


def test_csv_logs_history_steps_images_and_config(images, tmp_path):
    log = CSVLogger(tmp_path / "run" / "log.csv", log_every_n_steps=1)
    _, res, probe = fit_vae(images, [log])
    rows = csv_rows(tmp_path / "run" / "log.csv")
    assert len(rows) == EPOCHS
    for row, entry in zip(rows, scalars_of(res.history)):
        assert {k: float(row[k]) for k in entry} == entry
    steps = csv_rows(tmp_path / "run" / "log_steps.csv")
    check_steps([(int(r["step"]), float(r["batch/train_loss"])) for r in steps], probe)
    for name, hw in (("samples", SAMPLES_HW), ("reconstructions", RECON_HW)):
        for epoch in range(1, EPOCHS + 1):
            im = Image.open(tmp_path / "run" / "log_images" / f"{name}_epoch{epoch:04d}.png")
            assert (im.height, im.width) == hw and im.mode == "RGB"
    config = json.loads((tmp_path / "run" / "log_config.json").read_text())
    assert config["fit"]["epochs"] == EPOCHS and config["fit"]["lr"] == 1e-3
    assert config["model"]["class"] == "probgen.models.vae:VAE" and config["model"]["z_dim"] == 2


# --------------------------------------------------------------------------- TensorBoard


def read_tensorboard(log_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    imgs = {t: [(e.step, e.height, e.width) for e in acc.Images(t)] for t in acc.Tags()["images"]}
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hp = HParamsPluginData.FromString(content).session_start_info.hparams
    hparams = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in hp.items()}
    return scalars, imgs, hparams


def test_tensorboard_logs_history_steps_images_and_hparams(images, tmp_path):
    pytest.importorskip("tensorboard")
    tb = TensorBoard(tmp_path / "tb", log_every_n_steps=1)
    _, res, probe = fit_vae(images, [tb])
    scalars, imgs, hparams = read_tensorboard(tmp_path / "tb")
    for key in scalars_of(res.history)[0]:
        # TensorBoard keeps scalars as float32
        want = [(e + 1, float(np.float32(h[key]))) for e, h in enumerate(res.history)]
        assert scalars[key] == want, key
    check_steps(scalars.get("batch/train_loss", []), probe, exact=False)
    assert imgs["samples"] == [(e, *SAMPLES_HW) for e in range(1, EPOCHS + 1)]
    assert imgs["reconstructions"] == [(e, *RECON_HW) for e in range(1, EPOCHS + 1)]
    assert hparams["fit.lr"] == pytest.approx(1e-3) and hparams["fit.epochs"] == EPOCHS
    assert hparams["model.class"] == "probgen.models.vae:VAE" and hparams["model.z_dim"] == 2
    assert hparams["model.hidden"] == "[16]" and hparams["fit.eval_particles"] == "None"


# --------------------------------------------------------------------------- MLflow


@pytest.fixture(scope="module")
def mlflow_dir(tmp_path_factory):
    """One SQLite store for the module, in memory-backed /dev/shm where there is one:
    MLflow builds a new store's tables with ~2,000 statements (3 s there, 9 s on this
    machine's disk)."""
    import shutil

    shm = Path("/dev/shm")
    if shm.is_dir():
        path = Path(tempfile.mkdtemp(prefix="probgen-mlruns-", dir=shm))
        yield path
        shutil.rmtree(path, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("mlruns")


def read_mlflow(tracker, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracker.uri)
    run = client.get_run(tracker.run_id)
    metrics = {
        k: [
            (m.step, m.value)
            for m in sorted(
                client.get_metric_history(run.info.run_id, k), key=lambda m: (m.step, m.timestamp)
            )
        ]
        for k in run.data.metrics
    }
    shapes = {}
    for name in ("samples", "reconstructions"):
        files = sorted(a.path for a in client.list_artifacts(run.info.run_id, f"images/{name}"))
        shapes[name] = []
        for f in files:
            local = client.download_artifacts(run.info.run_id, f, str(tmp_path))
            shapes[name].append((Path(f).name, np.asarray(Image.open(local)).shape))
    return run, metrics, shapes


@pytest.mark.parametrize("store", ["sqlite", "file"])
def test_mlflow_logs_history_steps_images_and_params(
    images, tmp_path, mlflow_dir, store, monkeypatch
):
    pytest.importorskip("mlflow")
    if store == "sqlite":
        pytest.importorskip("sqlalchemy")
        tracker = MLflow(mlflow_dir, run_name="vae", log_every_n_steps=1)
    else:  # MLflow 3 serves its file store only when asked to
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        tracker = MLflow(tracking_uri=(tmp_path / "mlruns").as_uri(), log_every_n_steps=1)
    _, res, probe = fit_vae(images, [tracker])
    run, metrics, shapes = read_mlflow(tracker, tmp_path)
    assert run.info.status == "FINISHED"
    if store == "sqlite":
        assert run.info.run_name == "vae" and tracker.uri.startswith("sqlite:///")
    for key in scalars_of(res.history)[0]:
        assert metrics[key] == [(e + 1, h[key]) for e, h in enumerate(res.history)], key
    check_steps(metrics.get("batch/train_loss", []), probe)
    assert shapes["samples"] == [(f"epoch_{e:04d}.png", (*SAMPLES_HW, 3)) for e in (1, 2)]
    assert shapes["reconstructions"] == [(f"epoch_{e:04d}.png", (*RECON_HW, 3)) for e in (1, 2)]
    params = run.data.params
    assert params["fit.lr"] == "0.001" and params["fit.epochs"] == str(EPOCHS)
    assert params["model.class"] == "probgen.models.vae:VAE" and params["model.z_dim"] == "2"


# --------------------------------------------------------------------------- W&B


def wandb_records(path):
    """The records of a ``.wandb`` file: W&B's write-ahead log in LevelDB's log format
    (a 7-byte header ``:W&B`` + magic + version; 32 KiB blocks of chunks, each with a
    CRC-32 (4 bytes), a length (2) and a type: 1 whole, 2 first, 3 middle, 4 last).
    (wandb no longer ships a Python reader of its own.)"""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            yield pb.Record.FromString(buf)


def read_wandb(run_dir, wait=30.0):
    """(run id, config, history rows, exit code) of one offline run folder. W&B's service
    process writes the file: ``run.finish()`` returns a moment before the last records
    (the exit record among them) are on disk, so this waits for that record."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    deadline = time.monotonic() + wait
    while True:
        records = list(wandb_records(path))
        if (
            any(r.WhichOneof("record_type") == "exit" for r in records)
            or time.monotonic() > deadline
        ):
            break
        time.sleep(0.05)
    rid, config, rows, code = None, {}, [], None
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "run":
            rid = r.run.run_id
            config.update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":
            rows.append(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            )
        elif kind == "exit":
            code = r.exit.exit_code
    return rid, config, rows, code


def wandb_runs(root):
    return sorted((root / "wandb").glob("offline-run-*"), key=lambda p: p.stat().st_mtime)


def test_wandb_offline_logs_history_steps_images_and_config(images, tmp_path):
    pytest.importorskip("wandb")
    tracker = WandB(project="probgen-test", dir=tmp_path, log_every_n_steps=1)
    _, res, probe = fit_vae(images, [tracker])
    (run_dir,) = wandb_runs(tmp_path)
    rid, config, rows, code = read_wandb(run_dir)
    assert rid == tracker.run_id and code == 0
    epochs = [r for r in rows if "train_loss" in r]
    for key in scalars_of(res.history)[0]:
        assert [(r["epoch"], r[key]) for r in epochs] == [
            (e + 1, h[key]) for e, h in enumerate(res.history)
        ], key
    check_steps(
        [(r["global_step"], r["batch/train_loss"]) for r in rows if "batch/train_loss" in r], probe
    )
    for name, hw in (("samples", SAMPLES_HW), ("reconstructions", RECON_HW)):
        logged = [r for r in rows if f"{name}/path" in r]
        assert [r["epoch"] for r in logged] == [1, 2]
        for r in logged:
            im = Image.open(run_dir / "files" / r[f"{name}/path"])
            assert (im.height, im.width) == hw == (r[f"{name}/height"], r[f"{name}/width"])
    assert config["fit"]["lr"] == 1e-3 and config["fit"]["epochs"] == EPOCHS
    assert config["model"]["class"] == "probgen.models.vae:VAE" and config["model"]["z_dim"] == 2


# --------------------------------------------------------------------------- all of them


def available_trackers(root, mlflow_dir, **kw):
    out = [CSVLogger(root / "csv" / "log.csv", **kw)]
    with contextlib.suppress(ConfigError):
        out.append(TensorBoard(root / "tb", **kw))
    with contextlib.suppress(ConfigError):
        out.append(MLflow(mlflow_dir, experiment="resume", **kw))
    with contextlib.suppress(ConfigError):
        out.append(WandB(dir=root / "wb", **kw))
    return out


class Boom(Callback):
    def on_validation_end(self, run, entry):
        if entry["epoch"] == 1:
            raise RuntimeError("boom")


def test_resume_continues_each_tracker_run_without_duplicates(images, tmp_path, mlflow_dir):
    ckpt = tmp_path / "ckpt.pt"
    first = available_trackers(tmp_path, mlflow_dir, log_every_n_steps=1, images=None)
    # epoch 2 fails after its steps were logged and before its checkpoint
    with pytest.raises(RuntimeError, match="boom"):
        fit_vae(images, [*first, Boom()], checkpoint=str(ckpt))
    for t in first:
        t.on_exception(None, RuntimeError("boom"))  # what the loop does (a no-op if it did)
    again = available_trackers(tmp_path, mlflow_dir, log_every_n_steps=1, images=None)
    _, res, probe = fit_vae(images, again, checkpoint=str(ckpt), resume=True)
    assert len(res.history) == EPOCHS
    by = {type(t).__name__: (a, t) for a, t in zip(first, again)}
    want = [(e + 1, h["train_loss"]) for e, h in enumerate(res.history)]
    steps = [i + 1 for i, _ in probe.steps]
    rows = csv_rows(tmp_path / "csv" / "log_steps.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1)) if steps else rows == []
    if "TensorBoard" in by:
        scalars, _, _ = read_tensorboard(tmp_path / "tb")
        assert [s for s, _ in scalars["train_loss"]] == [1, 2]
        assert [s for s, _ in scalars.get("batch/train_loss", [])] == (
            list(range(1, STEPS + 1)) if steps else []
        )
    if "MLflow" in by:
        a, b = by["MLflow"]
        assert a.run_id == b.run_id
        run, metrics, _ = read_mlflow(b, tmp_path)
        assert run.info.status == "FINISHED" and metrics["train_loss"] == want
        assert run.data.tags.get("resume.fit.resume") == "True"
    if "WandB" in by:
        a, b = by["WandB"]
        assert a.run_id == b.run_id
        old, new = wandb_runs(tmp_path / "wb")
        (rid0, _, rows0, code0), (rid1, config1, rows1, code1) = read_wandb(old), read_wandb(new)
        assert rid0 == rid1 == a.run_id and code0 == 1 and code1 == 0
        assert [(r["epoch"], r["train_loss"]) for r in rows0 + rows1 if "train_loss" in r] == want
        assert config1["fit"]["resume"] is True


# --------------------------------------------------------------------------- per step


def test_fit_loop_hands_each_steps_losses_to_trackers(images, tmp_path):
    """The loop calls ``on_train_batch_end`` once per batch with the batch's loss; the
    batch losses of an epoch average to its ``train_loss`` (equal batch sizes)."""
    _, res, probe = fit_vae(images, [])
    assert [i for i, _ in probe.steps] == list(range(STEPS))
    per_epoch = STEPS // EPOCHS
    for e, entry in enumerate(res.history):
        losses = [
            next(iter(d.values())) for _, d in probe.steps[e * per_epoch : (e + 1) * per_epoch]
        ]
        assert np.mean(losses) == pytest.approx(entry["train_loss"], rel=1e-6)


class Forward(Callback):
    """A tracker's hooks but the per-step one, which the Driver calls."""

    def __init__(self, tracker):
        self.t = tracker

    def on_fit_start(self, run):
        self.t.on_fit_start(run)

    def on_epoch_end(self, run, entry):
        self.t.on_epoch_end(run, entry)

    def on_fit_end(self, run, result):
        self.t.on_fit_end(run, result)


class Driver(Callback):
    """Calls a tracker's per-step hook as the loop does, with known losses."""

    def __init__(self, tracker, n):
        self.tracker, self.n = tracker, n

    def on_validation_end(self, run, entry):
        base = entry["epoch"] * self.n
        for i in range(base, base + self.n):
            self.tracker.on_train_batch_end(
                run, i, {"d": torch.tensor(float(i)), "g": torch.tensor(-float(i))}
            )


def test_step_logging_interval_and_phase_names(images, tmp_path):
    log = CSVLogger(tmp_path / "log.csv", log_every_n_steps=3, images=None)
    fit_vae(images, [Forward(log), Driver(log, 5)])
    rows = csv_rows(tmp_path / "log_steps.csv")
    assert [int(r["step"]) for r in rows] == [3, 6, 9]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 2]
    for r in rows:
        i = int(r["step"]) - 1
        assert float(r["batch/train_loss"]) == float(r["batch/train_loss/d"]) == i
        assert float(r["batch/train_loss/g"]) == -i


# --------------------------------------------------------------------------- behaviour


def test_images_leave_the_training_run_unchanged(images, tmp_path):
    m1, r1, _ = fit_vae(images, [])
    m2, r2, _ = fit_vae(images, [CSVLogger(tmp_path / "log.csv", images="auto")])
    assert (tmp_path / "log_images" / "samples_epoch0001.png").exists()
    assert [e["train_loss"] for e in r1.history] == [e["train_loss"] for e in r2.history]
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)


def test_image_interval_and_extra_hparams(images, tmp_path):
    log = CSVLogger(
        tmp_path / "log.csv", image_every=2, hparams={"dataset": "mnist"}, log_every_n_steps=None
    )
    fit_vae(images, [log], epochs=3)
    assert sorted(p.name for p in (tmp_path / "log_images").iterdir()) == [
        f"{k}_epoch{e:04d}.png" for k in ("reconstructions", "samples") for e in (2, 3)
    ]
    assert json.loads((tmp_path / "log_config.json").read_text())["dataset"] == "mnist"
    assert not (tmp_path / "log_steps.csv").exists()


def test_image_grid_layout():
    x = torch.arange(1, 8).float().div(10).view(7, 1, 1, 1).expand(7, 1, 4, 3)  # flat grey levels
    grid = image_grid(x, nrow=3, padding=2)
    assert grid.shape == (3, 3 * 6 + 2, 3 * 5 + 2)
    for k in range(7):
        top, left = (k // 3) * 6 + 2, (k % 3) * 5 + 2
        assert torch.all(grid[:, top : top + 4, left : left + 3] == x[k, 0, 0, 0])
        grid[:, top : top + 4, left : left + 3] = 1.0
    assert torch.all(grid == 1.0)  # the rest is white padding (and the empty 8th and 9th)
    assert image_grid(torch.rand(16, 3, 2, 2)).shape == (3, 4 * 4 + 2, 4 * 4 + 2)  # square
    with pytest.raises(ConfigError, match="N, C, H, W"):
        image_grid(torch.rand(4, 784))
    with pytest.raises(ConfigError, match="nrow must be at least 1, got 0"):  # not the default
        image_grid(x, nrow=0)


def test_model_images_of_models_with_and_without_the_methods(images):
    class FakeRun:
        module, val_data, train_data = VAE(z_dim=2, hidden=(8,)), images[1], images[0]

    out = model_images(FakeRun, n=5)
    assert out["samples"].shape == (5, 1, 28, 28)
    assert out["reconstructions"].shape == (10, 1, 28, 28)
    assert torch.equal(out["reconstructions"][:5], images[1].tensors[0][:5])
    FakeRun.module = torch.nn.Linear(2, 2)
    assert model_images(FakeRun) == {}


def test_auto_images_skip_what_a_model_cannot_draw(images, tmp_path):
    class NeedsLabels(VAE):
        def sample(self, n, labels=None):
            raise ValueError("labels are needed")

    log = CSVLogger(tmp_path / "log.csv", images="auto")
    torch.manual_seed(0)
    with pytest.warns(RuntimeWarning, match="no samples of this NeedsLabels .*labels are") as w:
        res = probgen.fit(
            NeedsLabels(z_dim=2, hidden=(8,)),
            *images,
            epochs=EPOCHS,
            batch_size=BATCH,
            device="cpu",
            callbacks=[log],
            **QUIET,
        )
    assert len([x for x in w if "logs no samples" in str(x.message)]) == 1  # once
    assert sorted(p.name for p in (tmp_path / "log_images").iterdir()) == [
        f"reconstructions_epoch{e:04d}.png" for e in range(1, EPOCHS + 1)
    ]
    assert len(csv_rows(tmp_path / "log.csv")) == len(res.history) == EPOCHS


def test_a_logging_error_warns_and_training_goes_on(images, tmp_path):
    def broken(run):
        raise OSError("No space left on device")

    log = CSVLogger(tmp_path / "log.csv", images=broken)
    with pytest.warns(RuntimeWarning, match="CSV tracker stopped logging .*OSError: No space"):
        _, res, _ = fit_vae(images, [log], checkpoint=str(tmp_path / "ckpt.pt"))
    assert len(res.history) == EPOCHS and (tmp_path / "ckpt.pt").exists()
    assert len(csv_rows(tmp_path / "log.csv")) == 1  # stopped after epoch 1


def test_on_error_raise_keeps_the_epochs_checkpoint(images, tmp_path):
    def broken(run):
        raise OSError("No space left on device")

    log = CSVLogger(tmp_path / "log.csv", images=broken, on_error="raise")
    with pytest.raises(OSError, match="No space"):
        fit_vae(images, [log], checkpoint=str(tmp_path / "ckpt.pt"))
    state = probgen.train.load_checkpoint(tmp_path / "ckpt.pt")
    assert state["epoch"] == 1


def test_only_rank_zero_writes(tmp_path):
    class Rank1:
        is_main = False

    trackers = [CSVLogger(tmp_path / "csv" / "log.csv")]
    with contextlib.suppress(ConfigError):
        trackers.append(TensorBoard(tmp_path / "tb"))
    for t in trackers:
        t.on_fit_start(Rank1)
        t.on_train_batch_end(Rank1, 0, {"loss": torch.tensor(1.0)})
        t.on_epoch_end(Rank1, {"epoch": 0, "train_loss": 1.0})
        t.on_fit_end(Rank1, None)
        assert t.state_dict() == {}
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "cls,blocked,extra",
    [
        (TensorBoard, "torch.utils.tensorboard", "tensorboard"),
        (MLflow, "mlflow", "mlflow"),
        (MLflow, "sqlalchemy", "mlflow"),
        (WandB, "wandb", "wandb"),
    ],
)
def test_a_missing_library_is_one_config_line(cls, blocked, extra, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, blocked, None)  # import of it fails
    args = {TensorBoard: (tmp_path,), MLflow: (tmp_path,), WandB: ()}[cls]
    with pytest.raises(ConfigError) as err:
        cls(*args)
    msg = str(err.value)
    assert "\n" not in msg and f"pip install 'probgen[{extra}]'" in msg and cls.library in msg


def test_bad_settings_are_config_errors(tmp_path):
    for kw in (
        {"log_every_n_steps": 0},
        {"image_every": 0},
        {"images": "all"},
        {"on_error": "ignore"},
        {"hparams": [1]},
    ):
        with pytest.raises(ConfigError):
            CSVLogger(tmp_path / "log.csv", **kw)
    with pytest.raises(ConfigError, match="unknown tracker 'neptune'"):
        make_trackers(["csv", "neptune"], tmp_path)


def test_make_trackers_by_name(tmp_path):
    names = ["csv", "csv"]
    for lib, name in (("tensorboard", "tensorboard"), ("mlflow", "mlflow"), ("wandb", "wandb")):
        try:
            __import__(lib)
            names.append(name)
        except ImportError:
            pass
    made = make_trackers(names, tmp_path, log_every_n_steps=None)
    assert [type(t).__name__ for t in made][:1] == ["CSVLogger"] and len(made) == len(names) - 1
    assert all(isinstance(t, Tracker) and t.log_every_n_steps is None for t in made)
    assert made[0].path == tmp_path / "log.csv"
    named = {type(t).__name__: t for t in make_trackers(names, tmp_path, run_name="baseline")}
    assert named["CSVLogger"].path == tmp_path / "log_baseline.csv"
    if "TensorBoard" in named:
        assert Path(named["TensorBoard"].log_dir) == tmp_path / "tensorboard" / "baseline"
    for kind in ("MLflow", "WandB"):
        if kind in named:
            assert named[kind].run_name == "baseline"


def test_old_import_paths_and_metric_figures(images, tmp_path):
    from probgen.train import CSVLogger as A
    from probgen.train.callbacks import CSVLogger as B
    from probgen.train.callbacks import TensorBoard as C

    assert A is B is CSVLogger and C is TensorBoard
    log = CSVLogger(tmp_path / "log.csv", images=None)
    fit_vae(images, [Metric("answer", lambda m: 42.0, every=2), log])
    rows = csv_rows(tmp_path / "log.csv")
    assert [r["answer"] for r in rows] == ["", "42.0"]


def test_run_hparams_of_a_plain_network():
    class FakeRun:
        config = probgen.train.FitConfig(epochs=3)
        module = torch.nn.Linear(2, 2)

    hp = run_hparams(FakeRun, {"dataset": "mnist"})
    assert hp == {"fit": FakeRun.config.to_dict(), "dataset": "mnist"}
