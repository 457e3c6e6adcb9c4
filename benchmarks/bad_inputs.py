"""Every example's command line against bad values: how many are refused in one line.

For each script in ``examples/`` the parser is read (its ``_actions``) and every numeric
flag is given each bad value that applies to its kind:

==========  =====================  ===========================================
class       value                  flags
==========  =====================  ===========================================
negative    ``-1``                 integer and real flags
zero        ``0``                  integer and real flags
huge        ``10**23`` / ``1e23``  integer and real flags (an integer beyond int64)
nan         ``nan``                real flags
inf         ``inf``                real flags
==========  =====================  ===========================================

and every script gets an unwritable ``--out`` (a regular file, a path under a regular
file, an existing folder that refuses writes: a chmod'ed one, or where permissions do not
stop this user (root) a system folder that refuses them all, ``/sys``; skipped where there
is none), an unknown ``--device``, an unknown tracker (``--log nope``) and a tracker whose
library is missing (``--log tensorboard`` with ``torch.utils.tensorboard`` made
unimportable). A value that is legal for a flag (``--seed 0``,
``--threads 0``, ``--patience 0`` (no early stopping), ``--iw-samples 0`` where it
skips the estimate, ...) is listed in :data:`LEGAL` and not counted as a bad input.

Each case runs in this process, as ``python examples/X.py --smoke --out DIR ...`` would,
with the training loop's first epoch replaced by an exception: what happens before it
is real (parsing, data, model construction, fit's own checks), and nothing trains. Each
case ends as one of

* ``one-line``: exit status 2, no traceback, and the last line of stderr is its only
  line that says ``error:``;
* ``traceback``: an exception escaped (before training);
* ``silent``: training started with the bad value, or the script finished without a word;
* ``hang``: no end within ``--timeout`` seconds;
* ``other``: any other ending (another status, several error lines).

    python benchmarks/bad_inputs.py                    # the counts table, all examples
    python benchmarks/bad_inputs.py --examples vae gan --verbose
    python benchmarks/bad_inputs.py --root /tmp/old    # another checkout's examples and probgen

tests/test_cli_inputs.py runs the same table and asserts every case is ``one-line``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HUGE_INT = str(10**23)
VALUES = {
    int: {"negative": "-1", "zero": "0", "huge": HUGE_INT},
    float: {"negative": "-1", "zero": "0", "huge": "1e23", "nan": "nan", "inf": "inf"},
}
OUTCOMES = ("one-line", "traceback", "silent", "hang", "other")

# Values that are legal for a flag: (flag, class) in every example, or
# (script, flag, class) in one. Anything not listed here is a bad input.
_EVERYWHERE = {
    "--seed": {"zero"},
    "--threads": {"zero"},  # torch's default
    "--patience": {"zero"},  # no early stopping
    "--weight-decay": {"zero", "huge"},
    "--lr": {"huge"},
    "--d-lr": {"huge"},
    "--g-lr": {"huge"},  # finite: a divergence is said
    "--beta": {"zero", "huge"},
    "--betas": {"zero", "huge"},
    "--noise-std": {"zero", "huge"},
    "--caae-img-weight": {"zero", "huge"},
    "--r1": {"zero", "huge"},
    "--like-reg": {"zero", "huge"},
    "--label-smoothing": {"zero"},
    "--ema": {"zero"},  # no moving average
    "--adv-weight": {"zero"},
    "--augment-shift": {"zero"},
    "--parzen-samples": {"zero"},  # skips the Parzen window
    "--fid-every": {"zero"},  # no FID curve
    "--digits": {"zero"},  # digit 0
    "--warmup-epochs": {"zero", "huge"},
    "--min-ink": {"zero", "huge"},
    "--min-distance": {"zero"},
    "--warmup": {"zero"},  # NUTS without adaptation
}
_IN_ONE = {
    ("vae.py", "--iw-samples"): {"zero"},  # 0: skip the NLL
    ("mevae.py", "--iw-samples"): {"zero"},
    ("cvae_label.py", "--iw-samples"): {"zero"},
    ("aae.py", "--fid-samples"): {"zero"},
    # no validation split: these examples train without one
    ("gan.py", "--val-size"): {"zero"},
    ("sample_quality.py", "--val-size"): {"zero"},
    ("flow_gan.py", "--val-size"): {"zero"},
    ("aging.py", "--val-size"): {"zero"},
}


def legal(script: str, flag: str, kind: str) -> bool:
    return kind in _EVERYWHERE.get(flag, ()) or kind in _IN_ONE.get((script, flag), ())


@dataclass
class Case:
    script: str
    flag: str
    kind: str
    argv: list[str]
    setup: Callable[[Path], list[str]] | None = None  # returns extra argv (an --out)
    skip: str | None = None
    missing: tuple[str, ...] = ()  # modules made unimportable for the case


@dataclass
class Result:
    case: Case
    outcome: str
    detail: str = ""
    seconds: float = 0.0


class TrainingStarted(BaseException):
    """Raised in place of the first training epoch (a BaseException: nothing catches it)."""


class _Stop(BaseException):
    pass


def example_paths(root: Path = ROOT, names: Sequence[str] | None = None) -> list[Path]:
    paths = sorted(p for p in (root / "examples").glob("*.py") if not p.name.startswith("_"))
    if names:
        wanted = {n if n.endswith(".py") else f"{n}.py" for n in names}
        paths = [p for p in paths if p.name in wanted]
    return paths


def load_example(path: Path):
    """``examples/X.py`` imported as a module (its folder on ``sys.path`` for its helpers)."""
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(f"{path.stem}_bad_inputs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parser_of(module) -> argparse.ArgumentParser:
    """The example's parser, caught as ``main`` asks it to parse (nothing else runs)."""
    caught = {}
    original = argparse.ArgumentParser.parse_args

    def catch(self, args=None, namespace=None):
        caught["parser"] = self
        raise _Stop

    argparse.ArgumentParser.parse_args = catch
    try:
        module.main(["--smoke"])
    except _Stop:
        pass
    finally:
        argparse.ArgumentParser.parse_args = original
    return caught["parser"]


