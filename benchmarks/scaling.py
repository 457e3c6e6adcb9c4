"""Throughput of data-parallel training: 1 process against N under torchrun.

Trains the autoencoder family's default VAE (784-200-200-50 tanh MLPs, Bernoulli likelihood,
batch 100 per process) on dynamically binarized MNIST through ``probgen.fit``, once per
process count, one after the other, and prints the training throughput in examples per
second (all processes together) and the speed-up over one process. On a CPU the processes
use gloo and one thread each; on a GPU machine pass ``--device cuda`` and the processes use
NCCL, one GPU each.

    python benchmarks/scaling.py --procs 1 2                 # this 2-core CPU
    python benchmarks/scaling.py --procs 1 2 4 8 --device cuda --images 60000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from probgen import checks


def worker(args) -> None:
    import torch

    import probgen
    from probgen.models import VAE
    from probgen.train import distributed

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    splits = probgen.data.image_splits(
        "mnist", val_size=0, binarize="dynamic", limit=args.images, seed=0
    )
    torch.manual_seed(0)
    vae = VAE(z_dim=50, hidden=(200, 200))
    res = probgen.fit(
        vae,
        splits["train"],
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        seed=0,
        patience=None,
        progress=False,
        verbose=False,
    )
    if distributed.is_main_process():
        # the first epoch warms up (allocations, thread pools): time the others
        seconds = sum(h["seconds"] for h in res.history[1:])
        n = (
            len(splits["train"])
            // (args.batch_size * res.world_size)
            * args.batch_size
            * res.world_size
        )
        record = {
            "procs": res.world_size,
            "examples_per_second": n * (args.epochs - 1) / seconds,
            "seconds_per_epoch": seconds / (args.epochs - 1),
            "final_train_loss": res.train_loss[-1],
            "device": res.device,
        }
        Path(args.result).write_text(json.dumps(record))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    positive = checks.arg(checks.positive_int)
    ap.add_argument("--procs", type=positive, nargs="+", default=[1, 2])
    ap.add_argument("--images", type=positive, default=20000, help="training images")
    ap.add_argument(
        "--epochs",
        type=checks.arg(checks.integer, low=2),
        default=4,
        help="epochs (the first is not timed)",
    )
    ap.add_argument("--batch-size", type=positive, default=100, help="per process")
    ap.add_argument("--threads", type=positive, default=1, help="torch threads per CPU process")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--smoke", action="store_true", help="tiny run (used by the tests)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.smoke:
        args.images, args.epochs = 800, 2
    if args.worker:
        return worker(args)
    rows = []
    for n in args.procs:
        result = Path(f".scaling_{os.getpid()}_{n}.json")
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(n),
            __file__,
            "--worker",
            "--result",
            str(result),
            "--images",
            str(args.images),
            "--epochs",
            str(args.epochs),
            "--batch-size",
            str(args.batch_size),
            "--threads",
            str(args.threads),
            "--device",
            args.device,
        ]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env)
        row = json.loads(result.read_text())
        result.unlink()
        row["wall_seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(
            f"{n} process(es): {row['examples_per_second']:8.0f} examples/s "
            f"({row['seconds_per_epoch']:.1f} s/epoch, train loss {row['final_train_loss']:.2f})",
            flush=True,
        )
    base = rows[0]["examples_per_second"]
    print(
        "speed-up over 1 process: "
        + ", ".join(f"{r['procs']}: {r['examples_per_second'] / base:.2f}x" for r in rows)
    )
    return rows


if __name__ == "__main__":
    main()
