"""Figures of the stored results, one module per figure, registered in FIGURES under its file stem:

- fig1_accuracy        (accuracy.py)     the metric per dataset and upstream, one colour per arm
- fig2_forest          (forest.py)       paired gains over X: one panel per comparison, the average below
- fig3_diagnostics     (diagnostics.py)  SAFLEX's weights and label shifts, clean vs corrupted
- fig4_cost            (cost.py)         step-time ratio from side-by-side timings only (optional)
- fig5_learning_curves (curves.py)       one panel per dataset and arm group
- fig6_fewshot         (fewshot.py)      few-shot accuracy against K (optional)

A figure is ``(df, root, metric=..., **opts) -> (matplotlib Figure, DataFrame it plots)``; adding one
= a module with a ``@register`` function, imported below. A figure without data raises NoData(why,
columns): `write_figures` writes a placeholder PNG/PDF saying so and a header-only CSV, except for
the optional ones (FAMILY_FIGURES), which are left out unless asked for by name.

matplotlib's object API (``Figure()``, no pyplot): no global state, no GUI backend.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from reports.figures import accuracy, cost, curves, diagnostics, fewshot, forest  # noqa: F401 - they register
from reports.figures._common import DPI, arm_colors
from reports.figures._registry import FAMILY_FIGURES, FIGURES, NoData, get_figure, list_figures, register
from reports.figures.fewshot import fig_fewshot

__all__ = ["FIGURES", "FAMILY_FIGURES", "NoData", "register", "get_figure", "list_figures", "write_figures", "placeholder", "arm_colors",
           "fig_fewshot"]


def placeholder(name: str, why: str) -> Figure:
    fig = Figure(figsize=(6.4, 2.4))
    fig.text(0.5, 0.5, f"{name}\nno data: {why}", ha="center", va="center", fontsize=11, wrap=True)
    return fig


def write_figures(df: pd.DataFrame, root: str | Path | None, out_dir: str | Path, metric: str = "test_acc",
                  only: list[str] | None = None, **opts) -> list[tuple[str, list[Path], str | None]]:
    """Render every registered figure (or `only` those) to <out>/<name>.{png,pdf,csv}; `opts` go to every
    figure (e.g. cost_csv). Returns [(name, paths, why-no-data or None)]."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(root) if root is not None else None
    done = []
    for name, fn in sorted(FIGURES.items()):
        if only and name not in only:
            continue
        why = None
        try:
            fig, data = fn(df, root, metric=metric, **opts)
        except NoData as e:
            if name in FAMILY_FIGURES and not only:  # e.g. no few-shot runs: nothing to say, no placeholder
                continue
            why = e.why
            fig, data = placeholder(name, e.why), pd.DataFrame(columns=e.columns)
        paths = [out / f"{name}.png", out / f"{name}.pdf", out / f"{name}.csv"]
        fig.savefig(paths[0], dpi=DPI)
        fig.savefig(paths[1], metadata={"CreationDate": None})  # same figure, same bytes: no git churn
        data.to_csv(paths[2], index=False)
        done.append((name, paths, why))
    return done
