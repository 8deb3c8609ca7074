"""fig5_learning_curves: the validation metric against epoch, one panel per dataset and arm group (a
learner with all its knob settings), X in every panel for reference. A curve is the mean over seeds
of the seed's mean over the upstreams the group ran on (X over the same upstreams); band = 95 % t-CI
over seeds. A few curves per panel instead of every arm of every upstream in one.

The per-epoch values come from the run folders (metrics.jsonl), or from `epochs=`: a frame with one row
per run and logged epoch (`key`, `epoch`, the logged values), as a study table keeps it
(reports/study_table.py); both give the same figure."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bench.results import read_metrics
from reports.figures._common import arm_colors, clip_pct_axis, extras_of, panel_label, run_dir, val_metric
from reports.figures._registry import NoData, register
from reports.load import NONE, arm_order, method_label
from reports.stats import mean_ci


def _logged(r: pd.Series, root: Path | None, by_key: dict | None):
    if by_key is not None:  # a study table's epochs frame: its rows of this run
        e = by_key.get(r["key"])
        return () if e is None else e.to_dict("records")
    d = run_dir(r, root)
    return read_metrics(d) if d else ()  # bench.results: the one metrics.jsonl reader


def _points(df: pd.DataFrame, root: Path | None, vm: str, epochs: pd.DataFrame | None = None) -> pd.DataFrame:
    extras = extras_of(df)
    by_key = None if epochs is None else dict(tuple(epochs.groupby("key", sort=False)))
    pts = []
    for _, r in df.iterrows():
        for row in _logged(r, root, by_key):
            if "epoch" in row and row.get(vm) is not None and not pd.isna(row[vm]):
                pts.append({"panel": panel_label(r, extras), "upstream": r["upstream"], "learner": r["learner"],
                            "arm": r["arm"], "seed": r["seed"], "epoch": int(row["epoch"]), "value": float(row[vm])})
    return pd.DataFrame(pts)


def curve_data(df: pd.DataFrame, root: Path | None, metric: str, epochs: pd.DataFrame | None = None) -> pd.DataFrame:
    vm = val_metric(metric)
    cols = ["panel", "group", "arm", "epoch", "n", "upstreams", f"{vm}_mean", f"{vm}_ci_lo", f"{vm}_ci_hi"]
    p = _points(df, root, vm, epochs)
    if p.empty:
        why = (f"the epochs frame has no '{vm}' for these runs" if epochs is not None else
               "runs loaded from wandb carry no run files (metrics.jsonl) and the local store has none"
               if "run_dir" not in df or df["run_dir"].isna().all() else f"no metrics.jsonl with '{vm}' in the run dirs")
        raise NoData(why, cols)
    rows = []
    for (panel, group), g in p[p["learner"] != NONE].groupby(["panel", "learner"], sort=True):
        ups = sorted(g["upstream"].unique())
        x = p[(p["panel"] == panel) & (p["learner"] == NONE) & p["upstream"].isin(ups)]
        for arm, a in [(NONE, x), *g.groupby("arm", sort=True)]:
            for epoch, e in a.groupby("epoch", sort=True):
                ci = mean_ci(e.groupby("seed")["value"].mean())  # per seed: mean over the upstreams
                rows.append({"panel": panel, "group": group, "arm": arm, "epoch": epoch, "n": ci.n,
                             "upstreams": ",".join(sorted(e["upstream"].unique())),
                             f"{vm}_mean": ci.mean, f"{vm}_ci_lo": ci.lo, f"{vm}_ci_hi": ci.hi})
    if not rows:
        raise NoData("no learner's runs besides X have curves", cols)
    return pd.DataFrame(rows, columns=cols)


@register("fig5_learning_curves")
def fig_learning_curves(df: pd.DataFrame, root: Path | None = None, metric: str = "test_acc",
                        epochs: pd.DataFrame | None = None, **_):
    vm = val_metric(metric)
    data = curve_data(df, root, metric, epochs)
    panels = sorted(data["panel"].unique())
    groups = arm_order(data["group"].unique())
    colors = arm_colors(df)
    fig = Figure(figsize=(0.7 + 2.5 * len(groups), 0.9 + 2.1 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), len(groups), squeeze=False)  # datasets may run different epochs
    handles: dict[str, object] = {}
    for i, panel in enumerate(panels):
        for j, group in enumerate(groups):
            ax = axes[i][j]
            d = data[(data["panel"] == panel) & (data["group"] == group)]
            if d.empty:
                ax.set_axis_off()
                continue
            for arm in arm_order(d["arm"].unique()):
                c = d[d["arm"] == arm]
                x = c["epoch"].to_numpy()
                m, lo, hi = (100 * c[f"{vm}{s}"].to_numpy(float) for s in ("_mean", "_ci_lo", "_ci_hi"))
                (line,) = ax.plot(x, m, ls="-" if arm == NONE else "--", color=colors[arm], lw=1.3,
                                  label=method_label(arm))
                handles.setdefault(arm, line)
                if np.isfinite(lo).any():
                    ax.fill_between(x, np.clip(lo, 0, 100), np.clip(hi, 0, 100), color=colors[arm], alpha=0.12, lw=0)
            clip_pct_axis(ax)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            ups = d["upstreams"].iloc[0].split(",")
            up_s = ", ".join(ups) if len(ups) <= 2 else f"mean of {len(ups)} upstreams"
            ax.text(0.98, 0.03, up_s, transform=ax.transAxes, ha="right", va="bottom", fontsize=6, color="dimgray")
            if i == 0:
                ax.set_title(group, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{panel.split('/', 1)[-1]}\n{vm.replace('_', ' ')} (%)", fontsize=7)
            ax.set_xlabel("epoch", fontsize=7)
    arms = arm_order(handles)
    longest = max(len(method_label(a)) for a in arms)
    fig.legend(handles=[handles[a] for a in arms], loc="outside lower center", fontsize=7, frameon=False,
               ncols=min(len(arms), 4 if longest < 30 else 2))
    fig.suptitle(f"Learning curves: {vm}, mean over seeds, band = 95 % t-CI", fontsize=9)
    return fig, data
