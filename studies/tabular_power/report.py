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


def headline(runs: pd.DataFrame, target: float = 0.01) -> list[str]:
    """What the design decides about a gain of `target` (+1 point): per metric, whether the interval is
    narrow enough (half-width <= target) and whether it excludes 0 and +target."""
    L = ["**What the design decides** (X+SAFLEX − X; the paper reports ~+1 point on average):", ""]
    for m, label in METRICS:
        g = per_set_gains(runs, m, "none")
        if len(g) < 2:
            continue
        ci = mean_ci(g)
        hw = (ci.hi - ci.lo) / 2
        where = ("excludes both 0 and +1 point: a loss" if ci.hi < 0 else "excludes +1 point, not 0" if ci.hi < target
                 else "excludes 0: a gain" if ci.lo > 0 else "includes 0")
        L.append(f"- {label}: {100 * ci.mean:+.2f} [{100 * ci.lo:+.2f}, {100 * ci.hi:+.2f}], half-width {100 * hw:.2f} "
                 f"({'<=' if hw <= target else '>'} 1 point); the interval {where}.")
    return L + [""]


def per_upstream(runs: pd.DataFrame) -> list[str]:
    """The same task-clustered gain over X, per upstream (each a mean over sets of the seed-averaged pairs)."""
    ups = sorted(runs["upstream"].dropna().unique()) if "upstream" in runs else []
    if len(ups) < 2:
        return []
    L = ["Per upstream (X+SAFLEX − X, mean [95 % CI over sets]):", "",
         "| upstream | " + " | ".join(label for _, label in METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
    for u in ups:
        cells = []
        for m, _ in METRICS:
            g = per_set_gains(runs[runs["upstream"] == u], m, "none")
            ci = mean_ci(g) if len(g) > 1 else None
            cells.append("n/a" if ci is None else f"{100 * ci.mean:+.2f} [{100 * ci.lo:+.2f}, {100 * ci.hi:+.2f}]")
        L.append(f"| {u} | " + " | ".join(cells) + " |")
    return L + [""]


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
         "| gain | metric | sets | mean | 95 % CI (over sets) | half-width | sd of per-set gains | half-width projected "
         f"for {DESIGN_SETS} sets |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for base, name in (("none", "X+SAFLEX − X"), ("ref", "X+SAFLEX − X+ref")):
        for m, label in METRICS:
            g = per_set_gains(runs, m, base)
            if g.empty:
                continue
            ci = mean_ci(g)
            L.append(f"| {name} | {label} | {ci.n} | {100 * ci.mean:+.2f} | "
                     + ("n/a" if math.isnan(ci.lo) else f"[{100 * ci.lo:+.2f}, {100 * ci.hi:+.2f}]")
                     + f" | {100 * (ci.hi - ci.lo) / 2:.2f} | {100 * ci.sd:.2f} | {100 * projected_half_width(ci.sd):.2f} |")
    full = n_sets == DESIGN_SETS and n_up == 2 and len(seeds) == 5
    L += ["", "Points. Per set: the paired gain averaged over seeds and upstreams; the interval is over sets (the "
          "independent units). " + ("This is the full design, so the projection equals the half-width." if full else
          "The projection keeps this sd, so it overstates the full design's width where the sd is seed noise (the "
          "design averages 5 seeds x 2 upstreams per set, this slice fewer)."), ""]
    L += headline(runs)
    L += per_upstream(runs)
    if epochs is not None and "selection.degenerate" in runs:
        both = pd.concat([tuning, runs])
        L += ["#" + line if line.startswith("#") else line
              for line in selection_section(both, both, epochs, "saflex", "X+SAFLEX")]
    return "\n".join(L)
