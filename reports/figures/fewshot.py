"""fig6_fewshot (optional: few-shot runs only): accuracy against K per method, CI bands."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from reports.figures._common import ARM_COLORS, X_COLOR, grid
from reports.figures._registry import NoData, register
from reports.load import NONE
from reports.stats import mean_ci

# ---- (6) few-shot: accuracy against K per method, CI bands --------------------------------------
@register("fig6_fewshot", family=True)
def fig_fewshot(df: pd.DataFrame, root: Path | None = None, metric: str = "test_acc", **_):
    """One panel per few-shot dataset: the metric against K (shots per class, log scale), one line per
    method (upstream x arm), mean over seeds with the 95 % t-CI as a band."""
    import re as _re

    cols = ["dataset", "K", "upstream", "arm", "method", "n", f"{metric}_mean", f"{metric}_ci_lo", f"{metric}_ci_hi"]
    pat = _re.compile(r"fewshot/(?P<ds>.+)-k(?P<k>\d+)$")
    few = df[df["task"].astype(str).str.match(pat.pattern)] if "task" in df else df.iloc[:0]
    col = f"metrics.{metric}"
    if few.empty or col not in few.columns:
        raise NoData("no fewshot/* runs loaded", cols)
    rows = []
    for (task, up, arm), g in few.groupby(["task", "upstream", "arm"], sort=True):
        m = pat.match(task)
        ci = mean_ci(g.groupby("seed")[col].mean().dropna())
        rows.append({"dataset": m["ds"], "K": int(m["k"]), "upstream": up, "arm": arm,
                     "method": f"{up}" + ("" if arm == NONE else f"+{arm}"), "n": ci.n,
                     f"{metric}_mean": ci.mean, f"{metric}_ci_lo": ci.lo, f"{metric}_ci_hi": ci.hi})
    data = pd.DataFrame(rows, columns=cols).sort_values(["dataset", "method", "K"]).reset_index(drop=True)
    datasets = sorted(data["dataset"].unique())
    methods = sorted(data["method"].unique())
    palette = [X_COLOR, *ARM_COLORS]
    colors = {m: palette[i % len(palette)] for i, m in enumerate(methods)}
    styles = {u: ls for u, ls in zip(sorted(data["upstream"].unique()), ("-", "--", ":", "-."))}
    fig, axes = grid(len(datasets), 4.2, 3.3, ncols_max=3, extra_h=0.6 + 0.22 * math.ceil(len(methods) / 3))
    for ax, ds in zip(axes, datasets):
        d = data[data["dataset"] == ds]
        for meth, g in d.groupby("method", sort=True):
            k = g["K"].to_numpy()
            mean, lo, hi = (100 * g[f"{metric}{s}"].to_numpy(float) for s in ("_mean", "_ci_lo", "_ci_hi"))
            ax.plot(k, mean, marker="o", ms=4, color=colors[meth], ls=styles.get(g["upstream"].iloc[0], "-"), lw=1.3)
            ok = ~np.isnan(lo)
            if ok.any():
                ax.fill_between(k[ok], np.clip(lo[ok], 0, 100), np.clip(hi[ok], 0, 100), color=colors[meth], alpha=0.15)
        ax.set_xscale("log", base=2)
        ks = sorted(d["K"].unique())
        ax.set_xticks(ks, [str(v) for v in ks], fontsize=8)
        ax.set_title(f"fewshot/{ds}", fontsize=9)
        ax.set_xlabel("K (labelled images per class)", fontsize=8)
        ax.set_ylabel(f"{metric.replace('_', ' ')} (%)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colors[m], ls=styles.get(m.split("+")[0], "-"), marker="o", label=m) for m in methods]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(3, len(handles)), fontsize=8, frameon=False)
    fig.suptitle(f"few-shot: {metric} against K, mean over seeds, band = 95 % t-CI", fontsize=10)
    return fig, data
