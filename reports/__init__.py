"""reports/: pure functions from stored results to tables, figures and a wandb Report.

    from reports import load_results, comparison_table, write_tables, write_figures
    df = load_results("results", sweep="demo")      # one row per done run
    table = comparison_table(df)    # every X+LEARNER arm vs X (and vs X+ref) per experiment (fractions)

Nothing here trains or launches. Submodules are imported lazily so that registering the CLI
(`reports.cli.register`) does not pull in pandas/matplotlib.
"""
from __future__ import annotations

import importlib

_API = {
    "load_results": "reports.load", "load_wandb": "reports.load", "frame_from_records": "reports.load",
    "experiment_columns": "reports.load", "wandb_is_offline": "reports.load",
    "learner_cfg_labels": "reports.load", "arm_order": "reports.load", "method_label": "reports.load",
    "CI": "reports.stats", "mean_ci": "reports.stats", "paired_diff_ci": "reports.stats",
    "arm_stats": "reports.tables", "comparison_table": "reports.tables", "average_gain": "reports.tables",
    "write_tables": "reports.tables", "display_table": "reports.tables", "display_average": "reports.tables",
    "in_points": "reports.tables",
    "FIGURES": "reports.figures", "NoData": "reports.figures",
    "write_figures": "reports.figures",
    "build_report": "reports.wandb_report", "report_spec": "reports.wandb_report",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'reports' has no attribute {name!r}")
