"""fig2_forest: paired gains over X as a forest plot, one panel per comparison (arm vs X), one row per
experiment (the same rows in every panel), 95 % t-CI bars, and the average over experiments at the
bottom (a diamond spanning its t-CI over experiments)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from reports.figures._common import arm_colors, extras_of, grid, panel_label
from reports.figures._registry import NoData, register
from reports.load import arm_order, method_label
from reports.tables import average_gain, comparison_table

AVERAGE = "average over experiments"


def forest_data(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (arm, experiment) with its paired gain and CI, then one AVERAGE row per arm."""
    table = comparison_table(df, metric)
    extras = extras_of(df)
    g = f"gain_{metric}"
    cols = ["arm", "row", "kind", "task", "upstream", *extras, "n", "gain_mean", "gain_ci_lo", "gain_ci_hi"]
    t = table[table[f"{g}_mean"].notna()]
    if t.empty:
        raise NoData("no experiment has X and a learner's arm (X+LEARNER) on a common seed", cols)
    t = t.assign(row=[f"{panel_label(r, extras).split('/', 1)[-1]} · {r['upstream']}" for _, r in t.iterrows()],
                 kind="experiment", n=t["n_pairs"], gain_mean=t[f"{g}_mean"], gain_ci_lo=t[f"{g}_ci_lo"],
                 gain_ci_hi=t[f"{g}_ci_hi"])
    avg = average_gain(table, metric)
    a = f"avg_gain_{metric}"
    avg = avg[avg["n_experiments"] > 0].assign(row=AVERAGE, kind="average", task="", upstream="",
                                               n=avg["n_experiments"], gain_mean=avg[a],
                                               gain_ci_lo=avg[f"{a}_ci_lo"], gain_ci_hi=avg[f"{a}_ci_hi"])
    for c in extras:
        avg[c] = ""
    out = pd.concat([t[cols], avg[cols]], ignore_index=True)
    order = {arm: i for i, arm in enumerate(arm_order(out["arm"].unique()))}
    return (out.assign(_a=out["arm"].map(order), _k=(out["kind"] == "average").astype(int))
            .sort_values(["_a", "_k", "task", "upstream"], kind="stable").drop(columns=["_a", "_k"])
            .reset_index(drop=True))


@register("fig2_forest")
def fig_forest(df: pd.DataFrame, root: Path | None = None, metric: str = "test_acc", **_):
    data = forest_data(df, metric)
    arms = arm_order(data["arm"].unique())
    rows = list(dict.fromkeys(data.loc[data["kind"] == "experiment"].sort_values(["task", "upstream"])["row"]))
    colors = arm_colors(df)
    n = len(rows) + 1  # + the average, below a gap
    y_of = {r: i for i, r in enumerate(rows)}
    y_avg = len(rows) + 0.6
    longest = max(map(len, rows + [AVERAGE]))
    ncols = 2 if len(arms) == 4 else min(3, len(arms))
    fig, axes = grid(len(arms), 3.0, 0.6 + 0.26 * n, ncols_max=ncols, min_w=0.0, extra_h=0.9)
    fig.set_figwidth(3.0 * ncols + 0.07 * longest)
    # the scale follows the experiments' CIs: an average over 2-3 experiments has a t-CI far wider than
    # any of them; its diamond then runs off the panel and the label gives its ends
    exp = data[data["kind"] == "experiment"]
    ends = 100 * pd.concat([exp["gain_ci_lo"], exp["gain_ci_hi"], data["gain_mean"]]).astype(float)
    lo_x, hi_x = float(np.nanmin(ends)), float(np.nanmax(ends))
    pad = 0.06 * max(hi_x - lo_x, 1.0)
    xlim = (min(lo_x, 0.0) - pad, max(hi_x, 0.0) + pad)
    for k, (ax, arm) in enumerate(zip(axes, arms)):
        d = data[data["arm"] == arm]
        e = d[d["kind"] == "experiment"]
        y = e["row"].map(y_of).to_numpy(float)
        m, lo, hi = (100 * e[c].to_numpy(float) for c in ("gain_mean", "gain_ci_lo", "gain_ci_hi"))
        ok = ~np.isnan(lo)
        ax.hlines(y[ok], lo[ok], hi[ok], color=colors[arm], lw=1.4)
        ax.plot(m[ok], y[ok], "s", color=colors[arm], ms=4.5)
        ax.plot(m[~ok], y[~ok], "s", mfc="white", mec=colors[arm], ms=4.5)  # n=1: no CI
        av = d[d["kind"] == "average"]
        if len(av):
            am, alo, ahi = (100 * float(av[c].iloc[0]) for c in ("gain_mean", "gain_ci_lo", "gain_ci_hi"))
            if math.isnan(alo):
                ax.plot([am], [y_avg], "D", color="black", ms=6)
            else:
                ax.fill([alo, am, ahi, am], [y_avg, y_avg - 0.26, y_avg, y_avg + 0.26], color="black")
            ci = "" if math.isnan(alo) else f" [{alo:+.1f}, {ahi:+.1f}]"
            # on the side of the panel away from the diamond, so the label never covers it
            left = (am - xlim[0]) / (xlim[1] - xlim[0]) > 0.5
            ax.text(0.01 if left else 0.99, y_avg - 0.53, f"{am:+.1f}{ci}", transform=ax.get_yaxis_transform(),
                    ha="left" if left else "right", va="center", fontsize=7)  # x: axes, y: data
        ax.axvline(0, color="gray", lw=0.8, ls="--")
        ax.axhline(len(rows) - 0.2, color="lightgray", lw=0.6)  # experiments above, their average below
        ax.set_ylim(y_avg + 0.8, -0.8)
        ax.set_yticks([*range(len(rows)), y_avg], [*rows, AVERAGE])
        ax.tick_params(axis="y", labelsize=7, length=0, labelleft=k % ncols == 0)
        ax.set_xlim(*xlim)  # one scale in every panel: gains compare across comparisons
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(f"{method_label(arm)} − X", fontsize=8)
        ax.set_xlabel(f"gain in {metric} (points)", fontsize=7)
    handles = [Line2D([], [], color="black", marker="s", ls="-", label="paired gain, 95 % t-CI over seeds"),
               Line2D([], [], color="black", marker="D", ls="", label="average over experiments, t-CI over experiments")]
    if data.loc[data["kind"] == "experiment", "gain_ci_lo"].isna().any():
        handles.append(Line2D([], [], color="black", marker="s", mfc="white", ls="", label="one common seed: no CI"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=7, frameon=False)
    fig.suptitle(f"Paired gain over X in {metric}, per experiment", fontsize=9)
    return fig, data
