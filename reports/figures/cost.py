"""fig4_cost (optional): each learner's step time over X's, from side-by-side timings only.

The runs' own cost records cannot give a learner's overhead: they were timed separately, under other
load. This figure draws what `benchmarks/bench_saflex_overhead.py --csv FILE` measures (X and every
learner arm alternating steps on the same batches in one process): FILE is `--cost-csv`, or
`<results>/benchmarks/side_by_side_cost.csv`. Without it, no figure (and `figures` says so)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from reports.figures._common import ARM_COLORS
from reports.figures._registry import NoData, register

DEFAULT_CSV = Path("benchmarks") / "side_by_side_cost.csv"
COLUMNS = ["task", "upstream", "arm", "x_ms", "arm_ms", "ratio"]


def side_by_side_csv(root: Path | None, cost_csv: str | Path | None) -> Path | None:
    if cost_csv:
        return Path(cost_csv)
    p = Path(root) / DEFAULT_CSV if root is not None else None
    return p if p is not None and p.is_file() else None


@register("fig4_cost", family=True)
def fig_cost(df: pd.DataFrame, root: Path | None = None, metric: str = "test_acc", cost_csv=None, **_):
    path = side_by_side_csv(root, cost_csv)
    if path is None or not path.is_file():
        raise NoData("no side-by-side timing (benchmarks/bench_saflex_overhead.py --csv "
                     "<results>/benchmarks/side_by_side_cost.csv, or --cost-csv FILE); separately timed runs "
                     "give no overhead", COLUMNS)
    data = pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in data.columns]
    if missing:
        raise NoData(f"{path.name} lacks columns {', '.join(missing)}", COLUMNS)
    tasks = sorted(data["task"].unique())
    arms = list(dict.fromkeys(data["arm"]))
    width = 0.8 / max(1, len(tasks))
    fig = Figure(figsize=(max(6.0, 0.9 * len(arms) + 2.0), 3.6), layout="constrained")
    ax = fig.add_subplot()
    top = 1.0
    for i, task in enumerate(tasks):
        d = data[data["task"] == task].set_index("arm").reindex(arms)
        x = np.arange(len(arms)) + (i - (len(tasks) - 1) / 2) * width
        r = d["ratio"].to_numpy(float)
        ax.bar(x, r, width=width * 0.9, color=ARM_COLORS[i % len(ARM_COLORS)], alpha=0.85, label=task)
        for xi, ri in zip(x, r):
            if not math.isnan(ri):
                ax.annotate(f"{ri:.2f}", (xi, ri), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=6)
        top = max(top, float(np.nanmax(r)))
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.set_xticks(range(len(arms)), [f"X+{a}" for a in arms], fontsize=8, rotation=15 if len(arms) > 4 else 0)
    ax.set_ylabel("mean step time  X+LEARNER / X", fontsize=8)
    ax.set_ylim(0, top * 1.15)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, frameon=False, ncols=min(3, len(tasks)), loc="upper left")
    meta = data.iloc[0]
    extra = ", ".join(f"{k} {meta[k]}" for k in ("upstream", "model", "device", "threads", "steps") if k in data)
    fig.suptitle(f"Learner cost: step time over X's, measured side by side in one process\n({extra})", fontsize=9)
    return fig, data
