"""A batch as a model's arguments, the way Pyro's own loops pass them.

A tuple (or list) is passed positionally, a dict as keyword arguments, a lone tensor as
one argument, and ``batch_to_args(batch) -> (args, kwargs)`` adapts anything else. The
callables' signatures are checked against the first batch of each form, once, so a
mismatch is one clear error rather than a ``TypeError`` from deep inside an ELBO.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from probgen.errors import ConfigError

BatchToArgs = Callable[[Any], tuple[Sequence, dict[str, Any]]]

__all__ = ["BatchArguments", "BatchToArgs", "batch_len", "default_batch_to_args"]


def batch_len(batch: Any) -> int:
    """The number of examples in a batch: the first dimension of its first tensor."""
    items = (
        batch.values() if isinstance(batch, dict) else (batch,) if torch.is_tensor(batch) else batch
    )
    for item in items:
        if torch.is_tensor(item) and item.dim() > 0:
            return item.shape[0]
    raise ConfigError("a batch needs at least one tensor (its first dimension is the batch).")


def default_batch_to_args(batch: Any) -> tuple[tuple, dict[str, Any]]:
    """Pyro's reading of a batch: a dict -> keyword arguments, a tuple or list ->
    positional ones, a tensor -> one positional argument.

    Examples:
        >>> import torch
        >>> from probgen.infer import default_batch_to_args
        >>> x, y = torch.zeros(2, 3), torch.ones(2)
        >>> args, kwargs = default_batch_to_args({"xs": x, "ys": y})   # model(xs=x, ys=y)
        >>> args, sorted(kwargs)
        ((), ['xs', 'ys'])
        >>> args, kwargs = default_batch_to_args((x, y))               # model(x, y)
        >>> len(args), kwargs
        (2, {})
    """
    if isinstance(batch, dict):
        return (), batch
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    if torch.is_tensor(batch):
        return (batch,), {}
    raise ConfigError(
        f"a batch must be a tensor, a tuple/list or a dict of them, got a "
        f"{type(batch).__name__}; adapt it with batch_to_args=fn returning "
        f"(args, kwargs)."
    )


def _describe_batch(args, kwargs, adapted: bool) -> str:
    parts = []
    if args:
        parts.append(f"{len(args)} positional value{'s' if len(args) != 1 else ''}")
    if kwargs:
        parts.append("keyword arguments " + ", ".join(map(repr, kwargs)))
    what = " and ".join(parts) or "no arguments"
    return f"batch_to_args gave {what}" if adapted else f"the batch gives {what}"


def _signature(fn) -> inspect.Signature | None:
    target = fn.forward if isinstance(fn, nn.Module) else fn
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):
        return None


def callable_name(fn) -> str:
    """A callable's name for messages: a module's class, a function's qualified name."""
    if isinstance(fn, nn.Module):
        return type(fn).__name__
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


class BatchArguments:
    """Turns batches into ``(args, kwargs)`` for a set of callables and checks, once per
    form of batch (its arity and keys), that every callable accepts them.

    Args:
        callables: ``{"model": model, "guide": guide}`` (the names used in messages).
        batch_to_args: ``f(batch) -> (args, kwargs)``; default :func:`default_batch_to_args`.
        leading: arguments every callable receives before the batch's (a LossStep's module).
        where: who is asking, for messages (``"SVIStep"``).
    """

    def __init__(
        self,
        callables: dict[str, Callable],
        batch_to_args: BatchToArgs | None = None,
        leading: tuple = (),
        where: str = "SVIStep",
    ):
        if batch_to_args is not None and not callable(batch_to_args):
            raise ConfigError(
                f"{where}: batch_to_args must be a function of the batch returning "
                f"(args, kwargs), got {type(batch_to_args).__name__}."
            )
        self.callables = callables
        self.batch_to_args = batch_to_args
        self.leading = leading
        self.where = where
        self._checked = set()

    def __call__(self, batch) -> tuple[tuple, dict[str, Any]]:
        if self.batch_to_args is None:
            args, kwargs = default_batch_to_args(batch)
        else:
            out = self.batch_to_args(batch)
            if not (
                isinstance(out, tuple)
                and len(out) == 2
                and isinstance(out[0], (tuple, list))
                and isinstance(out[1], dict)
            ):
                raise ConfigError(
                    f"{self.where}: batch_to_args must return (args, kwargs): a "
                    f"tuple of positional arguments and a dict of keyword ones, "
                    f"got {type(out).__name__}."
                )
            args, kwargs = tuple(out[0]), out[1]
        key = (len(args), tuple(kwargs))
        if key not in self._checked:
            self._check(args, kwargs)
            self._checked.add(key)
        return args, kwargs

    def _check(self, args, kwargs) -> None:
        lead = self.leading
        shown, failed = [], []
        for name, fn in self.callables.items():
            sig = _signature(fn)
            if sig is None:
                continue
            shown.append(f"{name} {callable_name(fn)}{sig}")
            try:
                sig.bind(*lead, *args, **kwargs)
            except TypeError as err:
                failed.append(f"{name}: {err}")
        if failed:
            raise ConfigError(
                f"{self.where}: {_describe_batch(args, kwargs, self.batch_to_args is not None)}, "
                f"which do not fit {' and '.join(shown)} ({'; '.join(failed)}). A dict batch "
                f"goes in as keyword arguments (its keys must be the argument names), a tuple "
                f"positionally; adapt other batches with batch_to_args=lambda batch: (args, "
                f"kwargs)."
            )
