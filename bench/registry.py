"""The engine's registries (tasks, learners, models): the one mechanism of `lazy_registry`, with
lookups of unknown names raising UsageError (one line naming the valid choices; exit 2 in the CLI)."""
from __future__ import annotations

from typing import Iterable

import lazy_registry
from bench.errors import UsageError
from lazy_registry import Entry

__all__ = ["Entry", "Registry"]


class Registry(lazy_registry.Registry):
    def __init__(self, kind: str, package: str | None = None, skip_modules: Iterable[str] = ("base",)):
        super().__init__(kind, package, error=UsageError, skip_modules=skip_modules)
