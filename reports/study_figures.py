"""A study's figures from its results table alone (reports/study_table.py), no run folders: the runs
frame gives fig1/fig2, the epochs frame fig5, a side-by-side cost CSV kept in the study's folder fig4.

fig3_diagnostics is not among them: it draws histograms of SAFLEX's per-sample weights and label shifts,
clean vs corrupted, and a table keeps only per-run summaries of those arrays (`saflex_diag`)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

STUDY_FIGURES = ("fig1_accuracy", "fig2_forest", "fig4_cost", "fig5_learning_curves")
WHY_NO_FIG3 = ("fig3_diagnostics (histograms of SAFLEX's per-sample weights and label shifts) is not drawn: the "
               "table keeps per-run summaries of those arrays, not the arrays")


def write_study_figures(runs: pd.DataFrame, out_dir: str | Path, epochs: pd.DataFrame | None = None,
                        cost_csv: str | Path | None = None, metric: str = "test_acc") -> list[Path]:
    """<out_dir>/<fig>.{png,pdf,csv} for STUDY_FIGURES (fig4 only with `cost_csv`, fig5 only with
    `epochs`). A figure without data fails the call rather than leave a placeholder in a study."""
    from bench.errors import UsageError
    from reports.figures import write_figures

    only = [n for n in STUDY_FIGURES if (n != "fig4_cost" or cost_csv) and (n != "fig5_learning_curves"
                                                                                or epochs is not None)]
    written = write_figures(runs, None, out_dir, metric=metric, only=only, epochs=epochs, cost_csv=cost_csv)
    empty = [f"{name}: {why}" for name, _, why in written if why]
    if empty:
        raise UsageError(f"study figures in {out_dir} without data: " + "; ".join(empty))
    return [p for _, paths, _ in written for p in paths]
