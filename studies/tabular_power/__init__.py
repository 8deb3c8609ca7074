"""The PMLB power study: does SAFLEX add ~1 point over many independent tabular sets? See
docs/tabular_power.md (the set rule, declared before any run, the power and the cost)."""
from __future__ import annotations

from pathlib import Path

QUESTION = ("Over every PMLB set a declared rule admits (35), does SAFLEX beat its upstream and the label-budget "
            "control X+ref, with a task-clustered 95 % CI narrow enough (half-width <= 1 point) to see a 1-point gain?")
COMMANDS = (
    "python scripts/tabular_power_sets.py --index DIR/tabular/pmlb/INDEX.tsv --check studies/tabular_power/sweeps",
    "saflex-bench sweep studies/tabular_power/sweeps/tabular_power_tuning.yaml --results R --data-root DIR --executor local --threads 1",
    "saflex-bench sweep studies/tabular_power/sweeps/tabular_power.yaml --results R --data-root DIR --executor local --threads 1",
    "saflex-bench study tabular_power --build-table R",
    "saflex-bench study tabular_power",
)
HERE = Path(__file__).resolve().parent
TABLE = HERE / "results"
REPORT = HERE / "report"
# the tuning seed first (the rule is chosen on it), then the reported seeds under that rule
SWEEP_FILES = (HERE / "sweeps" / "tabular_power_tuning.yaml", HERE / "sweeps" / "tabular_power.yaml")


def planned_keys() -> list[str]:
    """The run keys of the study's sweep files: its table holds these runs and no others."""
    from sweeps.plan import planned_keys_of

    return planned_keys_of(SWEEP_FILES)


def build_table(roots, table_dir=None) -> list[Path]:
    """results/ from one results root: the runs of the study's two sweep files, their epochs and each run's
    selection-split majority rate."""
    from reports.study_table import build_selection_table

    return build_selection_table(roots, table_dir or TABLE, planned_keys(), "tabular_power")


def write_report(table_dir=None, out=None) -> list[Path]:
    """report/table.{md,tex,csv}, gain_summary.csv, main_table.tex (`saflex-bench report`'s tables over the
    reported seeds, degenerate selections flagged) and power.md (the selection rule chosen on seed 0, the
    task-clustered gains over the other seeds and what they decide), from the table."""
    from reports.study_table import write_selection_report

    from .report import power_markdown

    return write_selection_report(table_dir or TABLE, out or REPORT, "power.md", power_markdown)
