"""What the example scripts share: common flags, data loading, run records, errors.

Every example takes ``--epochs --patience --lr --batch-size --device --threads
--seed --out --resume --no-progress --smoke --log``; :func:`common_parser` adds them,
:func:`finish_args` parses them and applies the run's global settings (torch
threads, the seed), :func:`fit_config` turns them into a
:class:`~probgen.train.FitConfig`, :func:`mnist` loads the bundled MNIST (a small
slice with ``--smoke``), :func:`write_results` records the numbers with the
machine and the versions (:func:`write_table` writes any other table), and
:func:`trackers` gives each fit the ``--log`` experiment trackers
(:mod:`probgen.train.trackers`). :func:`run` is every script's entry point::

    if __name__ == "__main__":
        sys.exit(cli.run(main))

Every number a flag takes is checked when the command line is parsed (the argparse
``type=`` adapters of :mod:`probgen.checks`), ``--out`` is made and tried for writing
before anything trains, and :func:`run` reports a setting that probgen refuses later (a
:class:`~probgen.errors.ProbgenError`: ``--resume`` into another run's folder, ...) as one
line ``<script>: error: ...`` on stderr with exit status 2, as argparse reports a bad
flag, instead of a traceback; a full disk or a folder that cannot be written while the run
saves is one line too (exit status 1).

``--patience 0`` switches early stopping off (the examples whose default is no early
stopping show ``None``); ``--threads 0`` keeps torch's thread count; ``--seed`` takes
``0..2**63 - 1``; ``--log`` (repeatable) names trackers whose library is checked when
the command line is parsed.

This module is for scripts: :func:`finish_args` seeds the global random
generators, which library code never does.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import probgen
from probgen import checks
from probgen.data import image_splits
from probgen.data.recipes import (
    download_splits,
    with_settings,  # noqa: F401  (the scripts' name for it)
)
from probgen.errors import CheckpointWriteError, ConfigError, ProbgenError, TrainingDivergedError
from probgen.metrics.quality import min_fid_samples
from probgen.metrics.quality import quality_scorer as metrics_quality_scorer
from probgen.train import OPTIMIZERS, FitConfig, resolve_device, set_seed
from probgen.train.callbacks import Callback
from probgen.train.distributed import env_world_size, is_main_process
from probgen.train.trackers import TRACKERS, make_trackers

SMOKE_LIMIT = 512
# An FID needs more samples than features: 129 with the MNIST classifier's 128 features,
# 2049 with Inception-v3's 2048.
MIN_FID_SAMPLES = min_fid_samples("mnist")
MIN_INCEPTION_FID_SAMPLES = min_fid_samples("inception")


class Parser(argparse.ArgumentParser):
    """argparse's parser; a value that a :mod:`probgen.checks` adapter refused is said
    in one line in the checks' words, ``<prog>: error: --z-dim must be at least 1, got
    0.``, without the usage (which says nothing about a value). Other errors (an unknown
    flag, a missing value) keep argparse's form. Both exit with status 2."""

    def error(self, message: str):
        found = re.fullmatch(r"argument (\S+): (must .*)", message, flags=re.S)
        if found is None:
            super().error(message)
        flag = max(found.group(1).split("/"), key=len)
        self.refuse(f"{flag} {found.group(2)}")

    def refuse(self, message: str):
        """Exit with status 2 after one line, ``<prog>: error: <message>``."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def common_parser(
    description: str,
    epochs: int,
    out: str,
    patience: int | None = 10,
    lr: float = 1e-3,
    batch_size: int = 100,
    val_size: int = 10000,
    need_val: bool = True,
) -> argparse.ArgumentParser:
    """The flags every example takes, each number checked as it is parsed.

    Args:
        patience: the default of ``--patience`` (``None``: no early stopping).
        val_size: the default of ``--val-size``.
        need_val: whether the script needs a validation split; without one, ``--val-size
            0`` is accepted (no split held out).
    """
    p = Parser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument(
        "-n",
        "--epochs",
        type=checks.arg(checks.positive_int),
        default=epochs,
        help="most training epochs",
    )
    p.add_argument(
        "--patience",
        type=checks.arg(checks.integer, low=1, zero="no early stopping"),
        default=patience,
        help="early stopping: epochs without validation improvement (0: never stop early)",
    )
    p.add_argument("--lr", type=checks.arg(checks.positive_float), default=lr, help="learning rate")
    p.add_argument(
        "--optimizer", default="adam", choices=OPTIMIZERS.names(), help="torch optimizer"
    )
    p.add_argument(
        "--weight-decay",
        type=checks.arg(checks.nonnegative_float),
        default=0.0,
        help="weight decay (an L2 penalty with adam, decoupled with adamw)",
    )
    p.add_argument("--batch-size", type=checks.arg(checks.positive_int), default=batch_size)
    p.add_argument(
        "--val-size",
        default=val_size,
        type=checks.arg(checks.positive_int)
        if need_val
        else checks.arg(checks.integer, low=1, zero="no validation split"),
        help="training images held out for validation (early stopping)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--threads",
        type=checks.arg(checks.integer, low=1, zero="torch's default"),
        default=0,
        help="torch CPU threads (0: torch's default; 1 is much faster for small "
        "models on a busy machine)",
    )
    p.add_argument(
        "--seed",
        type=checks.arg(checks.seed),
        default=0,
        help="seed of every random draw (0..2**63 - 1)",
    )
    p.add_argument("--out", default=out, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--smoke", action="store_true", help="seconds-long run on a small slice (used by the tests)"
    )
    p.add_argument(
        "--log",
        action="append",
        choices=TRACKERS.names(),
        default=None,
        metavar="TRACKER",
        help=f"log every fit to an experiment tracker under --out (repeatable: "
        f"--log csv --log tensorboard; one of {', '.join(TRACKERS.names())}): "
        f"csv: log[_<fit>].csv (+ _steps.csv, _config.json, _images/); "
        f"tensorboard: tensorboard/[<fit>/]; mlflow: mlruns/ (a local SQLite "
        f"store); wandb: wandb/ (offline)",
    )
    return p


def sample_count(zero: str | None = None):
    """The argparse ``type=`` of a number of samples an FID scores: at least
    :data:`MIN_FID_SAMPLES` (more samples than the MNIST classifier's features); 0 accepted
    where ``zero`` says what it means (``"skip"``).

    Examples:
        >>> from probgen import cli
        >>> count = cli.sample_count()
        >>> count("10000")
        10000
        >>> count("100")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: must be at least 129, got 100; FID on the classifier's ...
    """
    kw = {} if zero is None else {"zero": zero}
    return checks.arg(
        checks.integer, low=MIN_FID_SAMPLES, hint="FID on the classifier's 128 features", **kw
    )


def image_source_flags(p: argparse.ArgumentParser) -> None:
    """``--data-root``, ``--no-download`` and ``--inception-weights``: where a torchvision
    data set (CIFAR-10) lives, and the Inception-v3 weights of an FID on colour images
    (:func:`check_inception_samples` checks the sample counts after parsing)."""
    p.add_argument(
        "--data-root",
        default=None,
        help="folder of torchvision data sets (default: probgen's cache)",
    )
    p.add_argument(
        "--no-download",
        action="store_true",
        help="never download (CIFAR-10 downloads with torchvision when missing)",
    )
    p.add_argument(
        "--inception-weights",
        default=None,
        help="Inception-v3 FID weights (a path, or 'download') for colour data",
    )


def check_inception_samples(p: argparse.ArgumentParser, args, *names: str) -> None:
    """With ``--inception-weights``, each sample-count flag ``names`` (``"fid_samples"``)
    must reach :data:`MIN_INCEPTION_FID_SAMPLES` (more samples than Inception's 2048
    features), or be 0 where its flag gives 0 a meaning (``sample_count(zero="skip")``):
    argparse's one-line error otherwise."""
    if not getattr(args, "inception_weights", None):
        return
    for name in names:
        # the flag's own meaning of 0 (its checks.arg settings), if it has one
        zero = next(
            (getattr(a.type, "settings", {}).get("zero") for a in p._actions if a.dest == name),
            None,
        )
        try:
            checks.integer(
                f"--{name.replace('_', '-')}",
                getattr(args, name),
                low=MIN_INCEPTION_FID_SAMPLES,
                zero=zero,
                hint="FID on Inception's 2048 features",
            )
        except ConfigError as err:
            _refuse(p, err)


def _refuse(p: argparse.ArgumentParser, err: ConfigError):
    """A setting refused after parsing, as the parser says a bad value: one line with a
    :class:`Parser`, argparse's usage and error otherwise; exit status 2."""
    if isinstance(p, Parser):
        p.refuse(str(err))
    p.error(str(err))


def quality_scorer(args, images, **kwargs):
    """:func:`probgen.metrics.quality.quality_scorer` of the test ``images`` with the run's
    ``--inception-weights``; where no features fit the data, ``None`` after a line that
    says so."""
    scorer = (
        None
        if images is None
        else metrics_quality_scorer(
            images, inception_weights=getattr(args, "inception_weights", None), **kwargs
        )
    )
    if scorer is None:
        print(
            "no FID for this data: MNIST-classifier features take grey 28x28 digits; give "
            "--inception-weights for colour images",
            flush=True,
        )
    return scorer


def finish_args(p: argparse.ArgumentParser, argv=None, smoke: dict[str, Any] | None = None):
    """Parse the flags and apply the run's global settings.

    Every number was checked as it was parsed. With ``--smoke`` the epochs are capped
    at 2 and each ``smoke`` setting (and ``val_size=128``) replaces its flag's default
    (a value given on the command line is kept). ``--device`` is resolved and ``--out``
    made and tried for writing (:func:`probgen.checks.writable_dir`): a bad one is
    argparse's one-line error, before anything runs. Then the torch thread count is
    set, and the global random
    generators are seeded with ``--seed`` (:func:`probgen.train.set_seed`): every
    weight the script draws from here on, the first model's included, follows
    from the seed.
    """
    args = p.parse_args(argv)
    if args.smoke:
        args.epochs = min(args.epochs, 2)
        apply_defaults(p, args, {"val_size": 128, **(smoke or {})})
    try:
        device = resolve_device(args.device)
        args.out = checks.writable_dir("--out", args.out)
        if getattr(args, "log", None):
            # a tracker whose library is missing stops the script now, not after training
            args.log = list(dict.fromkeys(args.log))
            make_trackers(args.log, args.out)
    except ConfigError as err:
        _refuse(p, err)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and env_world_size() > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))  # one GPU each
    args.device = str(device)
    if not is_main_process():
        # under torchrun the other ranks train alongside rank 0, which alone reports
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (open for the process's life)
    set_seed(args.seed)
    return args


def apply_defaults(p: argparse.ArgumentParser, args, settings: dict[str, Any]):
    """Each of ``settings`` (a flag's ``dest`` -> value) replaces the flag's value where the
    command line left it at its default; a value given on the command line is kept (it
    was checked as it was parsed; one equal to the default reads as the default). A
    recipe's settings (the ones ``--smoke`` or a data set bring) are applied so. Returns
    ``args``.

    Examples:
        >>> import argparse
        >>> from probgen import cli
        >>> p = argparse.ArgumentParser()
        >>> _ = p.add_argument("--lr", type=float, default=2e-4)
        >>> _ = p.add_argument("--epochs", type=int, default=5)
        >>> args = cli.apply_defaults(p, p.parse_args(["--epochs", "3"]),
        ...                           {"lr": 1e-3, "epochs": 40})
        >>> args.lr, args.epochs
        (0.001, 3)
    """
    for name, value in settings.items():
        if getattr(args, name) == p.get_default(name):
            setattr(args, name, value)
    return args


def data_splits(args, limit: int | None = None):
    """The splits of ``--data`` (:func:`probgen.data.recipes.download_splits`) with the
    run's ``--val-size``, ``--seed``, ``--device`` and, from :func:`image_source_flags`,
    ``--data-root`` and ``--no-download`` (the bundled MNIST is never downloaded);
    ``limit``: the training images kept (all by default)."""
    return download_splits(
        args.data,
        val_size=args.val_size,
        seed=args.seed,
        device=args.device,
        root=args.data_root,
        download=not args.no_download and args.data != "mnist",
        limit=limit,
    )


def trackers(args, run_name: str | None = None, **kwargs) -> list[Callback]:
    """The ``--log`` trackers of one fit (none without ``--log``), writing under ``--out``:
    pass them to ``fit(..., callbacks=...)``. A script that fits more than once gives each
    fit its own ``run_name`` (``log_<run_name>.csv``, ``tensorboard/<run_name>/``, MLflow
    and W&B runs of that name), so no fit overwrites another's file and TensorBoard draws
    each curve apart. The script's arguments are logged with the run's settings;
    ``kwargs`` go to each tracker (:func:`probgen.train.trackers.make_trackers`)."""
    if not getattr(args, "log", None):
        return []
    hparams = {"args": _args_record(args), **kwargs.pop("hparams", {})}
    return make_trackers(args.log, args.out, run_name=run_name, hparams=hparams, **kwargs)


# Errors of the file system, not of the code: the disk, the folder, the permissions. The
# first four only happen to writes.
_DISK_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EFBIG: "file too large",
}
_FILE_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error",
}


