"""Natural images, few-shot and out-of-distribution at CPU scale, under the fair protocol. See README.md."""
from __future__ import annotations

from pathlib import Path

QUESTION = ("On natural images (CIFAR-10), few-shot (CIFAR-10, K=4 and 16) and out-of-distribution tasks (MNIST->USPS, "
            "MNIST->MNIST-M, CIFAR-10->CIFAR-10-C) at CPU scale, does SAFLEX beat its upstream and "
            "the label-budget control X+ref?")
COMMANDS = (
    "saflex-bench sweep studies/families_cpu/sweeps/families_cpu_tuning.yaml --results R --data-root DIR --executor local --threads 1",
    "saflex-bench sweep studies/families_cpu/sweeps/families_cpu.yaml --results R --data-root DIR --executor local --threads 1",
    "saflex-bench study families_cpu --build-table R",
    "saflex-bench study families_cpu",
)
HERE = Path(__file__).resolve().parent
TABLE = HERE / "results"
REPORT = HERE / "report"
# the tuning seed first (the rule is chosen on it), then the reported seeds under that rule
SWEEP_FILES = (HERE / "sweeps" / "families_cpu_tuning.yaml", HERE / "sweeps" / "families_cpu.yaml")


def planned_keys() -> list[str]:
    """The run keys of the study's sweep files: its table holds these runs and no others."""
    from sweeps.plan import planned_keys_of

    return planned_keys_of(SWEEP_FILES)


def build_table(roots, table_dir=None) -> list[Path]:
    """results/ from one results root: the runs of the study's two sweep files, their epochs and each run's
    selection-split majority rate."""
    from reports.study_table import build_selection_table

    return build_selection_table(roots, table_dir or TABLE, planned_keys(), "families_cpu")


def write_report(table_dir=None, out=None) -> list[Path]:
    """report/table.{md,tex,csv}, gain_summary.csv, main_table.tex (`saflex-bench report`'s tables over the
    reported seeds, degenerate selections flagged) and families.md (per family: the task-clustered gains; the
    selection rule chosen on seed 0; accuracy and AUC side by side), from the table alone."""
    from reports.study_table import write_selection_report

    from .report import families_markdown

    return write_selection_report(table_dir or TABLE, out or REPORT, "families.md", families_markdown)
