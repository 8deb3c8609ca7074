"""The power section: per set, the paired gain X+SAFLEX − X (and − X+ref) averaged over seeds and
upstreams; over sets, the mean with its 95 % t-interval, the sd of the per-set gains, and the half-width
that sd projects for the design's number of sets."""
from __future__ import annotations

import math

import pandas as pd
from scipy import stats

from reports.stats import mean_ci

DESIGN_SETS = 35
METRICS = (("test_acc", "accuracy"), ("test_bacc", "balanced accuracy"), ("test_auc", "AUC"))


def per_set_gains(runs: pd.DataFrame, metric: str, base: str, arm: str = "saflex") -> pd.Series:
    col = f"metrics.{metric}"
    if col not in runs:
        return pd.Series(dtype=float)
    p = runs.pivot_table(index=["task", "upstream", "seed"], columns="arm", values=col)
    if arm not in p or base not in p:
        return pd.Series(dtype=float)
    return (p[arm] - p[base]).dropna().groupby("task").mean()


def projected_half_width(sd: float, n: int = DESIGN_SETS) -> float:
    return float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)) if n > 1 else math.nan


def power_markdown(runs: pd.DataFrame, epochs: pd.DataFrame | None = None) -> str:
    """The power table over the reported seeds (seed 0 is the tuning seed), then reports/selection.py's
    section: accuracy and balanced accuracy side by side, degenerate selections, the rule on seed 0."""
    from reports.paper import selection_section
    from reports.selection import TUNING_SEEDS

    tuning = runs[runs["seed"].isin(TUNING_SEEDS)]
    runs = runs[~runs["seed"].isin(TUNING_SEEDS)]
    n_sets, n_up = runs["task"].nunique(), runs["upstream"].nunique()
    seeds = sorted(int(s) for s in runs["seed"].unique())
    L = ["# PMLB power study: task-clustered gains", "",
         f"{len(runs)} runs: {n_sets} sets x {n_up} upstream(s) x seeds {', '.join(map(str, seeds))} (the design: "
         f"{DESIGN_SETS} sets x 2 upstreams x seeds 1-5, seed 0 for tuning; docs/tabular_power.md).", "",
         "| gain | metric | sets | mean | 95 % CI (over sets) | sd of per-set gains | half-width projected for "
         f"{DESIGN_SETS} sets |", "|---|---|---:|---:|---:|---:|---:|"]
    for base, name in (("none", "X+SAFLEX − X"), ("ref", "X+SAFLEX − X+ref")):
        for m, label in METRICS:
            g = per_set_gains(runs, m, base)
            if g.empty:
                continue
            ci = mean_ci(g)
            L.append(f"| {name} | {label} | {ci.n} | {100 * ci.mean:+.2f} | "
                     + ("n/a" if math.isnan(ci.lo) else f"[{100 * ci.lo:+.2f}, {100 * ci.hi:+.2f}]")
                     + f" | {100 * ci.sd:.2f} | {100 * projected_half_width(ci.sd):.2f} |")
    L += ["", "Points. Per set: the paired gain averaged over seeds and upstreams; the interval is over sets (the "
          "independent units). The projection keeps this sd, so it overstates the full design's width where the sd "
          "is seed noise (the design averages 5 seeds x 2 upstreams per set, this slice fewer).", ""]
    if epochs is not None and "selection.degenerate" in runs:
        both = pd.concat([tuning, runs])
        L += ["#" + line if line.startswith("#") else line
              for line in selection_section(both, both, epochs, "saflex", "X+SAFLEX")]
    return "\n".join(L)