def _os_error(err: OSError) -> str:
    """One line for a file-system error: what, which file, that the last checkpoint is
    intact (checkpoints are written whole, then renamed over the old one), what to do."""
    intact = (
        "the last checkpoint is intact (a checkpoint replaces the previous one only "
        "once it is complete)"
    )
    if err.errno in _DISK_ERRNOS:
        where = f"while writing {err.filename}" if err.filename else "while writing the run's files"
        todo = (
            "give --out a folder on a writable file system"
            if err.errno == errno.EROFS
            else "free some space"
        )
        return f"{_DISK_ERRNOS[err.errno]} {where}; {intact}: {todo}, then continue with --resume"
    what = (
        f"{_FILE_ERRNOS[err.errno]}: {err.filename}"
        if err.filename
        else f"{_FILE_ERRNOS[err.errno]} on a file of the run"
    )
    return (
        f"{what}; {intact}: check that file's permissions, or give --out a folder this "
        f"process can write"
    )


def run(main: Callable[..., Any], argv: Sequence[str] | None = None) -> int:
    """Run a script's ``main(argv)`` and return its exit status.

    0 when it finishes. A :class:`~probgen.errors.ProbgenError` (a setting or input
    that probgen refused) is printed as one line ``<script>: error: <message>`` on
    stderr, the form of argparse's own errors, and gives 2 -- or 1 for a
    :class:`~probgen.errors.TrainingDivergedError`, which is no bad setting. An
    ``OSError`` of the file system (no space left, quota, read-only file system,
    permission denied, an I/O error) is one line too, saying which file and that the
    last checkpoint is intact, and gives 1; so is a checkpoint the file system refused
    (a :class:`~probgen.errors.CheckpointWriteError`, in the checkpoint writer's words).
    Any other exception (``FileNotFoundError`` included: a path the code got wrong) is a
    bug and keeps its traceback.
    """
    prog = Path(sys.argv[0]).name or "probgen"
    try:
        main(argv)
    except CheckpointWriteError as err:
        # the file system refused a checkpoint (its message says which and that the
        # previous one is intact): a file-system error, exit status 1
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        return 1
    except ProbgenError as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        return 1 if isinstance(err, TrainingDivergedError) else 2
    except OSError as err:
        if err.errno not in _DISK_ERRNOS and err.errno not in _FILE_ERRNOS:
            raise
        print(f"{prog}: error: {' '.join(_os_error(err).split())}", file=sys.stderr, flush=True)
        return 1
    return 0


