"""Learned-augmentation competitors vs SAFLEX on the MedMNIST study's sets. See README.md."""
from __future__ import annotations

from pathlib import Path

QUESTION = ("Do learned-augmentation methods (Augerino, AugNet, AdAutoMix, Soft Augmentation) or SAFLEX gain over "
            "the same upstream (rand-m9-n2) and the label-budget control on three MedMNIST sets?")
COMMANDS = (
    "saflex-bench sweep studies/learned/sweeps/learned.yaml --results R --data-root DIR --executor local",
    "saflex-bench study learned --build-table R",
    "saflex-bench study learned",
)
HERE = Path(__file__).resolve().parent
TABLE = HERE / "results"
REPORT = HERE / "report"
# fig4's side-by-side step timings: the benchmark the MedMNIST study keeps (its README names the command)
COST_CSV = HERE.parent / "saflex_medmnist" / "side_by_side_cost.csv"
SWEEP = "learned"  # the sweep's name in its records (and its plan, for the runs it shares)


def build_table(roots, table_dir=None) -> list[Path]:
    """results/ from one results root: the runs of the `learned` sweep, those it shares included, and
    their logged epochs (fig5)."""
    from reports.study_table import epochs_frame, runs_frame, write_table

    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    if len(roots) != 1:
        from bench.errors import UsageError

        raise UsageError(f"learned builds its table from one results root (got {len(roots)})")
    from reports.selection import selection_frame

    runs = runs_frame(roots[0], SWEEP)  # + each run's selection-split majority rate (data under $SAFLEX_DATA)
    return write_table(table_dir or TABLE, {"runs": runs, "epochs": epochs_frame(roots[0], runs["key"]),
                                            "selection": selection_frame(runs)}, {"study": "learned"})


def write_report(table_dir=None, out=None) -> list[Path]:
    """report/table.{md,tex,csv} and gain_summary.csv (`saflex-bench report`'s tables), and figures/ beside
    report/ (reports/study_figures.py), from the table."""
    from reports.study_table import read_table
    from reports.tables import write_tables

    frames, _ = read_table(table_dir or TABLE)
    runs = frames["runs"]
    if "selection" in frames:  # degenerate selections flagged in every table
        from reports.selection import annotate_selection

        maj = frames["selection"].set_index("key")["selection.majority"]
        runs = annotate_selection(runs, majority=runs["key"].map(maj))
        runs.attrs.update(frames["runs"].attrs)
    out = Path(out or REPORT)
    paths, _ = write_tables(runs, out)
    from reports.study_figures import write_study_figures

    return [*paths, *write_study_figures(frames["runs"], out.parent / "figures", epochs=frames.get("epochs"),
                                         cost_csv=COST_CSV)]
