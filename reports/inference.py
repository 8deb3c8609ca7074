"""Inference over a study's paired comparisons (generic; a study's report calls these): per-seed
values of an arm, paired differences with their t-CI and paired t-test p-value, averages whose CI
is clustered by task, and Holm's step-down correction for a family of comparisons."""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats as _st

from reports.stats import CI, mean_ci, paired_diff_ci


def per_seed(g: pd.DataFrame, col: str) -> pd.Series:
    """An arm's metric per seed (runs sharing a seed averaged), NaNs dropped, sorted by seed."""
    if g.empty or col not in g:
        return pd.Series(dtype=float)
    return g.groupby("seed")[col].mean().dropna().sort_index()


def paired(a: pd.Series, b: pd.Series) -> tuple[CI, np.ndarray]:
    """CI of b − a over the seeds both have, and those differences."""
    common = a.index.intersection(b.index).sort_values()
    d = (b.loc[common] - a.loc[common]).to_numpy(dtype=float)
    return paired_diff_ci(a.loc[common], b.loc[common]), d


def paired_p_value(d: np.ndarray) -> float:
    """Two-sided paired t-test p-value (the test the t-CI inverts); NaN below 2 pairs."""
    d = d[~np.isnan(d)]
    if d.size < 2:
        return math.nan
    if np.all(d == d[0]):
        return 1.0 if d[0] == 0 else 0.0
    return float(_st.ttest_1samp(d, 0.0).pvalue)


def clustered_average(table: pd.DataFrame, col: str, cluster: str = "task") -> tuple[CI, pd.Series]:
    """Average of the per-experiment paired gains `col` (CI objects) with a CI clustered by `cluster`:
    experiments of one task share its data, so the gains are first averaged per task and the t-CI is
    taken over tasks (degrees of freedom = tasks − 1). Returns the CI and the per-cluster means."""
    vals = pd.DataFrame({cluster: table[cluster], "g": [c.mean for c in table[col]]}).dropna()
    per_cluster = vals.groupby(cluster)["g"].mean()
    return mean_ci(per_cluster.to_numpy()), per_cluster


def holm(p: Iterable[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (NaNs kept out of the family)."""
    p = np.asarray(list(p), dtype=float)
    out = np.full_like(p, np.nan)
    idx = np.where(~np.isnan(p))[0]
    m = idx.size
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out
