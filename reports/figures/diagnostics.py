"""fig3_diagnostics: SAFLEX's per-sample weights and label shifts, clean vs corrupted samples (saflex_diag.npz of the X+SAFLEX runs)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bench.results import read_saflex_diag
from reports.figures._common import CLEAN_COLOR, CORRUPT_COLOR, run_dir
from reports.figures._registry import NoData, register
from reports.stats import roc_auc

# ---- (3) SAFLEX diagnostics: weights and label shift, clean vs corrupted -----------------------
@register("fig3_diagnostics")
def fig_diagnostics(df: pd.DataFrame, root: Path | None = None, metric: str = "test_acc", bins: int = 30, **_):
    cols = ["quantity", "group", "bin_lo", "bin_hi", "count", "density", "n", "mean", "auc_corrupted", "n_runs"]
    w, ls, cor, ups = [], [], [], set()
    sx = df[df["learner"] == "saflex"]
    if sx.empty:
        raise NoData("no X+saflex runs loaded (this figure shows SAFLEX's per-sample weights and label shifts)", cols)
    for _, r in sx.iterrows():
        d = run_dir(r, root)
        z = read_saflex_diag(d) if d else None
        if z is None or "label_shift" not in z or "corrupted" not in z:
            continue
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
        if np.ptp(vals) == 0:  # a single bar: say what it means rather than leave the reader to guess
            ax.text(0.5, 0.55, f"every sample: {q.replace('_', ' ')} = {vals[0]:g}", transform=ax.transAxes,
                    ha="center", fontsize=9)
    note = "" if cor.any() else "\nno corrupted samples (no noisy(...) upstream among these runs)"
    up_s = ", ".join(sorted(ups)) if len(ups) <= 3 else f"{len(ups)} upstreams"
    fig.suptitle(f"SAFLEX diagnostics, pooled over {n_runs} X+SAFLEX runs ({up_s}){note}", fontsize=10)
    return fig, pd.DataFrame(rows, columns=cols)
