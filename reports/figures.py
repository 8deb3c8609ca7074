"""The paper's figures, regenerated from the results frame, for any number of learner arms (X = the
`none` learner, X+saflex, X+ref, ...; one colour per arm, the same in every figure).

Each figure is a function ``(df, root, metric) -> (matplotlib Figure, DataFrame it plots)``
registered in FIGURES under its file stem; adding a figure = one function + ``@register``.
A figure without data raises NoData(why, columns): `write_figures` then writes a placeholder
PNG/PDF saying so and a header-only CSV instead of failing.

Uses matplotlib's object API (``Figure()``, no pyplot): no global state, no GUI backend; saving
renders with Agg (PNG) / the PDF backend.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from bench.results import read_metrics
from reports.load import NONE, arm_order, experiment_columns, method_label
from reports.stats import mean_ci, roc_auc
from reports.tables import arm_stats, average_gain, comparison_table

FigureFn = Callable[..., "tuple[Figure, pd.DataFrame]"]
FIGURES: dict[str, FigureFn] = {}
FAMILY_FIGURES: set[str] = set()  # drawn only where their family's runs are loaded (no placeholder)
DPI = 150
X_COLOR = "#4C72B0"
ARM_COLORS = ["#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD"]
CLEAN_COLOR, CORRUPT_COLOR = "#4C72B0", "#C44E52"


class NoData(Exception):
    def __init__(self, why: str, columns: list[str] | None = None):
        super().__init__(why)
        self.why = why
        self.columns = columns or []


def register(name: str, family: bool = False) -> Callable[[FigureFn], FigureFn]:
    def deco(fn: FigureFn) -> FigureFn:
        FIGURES[name] = fn
        if family:
            FAMILY_FIGURES.add(name)
        return fn

    return deco


# ---- helpers ----------------------------------------------------------------------------------
def _extras(df: pd.DataFrame) -> list[str]:
    return [c for c in experiment_columns(df) if c not in ("task", "upstream")]


def _panel_label(r: pd.Series | dict, extras: list[str]) -> str:
    """Task plus any varying protocol column, e.g. 'medmnist/breastmnist (model=cnn)'."""
    ext = ", ".join(f"{c}={r[c]}" for c in extras)
    return f"{r['task']} ({ext})" if ext else str(r["task"])


def arm_colors(df: pd.DataFrame) -> dict[str, str]:
    """One colour per arm of the whole frame (X blue, then the learners' arms in `arm_order`), so
    an arm has the same colour in every figure."""
    arms = [a for a in arm_order(df["arm"].unique()) if a != NONE]
    return {NONE: X_COLOR, **{a: ARM_COLORS[i % len(ARM_COLORS)] for i, a in enumerate(arms)}}


def _grid(n: int, panel_w: float, panel_h: float, ncols_max: int = 3, min_w: float = 0.0, extra_h: float = 0.6):
    ncols = max(1, min(ncols_max, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(max(min_w, panel_w * ncols + 0.5), panel_h * nrows + extra_h), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _val_metric(metric: str) -> str:
    # test_acc -> val_acc: learning curves follow the table's metric on the validation split.
    return "val_" + metric.split("_", 1)[1] if metric.startswith("test_") else metric


def _run_dir(r: pd.Series, root: Path | None) -> Path | None:
    if root is not None and (Path(root) / "runs" / str(r["key"])).is_dir():
        return Path(root) / "runs" / str(r["key"])
    rd = r.get("run_dir")
    return Path(rd) if isinstance(rd, str) and rd else None


def _clip_pct_axis(ax) -> None:
    """A t-CI over few seeds can pass 0 or 100 %: let whiskers/bands run off the axis rather than
    stretch it beyond what an accuracy can be."""
    lo, hi = ax.get_ylim()
    ax.set_ylim(max(lo, -0.5), min(hi, 100.5))


def _yerr(mean: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    # NaN CI (n<2) -> no whisker rather than a fake zero-width one
    return np.nan_to_num(np.vstack([mean - lo, hi - mean]), nan=0.0)


# ---- (1) accuracy per dataset, grouped by upstream, one colour per learner arm ----------------
@register("fig1_accuracy")
def fig_accuracy(df: pd.DataFrame, root: Path | None = None, metric: str = "test_acc"):
    arms = arm_stats(df, metric)
    extras = _extras(df)
    cols = ["panel", "task", "upstream", *extras, "learner", "arm", "method", "n",
            f"{metric}_mean", f"{metric}_ci_lo", f"{metric}_ci_hi"]
    arms = arms[arms["n"] > 0]
    if arms.empty:
        raise NoData(f"no run has metrics.{metric}", cols)
    arms = arms.assign(panel=[_panel_label(r, extras) for _, r in arms.iterrows()])
    data = arms[cols].reset_index(drop=True)
    order = arm_order(data["arm"].unique())
    colors = arm_colors(df)
    panels = sorted(data["panel"].unique())
    n_up = max(data.groupby("panel")["upstream"].nunique())
    panel_w = max(3.4, 0.8 * n_up + 1.4)
    n_handles = len(order) + 1  # + the n=1 marker
    legend_cols = min(n_handles, 5 if max(len(method_label(a)) for a in order) < 24 else 3)
    fig, axes = _grid(len(panels), panel_w, 3.3, ncols_max=3 if panel_w < 5 else 2, min_w=6.0,
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
                ax.errorbar(x[ok], m[ok], yerr=_yerr(m[ok], lo[ok], hi[ok]), fmt="o", color=colors[arm],
                            capsize=3, ms=5, lw=1.2)
            if (~ok).any():  # hollow marker = single seed, no CI
                any_n1 = True
                ax.plot(x[~ok], m[~ok], "o", ms=5, mfc="white", mec=colors[arm], mew=1.5)
        long = max(map(len, ups)) > 10
        ax.set_xticks(range(len(ups)), ups, rotation=20 if long else 0, ha="right" if long else "center",
                      fontsize=8)
        ax.set_xlim(-0.6, len(ups) - 0.4)
        _clip_pct_axis(ax)
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


# ---- (2) gain per experiment and learner arm, sorted, with the average line per arm ----------
@register("fig2_gain")
def fig_gain(df: pd.DataFrame, root: Path | None = None, metric: str = "test_acc"):
    table = comparison_table(df, metric)
    extras = _extras(df)
    g = f"gain_{metric}"
    cols = ["experiment", "task", "upstream", *extras, "learner", "arm", "n_pairs", f"{g}_mean",
            f"{g}_ci_lo", f"{g}_ci_hi", f"avg_gain_{metric}", "flags"]
    t = table[table[f"{g}_mean"].notna()].copy()
    if t.empty:
        raise NoData("no experiment has X and a learner's arm (X+LEARNER) on a common seed", cols)
    avg = average_gain(table, metric).set_index("arm")[f"avg_gain_{metric}"]
    multi = t["arm"].nunique() > 1
    t["experiment"] = [f"{_panel_label(r, extras)} · {r['upstream']}" + (f" · {method_label(r['arm'])}" if multi else "")
                       + (f" (n={r['n_pairs']})" if r["n_pairs"] < 2 else "") for _, r in t.iterrows()]
    t[f"avg_gain_{metric}"] = t["arm"].map(avg)
    t = t.sort_values(f"{g}_mean", kind="stable").reset_index(drop=True)
    data = t[cols]
    colors = arm_colors(df)
    longest = max(map(len, t["experiment"]))
    fig = Figure(figsize=(max(6.5, 4.5 + 0.065 * longest), 1.7 + 0.28 * len(t)), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(t))
    m, lo, hi = (100 * t[f"{g}{s}"].to_numpy(float) for s in ("_mean", "_ci_lo", "_ci_hi"))
    ok = ~np.isnan(lo)
    ax.barh(y, m, color=[colors[a] for a in t["arm"]], alpha=0.85, height=0.6,
            hatch=["" if k else "//" for k in ok], edgecolor="white")
    ax.errorbar(m[ok], y[ok], xerr=_yerr(m[ok], lo[ok], hi[ok]), fmt="none", ecolor="black", capsize=3, lw=1)
    ax.axvline(0, color="black", lw=0.8)
    arms = arm_order(t["arm"].unique())
    for arm in arms:
        a = avg.get(arm, math.nan)
        if not math.isnan(a):
            ax.axvline(100 * a, color=colors[arm] if multi else "black", ls="--", lw=1.3,
                       label=f"average {method_label(arm)}: {100 * a:+.2f} pts")
    ax.set_yticks(y, t["experiment"], fontsize=8)
    ax.set_xlabel(f"gain in {metric} (points; paired X+LEARNER − X, 95 % t-CI)", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if multi:  # bar colour = arm
        handles += [Patch(facecolor=colors[arm], alpha=0.85, label=method_label(arm)) for arm in arms]
    if not ok.all():
        handles.append(Patch(facecolor="#8C8C8C", hatch="//", edgecolor="white", label="single pair (n=1): no CI"))
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    ax.set_title(f"Gain over X per experiment ({len(t)} bar{'s' if len(t) != 1 else ''}, sorted)", fontsize=10)
    return fig, data


# ---- (3) SAFLEX diagnostics: weights and label shift, clean vs corrupted -----------------------
@register("fig3_diagnostics")
def fig_diagnostics(df: pd.DataFrame, root: Path | None = None, metric: str = "test_acc", bins: int = 30):
    cols = ["quantity", "group", "bin_lo", "bin_hi", "count", "density", "n", "mean", "auc_corrupted", "n_runs"]
    w, ls, cor, ups = [], [], [], set()
    sx = df[df["learner"] == "saflex"]
    if sx.empty:
        raise NoData("no X+saflex runs loaded (this figure shows SAFLEX's per-sample weights and label shifts)", cols)
    for _, r in sx.iterrows():
        d = _run_dir(r, root)
        f = d / "saflex_diag.npz" if d else None
        if f is None or not f.is_file():
            continue
        with np.load(f) as z:
            w.append(np.asarray(z["w"], float).ravel())
            ls.append(np.asarray(z["label_shift"], float).ravel())
            cor.append(np.asarray(z["corrupted"], bool).ravel())
        ups.add(r["upstream"])
    if not w:
        why = ("runs loaded from wandb carry no run files (saflex_diag.npz) and the local store has none"
               if df["run_dir"].isna().all() else "no saflex_diag.npz in the X+SAFLEX run dirs")
        raise NoData(why, cols)
    n_runs = len(w)  # X+SAFLEX runs with a saflex_diag.npz
    w, ls, cor = np.concatenate(w), np.concatenate(ls), np.concatenate(cor)
    rows = []
    fig = Figure(figsize=(9.5, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (q, vals, score, xlabel) in zip(axes, [
            ("w", w, -w, "SAFLEX sample weight w (last epoch)"),
            ("label_shift", ls, ls, "label shift |q − y|₁ / 2 (last epoch)")]):
        edges = np.histogram_bin_edges(vals, bins=bins)
        auc = roc_auc(score, cor)
        for grp, mask, color in (("clean", ~cor, CLEAN_COLOR), ("corrupted", cor, CORRUPT_COLOR)):
            v = vals[mask]
            if v.size == 0:
                continue
            cnt, _ = np.histogram(v, bins=edges)
            dens = cnt / (v.size * np.diff(edges))
            rows += [{"quantity": q, "group": grp, "bin_lo": edges[i], "bin_hi": edges[i + 1], "count": int(cnt[i]),
                      "density": dens[i], "n": int(v.size), "mean": float(v.mean()), "auc_corrupted": auc,
                      "n_runs": n_runs} for i in range(len(cnt))]
            ax.stairs(dens, edges, fill=True, alpha=0.45, color=color,
                      label=f"{grp} (n={v.size:,}, mean={v.mean():.3f})")
            ax.stairs(dens, edges, color=color, lw=1)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel("density (per unit of x)", fontsize=9)
        ax.tick_params(labelsize=8)
        what = "−w" if q == "w" else "label shift"
        ax.set_title(f"ROC-AUC of {what} for corrupted: " + ("n/a" if math.isnan(auc) else f"{auc:.3f}"), fontsize=9)
        ax.legend(fontsize=8, loc="best")
    note = "" if cor.any() else "\nno corrupted samples (no noisy(...) upstream among these runs)"
    up_s = ", ".join(sorted(ups)) if len(ups) <= 3 else f"{len(ups)} upstreams"
    fig.suptitle(f"SAFLEX diagnostics, pooled over {n_runs} X+SAFLEX runs ({up_s}){note}", fontsize=10)
    return fig, pd.DataFrame(rows, columns=cols)


# ---- (4) cost: step-time ratio per upstream and learner arm ---------------------------------
@register("fig4_cost")
def fig_cost(df: pd.DataFrame, root: Path | None = None, metric: str = "test_acc"):
    table = comparison_table(df, metric)
    extras = _extras(df)
    cols = ["upstream", "task", *extras, "learner", "arm", "time_metric", "x_time_s", "arm_time_s", "ratio",
            "upstream_mean_ratio"]
    # step time is what a learner adds to; epoch time is the fallback when steps were not timed
    tm = "step_s" if table["overhead_step_s"].notna().any() else "epoch_s"
    t = table[table[f"overhead_{tm}"].notna()].copy()
    if t.empty:
        raise NoData("no experiment has timed X and X+LEARNER runs (cost.step_s / cost.epoch_s)", cols)
    t = t.assign(time_metric=tm, x_time_s=t[f"none_{tm}_mean"], arm_time_s=t[f"arm_{tm}_mean"],
                 ratio=t[f"overhead_{tm}"])
    t["upstream_mean_ratio"] = t.groupby(["upstream", "arm"])["ratio"].transform("mean")
    data = t[cols].sort_values(["upstream", "arm", "task"], kind="stable").reset_index(drop=True)
    ups = sorted(data["upstream"].unique())
    arms = arm_order(data["arm"].unique())
    colors = arm_colors(df)
    width = 0.8 / len(arms)
    fig = Figure(figsize=(max(4.5, (0.6 + 0.45 * len(arms)) * len(ups) + 2.2), 3.8), layout="constrained")
    ax = fig.add_subplot()
    top = 1.0
    for j, arm in enumerate(arms):
        d = data[data["arm"] == arm]
        means = d.groupby("upstream")["ratio"].mean().reindex(ups)
        x0 = np.arange(len(ups)) + (j - (len(arms) - 1) / 2) * width
        ax.bar(x0, means.to_numpy(), color=colors[arm], alpha=0.75, width=width * 0.9, label=method_label(arm))
        for i, u in enumerate(ups):
            r = d.loc[d["upstream"] == u, "ratio"].to_numpy()
            if not r.size:
                continue
            jitter = np.linspace(-0.25, 0.25, r.size) * width if r.size > 1 else np.zeros(1)
            ax.plot(x0[i] + jitter, r, "o", color="black", ms=3, label="one experiment" if (i == 0 and j == 0) else None)
            peak = max(means[u], float(np.nanmax(r)))
            top = max(top, peak)
            ax.annotate(f"×{means[u]:.2f}", (x0[i], peak), textcoords="offset points",
                        xytext=(0, 5), ha="center", fontsize=7, fontweight="bold")
    ax.axhline(1.0, color="gray", ls="--", lw=1, label="no overhead")
    long = max(map(len, ups)) > 10
    ax.set_xticks(range(len(ups)), ups, rotation=20 if long else 0, ha="right" if long else "center", fontsize=8)
    ax.set_xlabel("upstream augmentation (X)", fontsize=9)
    what = "step" if tm == "step_s" else "epoch"
    ax.set_ylabel(f"{what} time ratio  X+LEARNER / X", fontsize=9)
    ax.set_ylim(0, top * 1.18)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=min(4, len(arms) + 2), fontsize=8, frameon=False,
               title="bar = mean over experiments", title_fontsize=8)
    ax.set_title(f"Learner cost: {what} time / the upstream's alone", fontsize=10)
    return fig, data


# ---- (5) learning curves per method ----------------------------------------------------------
@register("fig5_learning_curves")
def fig_learning_curves(df: pd.DataFrame, root: Path | None = None, metric: str = "test_acc"):
    vm = _val_metric(metric)
    extras = _extras(df)
    cols = ["panel", "method", "upstream", "learner", "arm", "epoch", "n", f"{vm}_mean", f"{vm}_ci_lo", f"{vm}_ci_hi"]
    pts = []
    for _, r in df.iterrows():
        d = _run_dir(r, root)
        for row in read_metrics(d) if d else ():  # bench.results: the one metrics.jsonl reader
            if "epoch" in row and row.get(vm) is not None:
                pts.append({"panel": f"{_panel_label(r, extras)} · {r['upstream']}", "method": r["method"],
                            "upstream": r["upstream"], "learner": r["learner"], "arm": r["arm"], "seed": r["seed"],
                            "epoch": int(row["epoch"]), "value": float(row[vm])})
    if not pts:
        why = ("runs loaded from wandb carry no run files (metrics.jsonl) and the local store has none"
               if df["run_dir"].isna().all() else f"no metrics.jsonl with '{vm}' in the run dirs")
        raise NoData(why, cols)
    p = pd.DataFrame(pts)
    rows = []
    for key, g in p.groupby(cols[:6], sort=True):
        ci = mean_ci(g.groupby("seed")["value"].mean())
        rows.append(dict(zip(cols[:6], key), n=ci.n, **{f"{vm}_mean": ci.mean, f"{vm}_ci_lo": ci.lo,
                                                         f"{vm}_ci_hi": ci.hi}))
    data = pd.DataFrame(rows, columns=cols)
    panels = sorted(data["panel"].unique())
    arms = arm_order(data["arm"].unique())
    colors = arm_colors(df)
    longest = max(len(method_label(a)) for a in arms)
    legend_cols = min(len(arms), 5 if longest < 24 else 3 if longest < 36 else 2)
    fig, axes = _grid(len(panels), 4.2, 3.2, min_w=7.0, extra_h=0.9 + 0.2 * math.ceil(len(arms) / legend_cols))
    labels: dict[str, Line2D] = {}
    for ax, panel in zip(axes, panels):
        d = data[data["panel"] == panel]
        for arm in arms:
            c = d[d["arm"] == arm]
            if c.empty:
                continue
            x = c["epoch"].to_numpy()
            m, lo, hi = (100 * c[f"{vm}{s}"].to_numpy(float) for s in ("_mean", "_ci_lo", "_ci_hi"))
            (line,) = ax.plot(x, m, ls="-" if arm == NONE else "--", color=colors[arm], lw=1.4, label=method_label(arm))
            if np.isfinite(lo).any():
                ax.fill_between(x, np.clip(lo, 0, 100), np.clip(hi, 0, 100), color=colors[arm], alpha=0.12, lw=0)
            labels.setdefault(arm, line)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _clip_pct_axis(ax)
        ax.set_ylabel(f"{vm.replace('_', ' ')} (%)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.legend(handles=[labels[a] for a in arms if a in labels], loc="outside lower center", ncols=legend_cols,
               fontsize=8, frameon=False, title="arm (solid: X, dashed: X+LEARNER)", title_fontsize=8)
    fig.suptitle(f"Learning curves: {vm} vs epoch, mean over seeds (band = 95 % t-CI)", fontsize=10)
    return fig, data


# ---- driver -------------------------------------------------------------------------------------
def placeholder(name: str, why: str) -> Figure:
    fig = Figure(figsize=(6.4, 2.4))
    fig.text(0.5, 0.5, f"{name}\nno data: {why}", ha="center", va="center", fontsize=11, wrap=True)
    return fig


# ---- (6) few-shot: accuracy against K per method, CI bands --------------------------------------
@register("fig6_fewshot", family=True)
def fig_fewshot(df: pd.DataFrame, root: Path | None = None, metric: str = "test_acc"):
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
    fig, axes = _grid(len(datasets), 4.2, 3.3, ncols_max=3, extra_h=0.6 + 0.22 * math.ceil(len(methods) / 3))
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


def write_figures(df: pd.DataFrame, root: str | Path | None, out_dir: str | Path, metric: str = "test_acc",
                  only: list[str] | None = None) -> list[tuple[str, list[Path], str | None]]:
    """Render every registered figure (or `only` those) to <out>/<name>.{png,pdf,csv}.
    Returns [(name, paths, why-no-data or None)]."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(root) if root is not None else None
    done = []
    for name, fn in FIGURES.items():
        if only and name not in only:
            continue
        why = None
        try:
            fig, data = fn(df, root, metric=metric)
        except NoData as e:
            if name in FAMILY_FIGURES and not only:  # e.g. no few-shot runs: nothing to say, no placeholder
                continue
            why = e.why
            fig, data = placeholder(name, e.why), pd.DataFrame(columns=e.columns)
        paths = [out / f"{name}.png", out / f"{name}.pdf", out / f"{name}.csv"]
        fig.savefig(paths[0], dpi=DPI)
        fig.savefig(paths[1])
        data.to_csv(paths[2], index=False)
        done.append((name, paths, why))
    return done
