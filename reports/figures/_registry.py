"""The figure registry: name -> function, and which figures are optional (drawn only where their data
is loaded, no placeholder). One decorator, so the mechanism can be swapped in one place."""
from __future__ import annotations

from typing import Callable

import pandas as pd

from bench.errors import UsageError
from lazy_registry import Registry

FigureFn = Callable[..., "tuple[object, pd.DataFrame]"]
# the project's one registry mechanism; every module of reports.figures registers on first lookup
FIGURES = Registry("figure", "reports.figures", error=UsageError)
FAMILY_FIGURES: set[str] = set()  # optional: drawn only where their data is loaded (no placeholder)


class NoData(Exception):
    def __init__(self, why: str, columns: list[str] | None = None):
        super().__init__(why)
        self.why = why
        self.columns = columns or []


def register(name: str, family: bool = False) -> Callable[[FigureFn], FigureFn]:
    """``@register("fig2_forest")``: a figure ``(df, root, metric=..., **opts) -> (Figure, DataFrame)``.
    `family=True`: optional (e.g. few-shot runs only, or side-by-side timings only)."""
    def deco(fn: FigureFn) -> FigureFn:
        FIGURES.register(name, family=family)(fn)
        if family:
            FAMILY_FIGURES.add(name)
        return fn

    return deco


def list_figures() -> list[str]:
    return list(FIGURES)


def get_figure(name: str) -> FigureFn:
    """The figure registered under `name` (UsageError naming the valid figures)."""
    return FIGURES.factory(name)
