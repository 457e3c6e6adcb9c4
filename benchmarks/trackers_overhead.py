"""What each experiment tracker costs: its import, its start, and per logged step / epoch.

Each tracker runs in a fresh process (so its library's import is measured once) on a small
VAE (binary MNIST, 512 images, batch 64: 8 steps per epoch, 5 epochs), logging every step
and the default image grids every epoch; the time spent inside its hooks is summed per hook.
The first start of an MLflow store includes building its SQLite tables.

    python benchmarks/trackers_overhead.py [--out DIR] [--epochs 5]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from probgen import checks

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
import probgen
from probgen.data import TensorData, image_splits
from probgen.models import VAE
from probgen.train import Callback
from probgen.train.trackers import CSVLogger, MLflow, TensorBoard, WandB
name, out, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1)
d = image_splits("mnist", val_size=256, limit=512, seed=0)
train = TensorData((d["train"].tensors[0] > 0.5).float())
val = TensorData((d["val"].tensors[0][:128] > 0.5).float())


class Timed(Callback):
    def __init__(self, inner):
        self.inner, self.t = inner, {}

    def _time(self, hook, *args):
        t = time.perf_counter()
        out = getattr(self.inner, hook)(*args)
        n, s = self.t.get(hook, (0, 0.0))
        self.t[hook] = (n + 1, s + time.perf_counter() - t)
        return out

    def on_fit_start(self, run): self._time("on_fit_start", run)
    def on_train_batch_end(self, run, i, losses): self._time("on_train_batch_end", run, i, losses)
    def on_epoch_end(self, run, entry): self._time("on_epoch_end", run, entry)
    def on_fit_end(self, run, result): self._time("on_fit_end", run, result)
    def state_dict(self): return self.inner.state_dict()


t = time.perf_counter()
make = {"none": lambda: None,
        "csv": lambda: CSVLogger(f"{out}/csv/log.csv", log_every_n_steps=1),
        "tensorboard": lambda: TensorBoard(f"{out}/tb", log_every_n_steps=1),
        "mlflow": lambda: MLflow(f"{out}/mlruns", log_every_n_steps=1),
        "wandb": lambda: WandB(dir=f"{out}/wb", mode="offline", log_every_n_steps=1)}[name]
tracker = make()
construct = time.perf_counter() - t
cbs = [Timed(tracker)] if tracker is not None else []
torch.manual_seed(0)
t = time.perf_counter()
res = probgen.fit(VAE(z_dim=8, hidden=(64,)), train, val, epochs=epochs, batch_size=64,
                  device="cpu", progress=False, verbose=False, callbacks=cbs)
fit = time.perf_counter() - t
print(json.dumps({"tracker": name, "construct_s": construct, "fit_s": fit,
                  "hooks": cbs[0].t if cbs else {}}))
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="where the trackers write (default: a temp dir)")
    p.add_argument("--epochs", type=checks.arg(checks.positive_int), default=5)
    p.add_argument(
        "--trackers", nargs="+", default=["none", "csv", "tensorboard", "mlflow", "wandb"]
    )
    args = p.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="probgen-trackers-"))
    env = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "OMP_NUM_THREADS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }
    import os

    rows = []
    for name in args.trackers:
        imp = subprocess.run(
            [sys.executable, "-c", _import_line(name)],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
        )
        r = subprocess.run(
            [sys.executable, "-c", CHILD, name, str(out), str(args.epochs)],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
        )
        if r.returncode:
            print(r.stderr[-2000:], file=sys.stderr)
            continue
        row = json.loads(r.stdout.strip().splitlines()[-1])
        row["import_s"] = float(imp.stdout.strip() or "nan")
        rows.append(row)
        hooks = "  ".join(f"{h} {n}x {1000 * s / n:.1f} ms" for h, (n, s) in row["hooks"].items())
        print(
            f"{name:12s} import {row['import_s']:.2f} s  construct {row['construct_s']:.2f} s  "
            f"fit {row['fit_s']:.2f} s  {hooks}"
        )
    (out / "trackers_overhead.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {out / 'trackers_overhead.json'}")


def _import_line(name):
    module = {
        "none": "probgen",
        "csv": "probgen.train.trackers",
        "tensorboard": "torch.utils.tensorboard",
        "mlflow": "mlflow.tracking",
        "wandb": "wandb",
    }[name]
    return (
        f"import time, torch; t = time.perf_counter(); import {module}; "
        f"print(time.perf_counter() - t)"
    )


if __name__ == "__main__":
    main()
