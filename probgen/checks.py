"""Checks of settings: one place, one message style.

Every check takes the setting's name and its value, and returns the value (as a plain
Python ``int``, ``float`` or :class:`~pathlib.Path`) when it is valid; otherwise it
raises :class:`~probgen.errors.ConfigError` with one sentence::

    <name> must <be ... | lie in ...>, got <value>[; <what to do>].

>>> positive_int("z_dim", 0)
Traceback (most recent call last):
...
probgen.errors.ConfigError: z_dim must be at least 1, got 0.

The checks are pure (no state, nothing printed; :func:`writable_dir` alone touches the
file system, to find out what it must) and small, so library code and scripts share them:

* integers: :func:`integer` (bounds, and a meaning of 0 below the lower bound, as
  ``--patience 0``), :func:`positive_int`, :func:`nonnegative_int`, :func:`int_in_range`,
  :func:`seed`; every integer must fit an int64, as torch and numpy store it;
  :func:`sizes`, a sequence of them (layer sizes, a shape);
* real numbers: :func:`real` (always finite: NaN and infinities are refused),
  :func:`finite_float`, :func:`positive_float`, :func:`nonnegative_float`,
  :func:`probability` (``[0, 1]``), :func:`fraction` (``(0, 1)``);
* :func:`choice`, :func:`flag` (``True`` or ``False``), :func:`writable_dir`;
* :func:`optional`: any check, with ``None`` let through (a setting whose default is
  decided later, such as a learning rate that defaults to the run's).

For command lines, :func:`arg` turns a check into an argparse ``type=``: the text is
converted (``int`` or ``float``, whichever the check takes) and checked at parse time, so
a bad value is argparse's error with exit status 2, before anything runs (with
:class:`probgen.cli` parsers, one line in this style)::

    p.add_argument("--z-dim", type=checks.arg(checks.positive_int), default=50)
    p.add_argument("--patience", type=checks.arg(checks.integer, low=1,
                                                 zero="no early stopping"))

    $ python examples/vae.py --z-dim 0
    vae.py: error: --z-dim must be at least 1, got 0.
"""

from __future__ import annotations

import argparse
import math
import numbers
import operator
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from probgen.errors import ConfigError

__all__ = [
    "INT64_MAX",
    "SEED_MAX",
    "arg",
    "choice",
    "finite_float",
    "flag",
    "fraction",
    "int_in_range",
    "integer",
    "nonnegative_float",
    "nonnegative_int",
    "optional",
    "positive_float",
    "positive_int",
    "probability",
    "real",
    "seed",
    "sizes",
    "writable_dir",
]

INT64_MAX = 2**63 - 1
# Seeds up to 2**63 - 1: torch.manual_seed takes up to 2**64 - 1 and numpy takes any seed
# modulo 2**32 (probgen.train.set_seed), so a script may still add small offsets
# (seed + 1, seed + rank) to a valid seed.
SEED_MAX = INT64_MAX


