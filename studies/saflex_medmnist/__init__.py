"""The SAFLEX MedMNIST study: does SAFLEX beat the augmentations it sits on, on three MedMNIST sets?"""
from __future__ import annotations

from pathlib import Path

QUESTION = ("Does SAFLEX (weights and soft labels per augmented sample) beat the upstream augmentation it sits "
            "on, and the label-budget control, on three small MedMNIST sets?")
COMMANDS = (
    "saflex-bench sweep studies/saflex_medmnist/sweeps/saflex_fair.yaml --results R --data-root DIR --executor local",
    "saflex-bench sweep studies/saflex_medmnist/sweeps/saflex_fair_noisy.yaml --results R --data-root DIR --executor local",
    "saflex-bench study saflex_medmnist --build-table R",
    "saflex-bench study saflex_medmnist",
)
HERE = Path(__file__).resolve().parent
REPORT = HERE / "report.md"


def build_table(roots, table_dir=None) -> list[Path]:
    raise NotImplementedError


def write_report(table_dir=None, out=None) -> list[Path]:
    raise NotImplementedError


def write_from_runs(root, out=REPORT, aa_roots=None) -> Path:
    """The report straight from a results root of run folders (the path before the table)."""
    from .report import write_study

    return write_study(root, out, aa_root=aa_roots)
