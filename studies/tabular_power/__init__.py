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
SWEEP = "tabular_power"
# the tuning seed first (the rule is chosen on it), then the reported seeds under that rule
SWEEP_FILES = (HERE / "sweeps" / "tabular_power_tuning.yaml", HERE / "sweeps" / "tabular_power.yaml")


def planned_keys() -> list[str]:
    """The run keys of the study's two sweep files: the table holds these runs and no others (a store may
    also hold runs of an earlier design, e.g. the reported seeds under another selection rule)."""
    from sweeps.config import load_sweep
    from sweeps.plan import plan_sweep

    return [k for f in SWEEP_FILES for k in plan_sweep(load_sweep(f)).keys]


def build_table(roots, table_dir=None) -> list[Path]:
    """results/ from one results root: the runs of the study's sweep files (found by key, whichever sweep
    first ran them) and each run's selection-split majority rate."""
    from reports.selection import selection_frame
    from reports.study_table import epochs_frame, runs_frame, write_table

    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    if len(roots) != 1:
        from bench.errors import UsageError

        raise UsageError(f"tabular_power builds its table from one results root (got {len(roots)})")
    runs = runs_frame(roots[0])
    keys = planned_keys()
    attrs = dict(runs.attrs)
    runs = runs[runs["key"].isin(keys)].reset_index(drop=True)
    runs.attrs.update(attrs, missing=len(set(keys) - set(runs["key"])))
    return write_table(table_dir or TABLE, {"runs": runs, "epochs": epochs_frame(roots[0], runs["key"]),
                                            "selection": selection_frame(runs)}, {"study": SWEEP})


def write_report(table_dir=None, out=None) -> list[Path]:
    """report/table.{md,tex,csv}, gain_summary.csv, main_table.tex (`saflex-bench report`'s tables, degenerate
    selections flagged) and power.md (the selection rule chosen on seed 0, the task-clustered gains over the
    other seeds and the half-width they project), from the table."""
    from reports.selection import annotate_selection
    from reports.study_table import read_table
    from reports.tables import write_tables

    from .report import power_markdown

    frames, _ = read_table(table_dir or TABLE)
    runs = frames["runs"]
    maj = frames["selection"].set_index("key")["selection.majority"]
    runs = annotate_selection(runs, majority=runs["key"].map(maj))
    runs.attrs.update(frames["runs"].attrs)
    out = Path(out or REPORT)
    paths, _ = write_tables(runs, out)
    power = out / "power.md"
    power.write_text(power_markdown(runs, frames.get("epochs")))
    return [*paths, power]
