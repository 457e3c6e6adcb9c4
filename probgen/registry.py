"""A small name -> factory registry (instead of string if/elif chains)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from probgen.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories.

    Example::

        MODELS = Registry("model")

        @MODELS.register("cvae")
        def build_cvae(...): ...

        MODELS.get("cvae")
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T = None):
        if item is not None:
            self._add(name, item)
            return item

        def decorator(obj):
            self._add(name, obj)
            return obj

        return decorator

    def _add(self, name: str, item: T) -> None:
        if name in self._items:
            raise ConfigError(f"a {self.kind} named {name!r} is registered already.")
        self._items[name] = item

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; choose one of {sorted(self._items)}."
            ) from None

    def names(self):
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