def numeric_kind(action) -> type | None:
    """``int`` or ``float`` for a flag whose values are numbers, else ``None``."""
    if action.type in (int, float):
        return action.type
    if action.type is None or action.choices is not None or not action.option_strings:
        return None
    if getattr(action.type, "parses", None) in (int, float):  # a probgen.checks.arg
        return action.type.parses
    for text in ("1", "2", "3", "0.5", "0.25"):
        try:
            value = action.type(text)
        except Exception:
            continue
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return int
        if isinstance(value, float):
            return float
        return None
    return None


def _values(action, text: str) -> list[str]:
    n = action.nargs if isinstance(action.nargs, int) else 1
    return [text] * n


def cases_for(path: Path, module=None) -> list[Case]:
    module = module or load_example(path)
    parser = parser_of(module)
    script = path.name
    out: list[Case] = []
    for action in parser._actions:
        kind = numeric_kind(action)
        if kind is None:
            continue
        flag = max(action.option_strings, key=len)
        for name, text in VALUES[kind].items():
            if legal(script, flag, name):
                continue
            vals = _values(action, text)
            # --flag=VALUE keeps argparse from reading "-1" or "-inf" as a flag
            argv = [f"{flag}={vals[0]}"] + vals[1:]
            out.append(Case(script, flag, name, argv))
    out += [
        Case(script, "--out", "a file", [], setup=_out_file),
        Case(script, "--out", "under a file", [], setup=_out_under_file),
        Case(
            script,
            "--out",
            "unwritable",
            [],
            setup=_out_unwritable,
            skip=None
            if unwritable_folder()
            else "chmod does not stop this user's writes, and no folder refuses them",
        ),
        Case(script, "--device", "unknown", ["--device", "tpu7"]),
        Case(script, "--log", "unknown", ["--log", "nope"]),
        Case(
            script,
            "--log",
            "no library",
            ["--log", "tensorboard"],
            missing=("torch.utils.tensorboard",),
        ),
    ]
    return out


def _out_file(tmp: Path) -> list[str]:
    f = tmp / "results.txt"
    f.write_text("a file\n")
    return ["--out", str(f)]


def _out_under_file(tmp: Path) -> list[str]:
    f = tmp / "results.txt"
    f.write_text("a file\n")
    return ["--out", str(f / "run")]


def _out_unwritable(tmp: Path) -> list[str]:
    return ["--out", str(unwritable_folder(tmp))]


def unwritable_folder(tmp: Path | None = None) -> Path | None:
    """An existing folder this process cannot write in: a new one without write permission
    (in ``tmp``) where that stops this user, else a system folder that refuses every
    write (``/sys`` on Linux, even to root), else ``None``."""
    if chmod_stops_writes():
        if tmp is None:
            return Path(tempfile.gettempdir())  # (only says that there is one)
        d = tmp / "read_only"
        d.mkdir()
        d.chmod(stat.S_IRUSR | stat.S_IXUSR)
        return d
    for d in (Path("/sys"), Path("/proc")):
        try:
            with tempfile.TemporaryFile(dir=d):
                pass
        except OSError:
            if d.is_dir():
                return d
    return None


def chmod_stops_writes() -> bool:
    """Whether a folder without write permission refuses this process's writes (not for
    root, whom permissions do not stop)."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "ro"
        d.mkdir()
        d.chmod(stat.S_IRUSR | stat.S_IXUSR)
        try:
            (d / "probe").write_text("x")
        except OSError:
            return True
        finally:
            d.chmod(stat.S_IRWXU)
        return False


@contextlib.contextmanager
def no_training(root: Path = ROOT):
    """The fit loop's first epoch raises :class:`TrainingStarted`."""
    from probgen.train import loop

    original = loop.Run.train_epoch

    def refuse(self, *args, **kwargs):
        raise TrainingStarted

    loop.Run.train_epoch = refuse
    try:
        yield
    finally:
        loop.Run.train_epoch = original


