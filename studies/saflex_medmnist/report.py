"""The SAFLEX MedMNIST study's report, written from stored results (never typed by hand):

    saflex-bench study saflex_medmnist            (from the study's results table; README.md)

Runs are grouped by their specs (how they were launched does not matter):
- main comparison: every X in UPSTREAMS alone (`none`), with the label-budget control (`ref`: trained
  on train + the reference part) and with SAFLEX at its current default knobs. Runs of the fair
  protocol (spec `ref_frac` set: every arm sees the same labelled data) are used when there are
  any; otherwise the first study's runs (no `ref_frac`) are, and the report says so;
- tuning: `rand-m9-n2` (+SAFLEX under several knob settings) on the TUNE_TASKS, first protocol, on
  the seeds where non-default SAFLEX settings ran; settings compared on VALIDATION accuracy only;
- noisy-upstream diagnostic: `noisy(P,rand-m9-n2)` alone, with `ref` and with each SAFLEX setting
  (weights only, label moving), with the label-recovery counters of metrics.jsonl.

Every protocol fact in the text (model, schedule, split sizes, seeds, knobs) is read from the run
records; no path of the machine the study ran on is written.
"""
from __future__ import annotations

import datetime as _dt
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from scipy import stats as _st

from reports.load import NONE, REF, experiment_columns, learner_defaults
from reports.inference import clustered_average, holm, paired as _paired, paired_p_value as _p_value, per_seed
from reports.stats import CI, mean_ci
from reports.tables import fmt_points, public_source

TASKS = ("medmnist/breastmnist", "medmnist/pneumoniamnist", "medmnist/retinamnist")
UPSTREAMS = ("rand-m9-n2", "cutmix-a1.0", "mixup-a0.2")
STORED_RULE = "auc"  # the study's sweeps select on val AUC (the MedMNIST default); saflex_fair_loss.yaml reruns on val loss
TUNE_TASKS = ("medmnist/breastmnist", "medmnist/retinamnist")
TUNE_UPSTREAM = "rand-m9-n2"
SAFLEX = "saflex"
MIN_SEEDS = 5        # paired seeds an experiment should have (the referee's minimum)
ALPHA = 0.05         # every CI is 95 %
DEFAULT_OUT = Path(__file__).resolve().parent / "report.md"
METRIC = "metrics.test_acc"
PAPER_HEADLINE_GAIN = {SAFLEX: 1.2}  # points: the paper's average gain, quoted for context under its own protocol
# SAFLEX's earlier default reference steps (issue 18), oldest first: the first release's, then an interim
# one (val_batch=32, refresh=4, ref_ema=0.5) that met the cost goal but whose 32-image subsets left the
# weights mostly noise on the small sets (benchmarks/bench_saflex_staleness.py). The study's sweeps that
# ran under them pin these knobs, so their runs keep their keys.
FIRST_SAFLEX_DEFAULTS = {"val_batch": 512, "refresh": 1, "ref_ema": 0.0}
INTERIM_SAFLEX_DEFAULTS = {"val_batch": 32, "refresh": 4, "ref_ema": 0.5}
PAST_SAFLEX_DEFAULTS = {"first release": FIRST_SAFLEX_DEFAULTS, "interim": INTERIM_SAFLEX_DEFAULTS}
LEGEND_SEEDS = ("± = half-width of the 95 % Student-t interval over seeds, in points (accuracy × 100); n/a: fewer "
                "than 2 seeds. Δ columns are paired by seed (same data order and upstream draws in both arms).")


# ---- what the report reads ---------------------------------------------------------------------
@dataclass
class StudyData:
    """Everything the report reads: the runs (one row per done run, reports.load's tidy frame), their
    logged epochs (key, epoch, the values of metrics.jsonl), SAFLEX's per-run weight summaries
    (reports.study_table.saflex_diag_frame), and optionally the A/A pair of the noise-floor study."""
    runs: pd.DataFrame
    epochs: pd.DataFrame
    saflex_diag: pd.DataFrame
    aa: tuple[pd.DataFrame, pd.DataFrame] | None = None
    _last: dict = field(default_factory=dict, repr=False)
    selection: pd.DataFrame | None = None  # key, selection.majority (reports/selection.py selection_frame)

    def last_epoch(self, key: Any) -> dict:
        """The last epoch a run logged ({} if none)."""
        if not self._last and len(self.epochs):
            for k, r in self.epochs.groupby("key", sort=False).tail(1).set_index("key").iterrows():
                self._last[k] = {c: v for c, v in r.items() if not _is_nan(v)}
        return self._last.get(key, {})

    def diag(self, key: Any) -> dict | None:
        hit = self.saflex_diag[self.saflex_diag["key"] == key]
        return hit.iloc[0].to_dict() if len(hit) else None


# ---- naming -----------------------------------------------------------------------------------
def _is_nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt_val(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):g}"
    if isinstance(v, (np.integer,)):
        return str(int(v))
    return str(v)


def knob_label(row: pd.Series, defaults: dict, learner: str = SAFLEX) -> str:
    """The knobs of a learner's run that differ from the learner's current defaults ('default' if none)."""
    diff = []
    for k, v in defaults.items():
        got = row.get(f"{learner}.{k}")
        if _is_nan(got):
            if v is not None:
                continue  # knob not recorded: the record predates it, so it ran at the default
        same = (got == v) or (v is None and _is_nan(got))
        if not same:
            diff.append(f"{k}={_fmt_val(got)}")
    return ",".join(diff) or "default"


def run_knobs(g: pd.DataFrame, learner: str = SAFLEX) -> dict[str, Any]:
    """The knob values of a learner's runs (first run; a group holds one setting), defaults filled in."""
    out = dict(learner_defaults(learner))
    if not len(g):
        return out
    r = g.iloc[0]
    for c in g.columns:
        if c.startswith(f"{learner}.") and not _is_nan(r[c]):
            out[c[len(learner) + 1:]] = r[c]
    return out


def moves_labels(knobs: dict) -> bool:
    """eps=0 with `lp` labels keeps q = y exactly (weights only); any eps > 0, or `kl` labels (which
    tilt soft upstream labels even at eps=0), can move the training label."""
    return not (float(knobs.get("eps", 0.0) or 0.0) == 0.0 and knobs.get("labels", "lp") == "lp")


def past_default(knobs: dict) -> str | None:
    """The name of SAFLEX's earlier default reference step these knobs ran at ("first release",
    "interim"), or None."""
    for name, past in PAST_SAFLEX_DEFAULTS.items():
        if all(_same(knobs.get(k), v) for k, v in past.items()):
            return name
    return None


