"""fig1_accuracy: the metric per dataset, mean over seeds with 95 % t-CI whiskers, one colour per arm, grouped by upstream."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from reports.figures._common import arm_colors, clip_pct_axis, extras_of, grid, panel_label, yerr
from reports.figures._registry import NoData, register
from reports.load import arm_order, method_label
from reports.tables import arm_stats

# ---- (1) accuracy per dataset, grouped by upstream, one colour per learner arm ----------------
@register("fig1_accuracy")
def fig_accuracy(df: pd.DataFrame, root: Path | None = None, metric: str = "test_acc", **_):
    arms = arm_stats(df, metric)
    extras = extras_of(df)
    cols = ["panel", "task", "upstream", *extras, "learner", "arm", "method", "n",
            f"{metric}_mean", f"{metric}_ci_lo", f"{metric}_ci_hi"]
    arms = arms[arms["n"] > 0]
    if arms.empty:
        raise NoData(f"no run has metrics.{metric}", cols)
    arms = arms.assign(panel=[panel_label(r, extras) for _, r in arms.iterrows()])
    data = arms[cols].reset_index(drop=True)
    order = arm_order(data["arm"].unique())
    colors = arm_colors(df)
    panels = sorted(data["panel"].unique())
    n_up = max(data.groupby("panel")["upstream"].nunique())
    panel_w = max(3.4, 0.8 * n_up + 1.4)
    n_handles = len(order) + 1  # + the n=1 marker
    legend_cols = min(n_handles, 5 if max(len(method_label(a)) for a in order) < 24 else 3)
    fig, axes = grid(len(panels), panel_w, 3.3, ncols_max=3 if panel_w < 5 else 2, min_w=6.0,
                      extra_h=0.6 + 0.22 * math.ceil(n_handles / legend_cols))
    width = 0.7 / len(order)
    any_n1 = False
    for ax, panel in zip(axes, panels):
        d = data[data["panel"] == panel]
        ups = sorted(d["upstream"].unique())
        for j, arm in enumerate(order):
            a = d[d["arm"] == arm]
            if a.empty:
                continue
            x = np.array([ups.index(u) for u in a["upstream"]]) + (j - (len(order) - 1) / 2) * width
            m, lo, hi = (100 * a[f"{metric}{s}"].to_numpy(float) for s in ("_mean", "_ci_lo", "_ci_hi"))
            ok = ~np.isnan(lo)
            if ok.any():
                ax.errorbar(x[ok], m[ok], yerr=yerr(m[ok], lo[ok], hi[ok]), fmt="o", color=colors[arm],
                            capsize=3, ms=5, lw=1.2)
            if (~ok).any():  # hollow marker = single seed, no CI
                any_n1 = True
                ax.plot(x[~ok], m[~ok], "o", ms=5, mfc="white", mec=colors[arm], mew=1.5)
        long = len(ups) > 1 and max(map(len, ups)) > 10  # one tick never collides: keep it level
        ax.set_xticks(range(len(ups)), ups, rotation=20 if long else 0, ha="right" if long else "center",
                      fontsize=8)
        ax.set_xlim(-0.6, len(ups) - 0.4)
        clip_pct_axis(ax)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("upstream augmentation (X)", fontsize=8)
        ax.set_ylabel(f"{metric.replace('_', ' ')} (%)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    handles = [Line2D([], [], color=colors[a], marker="o", ls="", label=method_label(a)) for a in order]
    if any_n1:
        handles.append(Line2D([], [], color="gray", marker="o", mfc="white", ls="", label="n=1 seed (no CI)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(legend_cols, len(handles)), fontsize=8,
               frameon=False)
    fig.suptitle(f"{metric} per dataset: mean over seeds, error bars = 95 % t-CI", fontsize=10)
    return fig, data
