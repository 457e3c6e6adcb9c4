"""What the example scripts share: common flags, data loading, run records, errors.

Every example takes ``--epochs --patience --lr --batch-size --device --threads
--seed --out --resume --no-progress --smoke``; :func:`common_parser` adds them,
:func:`finish_args` parses them and applies the run's global settings (torch
threads, the seed), :func:`fit_config` turns them into a
:class:`~probgen.train.FitConfig`, :func:`mnist` loads the bundled MNIST (a small
slice with ``--smoke``), and :func:`write_results` records the numbers with the
machine and the versions. :func:`run` is every script's entry point::

    if __name__ == "__main__":
        sys.exit(cli.run(main))

It reports a setting that probgen refuses (a :class:`~probgen.errors.ProbgenError`:
``--z-dim 0``, ``--resume`` into another run's folder, ...) as one line
``<script>: error: ...`` on stderr with exit status 2, as argparse reports a bad
flag, instead of a traceback.

This module is for scripts: :func:`finish_args` seeds the global random
generators, which library code never does.
"""

from __future__ import annotations

import argparse
import os
import csv
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from probgen.errors import ProbgenError, TrainingDivergedError
from probgen.train import OPTIMIZERS, FitConfig, resolve_device, set_seed
from probgen.train.distributed import env_world_size, is_main_process

SMOKE_LIMIT = 512


def common_parser(description: str, epochs: int, out: str, patience: int = 10,
                  lr: float = 1e-3, batch_size: int = 100) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-n", "--epochs", type=int, default=epochs, help="most training epochs")
    p.add_argument("--patience", type=int, default=patience,
                   help="early stopping: epochs without validation improvement")
    p.add_argument("--lr", type=float, default=lr, help="learning rate")
    p.add_argument("--optimizer", default="adam", choices=OPTIMIZERS.names(),
                   help="torch optimizer")
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="weight decay (an L2 penalty with adam, decoupled with adamw)")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--val-size", type=int, default=10000,
                   help="training images held out for early stopping")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default; 1 is much faster for small "
                        "models on a busy machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=out, help="output folder")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoints in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--smoke", action="store_true",
                   help="seconds-long run on a small slice (used by the tests)")
    return p


def finish_args(p: argparse.ArgumentParser, argv=None, smoke: Optional[Dict[str, Any]] = None):
    """Parse the flags and apply the run's global settings.

    With ``--smoke`` the epochs are capped at 2 and each ``smoke`` setting replaces
    its flag's default (a value given on the command line is kept, so a bad one is
    still refused). Then the torch thread count is set, and the global random
    generators are seeded with ``--seed`` (:func:`probgen.train.set_seed`): every
    weight the script draws from here on, the first model's included, follows
    from the seed.
    """
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error(f"--epochs must be at least 1, got {args.epochs}")
    if args.threads < 0:
        p.error(f"--threads must be 0 (torch's default) or more, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        args.epochs = min(args.epochs, 2)
        args.val_size = 128
        for k, v in (smoke or {}).items():
            if getattr(args, k) == p.get_default(k):
                setattr(args, k, v)
    args.out = Path(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    if device.type == "cuda" and env_world_size() > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))  # one GPU each
    args.device = str(device)
    if not is_main_process():
        # under torchrun the other ranks train alongside rank 0, which alone reports
        sys.stdout = open(os.devnull, "w")
    set_seed(args.seed)
    return args


def run(main: Callable[..., Any], argv: Optional[Sequence[str]] = None) -> int:
    """Run a script's ``main(argv)`` and return its exit status.

    0 when it finishes. A :class:`~probgen.errors.ProbgenError` (a setting or input
    that probgen refused) is printed as one line ``<script>: error: <message>`` on
    stderr, the form of argparse's own errors, and gives 2 -- or 1 for a
    :class:`~probgen.errors.TrainingDivergedError`, which is no bad setting. Any
    other exception is a bug and keeps its traceback.
    """
    try:
        main(argv)
    except ProbgenError as err:
        prog = Path(sys.argv[0]).name or "probgen"
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        return 1 if isinstance(err, TrainingDivergedError) else 2
    return 0


def fit_config(args, **overrides) -> FitConfig:
    cfg = FitConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    optimizer=getattr(args, "optimizer", "adam"),
                    weight_decay=getattr(args, "weight_decay", 0.0),
                    patience=args.patience, device=args.device, seed=args.seed,
                    progress=not args.no_progress, verbose=True,
                    resume=getattr(args, "resume", False))
    return replace(cfg, **overrides)


def mnist(args, binarize: str = "none"):
    """The bundled MNIST as device-resident train/val/test splits (a slice with --smoke)."""
    from probgen.data import image_splits

    return image_splits("mnist", val_size=args.val_size, binarize=binarize, seed=args.seed,
                        device=args.device, limit=SMOKE_LIMIT if args.smoke else None)


def machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} threads"


def _json_value(obj):
    """JSON for what ``json`` cannot write: paths (anywhere in the record, e.g. a dict of
    checkpoints an argument names) as strings, numpy/torch scalars as floats."""
    return str(obj) if isinstance(obj, Path) else float(obj)


def write_results(out: Path, results: Dict[str, Any], args, started: float,
                  table: Optional[List[Dict[str, Any]]] = None, name: str = "results") -> Dict:
    """Write ``{name}.json`` (results, args, wall time, machine, versions) and, when
    ``table`` rows are given, ``{name}.csv``."""
    import probgen

    record = {"results": results, "wall_seconds": time.perf_counter() - started,
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "device": args.device, "machine": machine(),
              "versions": {"probgen": probgen.__version__, "torch": torch.__version__}}
    if not is_main_process():   # under torchrun, rank 0 alone writes files
        return record
    (out / f"{name}.json").write_text(json.dumps(record, indent=2, default=_json_value))
    if table:
        with open(out / f"{name}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(table[0]))
            w.writeheader()
            for row in table:
                w.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})
    return record


def print_table(rows: Sequence[Dict[str, Any]]) -> str:
    """A plain-text table of dict rows (same keys), printed and returned."""
    keys = list(rows[0])
    cells = [[f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.rjust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    text = "\n".join(lines)
    print(text, flush=True)
    return text
