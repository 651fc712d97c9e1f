"""A small generic registry whose lookups answer a typo with "did you mean".

Plug-ins (scorers, schedules, freezing modes, training methods) are one file each in their package's folder,
registered with one decorator line whose key is the file's name (``@SCORERS.register()`` in ``taylor.py``
registers ``taylor``); :meth:`Registry.discover` imports the folder, so adding a plug-in is adding a file. A
plug-in's options are its keyword parameters: :meth:`Registry.check_options` refuses any other, so a misspelled
option is an error, never silently ignored.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' Did you mean X?' suffix for an error message, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


class UnknownNameError(ValueError):
    """A registry lookup for a name that is not registered (the message lists the available names)."""


class UnknownOptionError(TypeError):
    """A plug-in was given an option it does not take (the message names it and lists the ones it takes)."""


class Registry(Generic[T]):
    """Maps names to plug-ins (functions or classes).

    Example:
        >>> SCORERS = Registry("scorer")
        >>> @SCORERS.register()          # in scoring/depth.py: registers "depth"
        ... def depth(...): ...
    """

    def __init__(self, kind: str, fixed: int = 0):
        self.kind = kind
        self.fixed = fixed  # leading positional parameters every plug-in takes (not options)
        self._items: dict[str, T] = {}
        self._facts: dict[str, object] = {}
        self._checks: dict[str, Callable[[dict], list[str]]] = {}

    def register(self, name: str | None = None, facts: object = None,
                 checks: Callable[[dict], list[str]] | None = None) -> Callable[[T], T]:
        """Register under ``name``, by default the defining module's file name (the plug-in convention), with the
        ``facts`` the rest of trimllm may ask of the plug-in (:meth:`facts`; a typed record of the plug-in's kind,
        e.g. :class:`trimllm.schedules.ScheduleFacts`), so that nothing outside the registry compares its name, and
        the ``checks`` of its options' values (given every option, defaults filled in; returns the problems), so
        that a recipe's options are checked where they are defined (:meth:`option_problems`)."""

        def decorator(obj: T) -> T:
            key = name or obj.__module__.rsplit(".", 1)[-1]
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = obj
            self._facts[key] = facts
            if checks is not None:
                self._checks[key] = checks
            return obj

        return decorator

    def facts(self, name: str):
        """What plug-in ``name`` declared when it registered."""
        self.get(name)  # an unknown name: the "did you mean" error
        return self._facts[name]

    def default(self, name: str, option: str):
        """The default of ``option`` in plug-in ``name``'s signature (where a default lives once)."""
        return inspect.signature(self.get(name)).parameters[option].default

    def discover(self, package: str) -> None:
        """Import every module in ``package``'s folder; each plug-in registers itself on import."""
        module = importlib.import_module(package)
        for info in pkgutil.iter_modules(module.__path__):
            importlib.import_module(f"{package}.{info.name}")

    def get(self, name: str) -> T:
        if name not in self._items:
            raise UnknownNameError(
                f"Unknown {self.kind} {name!r}.{did_you_mean(name, self._items)} "
                f"Available: {', '.join(sorted(self._items))}."
            )
        return self._items[name]

    def options(self, name: str) -> list[str]:
        """The options (keyword parameters after the fixed ones) that plug-in ``name`` takes."""
        parameters = list(inspect.signature(self.get(name)).parameters.values())[self.fixed :]
        return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    def check_options(self, name: str, options: Iterable[str]) -> None:
        """Raise :class:`UnknownOptionError` for any option plug-in ``name`` does not take."""
        unknown = self._unknown_options(name, options, self.options(name))
        if unknown:
            raise UnknownOptionError(unknown[0])

    def defaults(self, name: str) -> dict:
        """Every option of plug-in ``name`` with its default (those without one are left out)."""
        parameters = inspect.signature(self.get(name)).parameters
        return {o: parameters[o].default for o in self.options(name) if parameters[o].default is not parameters[o].empty}

    def option_problems(self, name: str, options: dict, where: str, passed: Iterable[str] = ()) -> list[str]:
        """Every problem with ``options`` given to plug-in ``name`` under the recipe key ``where``: an option it does
        not take (``passed``: those trimllm itself passes, never the user's), then its own checks of the values."""
        unknown = self._unknown_options(name, options, [o for o in self.options(name) if o not in passed])
        if unknown:
            return [f"{where}: {message}" for message in unknown]
        check = self._checks.get(name)
        return [f"{where}: {problem}" for problem in check({**self.defaults(name), **options})] if check else []

    def _unknown_options(self, name: str, options: Iterable[str], takes: list[str]) -> list[str]:
        """One message per option of ``options`` not in ``takes``: the option, the closest one, all it takes."""
        return [f"{self.kind} {name!r} does not take option {o!r}.{did_you_mean(o, takes)} "
                f"It takes: {', '.join(takes) or 'no options'}." for o in options if o not in takes]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
