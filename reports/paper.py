"""A study's main table in a paper's layout: one row per dataset (and upstream, and any other protocol
column that varies), one column per method (X, X+ref, X+<learner>, then the paired gains with their CIs),
for test accuracy and the task's second metric side by side (AUC; balanced accuracy on tabular tasks),
numbers right-aligned. A cell whose arm has degenerate selections (reports/selection.py) carries the
count: `86.0 ± 1.2 ᵈ2` (Markdown) / `$^{d2}$` (LaTeX).

LaTeX through pandas' Styler (booktabs rules, multicolumn metric headers); `latex_document` wraps it in
a minimal standalone document so a test can compile it where pdflatex exists.
"""
from __future__ import annotations

import math

import pandas as pd

from reports.load import NONE, REF, arm_order, experiment_columns, method_label
from reports.selection import DEGENERATE
from reports.stats import mean_ci, paired_diff_ci

ACC = "test_acc"
SECOND_METRIC = {"tabular": "test_bacc"}  # family -> the second metric; every other family: test_auc
METRIC_LABEL = {"test_acc": "accuracy", "test_auc": "AUC", "test_bacc": "balanced accuracy"}


def second_metric(df: pd.DataFrame) -> str | None:
    """The metric reported next to accuracy: balanced accuracy when every run is tabular, else AUC; None
    when the runs do not have it."""
    fams = set(df["family"].dropna()) if "family" in df else set()
    m = SECOND_METRIC.get(next(iter(fams)), "test_auc") if len(fams) == 1 else "test_auc"
    return m if f"metrics.{m}" in df and df[f"metrics.{m}"].notna().any() else None


def metrics_of(df: pd.DataFrame) -> list[str]:
    return [m for m in (ACC, second_metric(df)) if m and f"metrics.{m}" in df]


def _fmt(mean: float, lo: float, hi: float, signed: bool = False, nd: int = 1) -> str:
    if mean is None or math.isnan(mean):
        return "–"
    s = f"{100 * mean:+.{nd}f}" if signed else f"{100 * mean:.{nd}f}"
    if signed:  # a gain: its CI, so a reader sees whether it excludes 0
        return s + ("" if math.isnan(lo) else f" [{100 * lo:+.{nd}f}, {100 * hi:+.{nd}f}]")
    return s + ("" if math.isnan(lo) else f" ± {100 * (hi - lo) / 2:.{nd}f}")


def _per_seed(g: pd.DataFrame, col: str) -> pd.Series:
    return g.groupby("seed")[col].mean().dropna().sort_index() if len(g) else pd.Series(dtype=float)


def _n_degenerate(g: pd.DataFrame) -> int:
    return int((g[DEGENERATE] == 1).sum()) if DEGENERATE in g else 0


def paper_rows(df: pd.DataFrame, metrics: list[str] | None = None, confidence: float = 0.95) -> pd.DataFrame:
    """Long form of the paper table: one row per experiment x column (method or gain) x metric, with
    mean, ci_lo, ci_hi (fractions), n, n_degenerate. Gains are paired by seed against X and X+ref."""
    metrics = metrics or metrics_of(df)
    exp_cols = experiment_columns(df)
    rows = []
    for key, g in df.groupby(exp_cols, dropna=False, sort=True):
        key = dict(zip(exp_cols, key if isinstance(key, tuple) else (key,)))
        arms = arm_order(g["arm"].unique())
        learners = [a for a in arms if a not in (NONE, REF)]
        for m in metrics:
            col = f"metrics.{m}"
            seeds = {a: _per_seed(g[g["arm"] == a], col) for a in arms}
            for a in arms:
                c = mean_ci(seeds[a], confidence)
                rows.append({**key, "metric": m, "column": method_label(a), "kind": "arm", "mean": c.mean,
                             "ci_lo": c.lo, "ci_hi": c.hi, "n": c.n, "n_degenerate": _n_degenerate(g[g["arm"] == a])})
            for a in learners:
                for base in (NONE, REF):
                    if base not in seeds:
                        continue
                    pairs = seeds[base].index.intersection(seeds[a].index).sort_values()
                    c = paired_diff_ci(seeds[base].loc[pairs], seeds[a].loc[pairs], confidence)
                    rows.append({**key, "metric": m, "column": f"Δ {method_label(a)} − {method_label(base)}",
                                 "kind": "gain", "mean": c.mean, "ci_lo": c.lo, "ci_hi": c.hi, "n": c.n,
                                 "n_degenerate": _n_degenerate(g[g["arm"].isin([a, base])])})
    return pd.DataFrame(rows)


def _row_label_cols(long: pd.DataFrame) -> list[str]:
    skip = {"metric", "column", "kind", "mean", "ci_lo", "ci_hi", "n", "n_degenerate"}
    cols = [c for c in long.columns if c not in skip]
    # a column that only follows the task (e.g. its epochs) would repeat the dataset in every row
    return [c for c in cols if c in ("task", "upstream") or (long.groupby("task")[c].nunique(dropna=False) > 1).any()]


