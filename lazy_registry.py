"""One registry mechanism for every extension point: tasks, learners, upstream methods, models, figures.

    TASKS = Registry("task", "bench.tasks", error=UsageError)

    @TASKS.register("digits/sklearn")
    class SklearnDigits(...): ...

    TASKS.names()           # concrete names, for `list_*()`
    TASKS.get("digits/x")   # error: unknown task 'digits/x' (valid: digits/sklearn, ...)

Entries are found lazily: the first lookup imports every module of `package` (names starting with
`_` and `skip_modules` excepted), so adding an entry is one new module with a decorator and nothing
to import elsewhere. Registry modules keep heavy imports (torch, torchvision, sklearn) inside
functions, so listing names costs milliseconds.

Entries are exact names or a family pattern (a regex with named groups, `name` being its grammar)
for parametrised names such as `tabular/pmlb:<name>` or `rand-m{M}-n{N}`; `meta` holds what a kind
needs besides (a model's modality, a method family's keyword, a figure's family flag).

Top-level and standard library only: every layer (baselines/, saflex_core/, bench/, sweeps/,
reports/) may import it without importing another layer.
"""
from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator


@dataclass(frozen=True)
class Entry:
    name: str  # exact name, or the family's grammar for patterns (e.g. "tabular/pmlb:<name>")
    factory: Callable[..., Any]
    pattern: re.Pattern | None = None
    examples: tuple[str, ...] = ()
    lister: Callable[[], Iterable[str]] | None = None  # concrete names known without loading data
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Mapping):
    """name -> factory. As a read-only mapping it holds the exact-name entries (pattern families are
    looked up with `entry`/`get`/`factory`/`in`)."""

    def __init__(self, kind: str, package: str | None = None, *, error: type[Exception] = LookupError,
                 skip_modules: Iterable[str] = ("base",)):
        self.kind, self.package, self.error = kind, package, error
        self.skip = set(skip_modules)
        self._entries: dict[str, Entry] = {}
        self._cache: dict[str, Any] = {}
        self._discovered = package is None

    # ---- registration ------------------------------------------------------------------------
    def register(self, name: str, *, pattern: str | None = None, examples: Iterable[str] = (),
                 lister: Callable[[], Iterable[str]] | None = None, **meta: Any):
        """Decorator: `@registry.register("digits/sklearn")` on a class or factory function."""

        def deco(factory):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = Entry(name, factory, re.compile(pattern) if pattern else None,
                                        tuple(examples), lister, dict(meta))
            return factory

        return deco

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a throw-away entry clean up with this)."""
        self._entries.pop(name, None)
        self._cache = {k: v for k, v in self._cache.items() if k != name}

    def discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        pkg = importlib.import_module(self.package)
        for mod in pkgutil.iter_modules(getattr(pkg, "__path__", [])):
            if mod.name.startswith("_") or mod.name in self.skip:
                continue
            importlib.import_module(f"{self.package}.{mod.name}")

    # ---- lookup ------------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        """Every entry, in registration order."""
        self.discover()
        return list(self._entries.values())

    def names(self, **meta: Any) -> list[str]:
        """Concrete names (pattern families list their known members, else their examples), sorted;
        `meta` filters on the entries' metadata (e.g. `names(modality="image")`)."""
        out: list[str] = []
        for e in self.entries():
            if any(e.meta.get(k) != v for k, v in meta.items()):
                continue
            out.extend([e.name] if e.pattern is None else (e.lister() if e.lister else e.examples))
        return sorted(dict.fromkeys(out))

    def valid_choices(self) -> list[str]:
        """Exact names, then the families' grammars: what an error message offers."""
        entries = self.entries()
        return [e.name for e in entries if e.pattern is None] + [e.name for e in entries if e.pattern is not None]

    def grammars(self) -> list[str]:
        return [e.name for e in self.entries()]

    def match(self, name: str) -> tuple[Entry, dict[str, str]] | None:
        """(entry, named groups) for `name`, or None."""
        self.discover()
        if name in self._entries and self._entries[name].pattern is None:
            return self._entries[name], {}
        for e in self._entries.values():
            if e.pattern is not None:
                m = e.pattern.fullmatch(name)
                if m:
                    return e, m.groupdict()
        return None

    def entry(self, name: str) -> tuple[Entry, dict[str, str]]:
        found = self.match(name)
        if found is None:
            raise self.error(f"unknown {self.kind} '{name}' (valid: {', '.join(self.valid_choices())})")
        return found

    def get(self, name: str) -> Any:  # type: ignore[override]  (raises on unknown names: valid choices named)
        """The (cached) object the factory builds for `name`."""
        if name not in self._cache:
            e, groups = self.entry(name)
            self._cache[name] = e.factory(**groups) if e.pattern is not None else e.factory()
        return self._cache[name]

    def factory(self, name: str) -> Callable[..., Any]:
        return self.entry(name)[0].factory

    # ---- read-only mapping of the exact names --------------------------------------------------
    def __getitem__(self, name: str) -> Callable[..., Any]:
        found = self.match(name)
        if found is None or found[0].pattern is not None:
            raise KeyError(name)
        return found[0].factory

    def __iter__(self) -> Iterator[str]:
        return iter([e.name for e in self.entries() if e.pattern is None])

    def __len__(self) -> int:
        return sum(e.pattern is None for e in self.entries())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.match(name) is not None
