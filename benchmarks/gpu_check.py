"""The parts of ``benchmarks/gpu_check.sh``: what tests on fake CUDA tensors cannot see.

Subcommands (each prints one JSON line on stdout, the last line, for the driver to keep):

``example PATH [ARGS...]``
    Runs an example script in this process as ``python PATH ARGS...`` would, with
    ``torch.cuda.set_sync_debug_mode("warn")`` set first when CUDA is available (no change
    to the example): every synchronising CUDA call warns, and the warnings are counted by
    the line of Python that made them.
``train --device D --checkpoint P --epochs E [--resume] [--limit N]``
    Trains a VAE on the bundled MNIST with a checkpoint every epoch (the kill/resume check).
``kill-resume --device D --dir DIR``
    Starts ``train`` for several epochs, kills it (SIGKILL) once its first checkpoint is
    written, resumes it on the same device, and compares the resumed epochs with an
    uninterrupted run.
``load --checkpoint P``
    Loads a checkpoint (run with ``CUDA_VISIBLE_DEVICES=""`` to load a GPU checkpoint on
    a machine that sees no GPU) and runs the model on CPU tensors.
``time-epochs --device D --out DIR [--quick]``
    One epoch per family (VAE at batch 100 and 1000, CVAE, Glow of depth 4, DCGAN) on
    ``D`` and on this machine's CPU; writes ``epochs.json`` and ``epochs.md``. A CPU epoch
    (or any epoch with ``--quick``) is timed on a slice of the data and scaled to the
    whole set (marked ``extrapolated``).

Timings depend on the machine and on what else runs there: the JSON records the device
name, torch's version and the thread count.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import runpy
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from probgen import checks  # noqa: E402


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


# --------------------------------------------------------------------------- example


def cmd_example(args) -> int:
    """Run an example under the sync debug mode; count the synchronisation warnings."""
    path = Path(args.path)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_sync_debug_mode("warn")
    counts: collections.Counter = collections.Counter()
    shown = warnings.showwarning

    def count(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if "synchroniz" in text:
            counts[f"{os.path.relpath(filename, ROOT)}:{lineno}"] += 1
            return
        shown(message, category, filename, lineno, file, line)

    sys.argv = [str(path)] + list(args.rest)
    sys.path.insert(0, str(path.resolve().parent))  # as `python PATH` puts the script's folder
    t0 = time.perf_counter()
    code = 0
    with warnings.catch_warnings():
        warnings.filterwarnings("always", message=".*synchroniz")  # every one, not the first
        warnings.showwarning = count
        try:
            runpy.run_path(str(path), run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        finally:
            warnings.showwarning = shown
    emit(
        {
            "example": path.name,
            "args": list(args.rest),
            "returncode": code,
            "seconds": round(time.perf_counter() - t0, 2),
            "sync_debug": cuda,
            "sync_warnings": sum(counts.values()),
            "sync_lines": dict(counts.most_common(12)),
        }
    )
    return code


# --------------------------------------------------------------------------- train / resume


def _mnist(device: str, limit, binarize="dynamic", val_size=1000):
    from probgen.data import image_splits

    return image_splits(
        "mnist", val_size=val_size, binarize=binarize, seed=0, device=device, limit=limit
    )


def cmd_train(args) -> int:
    from probgen import FitConfig, fit
    from probgen.models import VAE
    from probgen.train import set_seed

    set_seed(0)
    splits = _mnist(args.device, args.limit)
    model = VAE(z_dim=16, hidden=(256,))
    config = FitConfig(
        epochs=args.epochs,
        batch_size=100,
        lr=1e-3,
        device=args.device,
        seed=0,
        patience=None,
        restore_best=False,
        progress=False,
        verbose=False,
        checkpoint=args.checkpoint,
        resume=args.resume,
    )
    result = fit(model, splits["train"], splits["val"], config=config)
    emit(
        {
            "device": args.device,
            "epochs": [e["epoch"] for e in result.history],
            "train_loss": [e["train_loss"] for e in result.history],
            "val_loss": [e["val_loss"] for e in result.history],
            "module_device": str(next(model.parameters()).device),
        }
    )
    return 0


def _last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return {}


def cmd_kill_resume(args) -> int:
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    me = [
        sys.executable,
        str(Path(__file__).resolve()),
        "train",
        "--device",
        args.device,
        "--epochs",
        str(args.epochs),
        "--limit",
        str(args.limit),
    ]
    # an uninterrupted run, the reference
    ref = subprocess.run(
        me + ["--checkpoint", str(out / "whole.pt")],
        capture_output=True,
        text=True,
        timeout=args.timeout,
    )
    ref_rec = _last_json(ref.stdout)
    # the same run, killed once its first checkpoint exists
    ckpt = out / "killed.pt"
    ckpt.unlink(missing_ok=True)
    proc = subprocess.Popen(
        me + ["--checkpoint", str(ckpt)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    t0 = time.perf_counter()
    while not ckpt.exists() and proc.poll() is None and time.perf_counter() - t0 < args.timeout:
        time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.communicate()
    from probgen.train.checkpoint import load_checkpoint

    state = load_checkpoint(ckpt, map_location="cpu") if ckpt.exists() else {}
    done = state.get("epoch")
    res = subprocess.run(
        me + ["--checkpoint", str(ckpt), "--resume"],
        capture_output=True,
        text=True,
        timeout=args.timeout,
    )
    res_rec = _last_json(res.stdout)
    # the resumed run's history: the killed run's epochs (from its checkpoint), then its own
    ref_loss = ref_rec.get("train_loss", [])
    got = res_rec.get("train_loss", [])
    diff = max((abs(a - b) for a, b in zip(got, ref_loss)), default=None)
    ok = (
        ref.returncode == 0
        and res.returncode == 0
        and killed
        and done is not None
        and 0 < done < args.epochs
        and len(got) == len(ref_loss) == args.epochs
    )
    emit(
        {
            "check": "kill-resume",
            "device": args.device,
            "killed_after_epochs": done,
            "killed": killed,
            "epochs": res_rec.get("epochs"),
            "resumed_train_loss": got,
            "uninterrupted_train_loss": ref_loss,
            "max_abs_difference": diff,
            "exact": diff == 0.0 if diff is not None else None,
            "ok": ok,
            "stderr": (res.stderr or ref.stderr)[-2000:] if not ok else "",
        }
    )
    return 0 if ok else 1


def cmd_load(args) -> int:
    import probgen

    visible = torch.cuda.is_available()
    model = probgen.load(args.checkpoint)
    x = (torch.rand(4, 1, 28, 28) < 0.3).float()
    rec = model.reconstruct(x)
    emit(
        {
            "check": "load",
            "cuda_visible": visible,
            "module_device": str(next(model.parameters()).device),
            "output_device": str(rec.device),
            "ok": rec.device.type == "cpu" and bool(torch.isfinite(rec).all()),
        }
    )
    return 0


# --------------------------------------------------------------------------- epoch timings


def _families(device: str, limit):
    """``{name: (build() -> (model, train data, config overrides), epoch size)}``."""
    from probgen.data import quadrant_task
    from probgen.data.dequantize import dequantized
    from probgen.models import CVAE, GAN, VAE, Baseline
    from probgen.models.flow import FlowModel

    def at_least(batch):  # a slice holds five batches at least
        return None if limit is None else max(limit, 5 * batch)

    def vae(batch):
        def build():
            splits = _mnist(device, at_least(batch), "dynamic", 5000)
            return VAE(z_dim=50), splits["train"], dict(batch_size=batch)

        return build

    def cvae():
        splits = _mnist(device, at_least(256), "none", 5000)
        model = CVAE(Baseline(hidden=(500, 500)), z_dim=200, hidden=(500, 500))
        data = model.to(device).with_completions(quadrant_task(splits["train"], 1))
        return model, data, dict(batch_size=256, objective="meanfield", lr=2e-3)

    def glow():
        splits = _mnist(device, limit, "none", 5000)
        return (
            FlowModel("glow", event_shape=(1, 28, 28), depth=4),
            dequantized(splits["train"]),
            dict(batch_size=64),
        )

    def dcgan():
        splits = _mnist(device, limit, "none", 5000)
        return (
            GAN(net="dcgan", data_range=(0.0, 1.0), output="tanh"),
            splits["train"],
            dict(batch_size=64, lr=2e-4),
        )

    return {
        "VAE (batch 100)": vae(100),
        "VAE (batch 1000)": vae(1000),
        "CVAE": cvae,
        "Glow (depth 4)": glow,
        "DCGAN": dcgan,
    }


def _time_epoch(build, device: str, limit, full: int) -> dict:
    from probgen import FitConfig, fit

    torch.manual_seed(0)
    model, data, over = build()
    config = FitConfig(
        epochs=1,
        device=device,
        seed=0,
        patience=None,
        restore_best=False,
        progress=False,
        verbose=False,
        **over,
    )
    # warm-up: a few steps (CUDA context, cuDNN's choice of kernels, Pyro's parameters)
    fit(model, data.subset(slice(0, 4 * config.batch_size)), config=config)
    t0 = time.perf_counter()
    result = fit(model, data, config=config)
    seconds = result.history[0].get("seconds", time.perf_counter() - t0)
    n = len(data)
    return {
        "examples_timed": n,
        "seconds_timed": round(seconds, 3),
        "epoch_seconds": round(seconds * full / n, 3),
        "extrapolated": n < full,
        "steps": -(-n // config.batch_size),
    }


def cmd_time_epochs(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    full = 55000  # the bundled MNIST's training images less the 5,000 held out
    devices = [args.device] + (["cpu"] if args.device != "cpu" else [])
    rows, record = (
        [],
        {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "devices": {d: device_name(d) for d in devices},
            "families": {},
        },
    )
    for name in _families("cpu", None):
        entry = {}
        for d in devices:
            limit = args.cpu_limit if (d == "cpu" and args.device != "cpu") or args.quick else None
            fams = _families(d, limit)
            try:
                entry[d] = _time_epoch(fams[name], d, limit, full)
            except Exception as err:  # one family's failure must not hide the others
                entry[d] = {"error": f"{type(err).__name__}: {err}"[:500]}
            print(f"{name} on {d}: {entry[d]}", file=sys.stderr, flush=True)
        record["families"][name] = entry
        rows.append((name, entry))
    (out / "epochs.json").write_text(json.dumps(record, indent=2))
    head = "| family | " + " | ".join(f"{record['devices'][d]} (s/epoch)" for d in devices)
    head += " | speed-up |" if len(devices) > 1 else " |"
    lines = [head, "|" + "---|" * (len(devices) + 1 + (len(devices) > 1))]
    for name, entry in rows:
        cells = []
        for d in devices:
            e = entry[d]
            cells.append(
                "error"
                if "error" in e
                else f"{e['epoch_seconds']:.1f}{' *' if e['extrapolated'] else ''}"
            )
        if len(devices) > 1:
            a, b = entry[devices[0]], entry["cpu"]
            cells.append(
                f"{b['epoch_seconds'] / a['epoch_seconds']:.1f}x"
                if "error" not in a and "error" not in b and a["epoch_seconds"]
                else ""
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"One epoch of {full} MNIST images (torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads); * timed on a slice and scaled "
        f"to the epoch."
    )
    (out / "epochs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), file=sys.stderr)
    emit(
        {
            "check": "time-epochs",
            "json": str(out / "epochs.json"),
            "markdown": str(out / "epochs.md"),
            "ok": all(
                "error" not in e for entry in record["families"].values() for e in entry.values()
            ),
        }
    )
    return 0


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("example")
    e.add_argument("path")
    e.add_argument("rest", nargs=argparse.REMAINDER)
    t = sub.add_parser("train")
    t.add_argument("--device", default="cpu")
    t.add_argument("--checkpoint", required=True)
    t.add_argument("--epochs", type=checks.arg(checks.positive_int), default=3)
    t.add_argument("--limit", type=checks.arg(checks.positive_int), default=4096)
    t.add_argument("--resume", action="store_true")
    k = sub.add_parser("kill-resume")
    k.add_argument("--device", default="cpu")
    k.add_argument("--dir", required=True)
    k.add_argument("--epochs", type=checks.arg(checks.positive_int), default=3)
    k.add_argument("--limit", type=checks.arg(checks.positive_int), default=4096)
    k.add_argument("--timeout", type=checks.arg(checks.positive_float), default=120)
    lo = sub.add_parser("load")
    lo.add_argument("--checkpoint", required=True)
    te = sub.add_parser("time-epochs")
    te.add_argument("--device", default="cuda")
    te.add_argument("--out", required=True)
    te.add_argument("--quick", action="store_true", help="a slice of the data everywhere")
    te.add_argument(
        "--cpu-limit",
        type=checks.arg(checks.positive_int),
        default=2048,
        help="images timed on the CPU (or everywhere with --quick)",
    )
    args = p.parse_args(argv)
    return {
        "example": cmd_example,
        "train": cmd_train,
        "kill-resume": cmd_kill_resume,
        "load": cmd_load,
        "time-epochs": cmd_time_epochs,
    }[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
