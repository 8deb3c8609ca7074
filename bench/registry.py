"""A name -> factory registry that finds its entries by importing the modules of one package.

Adding a task family or a learner is one new module in that package with a decorator: nothing to
import elsewhere. Registry modules keep heavy imports (torch, torchvision, medmnist, sklearn) inside
functions, so listing names costs milliseconds, not seconds.

Entries are either exact names or a family pattern (a regex with named groups) for parametrised
names such as `tabular/pmlb:<name>` or `fewshot/cifar10-k4`.
"""
from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from bench.errors import UsageError


@dataclass(frozen=True)
class Entry:
    name: str  # exact name, or the family's grammar for patterns (e.g. "tabular/pmlb:<name>")
    factory: Callable[..., Any]
    pattern: re.Pattern | None = None
    examples: tuple[str, ...] = ()
    lister: Callable[[], Iterable[str]] | None = None  # concrete names known without loading data


class Registry:
    def __init__(self, kind: str, package: str, skip_modules: Iterable[str] = ("base",)):
        self.kind, self.package = kind, package
        self.skip = set(skip_modules)
        self._entries: dict[str, Entry] = {}
        self._cache: dict[str, Any] = {}
        self._discovered = False

    # ---- registration ------------------------------------------------------------------------
    def register(self, name: str, *, pattern: str | None = None, examples: Iterable[str] = (),
                 lister: Callable[[], Iterable[str]] | None = None):
        """Decorator: `@registry.register("digits/sklearn")` on a class or factory function."""

        def deco(factory):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = Entry(name, factory, re.compile(pattern) if pattern else None,
                                        tuple(examples), lister)
            return factory

        return deco

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a throw-away task or learner clean up with this)."""
        self._entries.pop(name, None)
        self._cache = {k: v for k, v in self._cache.items() if k != name}

    def discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        pkg = importlib.import_module(self.package)
        for mod in pkgutil.iter_modules(pkg.__path__):
            if mod.name.startswith("_") or mod.name in self.skip:
                continue
            importlib.import_module(f"{self.package}.{mod.name}")

    # ---- lookup ------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Concrete names (pattern families list their known members, else their examples)."""
        self.discover()
        out: list[str] = []
        for e in self._entries.values():
            if e.pattern is None:
                out.append(e.name)
            else:
                out.extend(e.lister() if e.lister else e.examples)
        return sorted(dict.fromkeys(out))

    def grammars(self) -> list[str]:
        self.discover()
        return [e.name for e in self._entries.values()]

    def entry(self, name: str) -> tuple[Entry, dict[str, str]]:
        self.discover()
        if name in self._entries and self._entries[name].pattern is None:
            return self._entries[name], {}
        for e in self._entries.values():
            if e.pattern is not None:
                m = e.pattern.fullmatch(name)
                if m:
                    return e, m.groupdict()
        raise UsageError(f"unknown {self.kind} '{name}' (valid: {', '.join(self.valid_choices())})")

    def valid_choices(self) -> list[str]:
        self.discover()
        return [e.name for e in self._entries.values() if e.pattern is None] + \
               [e.name for e in self._entries.values() if e.pattern is not None]

    def get(self, name: str) -> Any:
        """The (cached) object the factory builds for `name`."""
        if name not in self._cache:
            e, groups = self.entry(name)
            obj = e.factory(**groups) if e.pattern is not None else e.factory()
            self._cache[name] = obj
        return self._cache[name]

    def factory(self, name: str) -> Callable[..., Any]:
        return self.entry(name)[0].factory

    def __contains__(self, name: str) -> bool:
        try:
            self.entry(name)
        except UsageError:
            return False
        return True
