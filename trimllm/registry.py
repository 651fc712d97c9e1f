"""A small generic registry whose lookups answer a typo with "did you mean".

Scorers and schedules register themselves with one decorator line, in the style of lm-eval's registries.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' Did you mean X?' suffix for an error message, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


class UnknownNameError(ValueError):
    """A registry lookup for a name that is not registered (the message lists the available names)."""


class Registry(Generic[T]):
    """Maps names to plug-ins (functions or classes).

    Example:
        >>> SCORERS = Registry("scorer")
        >>> @SCORERS.register("depth")
        ... def depth(...): ...
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._items:
            raise UnknownNameError(
                f"Unknown {self.kind} {name!r}.{did_you_mean(name, self._items)} "
                f"Available: {', '.join(sorted(self._items))}."
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
