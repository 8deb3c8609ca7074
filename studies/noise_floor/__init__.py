"""The numerical noise floor: the same specs run twice under a different float order. See README.md."""
from __future__ import annotations

from pathlib import Path

QUESTION = ("How far do numerics alone (the same specs and seeds under 1 vs 2 threads) move a run's test accuracy, "
            "and do the paired comparisons' conclusions survive?")
COMMANDS = (
    "saflex-bench sweep studies/noise_floor/sweeps/repro_slice.yaml --results A --data-root DIR --executor local",
    "sed 's/cpus_per_task: 1/cpus_per_task: 2/' studies/noise_floor/sweeps/repro_slice.yaml > repro_slice_t2.yaml",
    "saflex-bench sweep repro_slice_t2.yaml --results B --data-root DIR --executor local",
    "saflex-bench study noise_floor --build-table A B",
    "saflex-bench study noise_floor",
)
HERE = Path(__file__).resolve().parent
TABLE = HERE / "results"
REPORT = HERE / "report"


def build_table(roots, table_dir=None) -> list[Path]:
    """results/ from the two results roots A and B (runs_a, runs_b: one row per done run each)."""
    from reports.study_table import runs_frame, write_table

    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    if len(roots) != 2:
        from bench.errors import UsageError

        raise UsageError(f"noise_floor builds its table from two results roots A B, the same specs under "
                         f"different numerics (got {len(roots)})")
    a, b = (runs_frame(r) for r in roots)
    return write_table(table_dir or TABLE, {"runs_a": a, "runs_b": b}, {"study": "noise_floor"})


def write_report(table_dir=None, out=None) -> list[Path]:
    """report/compare.md and its CSVs (what `saflex-bench compare A B` writes), from the table alone."""
    from reports.compare import compare_frames, write_comparison
    from reports.study_table import read_table

    frames, _ = read_table(table_dir or TABLE)
    return write_comparison(compare_frames(frames["runs_a"], frames["runs_b"]), out or REPORT)
