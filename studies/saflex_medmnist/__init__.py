"""The SAFLEX MedMNIST study: does SAFLEX beat the augmentations it sits on, on three MedMNIST sets?
See README.md. The report code is report.py; its data is the table in results/."""
from __future__ import annotations

from pathlib import Path

QUESTION = ("Does SAFLEX (a weight and a soft label per augmented sample) beat the upstream augmentation it sits "
            "on, and the label-budget control X+ref, on three small MedMNIST sets?")
COMMANDS = (
    "saflex-bench sweep studies/saflex_medmnist/sweeps/saflex_fair.yaml --results R --data-root DIR --executor local",
    "saflex-bench sweep studies/saflex_medmnist/sweeps/saflex_fair_noisy.yaml --results R --data-root DIR --executor local",
    "saflex-bench sweep studies/saflex_medmnist/sweeps/saflex_fair_seed0.yaml --results R --data-root DIR --executor local",
    "saflex-bench sweep studies/saflex_medmnist/sweeps/saflex_fair_loss.yaml --results R --data-root DIR --executor local",
    "saflex-bench study saflex_medmnist --build-table R",
    "saflex-bench study saflex_medmnist",
)
HERE = Path(__file__).resolve().parent
TABLE = HERE / "results"
REPORT = HERE / "report.md"
# fig4's side-by-side step timings (benchmarks/bench_saflex_overhead.py --csv, see README.md); learned uses it too
COST_CSV = HERE / "side_by_side_cost.csv"
# the sweeps that get figures (figures/<sweep>/): the runs whose records name these sweeps (saflex_fair's
# plan holds the interim-default arm that the sweep saflex_fair_default ran first)
FIGURE_SWEEPS = {"saflex_fair": ("saflex_fair", "saflex_fair_default"), "saflex_fair_noisy": ("saflex_fair_noisy",),
                 "saflex_fair_loss": ("saflex_fair_loss",)}  # the main comparison under the tuning seed's rule
# the A/A pair of the noise-floor section: the noise_floor study's table, beside this one
AA_TABLE = HERE.parent / "noise_floor" / "results"


def build_table(roots, table_dir=None) -> list[Path]:
    """results/ from one results root of run folders: the study's runs (its three tasks), their
    logged epochs, and SAFLEX's per-run weight summaries."""
    from reports.study_table import write_table

    from .report import study_data

    (root,) = _one_root(roots)
    data = study_data(root)
    # + the selection split's majority rate per run (recorded, else from the data under $SAFLEX_DATA)
    return write_table(table_dir or TABLE, {"runs": data.runs, "epochs": data.epochs, "saflex_diag": data.saflex_diag,
                                            "selection": data.selection}, {"study": "saflex_medmnist"})


def load_data(table_dir=None, aa_table=None):
    """The report's data (report.StudyData) from the tables alone; the A/A pair where its table exists."""
    from reports.study_table import read_table

    from .report import StudyData

    frames, _ = read_table(table_dir or TABLE)
    aa_dir = Path(aa_table) if aa_table else AA_TABLE
    aa = None
    if (aa_dir / "table.json").is_file():
        aa_frames, _ = read_table(aa_dir)
        aa = (aa_frames["runs_a"], aa_frames["runs_b"])
    return StudyData(frames["runs"], frames["epochs"], frames["saflex_diag"], aa, selection=frames.get("selection"))


def write_report(table_dir=None, out=None, aa_table=None) -> list[Path]:
    """report.md, and main_table.tex beside it (the main comparison in a paper's layout: datasets as rows,
    X / X+ref / X+SAFLEX and the paired gains as columns, accuracy and AUC; reports/paper.py), and
    figures/<sweep>/ beside it (reports/study_figures.py), all from the table."""
    from .report import main_table_tex, write_markdown

    data = load_data(table_dir, aa_table)
    md = write_markdown(data, out or REPORT)
    (md.parent / "main_table.tex").write_text(main_table_tex(data))
    return [md, md.parent / "main_table.tex", *write_figures(data, md.parent / "figures")]


def write_figures(data, out_dir) -> list[Path]:
    from reports.study_figures import write_study_figures

    paths = []
    for sweep, recorded in FIGURE_SWEEPS.items():
        runs = data.runs[data.runs["sweep"].isin(recorded)]
        if runs.empty:  # a table built from a store without that sweep: no figures for it
            continue
        epochs = data.epochs[data.epochs["key"].isin(set(runs["key"]))]
        paths += write_study_figures(runs, Path(out_dir) / sweep, epochs=epochs, cost_csv=COST_CSV)
    return paths


def _one_root(roots):
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    if len(roots) != 1:
        from bench.errors import UsageError

        raise UsageError(f"saflex_medmnist builds its table from one results root (got {len(roots)})")
    return roots
