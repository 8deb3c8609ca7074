"""Two regenerations of the same specs, compared: what reproduces, and the numerical noise floor.

`saflex-bench compare A B` loads two results roots (the same sweep run twice, e.g. on two machines or
under two thread counts: docs/reproducibility.md) and, per spec key present in both:
- the metric in A and in B and their difference (B - A);
- the numerical noise floor: mean |Δ|, sd and max |Δ| over those keys. Same spec and seed, so seed,
  data order and augmentation draws are identical: Δ is what the floating-point order alone does;
- per experiment (task, upstream, other varying spec fields) and learner arm vs `none`, the
  conclusion in A and in B (sign of the mean paired gain over seeds, and whether its 95 % t-CI
  excludes 0) and whether they agree.

Also, for the report writers (reports/tables.py, the studies' report code):
- `gain_noise_verdict` / `classify_gains` / `experiment_noise`: is a gain above the numerical noise
  floor, above the seed spread, both or neither;
- `numerics_mismatch(df_group)`: a line when the runs of one comparison ran under different numerics.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from reports.load import identity_columns, load_results
from reports.stats import mean_ci, paired_diff_ci

NONE = "none"
# numerics fields (bench/numerics.py) that change the floating-point order; env variables are left out
# (their effect shows in `threads`), as are the individual deterministic switches (`deterministic`).
DECIDING = ("threads", "device_name", "cpu_capability", "torch", "cuda", "cudnn", "torch_blas", "deterministic")
# spec fields that distinguish the arms of one experiment (not the experiment itself)
_ARM_FIELDS = ("method", "seed", "knobs")


def _usage_error(msg: str) -> Exception:
    from bench.errors import UsageError

    return UsageError(msg)


def _split(method: str) -> tuple[str, str]:
    from bench.learners import split_method

    return split_method(method)


# ---- per-key differences ----------------------------------------------------------------------
def metric_column(df: pd.DataFrame, metric: str, where: str) -> str:
    col = f"metrics.{metric}"
    if col not in df.columns:
        have = sorted(c[len("metrics."):] for c in df.columns if c.startswith("metrics."))
        raise _usage_error(f"metric '{metric}' not recorded in {where} (valid: {', '.join(have)})")
    return col


def common_runs(df_a: pd.DataFrame, df_b: pd.DataFrame, metric: str = "test_acc") -> pd.DataFrame:
    """One row per spec key done in both: key, task, method, upstream, learner, seed, a, b, diff (b - a)."""
    ca = metric_column(df_a, metric, df_a.attrs.get("source", "A"))
    cb = metric_column(df_b, metric, df_b.attrs.get("source", "B"))
    keys = sorted(set(df_a["key"]) & set(df_b["key"]))
    if not keys:
        raise _usage_error(f"no spec key done in both roots ({len(df_a)} runs in A, {len(df_b)} in B): "
                           "compare needs the same sweep regenerated in both")
    a = df_a.set_index("key").loc[keys]
    b = df_b.set_index("key").loc[keys]
    out = pd.DataFrame({"key": keys, "task": a["task"].values, "method": a["method"].values,
                        "seed": a["seed"].values, "a": a[ca].astype(float).values, "b": b[cb].astype(float).values})
    split = {m: _split(m) for m in out["method"].unique()}
    out["upstream"], out["learner"] = zip(*(split[m] for m in out["method"]))
    out["diff"] = out["b"] - out["a"]
    return out[["key", "task", "method", "upstream", "learner", "seed", "a", "b", "diff"]]


@dataclass(frozen=True)
class NoiseFloor:
    """Summary of per-key differences B - A of one metric (NaN differences dropped)."""

    n: int          # keys compared
    n_differ: int   # keys whose metric is not bit-identical
    mean: float     # signed mean Δ (a systematic shift, if any)
    mean_abs: float
    sd: float       # sd of Δ (ddof=1): the per-run numerical noise scale, times sqrt(2)
    max_abs: float


def noise_floor(diffs: Iterable[float]) -> NoiseFloor:
    d = np.asarray(list(diffs), dtype=float)
    d = d[~np.isnan(d)]
    if d.size == 0:
        return NoiseFloor(0, 0, math.nan, math.nan, math.nan, math.nan)
    sd = float(d.std(ddof=1)) if d.size > 1 else math.nan
    return NoiseFloor(int(d.size), int((d != 0).sum()), float(d.mean()), float(np.abs(d).mean()), sd,
                      float(np.abs(d).max()))


# ---- conclusions: learner arm vs none, per experiment ----------------------------------------
def experiment_fields(df: pd.DataFrame) -> list[str]:
    """Spec fields that define an experiment: task, plus every other identity field that varies
    (model, epochs, ref_frac, ...), never method/seed/knobs."""
    extra = [c for c in identity_columns(df)
             if c not in ("task", *_ARM_FIELDS) and df[c].nunique(dropna=False) > 1]
    return ["task", *extra]


def paired_gains(df: pd.DataFrame, metric: str = "test_acc", confidence: float = 0.95) -> pd.DataFrame:
    """Per (experiment, upstream, learner != none): the paired gain learner arm - `none` arm over the
    seeds both have, its t-CI, sign, whether the CI excludes 0, and the sd of the `none` arm over those
    seeds (the seed spread). Runs are paired on seed within the experiment."""
    col = metric_column(df, metric, df.attrs.get("source", "the results"))
    fields = experiment_fields(df)
    d = df[[*fields, "method", "seed", col]].copy()  # only what is grouped on: groups of a wide frame copy every column
    split = {m: _split(m) for m in d["method"].unique()}
    d["_upstream"], d["_learner"] = zip(*(split[m] for m in d["method"])) if len(d) else ((), ())
    rows = []
    for exp, g in d.groupby([*fields, "_upstream"], dropna=False, sort=True):
        base = g[g["_learner"] == NONE].set_index("seed")[col]
        for learner, arm in g[g["_learner"] != NONE].groupby("_learner", sort=True):
            y = arm.set_index("seed")[col]
            seeds = sorted(set(base.index) & set(y.index))
            x_v, y_v = base.loc[seeds].astype(float), y.loc[seeds].astype(float)
            ci = paired_diff_ci(x_v, y_v, confidence)
            excl = bool(ci.n >= 2 and (ci.lo > 0 or ci.hi < 0))
            rows.append({**dict(zip([*fields, "upstream"], exp)), "learner": learner, "n": ci.n, "gain": ci.mean,
                         "lo": ci.lo, "hi": ci.hi, "sign": int(np.sign(ci.mean)) if ci.n else 0,
                         "excludes_0": excl, "seed_sd": mean_ci(x_v).sd})
    cols = [*fields, "upstream", "learner", "n", "gain", "lo", "hi", "sign", "excludes_0", "seed_sd"]
    return pd.DataFrame(rows, columns=cols)


def agreement(gains_a: pd.DataFrame, gains_b: pd.DataFrame) -> pd.DataFrame:
    """Conclusions of A and B side by side: sign_agrees, ci_agrees (CI excludes 0 in both or in
    neither), agrees (both)."""
    on = [c for c in gains_a.columns if c not in ("n", "gain", "lo", "hi", "sign", "excludes_0", "seed_sd")]
    m = gains_a.merge(gains_b, on=on, how="inner", suffixes=("_a", "_b"))
    m["sign_agrees"] = m["sign_a"] == m["sign_b"]
    m["ci_agrees"] = m["excludes_0_a"] == m["excludes_0_b"]
    m["agrees"] = m["sign_agrees"] & m["ci_agrees"]
    return m


@dataclass
class Comparison:
    metric: str
    source_a: str
    source_b: str
    runs: pd.DataFrame        # common_runs
    floor: NoiseFloor
    conclusions: pd.DataFrame  # agreement
    only_a: int
    only_b: int
    numerics_a: str
    numerics_b: str
    dropped: list[tuple[str, str]] | None = None  # (key, why) of every run left out of the comparison


def dropped_runs(df_a: pd.DataFrame, df_b: pd.DataFrame) -> list[tuple[str, str]]:
    """Each key done in one root only, with why the other root has no done record of it (its
    not-done reason from the results index, or 'no run folder')."""
    out = []
    for here, there, df_h, df_t in (("A", "B", df_a, df_b), ("B", "A", df_b, df_a)):
        why_not = df_t.attrs.get("not_done") or {}
        for key in sorted(set(df_h["key"]) - set(df_t["key"])):
            out.append((key, f"done in {here} only; {there}: {why_not.get(key, 'no run folder')}"))
    nd_a, nd_b = df_a.attrs.get("not_done") or {}, df_b.attrs.get("not_done") or {}
    for key in sorted((set(nd_a) | set(nd_b)) - set(df_a["key"]) - set(df_b["key"])):
        out.append((key, f"done in neither; A: {nd_a.get(key, 'no run folder')}; B: {nd_b.get(key, 'no run folder')}"))
    return out


def compare_frames(df_a: pd.DataFrame, df_b: pd.DataFrame, metric: str = "test_acc") -> Comparison:
    runs = common_runs(df_a, df_b, metric)
    keys = set(runs["key"])
    # conclusions on the common keys only: both sides then pair the same seeds
    ga = paired_gains(df_a[df_a["key"].isin(keys)], metric)
    gb = paired_gains(df_b[df_b["key"].isin(keys)], metric)
    floor = noise_floor(runs["diff"])
    conc = agreement(ga, gb)
    for side in ("a", "b"):  # each side's gain against its own seed spread and the measured floor
        conc[f"noise_{side}"] = [gain_noise_verdict(g, sd, floor.sd, n) for g, sd, n in
                                 zip(conc[f"gain_{side}"], conc[f"seed_sd_{side}"], conc[f"n_{side}"])]
    return Comparison(metric, str(df_a.attrs.get("source", "A")), str(df_b.attrs.get("source", "B")), runs,
                      floor, conc, len(set(df_a["key"]) - keys),
                      len(set(df_b["key"]) - keys), numerics_summary(df_a[df_a["key"].isin(keys)]),
                      numerics_summary(df_b[df_b["key"].isin(keys)]), dropped_runs(df_a, df_b))


def compare_roots(root_a: str | Path, root_b: str | Path, sweep: str | None = None,
                  metric: str = "test_acc") -> Comparison:
    for name, root in (("RESULTS_A", root_a), ("RESULTS_B", root_b)):
        if not (Path(root) / "runs").is_dir():
            raise _usage_error(f"{name} {root}: no results store there (expected {Path(root) / 'runs'}/<key>/result.json)")
    return compare_frames(load_results(root_a, sweep), load_results(root_b, sweep), metric)


# ---- numerics of a group of runs --------------------------------------------------------------
def _fmt_value(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _distinct(df: pd.DataFrame, name: str) -> list[str]:
    col = f"numerics.{name}"
    if col not in df.columns:
        return []
    return sorted({_fmt_value(v) for v in df[col].dropna().unique()})  # unique first: one format per value


def numerics_summary(df: pd.DataFrame) -> str:
    """e.g. 'threads 1; AMD EPYC (AVX512); torch 2.14.1; deterministic False' (values joined by '/'
    when they vary); 'not recorded' for runs from before bench/numerics.py."""
    parts = []
    for name, label in (("threads", "threads"), ("device_name", ""), ("cpu_capability", ""), ("torch", "torch"),
                        ("cuda", "cuda"), ("deterministic", "deterministic")):
        vals = _distinct(df, name)
        if vals:
            parts.append(f"{label} {'/'.join(vals)}".strip())
    return "; ".join(parts) or "not recorded"


def numerics_mismatch(df_group: pd.DataFrame) -> str | None:
    """A one-line warning when the runs of `df_group` (e.g. the arms and seeds of one comparison) ran
    under different numerics (thread count, device, CPU kernels, library versions, deterministic mode),
    or when some of them recorded no numerics; None when they all agree or none recorded any."""
    cols = [f"numerics.{n}" for n in DECIDING if f"numerics.{n}" in df_group.columns]
    if not cols or df_group.empty:
        return None
    parts = [f"{c[len('numerics.'):]} {' vs '.join(vals)}" for c in cols
             if len(vals := _distinct(df_group, c[len("numerics."):])) > 1]
    unrecorded = int(df_group[cols].isna().all(axis=1).sum())
    if 0 < unrecorded < len(df_group):
        parts.append(f"not recorded for {unrecorded} of {len(df_group)} runs")
    return "arms ran under different numerics: " + "; ".join(parts) if parts else None


# ---- is a gain above noise? -------------------------------------------------------------------
def noise_scales(seed_sd: float, floor_sd: float, n_seeds: int) -> tuple[float, float]:
    """(numerical, seed) standard deviations of a mean paired gain over `n_seeds` seeds.

    numerical: an A/A difference is Δ = e_A - e_B, so sd(Δ) = sqrt(2)·σ_num per run; the gain's numerical
    part is the mean over seeds of e_Y - e_X, sd sqrt(2)·σ_num / sqrt(n) = floor_sd / sqrt(n).
    seed: two arm means of n seeds, each spread like the X arm, differ by sd seed_sd·sqrt(2 / n)
    (conservative: pairing on seed usually shrinks it)."""
    n = max(int(n_seeds), 1)
    return floor_sd / math.sqrt(n), seed_sd * math.sqrt(2 / n)


def gain_noise_verdict(gain: float, seed_sd: float, floor_sd: float, n_seeds: int, k: float = 2.0) -> str:
    """'both' (|gain| > k·numerical and > k·seed noise), 'numerics only', 'seed only' or 'neither'.
    A NaN scale counts as not exceeded (nothing to stand on)."""
    num, seed = noise_scales(seed_sd, floor_sd, n_seeds)
    g = abs(gain)
    above_num = not math.isnan(num) and not math.isnan(g) and g > k * num
    above_seed = not math.isnan(seed) and not math.isnan(g) and g > k * seed
    return {(True, True): "both", (True, False): "numerics only", (False, True): "seed only",
            (False, False): "neither"}[(above_num, above_seed)]


def classify_gains(gains: Sequence[float], seed_sd: float, floor_sd: float, n_seeds: int,
                   k: float = 2.0) -> pd.DataFrame:
    """For each gain of one experiment: the two noise scales (noise_scales), whether |gain| exceeds
    k times each, and the verdict ('both', 'numerics only', 'seed only', 'neither')."""
    num, seed = noise_scales(seed_sd, floor_sd, n_seeds)
    rows = []
    for g in gains:
        v = gain_noise_verdict(g, seed_sd, floor_sd, n_seeds, k)
        rows.append(dict(gain=g, numerics_noise=num, seed_noise=seed, above_numerics=v in ("both", "numerics only"),
                         above_seed=v in ("both", "seed only"), verdict=v))
    return pd.DataFrame(rows, columns=["gain", "numerics_noise", "seed_noise", "above_numerics", "above_seed", "verdict"])


def experiment_noise(df: pd.DataFrame, floor: NoiseFloor | float, metric: str = "test_acc", k: float = 2.0) -> pd.DataFrame:
    """`paired_gains(df)` plus, per row, the verdict against the seed spread of its `none` arm and the
    numerical noise floor (a NoiseFloor from `compare`, or its sd)."""
    floor_sd = floor.sd if isinstance(floor, NoiseFloor) else float(floor)
    g = paired_gains(df, metric)
    g["noise"] = [gain_noise_verdict(r.gain, r.seed_sd, floor_sd, r.n, k) for r in g.itertuples()]
    return g


# ---- output -----------------------------------------------------------------------------------
def _pct(v: float) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def _ci_cell(gain, lo, hi) -> str:
    if isinstance(lo, float) and math.isnan(lo):
        return f"{100 * gain:+.2f}"
    return f"{100 * gain:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"


def to_markdown(c: Comparison) -> str:
    f = c.floor
    pts = "percentage points" if c.metric.endswith(("acc", "auc")) else "× 100"
    lines = [f"# compare {c.metric}: A = {c.source_a}, B = {c.source_b}", "",
             f"- A numerics: {c.numerics_a}", f"- B numerics: {c.numerics_b}",
             f"- spec keys in both: {f.n} (only in A: {c.only_a}, only in B: {c.only_b})", "",
             "## Numerical noise floor (same spec and seed; Δ = B − A, " + pts + ")", "",
             f"{f.n_differ} of {f.n} runs differ; mean |Δ| {_pct(f.mean_abs)}, sd {_pct(f.sd)}, "
             f"max |Δ| {_pct(f.max_abs)}, mean Δ {_pct(f.mean)}", "",
             "| key | task | method | seed | A | B | Δ |", "|---|---|---|---|---|---|---|"]
    for r in c.runs.itertuples():
        lines.append(f"| {r.key} | {r.task} | {r.method} | {r.seed} | {_pct(r.a)} | {_pct(r.b)} | {100 * r.diff:+.2f} |")
    if c.dropped:
        lines += ["", "## Runs left out", "", "| key | why |", "|---|---|"]
        lines += [f"| {k} | {why} |" for k, why in c.dropped]
    lines += ["", "## Conclusions: learner arm vs `none`, paired over seeds (95 % t-CI)", ""]
    if c.conclusions.empty:
        lines.append("no experiment has both a `none` arm and a learner arm in the common runs")
    else:
        lines += ["| task | upstream | learner | n | gain A | gain B | sign agrees | CI verdict agrees | "
                  "above noise A / B |", "|---|---|---|---|---|---|---|---|---|"]
        extra = [k for k in c.conclusions.columns if k not in ("task", "upstream", "learner", "sign_agrees", "ci_agrees",
                                                                 "agrees") and not k.endswith(("_a", "_b"))]
        for r in c.conclusions.itertuples():
            task = r.task + (f" ({', '.join(f'{k}={getattr(r, k)}' for k in extra)})" if extra else "")
            lines.append(f"| {task} | {r.upstream} | {r.learner} | {r.n_a} | {_ci_cell(r.gain_a, r.lo_a, r.hi_a)} | "
                         f"{_ci_cell(r.gain_b, r.lo_b, r.hi_b)} | {'yes' if r.sign_agrees else 'NO'} | "
                         f"{'yes' if r.ci_agrees else 'NO'} | {r.noise_a} / {r.noise_b} |")
        n_ok = int(c.conclusions["agrees"].sum())
        lines += ["", f"{n_ok} of {len(c.conclusions)} conclusions agree (sign and whether the CI excludes 0).",
                  "Above noise: |gain| > 2 × the numerical scale (floor sd / √n) and/or 2 × the seed scale "
                  "(sd of the `none` arm × √(2/n)): both, numerics only, seed only or neither."]
    return "\n".join(lines) + "\n"


def write_comparison(c: Comparison, out: str | Path) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md, runs_csv, conc_csv, floor_csv = (out / "compare.md", out / "compare_runs.csv",
                                         out / "compare_conclusions.csv", out / "compare_floor.csv")
    md.write_text(to_markdown(c))
    c.runs.to_csv(runs_csv, index=False)
    c.conclusions.to_csv(conc_csv, index=False)
    pd.DataFrame([{"metric": c.metric, **asdict(c.floor)}]).to_csv(floor_csv, index=False)
    return [md, runs_csv, conc_csv, floor_csv]
