"""Shared by the figure modules: one colour per arm in every figure, panel grids, CI whiskers."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from reports.load import NONE, arm_order, experiment_columns

DPI = 150
X_COLOR = "#4C72B0"
ARM_COLORS = ["#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD"]
CLEAN_COLOR, CORRUPT_COLOR = "#4C72B0", "#C44E52"


def extras_of(df: pd.DataFrame) -> list[str]:
    return [c for c in experiment_columns(df) if c not in ("task", "upstream")]


def panel_label(r: pd.Series | dict, extras: list[str]) -> str:
    """Task plus any varying protocol column, e.g. 'medmnist/breastmnist (model=cnn)'."""
    ext = ", ".join(f"{c}={r[c]}" for c in extras)
    return f"{r['task']} ({ext})" if ext else str(r["task"])


def arm_colors(df: pd.DataFrame) -> dict[str, str]:
    """One colour per arm of the whole frame (X blue, then the learners' arms in `arm_order`), so
    an arm has the same colour in every figure."""
    arms = [a for a in arm_order(df["arm"].unique()) if a != NONE]
    return {NONE: X_COLOR, **{a: ARM_COLORS[i % len(ARM_COLORS)] for i, a in enumerate(arms)}}


def grid(n: int, panel_w: float, panel_h: float, ncols_max: int = 3, min_w: float = 0.0, extra_h: float = 0.6):
    ncols = max(1, min(ncols_max, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(max(min_w, panel_w * ncols + 0.5), panel_h * nrows + extra_h), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def val_metric(metric: str) -> str:
    # test_acc -> val_acc: learning curves follow the table's metric on the validation split.
    return "val_" + metric.split("_", 1)[1] if metric.startswith("test_") else metric


def run_dir(r: pd.Series, root: Path | None) -> Path | None:
    if root is not None and (Path(root) / "runs" / str(r["key"])).is_dir():
        return Path(root) / "runs" / str(r["key"])
    rd = r.get("run_dir")
    return Path(rd) if isinstance(rd, str) and rd else None


def clip_pct_axis(ax) -> None:
    """A t-CI over few seeds can pass 0 or 100 %: let whiskers/bands run off the axis rather than
    stretch it beyond what an accuracy can be."""
    lo, hi = ax.get_ylim()
    ax.set_ylim(max(lo, -0.5), min(hi, 100.5))


def yerr(mean: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    # NaN CI (n<2) -> no whisker rather than a fake zero-width one
    return np.nan_to_num(np.vstack([mean - lo, hi - mean]), nan=0.0)


