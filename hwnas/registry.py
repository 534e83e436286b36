"""A registry per pluggable kind (ops, spaces, strategies, datasets, profilers), in the style of timm's."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from hwnas.errors import HwnasError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; `register("name")` is a decorator, `get(name)` fails with the known names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise HwnasError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def names(self, pattern: str = "*") -> list[str]:
        return [n for n in self._items if fnmatch.fnmatch(n, pattern)]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