def _show(value: Any) -> str:
    """The value as the message shows it: numbers plainly, text quoted, long ones cut."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        digits = int(value.bit_length() * math.log10(2)) + 1  # str() refuses 4,300+ digits
        return f"{'-' if value < 0 else ''}an integer of about {digits} digits"
    if isinstance(value, _Verbatim):
        return str(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        text = repr(value)
    else:
        text = str(value)
    if len(text) > 40:
        digits = sum(c.isdigit() for c in text)
        text = f"{text[:12]}...{text[-4:]} ({digits} digits)" if digits > 30 else f"{text[:36]}..."
    return text


def _bound(b: float) -> str:
    if b == INT64_MAX:
        return "2**63 - 1"
    return str(b) if isinstance(b, int) else f"{b:g}"


def _fail(name: str, must: str, value: Any, hint: str | None = None) -> ConfigError:
    """``<name> must <must>, got <value>[; <hint>].`` (``must`` holds its verb: "be at
    least 1", "lie in (0, 1)")."""
    subject = f"{name} must" if name else "must"
    return ConfigError(
        f"{subject} {must}, got {_show(value)}" + (f"; {hint}" if hint else "") + "."
    )


def _parses(kind: type):
    """Mark a check with the type :func:`arg` converts command-line text to."""

    def mark(check):
        check.parses = kind
        return check

    return mark


def _range(low, high, low_open: bool = False, high_open: bool = False) -> str | None:
    """The bounds in words, with the verb: "be at least 1", "be in 1..3" (integers),
    "lie in (0, 1)" (real numbers); ``None`` for no bounds."""
    if low is not None and high is not None:
        if isinstance(low, int) and isinstance(high, int):
            return f"be in {_bound(low)}..{_bound(high)}"
        return (
            f"lie in {'(' if low_open else '['}{_bound(low)}, "
            f"{_bound(high)}{')' if high_open else ']'}"
        )
    if low is not None:
        if low_open:
            return f"be more than {_bound(low)}"
        return "be 0 or more" if low == 0 else f"be at least {_bound(low)}"
    if high is not None:
        return f"be {'less than' if high_open else 'at most'} {_bound(high)}"
    return None


# --------------------------------------------------------------------------- integers


@_parses(int)
def integer(
    name: str,
    value: Any,
    low: int | None = None,
    high: int | None = None,
    *,
    zero: str | None = None,
    hint: str | None = None,
) -> int:
    """An integer in ``low..high`` (either bound optional) that fits an int64.

    Python, numpy and torch integers are taken; ``bool`` and ``3.0`` are not.

    Args:
        name: the setting's name in the message (``z_dim``, ``--z-dim``).
        value: what was given.
        low: inclusive lower bound (``None``: none).
        high: inclusive upper bound (``None``: none).
        zero: a meaning of 0 where 0 lies below ``low`` (``"no early stopping"``): 0 is
            then accepted and the message names it.
        hint: what to do, appended to the message.
    """
    bounds = _range(low, high)
    if zero is not None:
        bounds = f"be 0 ({zero}) or " + (bounds[3:] if bounds else "any integer")
    if isinstance(value, bool):
        raise _fail(name, "be an integer", value, hint)
    try:
        v = operator.index(value)
    except TypeError:
        raise _fail(name, "be an integer", value, hint) from None
    if zero is not None and v == 0:
        return 0
    if (low is not None and v < low) or (high is not None and v > high):
        raise _fail(name, bounds, v, hint)
    if v > INT64_MAX:
        raise _fail(
            name,
            (f"{bounds} and " if bounds else "be ")
            + "at most 2**63 - 1 (an int64, as torch stores it)",
            v,
            hint,
        )
    if v < -INT64_MAX - 1:
        raise _fail(
            name,
            (f"{bounds} and " if bounds else "be ")
            + "at least -2**63 (an int64, as torch stores it)",
            v,
            hint,
        )
    return v


@_parses(int)
def positive_int(name: str, value: Any, *, hint: str | None = None) -> int:
    """An integer >= 1 (a size, a count of epochs or samples)."""
    return integer(name, value, low=1, hint=hint)


@_parses(int)
def nonnegative_int(name: str, value: Any, *, hint: str | None = None) -> int:
    """An integer >= 0."""
    return integer(name, value, low=0, hint=hint)


@_parses(int)
def int_in_range(name: str, value: Any, low: int, high: int, *, hint: str | None = None) -> int:
    """An integer in ``low..high``, both included."""
    return integer(name, value, low=low, high=high, hint=hint)


@_parses(int)
def seed(name: str, value: Any, *, hint: str | None = None) -> int:
    """A random seed: an integer in ``0..2**63 - 1``, which Python, numpy and torch all
    take (a larger one overflows torch's generator, a negative one means nothing more)."""
    return integer(name, value, low=0, high=SEED_MAX, hint=hint)


def sizes(name: str, value: Any, *, min_len: int = 1, hint: str | None = None) -> tuple[int, ...]:
    """At least ``min_len`` integers >= 1 (hidden layer sizes, a shape), as a tuple of
    ``int``; a string, a single number or a ``bool`` among them is refused.

    >>> sizes("hidden", [64, 32])
    (64, 32)
    >>> sizes("hidden", [64, 0])
    Traceback (most recent call last):
    ...
    probgen.errors.ConfigError: hidden must be one or more integers of at least 1, got [64, 0].
    """
    count = "one or more" if min_len == 1 else f"{min_len} or more"
    must = f"be {count} integers of at least 1"
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise _fail(name, must, value, hint)
    items = list(value)
    if len(items) < min_len or any(isinstance(v, bool) for v in items):
        raise _fail(name, must, items, hint)
    try:
        out = tuple(operator.index(v) for v in items)
    except TypeError:
        raise _fail(name, must, items, hint) from None
    if any(v < 1 or v > INT64_MAX for v in out):
        raise _fail(name, must, items, hint)
    return out


# --------------------------------------------------------------------------- real numbers


@_parses(float)
def real(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    hint: str | None = None,
) -> float:
    """A finite real number between ``low`` and ``high`` (each bound optional, inclusive
    unless ``low_open`` / ``high_open``). NaN and infinities are always refused; Python
    and numpy numbers are taken, ``bool`` is not."""
    low, high = (None if b is None else float(b) for b in (low, high))
    bounds = _range(low, high, low_open, high_open)
    finite = "be a finite number" + (f" ({bounds.split(' ', 1)[1]})" if bounds else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy's included
        raise _fail(name, "be a number", value, hint)
    try:
        v = float(value)
    except OverflowError:  # an integer too large for a float
        raise _fail(name, finite, value, hint) from None
    if not math.isfinite(v):
        raise _fail(name, finite, value, hint)
    if low is not None and (v < low or (low_open and v == low)):
        raise _fail(name, bounds, value, hint)
    if high is not None and (v > high or (high_open and v == high)):
        raise _fail(name, bounds, value, hint)
    return v


@_parses(float)
def finite_float(name: str, value: Any, *, hint: str | None = None) -> float:
    """Any finite real number."""
    return real(name, value, hint=hint)


@_parses(float)
def positive_float(name: str, value: Any, *, hint: str | None = None) -> float:
    """A finite number > 0 (a learning rate, a bandwidth)."""
    return real(name, value, low=0.0, low_open=True, hint=hint)


@_parses(float)
def nonnegative_float(name: str, value: Any, *, hint: str | None = None) -> float:
    """A finite number >= 0 (a weight decay, a penalty weight, a noise level)."""
    return real(name, value, low=0.0, hint=hint)


@_parses(float)
def probability(name: str, value: Any, *, hint: str | None = None) -> float:
    """A number in ``[0, 1]``."""
    return real(name, value, low=0.0, high=1.0, hint=hint)


@_parses(float)
def fraction(name: str, value: Any, *, hint: str | None = None) -> float:
    """A number strictly between 0 and 1 (a decay, a share that must leave room for the
    rest)."""
    return real(name, value, low=0.0, high=1.0, low_open=True, high_open=True, hint=hint)


# --------------------------------------------------------------------------- others


@_parses(str)
def choice(name: str, value: Any, choices: Iterable[Any], *, hint: str | None = None):
    """One of ``choices``."""
    options = list(choices)
    if value not in options:
        raise _fail(name, "be one of " + ", ".join(repr(c) for c in options), value, hint)
    return value


def flag(name: str, value: Any, *, hint: str | None = None) -> bool:
    """``True`` or ``False`` (a switch; ``1``, ``"yes"`` and ``None`` are refused, so that
    a value meant for another argument is not taken for a switch).

    >>> flag("label_to_decoder", 1)
    Traceback (most recent call last):
    ...
    probgen.errors.ConfigError: label_to_decoder must be True or False, got 1.
    """
    if not isinstance(value, bool):
        raise _fail(name, "be True or False", value, hint)
    return value


def optional(check: Callable[..., Any], name: str, value: Any, *args: Any, **settings: Any):
    """``None`` as it is, any other value through ``check(name, value, *args, **settings)``.

    >>> optional(positive_float, "d_lr", None) is None, optional(positive_float, "d_lr", 1)
    (True, 1.0)
    """
    return None if value is None else check(name, value, *args, **settings)


def writable_dir(
    name: str,
    path: str | os.PathLike[str],
    *,
    create: bool = True,
    hint: str | None = "give another folder",
) -> Path:
    """A folder this process can write files in, as a :class:`~pathlib.Path`.

    Refused, with the reason in plain words: a path that is a file, a path under a file,
    a folder that cannot be created or written (permissions, a read-only file system, a
    full disk: the operating system's own words). With ``create`` the folder (and its
    parents) is made; without, the nearest existing folder above it must be writable.
    Writability is tried by creating and removing a temporary file, which is what
    answers for root, read-only mounts and quotas alike (``os.access`` does not).
    """
    p = Path(path)
    must = "be a folder this process can write in"

    def refuse(why: str) -> ConfigError:
        return _fail(name, must, _Verbatim(f"{p} ({why})"), hint)

    if p.exists() and not p.is_dir():
        raise refuse("a file")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise refuse(f"{parent} is a file")
            break
    target = p
    if create:
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise refuse(f"cannot create it: {err.strerror or err}") from None
    else:
        target = next((q for q in (p, *p.parents) if q.exists()), Path("."))
    try:
        with tempfile.TemporaryFile(dir=target, prefix=".probgen-write-test-"):
            pass
    except OSError as err:
        raise refuse(f"cannot write in {target}: {err.strerror or err}") from None
    return p


class _Verbatim(str):
    """Text the message shows as it is (a path and the reason it was refused)."""


# --------------------------------------------------------------------------- argparse

_WORDS = {int: "be an integer", float: "be a number", str: "be text"}


def arg(check: Callable[..., Any], **settings: Any) -> Callable[[str], Any]:
    """An argparse ``type=`` that converts the text and applies ``check`` at parse time.

    ``settings`` go to the check (``low=``, ``zero=``, ``hint=``, ``choices=``...). A bad
    value raises :class:`argparse.ArgumentTypeError`, which argparse reports as
    ``<prog>: error: argument --flag: must be ..., got ...`` after its usage, with exit
    status 2 (:class:`probgen.cli.Parser` says it in one line, ``--flag must be ...``).
    The returned callable keeps ``parses`` (``int`` or ``float``), ``check`` and
    ``settings``, for tools that read a parser.
    """
    kind = getattr(check, "parses", None)
    if kind is None:
        raise TypeError(
            f"{getattr(check, '__name__', check)!r} is not a check of "
            f"probgen.checks (it does not say what it parses)"
        )

    def convert(text: str):
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"must {_WORDS[kind]}, got {_show(text)}.") from None
        try:
            return check("", value, **settings)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = getattr(check, "__name__", "value")
    convert.parses = kind
    convert.check = check
    convert.settings = dict(settings)
    return convert