def fit_config(args, **overrides) -> FitConfig:
    """The run's :class:`~probgen.train.FitConfig`. ``patience`` and ``seed`` are always
    passed (``--patience 0`` as ``None``: no early stopping), so an example keeps its
    behaviour whatever ``fit``'s own defaults are."""
    patience = None if args.patience in (None, 0) else args.patience
    cfg = FitConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=getattr(args, "optimizer", "adam"),
        weight_decay=getattr(args, "weight_decay", 0.0),
        patience=patience,
        device=args.device,
        seed=args.seed,
        progress=not args.no_progress,
        verbose=True,
        resume=getattr(args, "resume", False),
    )
    return replace(cfg, **overrides)


def mnist(args, binarize: str = "none"):
    """The bundled MNIST as device-resident train/val/test splits (a slice with --smoke)."""
    return image_splits(
        "mnist",
        val_size=args.val_size,
        binarize=binarize,
        seed=args.seed,
        device=args.device,
        limit=SMOKE_LIMIT if args.smoke else None,
    )


def _args_record(args) -> dict[str, Any]:
    """The parsed arguments, paths as text."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} threads"


def _json_value(obj):
    """JSON for what ``json`` cannot write: paths (anywhere in the record, e.g. a dict of
    checkpoints an argument names) as strings, numpy/torch scalars as floats."""
    return str(obj) if isinstance(obj, Path) else float(obj)


@contextlib.contextmanager
def _naming(path: Path):
    """An ``OSError`` without a file name (a write or close that fails on a full disk)
    gets ``path``, so that :func:`run` can say which file."""
    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def write_results(
    out: Path,
    results: dict[str, Any],
    args,
    started: float,
    table: list[dict[str, Any]] | None = None,
    name: str = "results",
) -> dict:
    """Write ``{name}.json`` (results, args, wall time, machine, versions) and, when
    ``table`` rows are given, ``{name}.csv``."""
    record = {
        "results": results,
        "wall_seconds": time.perf_counter() - started,
        "args": _args_record(args),
        "device": args.device,
        "machine": machine(),
        "versions": {"probgen": probgen.__version__, "torch": torch.__version__},
    }
    if not is_main_process():  # under torchrun, rank 0 alone writes files
        return record
    path = Path(out) / f"{name}.json"
    with _naming(path):
        path.write_text(json.dumps(record, indent=2, default=_json_value))
    if table:
        write_table(Path(out) / f"{name}.csv", table)
    return record


def finish_run(
    args,
    results: dict[str, Any],
    started: float,
    table: list[dict[str, Any]],
    wrote: str = "results.csv and figures",
    title: str | None = None,
) -> dict:
    """A script's last words: the ``table`` printed (:func:`print_table`) under its
    ``title`` (if any), ``results.json`` and ``results.csv`` written
    (:func:`write_results`), and one line saying what was written under ``--out``
    (``results.json, <wrote>``), in how long, on which machine. Returns the record
    :func:`write_results` wrote."""
    print()
    if title:
        print(title)
    print_table(table)
    record = write_results(args.out, results, args, started, table=table)
    print(
        f"\nwrote {args.out}/results.json, {wrote} "
        f"({record['wall_seconds']:.0f} s on {record['machine']}, {args.device})"
    )
    return record


def write_table(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write dict ``rows`` (the first row's keys are the columns) as a CSV file, floats with
    four decimals; rank 0 alone writes under torchrun. Returns ``path``."""
    path = Path(path)
    if not is_main_process():
        return path
    with _naming(path), open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for row in rows:
            w.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})
    return path


def print_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of dict rows (same keys), printed and returned; floats with three
    decimals.

    Examples:
        >>> from probgen import cli
        >>> _ = cli.print_table([{"model": "vae", "fid": 31.25, "epochs": 10},
        ...                      {"model": "gan", "fid": 8.5, "epochs": 20}])
        model     fid  epochs
          vae  31.250      10
          gan   8.500      20
    """
    keys = list(rows[0])
    cells = [[f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.rjust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    text = "\n".join(lines)
    print(text, flush=True)
    return text