def paper_table(df: pd.DataFrame, metrics: list[str] | None = None, confidence: float = 0.95,
                degenerate_mark: str = " ᵈ{n}") -> pd.DataFrame:
    """Datasets (x upstream, x other varying columns) as rows; (metric, method) as columns; cells are
    strings in points. Arms first (X, X+ref, X+<learner>), then the gains; each cell of an arm with
    degenerate selections carries `degenerate_mark`."""
    long = paper_rows(df, metrics, confidence)
    if long.empty:
        return pd.DataFrame()
    long = long.copy()
    # "medmnist/breastmnist" -> "breastmnist", "tabular/pmlb:pima" -> "pima"; other ids stay whole ("digits/sklearn")
    long["task"] = long["task"].map(lambda t: t.split("/", 1)[-1].split(":")[-1] if t.startswith(("medmnist/", "tabular/")) else t)
    label_cols = _row_label_cols(long)
    long["cell"] = [_fmt(r.mean, r.ci_lo, r.ci_hi, signed=r.kind == "gain")
                    + (degenerate_mark.format(n=r.n_degenerate) if r.n_degenerate and r.kind == "arm" else "")
                    for r in long.itertuples()]
    order = list(dict.fromkeys(long.sort_values("kind", kind="stable")["column"]))
    metric_order = list(dict.fromkeys(long["metric"]))
    wide = long.pivot_table(index=label_cols, columns=["metric", "column"], values="cell", aggfunc="first")
    wide = wide.reindex(columns=pd.MultiIndex.from_tuples(
        [(m, c) for m in metric_order for c in order if (m, c) in wide.columns]))
    wide.columns = pd.MultiIndex.from_tuples([(METRIC_LABEL.get(m, m), c) for m, c in wide.columns])
    wide.index.names = [{"task": "dataset"}.get(n, n) for n in wide.index.names]
    return wide.fillna("–")


def degenerate_note(df: pd.DataFrame) -> str:
    if DEGENERATE not in df:
        return "Degenerate selections: not checked (no majority rate for these runs)."
    n, unknown = int((df[DEGENERATE] == 1).sum()), int(df[DEGENERATE].isna().sum())
    return (f"ᵈN: N runs of that arm selected an epoch whose selection-split accuracy is at or below the split's "
            f"majority rate (the model predicts one class there); {n} of {len(df)} runs in all"
            + (f", {unknown} unknown (majority rate not found)" if unknown else "") + ".")


def to_markdown(wide: pd.DataFrame) -> str:
    """Pipe table, two header levels flattened to 'metric: method', numbers right-aligned."""
    if wide.empty:
        return "(no runs)"
    from tabulate import tabulate

    flat = wide.reset_index()
    headers = [c if isinstance(c, str) else (c[0] if not c[1] else f"{c[0]}: {c[1]}") for c in flat.columns]
    n_lab = len(wide.index.names)
    return tabulate(flat.values.tolist(), headers=headers, tablefmt="pipe",
                    colalign=["left"] * n_lab + ["right"] * (len(headers) - n_lab), disable_numparse=True)


def _tex(s: str) -> str:
    from reports.tables import tex_escape

    s = str(s)
    mark = ""
    if " ᵈ" in s:
        s, n = s.split(" ᵈ", 1)
        mark = f"$^{{d{n}}}$"
    return tex_escape(s) + mark


def to_latex(wide: pd.DataFrame, caption: str = "", label: str = "tab:main") -> str:
    """A `table` environment (needs booktabs and multirow): multicolumn metric headers, label columns left-aligned,
    every number column right-aligned."""
    esc = wide.copy()
    esc = esc.map(_tex)
    esc.columns = pd.MultiIndex.from_tuples([(_tex(a), _tex(b)) for a, b in esc.columns])
    esc.index = esc.index.set_names([_tex(n) for n in esc.index.names])
    esc.index = (pd.MultiIndex.from_tuples([tuple(_tex(v) for v in t) for t in esc.index], names=esc.index.names)
                 if isinstance(esc.index, pd.MultiIndex) else esc.index.map(_tex))
    fmt = "l" * esc.index.nlevels + "r" * len(esc.columns)
    return esc.style.to_latex(column_format=fmt, hrules=True, multicol_align="c", position="t",
                              caption=_tex(caption) if caption else None, label=label, position_float="centering",
                              environment="table")


def latex_document(body: str) -> str:
    return ("\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{booktabs,multirow}\n"
            "\\usepackage[margin=1cm,landscape]{geometry}\n\\begin{document}\n\\tiny\n" + body + "\n\\end{document}\n")