def _same(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return a == b


def saflex_name(knobs: dict) -> str:
    """What the SAFLEX arm is, from its knobs: 'SAFLEX, weights only (eps=0)', 'SAFLEX eps=0.6
    (moves labels)'; other knobs that differ from the current defaults are named too, an earlier
    default reference step by its name."""
    defaults = learner_defaults(SAFLEX)
    eps = float(knobs.get("eps", 0.0) or 0.0)
    past = past_default(knobs)
    differ = {k: v for k, v in knobs.items()
              if k != "eps" and k in defaults and not (_same(v, defaults[k]) or (_is_nan(v) and defaults[k] is None))}
    others = ([f"{k}={_fmt_val(v)}" for k, v in differ.items() if not (past and k in PAST_SAFLEX_DEFAULTS[past])]
              + ([f"{past.replace(' ', '-')} reference step"] if past else []))
    extra = ("; " + ",".join(others)) if others else ""
    if not moves_labels(knobs):
        return f"SAFLEX, weights only (eps=0{extra})"
    return f"SAFLEX eps={eps:g}{(',' + ','.join(others)) if others else ''} (moves labels)"


def _with_labels(df: pd.DataFrame) -> pd.DataFrame:
    """`knobs`: each learner run's knob setting relative to that learner's current defaults ("" for X)."""
    defaults = {lr: learner_defaults(lr) for lr in df["learner"].unique()}
    df = df.copy()
    df["knobs"] = [knob_label(r, defaults[r["learner"]], r["learner"]) if r["learner"] != NONE else ""
                   for _, r in df.iterrows()]
    return df


def _short(task: str) -> str:
    return task.split("/", 1)[-1]


def _pts(v: float, signed: bool = False, nd: int = 1) -> str:
    if _is_nan(v):
        return "–"
    return f"{100 * v:+.{nd}f}" if signed else f"{100 * v:.{nd}f}"


def _ci(c: CI, signed: bool = False) -> str:
    return fmt_points(c.mean, c.lo, c.hi, signed=signed)


def _ci_brackets(c: CI, signed: bool = True) -> str:
    if _is_nan(c.mean):
        return "–"
    ci = "CI n/a" if _is_nan(c.lo) else f"95 % CI [{_pts(c.lo, signed)}, {_pts(c.hi, signed)}]"
    return f"{_pts(c.mean, signed)} ({ci})"


def _frac_ci(c: CI) -> str:
    if _is_nan(c.mean):
        return "–"
    return f"{c.mean:.3f}" + ("" if _is_nan(c.lo) else f" ± {(c.hi - c.lo) / 2:.3f}")


def _seeds(s: Iterable) -> str:
    s = sorted({int(x) for x in s})
    if not s:
        return "none"
    if len(s) > 2 and s == list(range(s[0], s[-1] + 1)):
        return f"{s[0]}–{s[-1]}"
    return ", ".join(map(str, s))


def _excludes_zero(c: CI) -> bool:
    return not _is_nan(c.lo) and (c.lo > 0 or c.hi < 0)


# ---- grouping runs by spec ----------------------------------------------------------------------
def _fair(df: pd.DataFrame) -> pd.Series:
    """Runs of the fair protocol: a reference part was carved out (`ref_frac` set)."""
    if "ref_frac" not in df:
        return pd.Series(False, index=df.index)
    return df["ref_frac"].notna()


def _prefer_fair(df: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    fair = _fair(df)
    return (df[fair], True) if fair.any() else (df, False)


def past_default_label(name: str = "first release") -> str:
    """The `knobs` label of one of SAFLEX's earlier defaults (PAST_SAFLEX_DEFAULTS)
    relative to today's defaults."""
    defaults = learner_defaults(SAFLEX)
    row = pd.Series({f"{SAFLEX}.{k}": v for k, v in {**defaults, **PAST_SAFLEX_DEFAULTS[name]}.items()})
    return knob_label(row, defaults)


def first_default_label() -> str:
    """The `knobs` label of SAFLEX's first-release default (val_batch=512, refresh=1, ref_ema=0)."""
    return past_default_label("first release")


def main_runs(df: pd.DataFrame, setting: str = "default") -> tuple[pd.DataFrame, bool]:
    """X, X+ref and X+SAFLEX at one knob setting (`knobs` label) on UPSTREAMS; fair-protocol runs if any."""
    sel = df[df["upstream"].isin(UPSTREAMS) & (df["learner"].isin([NONE, REF])
                                              | ((df["learner"] == SAFLEX) & (df["knobs"] == setting)))]
    return _prefer_fair(sel)


def split_fair_tuning(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs the study reports, the fair protocol's tuning-seed runs): seed 0 under the fair protocol
    (`saflex_fair_seed0.yaml`) only chooses the epoch-selection rule; no table, average or test counts it."""
    from reports.selection import TUNING_SEEDS

    tune = df["seed"].isin(TUNING_SEEDS) & df["ref_frac"].notna() if "ref_frac" in df else df["seed"].isin([])
    return df[~tune], df[tune]


def _experiments(main: pd.DataFrame) -> dict[tuple, int]:
    """(task, upstream) -> SAFLEX seeds run, for one setting's main runs."""
    sx = main[main["learner"] == SAFLEX]
    return {k: len(g["seed"].unique()) for k, g in sx.groupby(["task", "upstream"])}


def main_setting(df: pd.DataFrame) -> str:
    """The SAFLEX setting of the main comparison: today's default once it has run every experiment
    (with at least as many seeds) that the first-release default ran; until then the first default,
    so a half-finished rerun never replaces a complete comparison."""
    first = first_default_label()
    if first == "default":
        return "default"
    have_new, have_old = _experiments(main_runs(df)[0]), _experiments(main_runs(df, first)[0])
    if have_old and not all(have_new.get(k, 0) >= n for k, n in have_old.items()):
        return first
    return "default"


def tuning_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The tuning group: TUNE_UPSTREAM on the TUNE_TASKS under the first protocol (no ref_frac), on
    the seeds where SAFLEX ran under non-default knob settings (the settings compared)."""
    t = df[df["task"].isin(TUNE_TASKS) & (df["upstream"] == TUNE_UPSTREAM) & ~_fair(df)]
    seeds = set(t.loc[(t["learner"] == SAFLEX) & (t["knobs"] != "default"), "seed"])
    return t[t["seed"].isin(seeds)]


def noisy_runs(df: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    sel = df[df["upstream"].str.startswith("noisy(") & df["learner"].isin([NONE, REF, SAFLEX])]
    return _prefer_fair(sel)


def _per_seed(g: pd.DataFrame, col: str = METRIC) -> pd.Series:
    return per_seed(g, col)


# ---- main comparison ----------------------------------------------------------------------------
def main_table(main: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment (task, upstream and every other protocol column that varies): X, X+ref,
    X+SAFLEX (mean and CI over seeds), the paired gains SAFLEX − X, SAFLEX − (X+ref), ref − X, their
    per-seed differences and paired t-test p-values, and the mean step-time ratio SAFLEX / X."""
    if not len(main):
        return pd.DataFrame()
    # `knobs` (this module's label) is not a protocol column: one SAFLEX setting is left in `main`
    exp_cols = experiment_columns(main.drop(columns="knobs", errors="ignore"))
    rows = []
    for key, g in main.groupby(exp_cols, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        x, r, s = (g[g["learner"] == lr] for lr in (NONE, REF, SAFLEX))
        xs, rs, ss = _per_seed(x), _per_seed(r), _per_seed(s)
        gain, d_x = _paired(xs, ss)
        gain_ref, d_r = _paired(rs, ss)
        ref_gain, _ = _paired(xs, rs)
        flags = []
        if gain.n < MIN_SEEDS or (len(r) and gain_ref.n < MIN_SEEDS):
            flags.append(f"<{MIN_SEEDS} pairs")
        unpaired = sorted(set(xs.index) ^ set(ss.index) | (set(rs.index) ^ set(ss.index) if len(r) else set()))
        if unpaired:
            flags.append("unpaired seeds " + _seeds(unpaired))
        if g.groupby(["learner", "seed"]).size().gt(1).any():
            flags.append("duplicate seeds averaged")
        if "selection.degenerate" in g:  # reports/selection.py: selected epoch at or below the majority rate
            deg = [int((f["selection.degenerate"] == 1).sum()) for f in (x, r, s)]
            if any(deg):
                flags.append("degenerate selections X/X+ref/SAFLEX " + "/".join(map(str, deg)))

        def cost(frame: pd.DataFrame) -> float:
            for c in ("cost.step_s", "cost.epoch_s"):
                if c in frame and frame[c].notna().any():
                    return float(frame[c].mean())
            return math.nan

        cx, cs = cost(x), cost(s)
        rows.append(dict(zip(exp_cols, key), x=mean_ci(xs), ref=mean_ci(rs), s=mean_ci(ss), gain=gain,
                         gain_ref=gain_ref, ref_gain=ref_gain, d_x=d_x, d_ref=d_r, p_x=_p_value(d_x),
                         p_ref=_p_value(d_r), has_ref=bool(len(r)), overhead=cs / cx if cx else math.nan,
                         seeds=sorted(set(xs.index) | set(rs.index) | set(ss.index)), flags=", ".join(flags)))
    return pd.DataFrame(rows)


def multiple_comparisons(table: pd.DataFrame) -> pd.DataFrame:
    """The family of SAFLEX comparisons (each experiment: vs X, and vs X+ref where it ran) with the
    raw paired-t p-value, whether the 95 % CI excludes 0, and the Holm-adjusted p-value."""
    rows = []
    for r in table.itertuples():
        for name, c, p in (("vs X", r.gain, r.p_x), ("vs X+ref", r.gain_ref, r.p_ref)):
            if c.n >= 2:
                rows.append(dict(task=r.task, upstream=r.upstream, comparison=name, gain=c, p=p,
                                 excludes=_excludes_zero(c)))
    fam = pd.DataFrame(rows, columns=["task", "upstream", "comparison", "gain", "p", "excludes"])
    fam["p_holm"] = holm(fam["p"]) if len(fam) else []
    return fam


def multiple_comparisons_md(fam: pd.DataFrame, n_experiments: int) -> list[str]:
    """How many CIs exclude 0, how many would by chance, and the Holm / Bonferroni view."""
    m = len(fam)
    if not m:
        return ["No experiment has 2 or more paired seeds: no comparison to test."]
    n_excl = int(fam["excludes"].sum())
    n_bonf = int((fam["p"] < ALPHA / m).sum())
    n_holm = int((fam["p_holm"] < ALPHA).sum())
    L = [f"{m} SAFLEX comparisons ({n_experiments} experiments × vs X and vs X+ref where both ran). If SAFLEX changed "
         f"nothing, about {ALPHA * m:.1f} of {m} 95 % CIs would exclude 0 by chance alone (at least one with "
         f"probability {1 - (1 - ALPHA) ** m:.0%} if they were independent). Observed: {n_excl} exclude 0. Paired "
         f"t-test p-values (scipy.stats.ttest_1samp on the per-seed differences), Holm-adjusted over the {m}: "
         f"{n_holm} below {ALPHA:g}; Bonferroni (p < {ALPHA:g}/{m}): {n_bonf}.", "",
         "| task | upstream | comparison | Δ (points) | p | Holm p | 95 % CI excludes 0 |", "|---|---|---|---:|---:|---:|---|"]
    for r in fam.sort_values("p").itertuples():
        L.append(f"| {_short(r.task)} | {r.upstream} | {r.comparison} | {_pts(r.gain.mean, True, 2)} | {r.p:.3f} | "
                 f"{r.p_holm:.3f} | {'yes' if r.excludes else 'no'} |")
    return L + ["", "Δ = mean paired difference X+SAFLEX − the compared arm, points; p = two-sided paired t-test over "
                "seeds (the test the 95 % t-CI inverts); Holm p = step-down adjusted over the whole table."]


def _extra_cols(table: pd.DataFrame) -> list[str]:
    skip = {"task", "upstream", "x", "ref", "s", "gain", "gain_ref", "ref_gain", "d_x", "d_ref", "p_x", "p_ref",
            "has_ref", "overhead", "seeds", "flags"}
    return [c for c in table.columns if c not in skip]


def _main_md(table: pd.DataFrame) -> list[str]:
    extra = _extra_cols(table)
    head = (["task", "upstream"] + extra + ["pairs (vs X / vs X+ref)", "X", "X+ref", "X+SAFLEX", "Δ SAFLEX − X",
                                              "Δ SAFLEX − (X+ref)", "Δ (X+ref) − X", "flags"])
    L = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(extra) + 7) + "---|"]
    for r in table.itertuples():
        L.append(f"| {_short(r.task)} | {r.upstream} | " + "".join(f"{getattr(r, c)} | " for c in extra)
                 + f"{r.gain.n} / {r.gain_ref.n if r.has_ref else '–'} | {_ci(r.x)} | {_ci(r.ref)} | {_ci(r.s)} | "
                 f"{_ci(r.gain, True)} | {_ci(r.gain_ref, True)} | {_ci(r.ref_gain, True)} | {r.flags} |")
    return L


# ---- the default change: first-release default vs today's, paired ------------------------------
def default_change_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per experiment where the first-release default and today's both ran (fair protocol when there
    is one): each default's paired gain over X (the interim default's too where it ran), today − first
    paired, and each one's step time over X's. Columns old / mid / new = first / interim / today."""
    first = first_default_label()
    if first == "default":
        return pd.DataFrame()
    old, fair_old = main_runs(df, first)
    new, fair_new = main_runs(df, "default")
    mid, fair_mid = main_runs(df, past_default_label("interim"))
    if fair_old != fair_new:
        return pd.DataFrame()
    t_old, t_new = main_table(old), main_table(new)
    if not len(t_old) or not len(t_new):
        return pd.DataFrame()
    cols = [c for c in t_old.columns if c in t_new.columns and c in ("task", "upstream", *_extra_cols(t_old))]
    both = t_old.merge(t_new, on=cols, suffixes=("_old", "_new"))
    t_mid = main_table(mid) if fair_mid == fair_new and (mid["learner"] == SAFLEX).any() else pd.DataFrame()
    mids = {tuple(getattr(r, c) for c in cols): r for r in t_mid.itertuples()} if len(t_mid) else {}
    nan_ci = CI(math.nan, math.nan, math.nan, 0, math.nan)

    def saflex_of(frame: pd.DataFrame, key: dict) -> pd.DataFrame:
        sel = np.logical_and.reduce([frame[c] == v for c, v in key.items() if c in frame])
        return frame[sel & (frame["learner"] == SAFLEX)]

    rows = []
    for r in both.itertuples():
        key = {c: getattr(r, c) for c in cols}
        diff, d = _paired(_per_seed(saflex_of(old, key)), _per_seed(saflex_of(new, key)))
        m = mids.get(tuple(key.values()))
        rows.append({**key, "old": r.gain_old, "mid": m.gain if m is not None else nan_ci, "new": r.gain_new,
                     "diff": diff, "p": _p_value(d), "cost_old": r.overhead_old,
                     "cost_mid": m.overhead if m is not None else math.nan, "cost_new": r.overhead_new})
    return pd.DataFrame(rows)


def default_change_section(df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The report's side-by-side of SAFLEX's first-release default, the interim one where it ran and
    today's (issue 18), and the summary's line about it."""
    t = default_change_table(df)
    if not len(t):
        return [], []
    first_d, mid_d = PAST_SAFLEX_DEFAULTS["first release"], PAST_SAFLEX_DEFAULTS["interim"]
    now = learner_defaults(SAFLEX)

    def spell(d: dict) -> str:
        return ", ".join(f"{k}={_fmt_val(v)}" for k, v in d.items())
    old_s, mid_s = spell(first_d), spell(mid_d)
    new_s = spell({k: now.get(k) for k in [*first_d, "ref_budget", "ref_ramp"]})
    has_mid = any(not _is_nan(c.mean) for c in t["mid"])
    L = ["## SAFLEX's default reference step: first release, interim, today (paired)", "",
         f"The first release's reference step ({old_s}: a forward over up to {first_d['val_batch']} reference "
         f"images at every step), the interim default ({mid_s}: a fresh 32-image subset every 4 steps, "
         f"averaged) and today's ({new_s}: the whole reference part, up to val_batch images, refreshed as often "
         "as a budget of ref_budget reference images per training image allows, after a ramp at steps 1, 2, 4, ...) ran on the same experiments "
         "and seeds; X and X+ref are shared. Gains are paired by seed; cost = mean SAFLEX step time / X's in "
         "the same sweep.", "",
         "| task | upstream | pairs | Δ first default − X | Δ interim − X | Δ today's default − X | Δ today − first "
         "| p | cost first | cost interim | cost today |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in t.itertuples():
        cm = "–" if _is_nan(r.cost_mid) else f"{r.cost_mid:.2f}×"
        L.append(f"| {_short(r.task)} | {r.upstream} | {r.diff.n} | {_ci(r.old, True)} | {_ci(r.mid, True)} | "
                 f"{_ci(r.new, True)} | {_ci(r.diff, True)} | {r.p:.3f} | {r.cost_old:.2f}× | {cm} | "
                 f"{r.cost_new:.2f}× |")
    ca_old, _ = clustered_average(t.rename(columns={"old": "g"}), "g")
    ca_new, _ = clustered_average(t.rename(columns={"new": "g"}), "g")
    ca_d, _ = clustered_average(t.rename(columns={"diff": "g"}), "g")
    ca_mid = clustered_average(t.rename(columns={"mid": "g"}), "g")[0] if has_mid else None

    def avg(c: CI) -> str:
        return f"{_pts(c.mean, True, 2)} " + ("(no interval)" if _is_nan(c.lo) else f"[{_pts(c.lo, True, 2)}, {_pts(c.hi, True, 2)}]")
    mid_avg = f"; interim default − X {avg(ca_mid)}" if ca_mid is not None else ""
    L += ["", LEGEND_SEEDS + " p = paired t-test of today − first over seeds (uncorrected).", "",
          f"Task-clustered averages over {t['task'].nunique()} task(s) (95 % CI over tasks): first default − X "
          f"{avg(ca_old)}{mid_avg}; today's default − X {avg(ca_new)}; today − first {avg(ca_d)}. Median cost over "
          f"experiments: first {t['cost_old'].median():.2f}×"
          + (f", interim {t['cost_mid'].median():.2f}×" if has_mid else "")
          + f", today {t['cost_new'].median():.2f}× (sweep timings share the machine "
          "unevenly; benchmarks/bench_saflex_overhead.py measures the ratio side by side).", ""]
    kept = "includes 0" if not _excludes_zero(ca_d) else ("is above 0" if ca_d.lo > 0 else "is below 0")
    lower = [f"{_short(r.task)}/{r.upstream}" for r in t.itertuples() if _excludes_zero(r.diff) and r.diff.hi < 0]
    higher = [f"{_short(r.task)}/{r.upstream}" for r in t.itertuples() if _excludes_zero(r.diff) and r.diff.lo > 0]
    below_x = [f"{_short(r.task)}/{r.upstream}" for r in t.itertuples() if r.new.mean < r.old.mean]
    verdict = [f"- SAFLEX's default moved from {old_s} to {new_s}. Gain over X, task-clustered: first default "
               f"{avg(ca_old)}{', interim ' + avg(ca_mid) if ca_mid is not None else ''}, today's {avg(ca_new)}. "
               f"The paired change in gain over X (today − first) averages "
               f"{_pts(ca_d.mean, True)} points over {t['task'].nunique()} task(s), task-clustered CI {kept}; "
               f"per experiment (uncorrected 95 % CIs), today's default is lower in {len(lower)} "
               f"({', '.join(lower) or 'none'}) and higher in {len(higher)} ({', '.join(higher) or 'none'}) of {len(t)}; "
               f"its point estimate is below the first default's in {len(below_x)} of {len(t)} "
               f"({', '.join(below_x) or 'none'}). Median step-time ratio in the sweeps {t['cost_old'].median():.2f}× → "
               f"{t['cost_new'].median():.2f}× (runs timed on a machine shared unevenly: indicative only; "
               "benchmarks/bench_saflex_overhead.py measures it side by side)."]
    return L, verdict


# ---- protocol, generated from the specs and records -----------------------------------------------
def _uniq(df: pd.DataFrame, col: str) -> list:
    if col not in df:
        return []
    return sorted({_fmt_val(v) for v in df[col] if not _is_nan(v)})


def _field(df: pd.DataFrame, col: str, per_task: bool = True) -> str:
    """The value of a spec field over a group of runs: one value, or the values per task."""
    vals = _uniq(df, col)
    if len(vals) <= 1 or not per_task:
        return ", ".join(vals) if vals else "not recorded"
    return "; ".join(f"{_short(t)} {', '.join(_uniq(g, col))}" for t, g in df.groupby("task"))


def _epochs(df: pd.DataFrame) -> str:
    return "; ".join(f"{_short(t)} {_field(g, 'epochs', False)}" for t, g in df.groupby("task"))


def _ref_from(df: pd.DataFrame) -> str:
    """`ref_from` of the runs; absent from a spec when it is the default (bench.spec keeps keys stable)."""
    if "ref_from" in df and df["ref_from"].notna().any():
        return _field(df, "ref_from", False)
    from bench.spec import LATER_DEFAULTS

    return str(LATER_DEFAULTS["ref_from"])


def _schedule(df: pd.DataFrame) -> str:
    parts = []
    for (sched, ms, gamma), _ in df.groupby(["schedule", "milestones", "gamma"], dropna=False):
        if sched == "multistep":
            at = ", ".join(f"{100 * float(m):g} %" for m in str(ms).split(",") if m)
            parts.append(f"multistep (lr × {_fmt_val(gamma)} at {at} of the epochs)")
        else:
            parts.append(str(sched))
    return "; ".join(parts) or "not recorded"


def _official_sizes(task: str) -> dict:
    try:
        from bench.tasks import get_task

        return dict(getattr(get_task(task), "n_samples", None) or {})
    except Exception:
        return {}


def split_sizes(df: pd.DataFrame) -> pd.DataFrame:
    """Per task, the split sizes the runs recorded (`data` block): train, val (= selection),
    reference, test; a range when runs differ. Records written before the `data` block: the task's
    official sizes (`source` says which)."""
    rows = []
    for task, g in df.groupby("task"):
        recorded = any(f"data.{k}" in g and g[f"data.{k}"].notna().any() for k in ("train", "test"))
        d = {"task": task, "source": "recorded" if recorded else "official"}
        official = {} if recorded else _official_sizes(task)
        for k in ("train", "val", "reference", "test"):
            col = f"data.{k}"
            v = sorted({int(x) for x in g[col].dropna()}) if recorded and col in g else (
                [int(official[k])] if k in official else [])
            d[k] = (str(v[0]) if len(v) == 1 else f"{v[0]}–{v[-1]}") if v else "–"
            d[f"{k}_min"] = v[0] if v else None
        rows.append(d)
    return pd.DataFrame(rows)


def _sizes_md(sizes: pd.DataFrame) -> list[str]:
    L = ["| task | train | val (selection) | reference | test | one test image (points) | sizes from |",
         "|---|---:|---:|---:|---:|---:|---|"]
    for r in sizes.itertuples():
        one = f"{100 / r.test_min:.2f}" if r.test_min else "–"
        src = "the runs' records" if r.source == "recorded" else "the task's official splits (records predate the `data` block)"
        L.append(f"| {_short(r.task)} | {r.train} | {r.val} | {r.reference} | {r.test} | {one} | {src} |")
    return L


def _knobs_in_force(runs: pd.DataFrame) -> str:
    cols = sorted(c for c in runs.columns if c.startswith(f"{SAFLEX}.") and runs[c].notna().any())
    parts = []
    for c in cols:
        vals = _uniq(runs, c)
        parts.append(f"`{c[len(SAFLEX) + 1:]}={'|'.join(vals) if vals else 'None'}`")
    return ", ".join(parts) or "no SAFLEX runs"


def protocol_lines(main: pd.DataFrame, fair: bool) -> list[str]:
    """The protocol of the main comparison, every fact read from the run specs and records."""
    if not len(main):
        return ["_No main-comparison runs: no protocol to describe._", ""]
    sx = main[main["learner"] == SAFLEX]
    L = [f"- Model `{_field(main, 'model')}`; optimiser {_field(main, 'optimizer')}, lr {_field(main, 'lr')}, "
         f"weight decay {_field(main, 'weight_decay')}, batch size {_field(main, 'batch_size')}; schedule "
         f"{_schedule(main)}.",
         "- Epochs per task: " + _epochs(main) + ".",
         f"- Best epoch chosen on the selection split's `{_field(main, 'select_metric')}`; the test accuracy of that "
         "epoch is reported. Test sets are read only at the end.",
         f"- Device(s) recorded by the runs: {_field(main, 'device', False)}.",
         f"- Seeds: {_seeds(main['seed'])}."]
    if fair:
        L.append(f"- Fair protocol: `ref_frac={_field(main, 'ref_frac', False)}` of the `ref_from="
                 f"{_ref_from(main)}` "
                 "split is set aside per seed (stratified) as the reference part. X ignores it; X+ref trains on train + "
                 "the reference part (the label-budget control); X+SAFLEX uses it as SAFLEX's reference set. All three "
                 "select the best epoch on the rest of the validation split. Every arm therefore has the same "
                 "labelled images.")
    else:
        L.append("- First protocol (no `ref_frac` in the specs): SAFLEX's reference set is the whole validation "
                 "split, which also selects the best epoch; X never sees those labels, so the arms do NOT see the same "
                 "labelled data and X+ref is absent unless listed below.")
    L.append("- Pairs: X, X+ref and X+SAFLEX with the same seed see the same data order and the same upstream draws, "
             "so a paired difference isolates what the arm adds.")
    if len(sx):
        L.append(f"- SAFLEX arm: **{saflex_name(run_knobs(sx))}**; knobs in force in its runs: {_knobs_in_force(sx)}.")
    L += ["", "Split sizes recorded by the runs (`data` block of each result):", "", *_sizes_md(split_sizes(main)), ""]
    return L


# ---- tuning -------------------------------------------------------------------------------------
def tuning_table(t: pd.DataFrame) -> pd.DataFrame:
    """Validation accuracy of each SAFLEX knob setting minus its upstream alone (per seed, then the
    mean over the tuning seeds), per tuning task."""
    rows = []
    for task, g in t.groupby("task"):
        base = _per_seed(g[g["learner"] == NONE], "metrics.val_acc")
        if base.empty:
            continue
        for knobs, s in g[g["learner"] == SAFLEX].groupby("knobs"):
            v = _per_seed(s, "metrics.val_acc")
            common = base.index.intersection(v.index)
            if not len(common):
                continue
            rows.append(dict(task=task, knobs=knobs, val_x=float(base.loc[common].mean()),
                             val_learner=float(v.loc[common].mean()),
                             delta=float((v.loc[common] - base.loc[common]).mean())))
    return pd.DataFrame(rows, columns=["task", "knobs", "val_x", "val_learner", "delta"])


def choose(tune: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """The setting with the best mean validation gain over the tuning tasks that ran it on all of them."""
    if tune.empty:
        return "default", pd.DataFrame()
    n_tasks = tune["task"].nunique()
    agg = tune.groupby("knobs").agg(mean_delta=("delta", "mean"), n_tasks=("task", "nunique")).reset_index()
    agg = agg[agg["n_tasks"] == n_tasks].sort_values("mean_delta", ascending=False)
    return (agg["knobs"].iloc[0] if len(agg) else "default"), agg


def _n_val(t: pd.DataFrame, task: str) -> int | None:
    v = t.loc[t["task"] == task, "data.val"].dropna() if "data.val" in t else pd.Series(dtype=float)
    if len(v):
        return int(v.min())
    try:  # records before the `data` block: the official split size
        from bench.tasks import get_task

        return int(get_task(task).n_samples["val"])
    except Exception:
        return None


def tuning_section(truns: pd.DataFrame, groups: dict[str, pd.DataFrame]) -> list[str]:
    L = ["## Choosing SAFLEX's defaults (validation split only)", ""]
    seeds = {name: set(int(s) for s in g["seed"]) for name, g in groups.items() if len(g)}
    if len(truns):
        L.append(f"Tuning runs: `{TUNE_UPSTREAM}` on {', '.join(_short(t) for t in sorted(truns['task'].unique()))}, "
                 f"seed(s) {_seeds(truns['seed'])}, first protocol (no `ref_frac`: SAFLEX's reference set is the "
                 "validation split itself). Each knob setting is compared with the upstream alone on **validation** "
                 "accuracy; the setting with the best mean gain over the tasks is the default. Test accuracy is not "
                 "looked at here.")
    L.append("Seeds by group of runs: " + "; ".join(f"{name} {_seeds(s)}" for name, s in seeds.items()) + ".")
    tune_seeds = seeds.get("tuning", set())
    overlap = {name: tune_seeds & s for name, s in seeds.items() if name != "tuning" and tune_seeds & s}
    if tune_seeds:
        L.append("**Overlap**: " + "; ".join(f"seed(s) {_seeds(o)} are in both the tuning and the {name}"
                                             for name, o in overlap.items())
                 + ": those runs took part in choosing the defaults they are compared under." if overlap else
                 "No seed of the comparisons took part in the tuning.")
    L.append("")
    tune = tuning_table(truns) if len(truns) else pd.DataFrame()
    if not len(tune):
        return L + ["_No tuning runs found._", ""]
    chosen, ranking = choose(tune)
    piv = tune.pivot_table(index="knobs", columns="task", values="delta")
    base = tune.groupby("task")["val_x"].first()
    sx = truns[truns["learner"] == SAFLEX]
    names = {k: saflex_name(run_knobs(g)) for k, g in sx.groupby("knobs")}
    L += ["| knob setting (vs current defaults) | what it is | " + " | ".join(f"Δ val acc {_short(c)} (X = {_pts(base[c])})" for c in piv.columns)
          + " | mean Δ |", "|---|---|" + "---:|" * (len(piv.columns) + 1)]
    for knobs in (ranking["knobs"] if len(ranking) else piv.index):
        r = piv.loc[knobs]
        L.append(f"| `{knobs}` | {names.get(knobs, '')} | " + " | ".join(_pts(r[c], True) for c in piv.columns)
                 + f" | {_pts(r.mean(), True)} |")
    n_val = {c: _n_val(truns, c) for c in piv.columns}
    n_gain = int((piv.mean(axis=1) > 0).sum())
    L += ["", f"Δ = validation accuracy of X+SAFLEX − X, points, mean over the tuning seed(s) {_seeds(truns['seed'])}; "
          "one run per setting and seed, so no CI.", "",
          f"Selected: **`{chosen}`** (relative to the defaults now in `SaflexConfig`; `default` = the current defaults, "
          f"i.e. {saflex_name(learner_defaults(SAFLEX))}).", "",
          f"{n_gain} of {len(piv)} settings gain validation accuracy on average over the tuning tasks. What that "
          "means: one seed on small validation splits ("
          + ", ".join(f"{_short(c)} {n} images, one image = {100 / n:.1f} points" for c, n in n_val.items() if n)
          + ") ranks settings only coarsely, and under that protocol SAFLEX's validation accuracy was measured on the "
          "very split it fitted its weights against. A setting that loses validation accuracy here can still show a "
          "positive test gain in the comparison below (other seeds, other protocol, a test split of its own); neither "
          "number alone is evidence, the paired multi-seed comparison is the test.", ""]
    return L


# ---- per-run logs --------------------------------------------------------------------------------
DIAG_COLUMNS = (("w_std", "std of w"), ("w_low_frac", "w < 0.5 (fraction)"),
                ("saflex_label_shift", "mean abs(q - y)"), ("saflex_argmax_change", "argmax(q) != argmax(y)"),
                ("saflex_time_frac", "SAFLEX share of epoch time"))


def diagnostics_rows(main: pd.DataFrame, data: StudyData) -> pd.DataFrame:
    """Per (task, upstream): what SAFLEX did in the last epoch, averaged over seeds. The weight
    columns come from the per-sample weights the trainer keeps (summarised in `data.saflex_diag`)."""
    rows = []
    for (task, up), g in main[main["learner"] == SAFLEX].groupby(["task", "upstream"]):
        vals: dict[str, list[float]] = {k: [] for k, _ in DIAG_COLUMNS}
        for key in g["key"]:
            last = data.last_epoch(key)
            for k in ("saflex_label_shift", "saflex_argmax_change"):
                if k in last:
                    vals[k].append(float(last[k]))
            if last.get("saflex_s") is not None and last.get("epoch_s"):
                vals["saflex_time_frac"].append(float(last["saflex_s"]) / float(last["epoch_s"]))
            diag = data.diag(key)
            if diag is not None:
                vals["w_std"].append(float(diag["w_std"]))
                vals["w_low_frac"].append(float(diag["w_low_frac"]))
        rows.append(dict(task=task, upstream=up, n=len(g), **{k: (float(np.mean(v)) if v else math.nan) for k, v in vals.items()}))
    return pd.DataFrame(rows)


# ---- noisy diagnostic ----------------------------------------------------------------------------
def _num_classes(task: str) -> int | None:
    try:
        from bench.tasks import get_task

        return int(get_task(task).num_classes) or None
    except Exception:
        return None


def _flip_rate(upstream: str) -> str:
    m = re.match(r"noisy\(\s*([0-9.eE+-]+)\s*,", upstream)
    return f"{100 * float(m.group(1)):g} %" if m else "a fraction"


NOISY_LOG = ("saflex_w_auc", "saflex_recovered_frac", "saflex_clean_moved_frac")


def noisy_rows(noisy: pd.DataFrame, data: StudyData) -> pd.DataFrame:
    """Per (task, upstream) and arm (X, X+ref, each SAFLEX setting): test accuracy, paired Δ vs X, and
    for SAFLEX the last-epoch weight AUC and label-recovery counters (mean and CI over seeds); chance
    = clean_moved / (C − 1): a label-blind mover that moves the same share of samples to a uniformly
    drawn other class sends a flipped sample to its true class with probability 1/(C − 1)."""
    rows = []
    for (task, up), g in noisy.groupby(["task", "upstream"]):
        C = _num_classes(task)
        xs = _per_seed(g[g["learner"] == NONE])
        arms = [(NONE, "", g[g["learner"] == NONE]), (REF, "", g[g["learner"] == REF])]
        arms += [(SAFLEX, k, s) for k, s in g[g["learner"] == SAFLEX].groupby("knobs")]
        for learner, knobs, sub in arms:
            if not len(sub):
                continue
            ss = _per_seed(sub)
            gain, _ = _paired(xs, ss) if learner != NONE else (mean_ci([]), None)
            logs = {k: {} for k in NOISY_LOG}
            for _, r in sub.iterrows():
                last = data.last_epoch(r["key"])
                for k in NOISY_LOG:
                    if k in last and last[k] is not None:
                        logs[k][int(r["seed"])] = float(last[k])
            rec, moved = pd.Series(logs["saflex_recovered_frac"]), pd.Series(logs["saflex_clean_moved_frac"])
            common = rec.index.intersection(moved.index)
            above = (mean_ci((rec.loc[common] - moved.loc[common] / (C - 1)).to_numpy()) if C and C > 1 and len(common)
                     else mean_ci([]))
            kn = run_knobs(sub) if learner == SAFLEX else {}
            name = ("X" if learner == NONE else "X+ref" if learner == REF else f"X+{saflex_name(kn)}")
            rows.append(dict(task=task, upstream=up, learner=learner, knobs=knobs, name=name, C=C, per_seed=ss,
                             moves=learner == SAFLEX and moves_labels(kn), n=len(ss), acc=mean_ci(ss), gain=gain,
                             auc=mean_ci(list(logs["saflex_w_auc"].values())),
                             recovered=mean_ci(rec.to_numpy()), clean_moved=mean_ci(moved.to_numpy()),
                             chance=mean_ci((moved.loc[common] / (C - 1)).to_numpy()) if C and C > 1 and len(common) else mean_ci([]),
                             above_chance=above))
    return pd.DataFrame(rows)


def _noisy_sentences(task_rows: pd.DataFrame) -> list[tuple[str, str]]:
    """Per label-moving SAFLEX setting of one task: (the plain sentence, a short verdict for the summary):
    does it recover flipped labels better than chance, and does it cost test accuracy."""
    out = []
    task = _short(task_rows["task"].iloc[0])
    weights_only = task_rows[(task_rows["learner"] == SAFLEX) & ~task_rows["moves"]]
    for r in task_rows[task_rows["moves"]].itertuples():
        if _is_nan(r.recovered.mean):
            out.append((f"- {task}, {r.name}: no label-recovery counters logged.", f"{task}: not logged"))
            continue
        a = r.above_chance
        if _is_nan(a.lo):
            better = "no CI (fewer than 2 seeds)"
        else:
            better = "yes" if a.lo > 0 else "no, below chance" if a.hi < 0 else "not distinguishable (CI includes 0)"
        if _is_nan(r.gain.lo):
            hurt = "no CI"
        else:
            hurt = "it hurts (CI below 0)" if r.gain.hi < 0 else "it helps (CI above 0)" if r.gain.lo > 0 \
                else "no detectable change (CI includes 0)"
        text = (f"- {task} (C = {r.C}): {r.name} returns {r.recovered.mean:.3f} of flipped samples to their true class "
                f"and moves {r.clean_moved.mean:.3f} of clean labels; a label-blind mover with that clean rate would "
                f"return {r.chance.mean:.3f} (clean moved / {r.C - 1 if r.C else '?'}). Better than chance: {better}; "
                f"recovered − chance {_frac_ci(a)} over {a.n} seeds. Test accuracy against X: "
                f"{_ci(r.gain, True)} points, {hurt}.")
        if len(weights_only):
            w = weights_only.iloc[0]
            d, _ = _paired(w.per_seed, r.per_seed)
            text += f" Against {w['name']}: {_ci(d, True)} points paired."
        short_better = {"yes": "recovers flipped labels better than chance"}.get(better, "does not recover flipped "
                                                                                       "labels better than chance" if better.startswith(("no", "not")) else better)
        out.append((text, f"{task}: {r.name} {short_better}; test accuracy against X {_ci(r.gain, True)} points: {hurt}"))
    return out


def noisy_section(noisy: pd.DataFrame, fair: bool, data: StudyData) -> tuple[list[str], list[str]]:
    """The section's lines and the short verdicts (one per label-moving setting and task) for the summary."""
    if not len(noisy):
        return ["## Noisy upstream: label noise with a known flipped flag", "", "_No noisy-upstream runs found._", ""], []
    rows = noisy_rows(noisy, data)
    ups = sorted(rows["upstream"].unique())
    L = [f"## Noisy upstream: {', '.join(f'`{u}` ({_flip_rate(u)} of augmented labels flipped to a uniformly drawn other class)' for u in ups)}", "",
         f"Seeds {_seeds(noisy['seed'])}; " + ("fair protocol (`ref_frac` set: same labelled images for every arm)."
                                                if fair else "first protocol (no `ref_frac`)."),
         "The flipped samples are known, so SAFLEX's weights and labels can be scored against the truth "
         "(last epoch of each run's metrics.jsonl): ROC-AUC of −w for the flipped flag (0.5 = blind); recovered = "
         "share of flipped samples whose argmax(q) is their true class again; clean moved = share of clean samples "
         "whose argmax(q) left their label. Chance = clean moved / (C − 1): moving the same share of samples blindly "
         "to a random other class recovers a flipped one with probability 1/(C − 1).", "",
         "| task | upstream | arm | n seeds | test acc | Δ vs X (paired) | AUC of −w (flipped) | recovered | clean moved | chance |",
         "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows.itertuples():
        L.append(f"| {_short(r.task)} | {r.upstream} | {r.name} | {r.n} | {_ci(r.acc)} | "
                 f"{_ci(r.gain, True) if r.learner != NONE else ''} | {_frac_ci(r.auc)} | {_frac_ci(r.recovered)} | "
                 f"{_frac_ci(r.clean_moved)} | {_frac_ci(r.chance)} |")
    L += ["", LEGEND_SEEDS + " Fractions (AUC, recovered, clean moved, chance): mean ± 95 % t half-width over seeds, "
          "not in points.", ""]
    pairs = [p for _, tr in rows.groupby("task") for p in _noisy_sentences(tr)]
    sentences = [p[0] for p in pairs]
    if sentences:
        L += ["Does moving labels recover the flipped ones without hurting clean accuracy?", "", *sentences, ""]
    else:
        L += ["No label-moving SAFLEX setting ran on the noisy upstream: label recovery is not tested here "
              "(weights only keep q = y, so nothing is recovered by construction).", ""]
    return L, [p[1] for p in pairs]


# ---- noise floor (A/A runs) ------------------------------------------------------------------------
def noise_floor_section(aa: tuple[pd.DataFrame, pd.DataFrame] | None, main: pd.DataFrame | None = None) -> list[str]:
    """The numerical noise floor (A/A): two regenerations of the same specs under a different float
    order (e.g. 1 vs 2 threads, `saflex-bench compare A B`), their per-key differences, whether their
    conclusions agree, and which of this study's paired gains stand above numerical noise, seed noise,
    both or neither. `aa`: the two regenerations' run frames (attrs `source`: where each came from);
    [] when no A/A pair is given."""
    if not aa:
        return []
    from reports.compare import compare_frames, experiment_noise

    a, b = (df.attrs.get("source", name) for df, name in zip(aa, "AB"))
    c = compare_frames(*aa)
    f = c.floor
    L = ["## Noise floor: what numerics alone move", "",
         f"The same {f.n} specs were run twice (A: {public_source(str(a))}, B: {public_source(str(b))}); the "
         f"runs differ only in floating-point order (A numerics: {c.numerics_a}; B numerics: {c.numerics_b}).",
         "",
         f"- {f.n_differ} of {f.n} runs end with a different test accuracy; mean |Δ| {100 * f.mean_abs:.2f}, "
         f"sd {100 * f.sd:.2f}, max |Δ| {100 * f.max_abs:.2f} points (Δ = B − A).", ""]
    concl = c.conclusions
    if len(concl):
        agree = int(concl["agrees"].sum())
        L += [f"- Conclusions of the paired comparisons in that slice (sign of the gain and whether its 95 % CI "
              f"excludes 0): {agree} of {len(concl)} agree between A and B.", ""]
        L += ["| experiment | learner | gain A | gain B | agree |", "|---|---|---:|---:|---|"]
        for r in concl.itertuples():
            L.append(f"| {_short(getattr(r, 'task', ''))} {getattr(r, 'upstream', '')} | {r.learner} | "
                     f"{100 * r.gain_a:+.2f} | {100 * r.gain_b:+.2f} | {'yes' if r.agrees else 'NO'} |")
        L.append("")
    if main is not None and len(main):
        noise = experiment_noise(main, f)
        noise = noise[noise["learner"] != NONE]
        if len(noise):
            L += ["Each paired gain of this study against both noise sources (a gain counts as above a source when it "
                  "exceeds twice that source's scale for a mean over its n seeds: numerics = floor sd / √n; seeds = "
                  "the X arm's sd × √(2/n)):", "",
                  "| task | upstream | learner | n | gain | verdict (above ...) |", "|---|---|---|---:|---:|---|"]
            for r in noise.itertuples():
                L.append(f"| {_short(r.task)} | {r.upstream} | {r.learner} | {r.n} | {100 * r.gain:+.2f} | {r.noise} |")
            counts = noise["noise"].value_counts()
            L += ["", "Verdicts: " + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ".", ""]
    return L


# ---- the report -------------------------------------------------------------------------------------
def _tuning_verdict(truns: pd.DataFrame) -> list[str]:
    tune = tuning_table(truns) if len(truns) else pd.DataFrame()
    if not len(tune):
        return []
    chosen, ranking = choose(tune)
    gains = tune.groupby("knobs")["delta"].mean()
    return [f"- Tuning (validation only, seed(s) {_seeds(truns['seed'])}): {int((gains > 0).sum())} of {len(gains)} SAFLEX "
            f"settings beat the upstream alone on validation; the selected one is `{chosen}`"
            + (" (the setting the comparison ran)." if chosen == "default" else
               ", which is NOT the setting the comparison ran: make it the default and rerun.")]


def _chosen_rule_lines(data: StudyData, frames: "ComparisonFrames", sx_name: str) -> list[str]:
    """The summary's first lines when the rule the tuning seed chose is not the stored one and its reruns
    are complete: the headline gains under that rule (the lines after them are under the stored rule)."""
    from reports.paper import gain_summary_lines

    rule, runs, chosen = _rule_in_force(data, frames)
    if not chosen or rule == f"val_{STORED_RULE}":
        return []
    return gain_summary_lines(runs, runs.loc[runs["learner"] == SAFLEX, "arm"].iloc[0], sx_name, rule,
                              f"the selection rule chosen on the tuning seed; {len(runs)} runs rerun under it")


def _summary(table: pd.DataFrame, fam: pd.DataFrame, avg: dict, main: pd.DataFrame, noisy_verdicts: list[str],
             aa: bool, fair: bool, tuning: list[str] = (), chosen: list[str] = ()) -> list[str]:
    L = ["## Summary", ""]
    if chosen:
        L += [*chosen, f"- The lines below are under val_{STORED_RULE}, the rule the study's runs were stored "
              "under (the tables above and the selection section give both)."]
    if len(table):
        sx_name = saflex_name(run_knobs(main[main["learner"] == SAFLEX]))
        for col, what in (("gain", "X"), ("gain_ref", "X+ref (same labelled data)")):
            ci, per_task = avg[col]
            if _is_nan(ci.mean):
                continue
            verdict = "excludes 0" if _excludes_zero(ci) else "includes 0"
            L.append(f"- {sx_name} over {what}: average {_pts(ci.mean, True)} points over {len(per_task)} tasks, "
                     f"task-clustered 95 % CI [{_pts(ci.lo, True)}, {_pts(ci.hi, True)}] ({verdict}).")
        for name in ("vs X", "vs X+ref"):
            f = fam[fam["comparison"] == name]
            if not len(f):
                continue
            up = [f"{_short(r.task)}/{r.upstream}" for r in f.itertuples() if r.excludes and r.gain.lo > 0]
            down = [f"{_short(r.task)}/{r.upstream}" for r in f.itertuples() if r.excludes and r.gain.hi < 0]
            L.append(f"- Per experiment {name}: "
                     + (f"no experiment's CI excludes 0 ({len(f)} experiments)." if not up and not down else
                        f"CI above 0 in {len(up)} ({', '.join(up) or 'none'}), below 0 in {len(down)} "
                        f"({', '.join(down) or 'none'}) of {len(f)} experiments."))
        n_holm = int((fam["p_holm"] < ALPHA).sum()) if len(fam) else 0
        if len(fam):
            L.append(f"- After Holm's correction over all {len(fam)} comparisons, {n_holm} remain below {ALPHA:g} "
                     f"(about {ALPHA * len(fam):.1f} of {len(fam)} uncorrected 95 % CIs would exclude 0 by chance).")
        ci, _ = avg["ref_gain"]
        if not _is_nan(ci.mean):
            L.append(f"- The label-budget control itself (X+ref − X): average {_pts(ci.mean, True)} points, task-clustered "
                     f"95 % CI [{_pts(ci.lo, True)}, {_pts(ci.hi, True)}].")
        few = table[[min(r.gain.n, r.gain_ref.n if r.has_ref else r.gain.n) < MIN_SEEDS for r in table.itertuples()]]
        if len(few):
            L.append(f"- {len(few)} of {len(table)} experiments have fewer than {MIN_SEEDS} paired seeds: "
                     + ", ".join(f"{_short(r.task)}/{r.upstream}" for r in few.itertuples()) + ".")
        if not fair:
            L.append("- These results are of the first protocol: the arms did not see the same labelled data.")
    else:
        L.append("- No main-comparison runs.")
    if noisy_verdicts:
        L += [f"- Noisy upstream, label moving: {v}." for v in noisy_verdicts]
    L += list(tuning)
    L += ["", "What this study cannot show:", ""]
    sizes = split_sizes(main) if len(main) else pd.DataFrame()
    if len(sizes):
        L.append("- Small test sets: one test image is " + ", ".join(
            f"{100 / r.test_min:.2f} points on {_short(r.task)} ({r.test} images)" for r in sizes.itertuples() if r.test_min)
            + "; gains of a point or two are a handful of images.")
        L.append(f"- Its protocol is not the paper's: model `{_field(main, 'model')}`, "
                 f"epochs {_epochs(main)}, "
                 f"device(s) {_field(main, 'device', False)}. Whether SAFLEX helps under the paper's models, data and "
                 "schedules is not tested here.")
    if len(table):
        n_tasks = table["task"].nunique()
        L.append(f"- With {n_tasks} task(s) the task-clustered CI has {n_tasks - 1} degree(s) of freedom: it is wide by "
                 "construction, and experiments within a task are not independent evidence.")
    L.append("- Numerical noise across machines (the same spec run twice) is "
             + ("measured in the noise-floor section below." if aa else
                "not measured in this report (no A/A results given): differences of the order of that noise are not findings."))
    return L + [""]


def study_data(root: str | Path, aa_roots: tuple | None = None) -> StudyData:
    """The study's runs, their logged epochs and SAFLEX's weight summaries read from a results root
    of run folders (and the A/A pair's runs from theirs): what the results table keeps."""
    from reports.study_table import epochs_frame, runs_frame, saflex_diag_frame

    runs = runs_frame(root)
    source = runs.attrs["source"]
    runs = runs[runs["task"].isin(TASKS)].reset_index(drop=True)
    runs.attrs["source"] = source
    aa = tuple(runs_frame(r) for r in aa_roots) if aa_roots else None
    from reports.load import load_results
    from reports.selection import selection_frame  # majority rates: recorded, else from the data ($SAFLEX_DATA)

    with_dirs = load_results(root)  # run_dir: where each record's own majority rate is read
    return StudyData(runs, epochs_frame(root, runs["key"]), saflex_diag_frame(root, runs["key"]), aa,
                     selection=selection_frame(with_dirs[with_dirs["key"].isin(set(runs["key"]))]))


def write_study(root: str | Path, out: str | Path = DEFAULT_OUT, aa_root: tuple | None = None) -> Path:
    """The report straight from results roots of run folders (what building the table and writing
    the report from it gives, in one step)."""
    return write_markdown(study_data(root, aa_root), out)


def write_markdown(data: StudyData, out: str | Path = DEFAULT_OUT) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(data))
    return out


def split_rules(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs under the study's stored selection rule, runs rerun under another): every section reads the
    first; the selection section gives the main comparison's conclusions under the second too."""
    rule = df["select_metric"].fillna(STORED_RULE) if "select_metric" in df else pd.Series(STORED_RULE, index=df.index)
    return df[rule == STORED_RULE], df[rule != STORED_RULE]


def rule_reruns(other: pd.DataFrame) -> pd.DataFrame:
    """The main comparison (X, X+ref, X+SAFLEX at today's default, fair protocol) among the reruns."""
    return main_runs(other, "default")[0] if len(other) else other


def _majority_annotator(data: StudyData):
    """frame -> frame + MAJORITY/DEGENERATE from the table's majority rates, without the `knobs` column (it
    labels arms, render's _with_labels; it is not a protocol column: the tables group without it); None when
    the table has no majority rates."""
    from reports.selection import annotate_selection

    if data.selection is None or not len(data.selection):
        return None
    maj = data.selection.set_index("key")["selection.majority"]
    return lambda f: annotate_selection(f.drop(columns="knobs", errors="ignore"), majority=f["key"].map(maj))


@dataclass
class ComparisonFrames:
    """The study's runs split as every section reads them (render and main_table_tex)."""
    df: pd.DataFrame            # the stored rule's runs of the reported seeds (degenerate selections annotated)
    other_rule: pd.DataFrame    # runs rerun under another selection rule
    fair_tuning: pd.DataFrame   # the fair protocol's tuning-seed runs: they choose the rule only
    main: pd.DataFrame          # the main comparison (X, X+ref, X+SAFLEX at the setting in force)
    fair: bool                  # whether `main` is of the fair protocol
    tuning_main: pd.DataFrame   # the tuning seed's runs of the main comparison
    reruns: pd.DataFrame        # the main comparison among `other_rule`


def comparison_frames(data: StudyData) -> ComparisonFrames:
    df = _with_labels(data.runs)
    df = df[df["task"].isin(TASKS)]
    if data.selection is not None and len(data.selection):  # degenerate selections, flagged in every table
        from reports.selection import annotate_selection

        df = annotate_selection(df, majority=df["key"].map(data.selection.set_index("key")["selection.majority"]))
    df, other_rule = split_rules(df)
    df, fair_tuning = split_fair_tuning(df)
    setting = main_setting(df)
    main, fair = main_runs(df, setting)
    tuning_main = main_runs(fair_tuning, setting)[0] if len(fair_tuning) else fair_tuning
    return ComparisonFrames(df, other_rule, fair_tuning, main, fair, tuning_main,
                            rule_reruns(split_fair_tuning(other_rule)[0]))


def _rule_in_force(data: StudyData, frames: ComparisonFrames) -> tuple[str, pd.DataFrame, bool]:
    """(rule, the main comparison under it, whether the tuning seed chose it): reports/paper.py rule_in_force
    on the study's frames; the stored rule when the table has no majority rates."""
    from reports.paper import rule_in_force

    ann = _majority_annotator(data)
    if ann is None or not len(frames.main):
        return f"val_{STORED_RULE}", frames.main, False
    return rule_in_force(ann(pd.concat([frames.main, frames.tuning_main])), data.epochs,
                         ann(frames.reruns) if len(frames.reruns) else None)


def _selection_md(main: pd.DataFrame, df: pd.DataFrame, data: StudyData, sx_name: str,
                  rerun: pd.DataFrame | None = None) -> list[str]:
    """Accuracy and AUC side by side, degenerate selections per arm, the selection rule chosen on the
    tuning seed and the conclusions under it (reports/selection.py), from the table's majority rates."""
    from reports.paper import selection_section

    ann = _majority_annotator(data)
    if ann is None:
        return ["## Selection", "", "_No selection-split majority rates in the results table: rebuild it "
                "(`saflex-bench study saflex_medmnist --build-table R` with $SAFLEX_DATA set)._", ""]
    sx_arm = next(iter(main.loc[main["learner"] == SAFLEX, "arm"].unique()), SAFLEX)
    return selection_section(ann(main), ann(df), data.epochs, sx_arm, f"X+{sx_name}",
                             rerun=ann(rerun) if rerun is not None and len(rerun) else None)


def main_table_tex(data: StudyData) -> str:
    """The main comparison (X, X+ref, X+SAFLEX at the default in force) under the selection rule in force
    as a LaTeX table (booktabs, multirow), degenerate selections marked."""
    from reports.paper import paper_table, to_latex

    rule, main, chosen = _rule_in_force(data, comparison_frames(data))
    how = "chosen on the tuning seed" if chosen else "the rule the runs were stored under"
    return to_latex(paper_table(main.drop(columns="knobs", errors="ignore")),
                    caption=f"MedMNIST: test accuracy and AUC (points) of X, X+ref and X+SAFLEX, the epoch "
                    f"selected on {rule} ({how}); mean ± 95 % t half-width over seeds; Δ paired by seed "
                    "with its 95 % CI; d: degenerate selections.", label="tab:saflex-medmnist") + "\n"


def render(data: StudyData) -> str:
    """The report (Markdown) from the study's data alone."""
    frames = comparison_frames(data)
    df, other_rule, fair_tuning, main, fair, tuning_main = (frames.df, frames.other_rule, frames.fair_tuning,
                                                            frames.main, frames.fair, frames.tuning_main)
    truns = tuning_runs(df)
    noisy, noisy_fair = noisy_runs(df)
    table = main_table(main)
    fam = multiple_comparisons(table) if len(table) else pd.DataFrame(columns=["comparison", "p", "p_holm", "excludes"])
    avg = {c: clustered_average(table, c) for c in ("gain", "gain_ref", "ref_gain")} if len(table) else {}
    sx_knobs = run_knobs(main[main["learner"] == SAFLEX])
    sx_name = saflex_name(sx_knobs)

    L: list[str] = ["# Does SAFLEX beat the augmentations it sits on? MedMNIST study", "",
                    f"_Generated by `saflex-bench study` on {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC from "
                    f"{len(df)} stored runs"
                    + (f", plus {len(fair_tuning)} of the tuning seed" if len(fair_tuning) else "")
                    + (f" and {len(other_rule)} rerun under another selection rule" if len(other_rule) else "")
                    + f" ({public_source(str(data.runs.attrs.get('source', '?')))}); do not edit by hand._", ""]
    L += ["## Protocol (read from the run specs)", "", *protocol_lines(main, fair)]
    L += tuning_section(truns, {"tuning": truns, "main comparison": main, "noisy diagnostic": noisy})

    L += [f"## X vs X+ref vs X+{sx_name} (test accuracy, points)", ""]
    if len(table):
        L += [*_main_md(table), "", LEGEND_SEEDS + " X = the upstream alone; X+ref = X trained on train + the "
              "reference part (label-budget control); pairs = seeds paired for Δ SAFLEX − X / Δ SAFLEX − (X+ref); "
              f"flag `<{MIN_SEEDS} pairs`: fewer paired seeds than the study asks for; `degenerate selections a/b/c`: runs of "
              "X / X+ref / X+SAFLEX whose selected epoch's selection-split accuracy is at or below its majority rate.", ""]
        L += ["### Average over experiments, clustered by task", "",
              "Experiments of one task share its data and test set, so they are not independent: each task's "
              "experiment gains are averaged first, and the 95 % t-interval is taken over tasks.", "",
              "| comparison | " + " | ".join(_short(t) for t in sorted(table["task"].unique())) + " | average | 95 % CI (over tasks) |",
              "|---|" + "---:|" * (table["task"].nunique() + 2)]
        for col, name in (("gain", "Δ SAFLEX − X"), ("gain_ref", "Δ SAFLEX − (X+ref)"), ("ref_gain", "Δ (X+ref) − X")):
            ci, per_task = avg[col]
            L.append(f"| {name} | " + " | ".join(_pts(per_task.get(t, math.nan), True, 2) for t in sorted(table["task"].unique()))
                     + f" | {_pts(ci.mean, True, 2)} | " + ("n/a" if _is_nan(ci.lo) else f"[{_pts(ci.lo, True, 2)}, {_pts(ci.hi, True, 2)}]") + " |")
        n_tasks = table["task"].nunique()
        if n_tasks > 1:
            tq = _st.t.ppf(1 - ALPHA / 2, n_tasks - 1)
            L += ["", f"Per-task columns: mean of that task's experiment gains, points. The CI uses the t quantile for "
                  f"{n_tasks - 1} degree(s) of freedom ({tq:.2f} against 1.96 for a normal interval): with "
                  f"{n_tasks} tasks it is wide, and it is the honest width for {n_tasks} independent units.", ""]
        else:
            L += ["", "Per-task columns: mean of that task's experiment gains, points. One task only: no interval "
                  "over tasks.", ""]
        paper = PAPER_HEADLINE_GAIN.get(SAFLEX)
        if paper is not None:
            L += [f"For context only: the paper reports an average gain of +{paper} points for SAFLEX under its own "
                  "protocol (other models, data and schedules); it is not a target for this study and not comparable "
                  "to the numbers above.", ""]
        L += ["### Multiple comparisons", "", *multiple_comparisons_md(fam, len(table)), ""]
        over = table["overhead"].dropna()
        if len(over):
            L += ["### Cost", "",
                  f"X+SAFLEX time per step / X's (per epoch where steps were not timed), median over experiments: "
                  f"{over.median():.2f}× (runs of a sweep share the machine unevenly: indicative).", ""]
    else:
        L += ["_No main-comparison runs found._", ""]

    L += _selection_md(pd.concat([main, tuning_main]), pd.concat([df, fair_tuning]), data, sx_name, rerun=frames.reruns)

    diag = diagnostics_rows(main, data) if len(main) else pd.DataFrame()
    if len(diag) and diag[[k for k, _ in DIAG_COLUMNS]].notna().any().any():
        L += [f"## What {sx_name} did (last epoch, mean over seeds)", "",
              "Weights are rescaled to mean 1 over the batch when `normalize` is on, so their mean is not informative; "
              "these columns say how far SAFLEX moved away from the upstream's own weights and labels."
              + ("" if moves_labels(sx_knobs) else " Its runs have eps=0 with `lp` labels: the label step keeps q = y "
                 "by construction, so the label columns are 0 and SAFLEX acts through the weights alone."), "",
              "| task | upstream | n | " + " | ".join(label for _, label in DIAG_COLUMNS) + " |",
              "|---|---|---:|" + "---:|" * len(DIAG_COLUMNS)]
        for r in diag.itertuples():
            L.append(f"| {_short(r.task)} | {r.upstream} | {r.n} | "
                     + " | ".join("–" if math.isnan(getattr(r, k)) else f"{getattr(r, k):.3f}" for k, _ in DIAG_COLUMNS) + " |")
        L += ["", "Each cell: mean over the arm's seeds of the last epoch's value (fractions, not points).", ""]

    change_md, change_verdict = default_change_section(df)
    L += change_md
    noisy_md, noisy_verdicts = noisy_section(noisy, noisy_fair, data)
    L += noisy_md
    aa_md = noise_floor_section(data.aa, main)
    L += _summary(table, fam, avg, main, noisy_verdicts, bool(aa_md), fair, _tuning_verdict(truns) + change_verdict,
                  chosen=_chosen_rule_lines(data, frames, sx_name))
    L += aa_md
    return "\n".join(L) + "\n"