@contextlib.contextmanager
def _unimportable(modules: Sequence[str]):
    """``import module`` raises ImportError for each of ``modules`` (``sys.modules`` entry
    ``None``), as where the library is not installed."""
    saved = {m: sys.modules.get(m) for m in modules}
    for m in modules:
        sys.modules[m] = None
    try:
        yield
    finally:
        for m, mod in saved.items():
            if mod is None:
                sys.modules.pop(m, None)
            else:
                sys.modules[m] = mod


@contextlib.contextmanager
def _deadline(seconds: float):
    def ring(signum, frame):
        raise TimeoutError(f"no end within {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_case(module, case: Case, tmp: Path, timeout: float = 120.0) -> Result:
    """Run one case in this process; the torch thread count and ``sys.argv`` restored."""
    import torch

    tmp.mkdir(parents=True, exist_ok=True)
    extra = case.setup(tmp) if case.setup else ["--out", str(tmp / "run")]
    argv = ["--smoke", "--no-progress", "--threads", "1", "--device", "cpu", *extra, *case.argv]
    stderr, stdout = io.StringIO(), io.StringIO()
    threads, saved_argv = torch.get_num_threads(), sys.argv
    sys.argv = [case.script]
    status, error = None, None
    t0 = time.perf_counter()
    try:
        with (
            contextlib.redirect_stderr(stderr),
            contextlib.redirect_stdout(stdout),
            _deadline(timeout),
            no_training(),
            _unimportable(case.missing),
        ):
            status = module.cli.run(module.main, argv)
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    except TrainingStarted:
        error = "training started"
    except TimeoutError as err:
        error = f"hang: {err}"
    except Exception as err:  # a traceback the user would see
        error = f"{type(err).__name__}: {err}"
    finally:
        torch.set_num_threads(threads)
        sys.argv = saved_argv
        for p in tmp.rglob("*"):  # a read-only folder, writable again for the cleanup
            if p.is_dir():
                with contextlib.suppress(OSError):
                    p.chmod(stat.S_IRWXU)
    seconds = time.perf_counter() - t0
    text = stderr.getvalue()
    lines = text.strip().splitlines()
    if error == "training started":
        return Result(case, "silent", "training started", seconds)
    if error is not None and error.startswith("hang"):
        return Result(case, "hang", error, seconds)
    if error is not None:
        return Result(case, "traceback", " ".join(error.split())[:300], seconds)
    said = [line for line in lines if "error:" in line]
    if status == 2 and "Traceback" not in text and said == lines[-1:]:
        return Result(case, "one-line", lines[-1], seconds)
    if status == 0:
        return Result(case, "silent", "finished without a word", seconds)
    return Result(case, "other", f"status {status}: " + " | ".join(lines[-3:])[:300], seconds)


def run_all(
    paths: Sequence[Path],
    tmp_root: Path,
    timeout: float = 120.0,
    log: Callable[[Result], None] | None = None,
) -> list[Result]:
    results = []
    for path in paths:
        module = load_example(path)
        for i, case in enumerate(cases_for(path, module)):
            if case.skip:
                results.append(Result(case, "skipped", case.skip))
                continue
            r = run_case(module, case, tmp_root / path.stem / f"case{i}", timeout)
            results.append(r)
            if log:
                log(r)
    return results


def counts(results: Sequence[Result]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for r in results:
        if r.outcome == "skipped":
            continue
        row = table.setdefault(r.case.script, dict.fromkeys(("tried",) + OUTCOMES, 0))
        row["tried"] += 1
        row[r.outcome] += 1
    total = {k: sum(row[k] for row in table.values()) for k in ("tried",) + OUTCOMES}
    table["all"] = total
    return table


def format_counts(table: dict[str, dict[str, int]]) -> str:
    cols = ("tried",) + OUTCOMES
    width = max(len(k) for k in table) + 2
    lines = ["example".ljust(width) + "".join(c.rjust(11) for c in cols)]
    for name, row in table.items():
        lines.append(name.ljust(width) + "".join(str(row[c]).rjust(11) for c in cols))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--root", type=Path, default=ROOT, help="checkout whose examples/ and probgen/ are tried"
    )
    ap.add_argument("--examples", nargs="+", default=None, help="scripts (default: all)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    ap.add_argument("--verbose", action="store_true", help="one line per case")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    root = args.root.resolve()
    sys.path.insert(0, str(root))
    import probgen

    if Path(probgen.__file__).resolve().parents[1] != root:
        ap.error(f"probgen imports from {probgen.__file__}, not from {root}")

    def log(r: Result):
        if args.verbose or r.outcome != "one-line":
            print(
                f"{r.case.script:18s} {r.case.flag:20s} {r.case.kind:13s} {r.outcome:9s} "
                f"{r.seconds:5.1f}s  {r.detail}",
                flush=True,
            )

    with tempfile.TemporaryDirectory() as tmp:
        results = run_all(example_paths(root, args.examples), Path(tmp), args.timeout, log)
    skipped = [r for r in results if r.outcome == "skipped"]
    print()
    print(format_counts(counts(results)))
    if skipped:
        print(f"\n{len(skipped)} skipped: {skipped[0].detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
