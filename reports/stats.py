"""Pure statistics: Student-t confidence intervals over seeds, and paired differences."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from scipy import stats as _st


@dataclass(frozen=True)
class CI:
    """mean and its two-sided confidence interval; lo/hi are NaN when n < 2 (no spread estimate)."""

    mean: float
    lo: float
    hi: float
    n: int
    sd: float  # sample sd (ddof=1); NaN when n < 2

    @property
    def half(self) -> float:
        return (self.hi - self.lo) / 2


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> CI:
    """mean ± t_{(1+confidence)/2, n-1} * sd / sqrt(n). NaNs are dropped first (a run without this
    metric is not a zero). n=0 -> all NaN; n=1 -> the mean with a NaN interval."""
    x = np.asarray(list(values), dtype=float)
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return CI(math.nan, math.nan, math.nan, 0, math.nan)
    m = float(x.mean())
    if n < 2:
        return CI(m, math.nan, math.nan, n, math.nan)
    sd = float(x.std(ddof=1))
    half = float(_st.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return CI(m, m - half, m + half, n, sd)


def paired_diff_ci(x: Iterable[float], y: Iterable[float], confidence: float = 0.95) -> CI:
    """CI of the mean paired difference y - x (here: X+SAFLEX minus X on the same seed).
    x[i] and y[i] must be the same pair; pairs with a NaN on either side are dropped."""
    xa = np.asarray(list(x), dtype=float)
    ya = np.asarray(list(y), dtype=float)
    if xa.shape != ya.shape:
        raise ValueError(f"paired_diff_ci needs equal-length inputs (got {xa.size} and {ya.size})")
    return mean_ci(ya - xa, confidence)


def roc_auc(score: Iterable[float], positive: Iterable[bool]) -> float:
    """ROC-AUC of `score` for detecting `positive` (Mann-Whitney U / (n_pos n_neg), ties = 1/2).
    NaN if either class is empty."""
    s = np.asarray(list(score), dtype=float)
    p = np.asarray(list(positive), dtype=bool)
    n_pos, n_neg = int(p.sum()), int((~p).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _st.rankdata(s)
    return float((ranks[p].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
