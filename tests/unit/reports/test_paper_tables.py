"""reports/paper.py: datasets as rows, methods as columns, acc and the task's second metric side by side,
gains paired by seed with CIs, degenerate selections marked, LaTeX that compiles (or is well formed)."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from reports.paper import latex_document, paper_rows, paper_table, second_metric, to_latex, to_markdown
from reports.selection import DEGENERATE

ARMS = {"none": 0.0, "ref": 0.01, "saflex": 0.03}


def runs(family="medmnist", tasks=("medmnist/breastmnist", "medmnist/retinamnist")):
    rng = np.random.default_rng(0)
    rows = []
    for task in tasks:
        for up in ("cutmix-a1.0", "rand-m9-n2"):
            for seed in (1, 2, 3):
                base = 0.7 + 0.02 * seed  # a seed effect the pairing must remove
                for arm, gain in ARMS.items():
                    rows.append({"task": task, "upstream": up, "family": family, "dataset": task.split("/")[-1],
                                 "arm": arm, "learner": arm, "method": up + ("" if arm == "none" else f"+{arm}"),
                                 "seed": seed, "metrics.test_acc": base + gain + 0.001 * rng.standard_normal(),
                                 "metrics.test_auc": base + 0.1 - gain, "metrics.test_bacc": base - 0.1,
                                 DEGENERATE: float(task.endswith("retinamnist") and up == "rand-m9-n2"
                                                   and arm == "saflex" and seed == 2)})
    return pd.DataFrame(rows)


def test_rows_are_datasets_x_upstreams_and_columns_methods_then_gains():
    w = paper_table(runs())
    assert list(w.index.names) == ["dataset", "upstream"] and len(w) == 4
    assert list(w.columns.get_level_values(0).unique()) == ["accuracy", "AUC"]
    assert list(w["accuracy"].columns) == ["X", "X+ref", "X+saflex", "Δ X+saflex − X", "Δ X+saflex − X+ref"]


def test_gains_are_paired_by_seed():
    long = paper_rows(runs())
    g = long[(long["column"] == "Δ X+saflex − X") & (long["metric"] == "test_acc")]
    # unpaired, the seed effect (+-2 points) would widen the CI far beyond the 0.1-point noise
    assert np.allclose(g["mean"], 0.03, atol=0.003) and ((g["ci_hi"] - g["ci_lo"]) < 0.01).all()
    a = long[(long["column"] == "Δ X+saflex − X") & (long["metric"] == "test_auc")]
    assert np.allclose(a["mean"], -0.03)  # the AUC gain has its own sign: acc and AUC are not mixed up


def test_degenerate_selections_are_marked_on_their_arm_only():
    w = paper_table(runs())
    row = w.loc[("retinamnist", "rand-m9-n2")]
    assert row[("accuracy", "X+saflex")].endswith("ᵈ1") and row[("AUC", "X+saflex")].endswith("ᵈ1")
    others = w.drop(index=("retinamnist", "rand-m9-n2"))
    assert not others.apply(lambda c: c.str.contains("ᵈ")).any().any()
    assert "ᵈ" not in row[("accuracy", "X")] and "ᵈ" not in row[("accuracy", "Δ X+saflex − X")]


def test_tabular_reports_balanced_accuracy_next_to_accuracy():
    df = runs("tabular", ("tabular/pmlb:pima",))
    assert second_metric(df) == "test_bacc"
    assert list(paper_table(df).columns.get_level_values(0).unique()) == ["accuracy", "balanced accuracy"]
    assert second_metric(runs()) == "test_auc"


def test_markdown_right_aligns_numbers():
    md = to_markdown(paper_table(runs())).splitlines()
    sep = [c.strip() for c in md[1].strip("|").split("|")]
    assert all(c.startswith(":") and not c.endswith(":") for c in sep[:2])  # dataset, upstream
    assert all(c.endswith(":") and not c.startswith(":") for c in sep[2:])


def _body_rows(tex: str) -> list[str]:
    body = tex.split("\\midrule", 1)[1].split("\\bottomrule", 1)[0]
    return [r for r in body.strip().split("\\\\") if r.strip()]


def test_latex_is_well_formed():
    w = paper_table(runs())
    tex = to_latex(w, caption="Test accuracy & AUC (points)", label="tab:t")
    fmt = re.search(r"\\begin\{tabular\}\{([lr]+)\}", tex).group(1)
    assert fmt == "ll" + "r" * w.shape[1]  # labels left, every number right
    assert tex.count("\\begin{table}") == tex.count("\\end{table}") == 1 and "\\toprule" in tex and "\\bottomrule" in tex
    assert all(r.count("&") == len(fmt) - 1 for r in _body_rows(tex))
    header = tex.split("\\toprule", 1)[1].split("\\midrule", 1)[0]
    spans = [int(n) for n in re.findall(r"\\multicolumn\{(\d+)\}", header)]
    assert sum(spans) == w.shape[1]
    assert "$\\pm$" in tex and "$^{d1}$" in tex and "Test accuracy \\& AUC" in tex and "±" not in tex


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no pdflatex on this machine: structure checked above")
def test_latex_compiles(tmp_path):
    doc = tmp_path / "t.tex"
    doc.write_text(latex_document(to_latex(paper_table(runs()), caption="c")))
    r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:]


def test_comparison_table_counts_and_flags_degenerate_selections():
    from reports.tables import comparison_table, display_table

    df = runs()
    df["learner_cfg"] = ""
    t = comparison_table(df).set_index(["task", "upstream", "arm"])
    hit = t.loc[("medmnist/retinamnist", "rand-m9-n2", "saflex")]
    assert hit["n_degenerate_arm"] == 1 and hit["n_degenerate_none"] == 0 and "degenerate" in hit["flags"]
    assert not t.drop(index=("medmnist/retinamnist", "rand-m9-n2", "saflex"))["flags"].str.contains("degenerate").any()
    assert "degenerate (X/arm)" in display_table(comparison_table(df)).columns
    t0 = comparison_table(df.drop(columns=DEGENERATE))  # not checked: no column, no flag
    assert "degenerate (X/arm)" not in display_table(t0).columns and not t0["flags"].str.contains("degenerate").any()


def test_medmnist_study_ships_its_main_table_as_latex(tmp_path):
    from pathlib import Path

    from reports.study_loader import load_study

    repo = Path(__file__).resolve().parents[3]
    study = load_study("saflex_medmnist", repo / "studies")
    study.write_report(None, tmp_path / "report.md")
    tex = (tmp_path / "main_table.tex").read_text()
    assert tex == (study.HERE / "main_table.tex").read_text()
    assert re.search(r"\\begin\{tabular\}\{llr+\}", tex) and "X+ref" in tex and "AUC" in tex
