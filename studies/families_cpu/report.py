"""The families section: per family (natural, few-shot, OOD) and over all tasks, the task-clustered paired
gains of X+SAFLEX over X and over X+ref, in accuracy and AUC; then reports/paper.py's selection section
(the rule chosen on seed 0, accuracy and AUC side by side, degenerate selections per arm)."""
from __future__ import annotations

import math

import pandas as pd

FAMILIES = (("natural", "natural images"), ("fewshot", "few-shot"), ("ood", "out-of-distribution"))
METRICS = (("test_acc", "accuracy"), ("test_auc", "AUC"))
COMPARISONS = (("none", "X+SAFLEX − X"), ("ref", "X+SAFLEX − X+ref"))


def _ci_cell(ci) -> str:
    if ci.n == 0:
        return "n/a"
    if math.isnan(ci.lo):
        return f"{100 * ci.mean:+.2f} (1 task: no interval)"
    return f"{100 * ci.mean:+.2f} [{100 * ci.lo:+.2f}, {100 * ci.hi:+.2f}]"


def gains_table(runs: pd.DataFrame) -> list[str]:
    """Rows: family (then all); columns: each comparison x metric, mean [95 % CI over tasks]; seed-paired."""
    from reports.selection import clustered_gain

    fam = runs["task"].str.split("/").str[0]
    groups = [(label, runs[fam == f]) for f, label in FAMILIES if (fam == f).any()] + [("all tasks", runs)]
    head = [f"{name}: {label}" for _, name in COMPARISONS for _, label in METRICS]
    L = ["| family | tasks | seed pairs | " + " | ".join(head) + " |", "|---|---:|---:|" + "---:|" * len(head)]
    for label, g in groups:
        cells, pairs = [], 0
        for base, _ in COMPARISONS:
            for m, _ in METRICS:
                ci, used, _ = clustered_gain(g, "saflex", base, m)
                cells.append(_ci_cell(ci))
                pairs = max(pairs, used)
        L.append(f"| {label} | {g['task'].nunique()} | {pairs} | " + " | ".join(cells) + " |")
    return L


def families_markdown(runs: pd.DataFrame, epochs: pd.DataFrame | None = None) -> str:
    from reports.paper import selection_section
    from reports.selection import TUNING_SEEDS

    reported = runs[~runs["seed"].isin(TUNING_SEEDS)]
    seeds = sorted(int(s) for s in reported["seed"].unique())
    L = ["# Natural, few-shot and OOD at CPU scale: task-clustered gains", "",
         f"{len(reported)} reported runs ({reported['task'].nunique()} tasks, seeds {', '.join(map(str, seeds)) or 'none'}); "
         f"{len(runs) - len(reported)} runs of the tuning seed choose the selection rule and appear in no gain.", ""]
    if len(reported):
        L += gains_table(reported)
        L += ["", "Points. Per task: the paired (by seed) gain, averaged over the task's upstreams; the interval is "
              "a 95 % t-interval over the family's tasks (the independent units), so a family of 1-2 tasks has "
              "no or a very wide interval. AUC: one-vs-rest macro AUC on the test split.", ""]
    if epochs is not None and "selection.degenerate" in runs:
        L += ["#" + line if line.startswith("#") else line
              for line in selection_section(runs, runs, epochs, "saflex", "X+SAFLEX")]
    return "\n".join(L)
