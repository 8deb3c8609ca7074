"""Model selection, read back from the run records: which epoch each selection rule picks, whether that
epoch is degenerate, and which rule to use, decided on the tuning seed only.

- A run's *selection split* is the validation split minus the reference part (bench.data.with_reference).
  Its *majority rate* is the share of its most frequent class: the accuracy of a model that predicts
  that class everywhere. Records written since this module store it (`info.select_majority`); for older
  records it is recomputed from the task's data (same task, options, ref_frac, seed -> same split).
- A selected epoch is *degenerate* when its selection-split accuracy is at or below that rate: the rule
  kept a model that does no better than one class there (e.g. a high val AUC with a collapsed threshold).
- Rules (`RULES`): val loss (lowest), val acc, val AUC (highest). Ties go to the later epoch, as in
  bench/trainer.py (`score >= best`). Only `val_*` columns of metrics.jsonl are read: never a test metric.

`choose_rule` declares its criterion up front (CRITERION): on the tuning seed's runs, the rule with the
fewest degenerate selections; ties go to the rule the runs already use (a tie keeps the stored runs
valid: no reruns), then to the first of RULE_PREFERENCE (val AUC: the MedMNIST official protocol; then
val loss, a proper scoring rule; then val acc). No selection-split score breaks ties: each rule wins on
its own score.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import pandas as pd

RULES: dict[str, tuple[str, int]] = {"val_auc": ("val_auc", +1), "val_loss": ("val_loss", -1), "val_acc": ("val_acc", +1)}
RULE_PREFERENCE = ("val_auc", "val_loss", "val_acc")
SPEC_RULE = {"auc": "val_auc", "loss": "val_loss", "acc": "val_acc"}  # RunSpec.select_metric -> rule
TUNING_SEEDS = (0,)
CRITERION = ("on the tuning seed's runs only: fewest degenerate selections (selected epoch's selection-split accuracy "
             "at or below the split's majority rate); ties go to the rule the runs already use (no reruns), then to "
             "the first of " + ", ".join(RULE_PREFERENCE) + " (val AUC: MedMNIST's official rule). No test metric is read.")
MAJORITY, DEGENERATE = "selection.majority", "selection.degenerate"  # columns annotate_selection adds
TOL = 1e-9  # accuracies are k/n: "at or below" must not depend on float rounding


def majority_rate(labels: Iterable) -> float:
    """Share of the most frequent label (NaN when empty). Multi-label rows (2-D) are not single-class."""
    s = pd.Series(list(labels))
    return float(s.value_counts(normalize=True).iloc[0]) if len(s) else math.nan


def is_degenerate(val_acc: float, majority: float) -> float:
    """1.0 / 0.0, or NaN when either side is unknown."""
    if val_acc is None or majority is None or math.isnan(val_acc) or math.isnan(majority):
        return math.nan
    return float(val_acc <= majority + TOL)


def select_epoch(epochs: list[Mapping], rule: str) -> Mapping | None:
    """The metrics.jsonl row a rule picks (ties -> the later epoch); None when no row has the metric."""
    col, sign = RULES[rule]
    best, best_score = None, -math.inf
    for row in epochs:
        v = row.get(col)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if sign * v >= best_score:
            best, best_score = row, sign * v
    return best


# ---- the majority rate of each run's selection split ------------------------------------------
def _record(run_dir) -> dict:
    from bench.results import RESULT, load_record  # the one reader of run records

    rec, _ = load_record(Path(run_dir) / RESULT)
    return rec or {}


def _data_majority(spec_dict: Mapping, data_root) -> float:
    from bench.data import with_reference
    from bench.runner import resolve_data_root
    from bench.spec import RunSpec
    from bench.tasks import get_task

    spec = RunSpec.from_dict(spec_dict)
    data = with_reference(get_task(spec.task).load(resolve_data_root(data_root), spec), spec.ref_frac, spec.ref_from, spec.seed)
    y = data.select.y
    return majority_rate(y.tolist()) if y.ndim == 1 else math.nan


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def split_spec(row: Mapping) -> dict:
    """The spec fields that decide a run's selection split, from a tidy row (reports.load's frame, or a
    study's compact table, which keep no run files): task, seed, the reference carve, task options."""
    d = {"task": row.get("task"), "method": row.get("upstream") or "none", "seed": int(row.get("seed"))}
    for k in ("model", "ref_frac", "ref_from", "as_rgb"):
        v = row.get(k)
        if not _missing(v):
            d[k] = v.item() if hasattr(v, "item") else v  # numpy scalars from a frame
    opts = row.get("options")
    opts = json.loads(opts) if isinstance(opts, str) and opts else {}
    opts.update({k[len("options."):]: v for k, v in row.items() if str(k).startswith("options.") and not _missing(v)})
    if opts:
        d["options"] = opts
    return d


def selection_majority(df: pd.DataFrame, data_root=None,
                       compute: Callable[[Mapping, object], float] | None = None) -> pd.Series:
    """Per run (df index): the majority rate of its selection split; the value its record holds first,
    else computed from the task's data (one load per task, options, ref_frac and seed; the spec from the
    record, or from the row when there are no run files); NaN when the data is missing."""
    compute = compute or _data_majority
    cache: dict[str, float] = {}
    out = {}
    for i, r in df.iterrows():
        rec = _record(r.get("run_dir")) if isinstance(r.get("run_dir"), str) else {}
        v = (rec.get("info") or {}).get("select_majority")
        if _missing(v) and not _missing(r.get(MAJORITY)):
            v = r.get(MAJORITY)  # already in the frame (a study table keeps it)
        if _missing(v) and (rec.get("spec") or not _missing(r.get("task"))):
            s = rec.get("spec") or split_spec(r)
            k = json.dumps([s.get("task"), s.get("options"), s.get("ref_frac"), s.get("ref_from"), s.get("seed")],
                           sort_keys=True, default=str)
            if k not in cache:
                try:
                    cache[k] = compute(s, data_root)
                except Exception:  # data missing or unreadable: the count is unknown, not zero
                    cache[k] = math.nan
            v = cache[k]
        out[i] = math.nan if v is None else float(v)
    return pd.Series(out, dtype=float).reindex(df.index)


def annotate_selection(df: pd.DataFrame, data_root=None, majority: pd.Series | None = None) -> pd.DataFrame:
    """df + MAJORITY and DEGENERATE (1/0/NaN: the stored selection's val acc at or below the majority rate)."""
    df = df.copy()
    df[MAJORITY] = selection_majority(df, data_root) if majority is None else majority.reindex(df.index)
    acc = df["metrics.val_acc"] if "metrics.val_acc" in df else pd.Series(math.nan, index=df.index)
    df[DEGENERATE] = [is_degenerate(a, m) for a, m in zip(acc.astype(float), df[MAJORITY])]
    return df


def degenerate_counts(df: pd.DataFrame, by: Iterable[str] = ("arm",), col: str = DEGENERATE) -> pd.DataFrame:
    """Per group: runs, degenerate selections, runs whose status is unknown (majority rate not found)."""
    by = list(by)
    g = df.groupby(by, dropna=False)[col]
    return pd.DataFrame({"runs": g.size(), "degenerate": g.apply(lambda s: int((s == 1).sum())),
                         "unknown": g.apply(lambda s: int(s.isna().sum()))}).reset_index()


# ---- every rule on every run (metrics.jsonl) ----------------------------------------------------
def read_epochs(run_dir) -> list[dict]:
    """The per-epoch rows of a run's metrics.jsonl (bench.results: the one torn-line rule)."""
    from bench.results import read_metrics

    return read_metrics(run_dir) if isinstance(run_dir, str) else []


def rule_selections(df: pd.DataFrame, epochs_of: Callable[[pd.Series], list[dict]] | None = None,
                    rules: Iterable[str] = RULE_PREFERENCE) -> pd.DataFrame:
    """One row per run x rule: the epoch the rule picks, that epoch's val acc / loss / AUC, whether it is
    degenerate (needs df[MAJORITY]), and whether it is the epoch the run stored (`stored`)."""
    epochs_of = epochs_of or (lambda r: read_epochs(r.get("run_dir")))
    rows = []
    for i, r in df.iterrows():
        eps = [e for e in epochs_of(r) if "epoch" in e]
        for rule in rules:
            e = select_epoch(eps, rule)
            maj = float(r.get(MAJORITY, math.nan))
            acc = float(e.get("val_acc", math.nan)) if e else math.nan
            rows.append({"row": i, "key": r.get("key"), "seed": r.get("seed"), "arm": r.get("arm"), "rule": rule,
                         "epoch": int(e["epoch"]) if e else None, "val_acc": acc,
                         "val_loss": float(e.get("val_loss", math.nan)) if e else math.nan,
                         "val_auc": float(e.get("val_auc", math.nan)) if e else math.nan,
                         "majority": maj, "degenerate": is_degenerate(acc, maj) if e else math.nan,
                         "stored": bool(e) and int(e["epoch"]) == int(r.get("metrics.best_epoch", -1))})
    return pd.DataFrame(rows)


@dataclass
class RuleChoice:
    rule: str | None                 # None: no run of the tuning seeds
    table: pd.DataFrame              # per rule: runs, degenerate, unknown, mean val acc margin over majority
    tuning_seeds: tuple = TUNING_SEEDS
    reason: str = ""
    criterion: str = CRITERION
    diagnostic: pd.DataFrame = field(default_factory=pd.DataFrame)  # the same table on the other seeds (not used)


def _rule_table(sel: pd.DataFrame) -> pd.DataFrame:
    if sel.empty:
        return pd.DataFrame(columns=["rule", "runs", "degenerate", "unknown", "margin"])
    rows = []
    for rule in [r for r in RULE_PREFERENCE if r in set(sel["rule"])]:
        s = sel[sel["rule"] == rule]
        rows.append({"rule": rule, "runs": len(s), "degenerate": int((s["degenerate"] == 1).sum()),
                     "unknown": int(s["degenerate"].isna().sum()),
                     "margin": float((s["val_acc"] - s["majority"]).mean())})
    return pd.DataFrame(rows)


def incumbent_rule(df: pd.DataFrame) -> str | None:
    """The rule the runs were selected with, when they all share one (RunSpec.select_metric)."""
    rules = set(df["select_metric"].dropna().map(SPEC_RULE)) if "select_metric" in df else set()
    return next(iter(rules)) if len(rules) == 1 and None not in rules else None


def choose_rule(selections: pd.DataFrame, tuning_seeds: Iterable[int] = TUNING_SEEDS,
                incumbent: str | None = None) -> RuleChoice:
    """Apply CRITERION to the runs of the tuning seeds (the rows of `rule_selections`); the other seeds'
    table is returned as a diagnostic and never read by the choice. `incumbent`: the runs' own rule,
    first among tied rules."""
    seeds = tuple(tuning_seeds)
    on = selections[selections["seed"].isin(seeds)] if len(selections) else selections
    off = selections[~selections["seed"].isin(seeds)] if len(selections) else selections
    table, diag = _rule_table(on), _rule_table(off)
    if table.empty or (table["runs"] == 0).all():
        return RuleChoice(None, table, seeds, f"no run of tuning seed(s) {', '.join(map(str, seeds))}: "
                                               "no rule can be chosen without using the reported seeds", diagnostic=diag)
    known = table[table["unknown"] < table["runs"]]
    if known.empty:
        return RuleChoice(None, table, seeds, "the majority rate of no tuning run is known", diagnostic=diag)
    fewest = known["degenerate"].min()
    order = ([incumbent] if incumbent in RULE_PREFERENCE else []) + [r for r in RULE_PREFERENCE if r != incumbent]
    tied = [r for r in order if r in set(known.loc[known["degenerate"] == fewest, "rule"])]
    rule = tied[0]
    why = (f"{rule}: {fewest} degenerate selection(s) of {int(known.set_index('rule').loc[rule, 'runs'])} tuning runs"
           + (f", tied with {', '.join(tied[1:])}; " + ("the runs' own rule" if rule == incumbent else
                                                         "first in the declared preference order")
              if len(tied) > 1 else ", the fewest"))
    return RuleChoice(rule, table, seeds, why, diagnostic=diag)


def rerun_cost(df: pd.DataFrame, selections: pd.DataFrame, rule: str, time_col: str = "cost.wall_s") -> dict:
    """What adopting `rule` costs when it differs from the runs' own rule: the runs whose selected epoch
    changes need their test metrics at that epoch (not stored: a rerun), x their measured time."""
    own = df["select_metric"].map(SPEC_RULE) if "select_metric" in df else pd.Series(None, index=df.index)
    s = selections[selections["rule"] == rule].set_index("row")
    differs = [i for i in df.index if own.get(i) != rule and i in s.index and not bool(s.loc[i, "stored"])]
    t = df.loc[differs, time_col].astype(float) if time_col in df else pd.Series(dtype=float)
    return {"rule": rule, "runs": len(differs), "of": len(df), "seconds": float(t.sum()),
            "mean_s": float(t.mean()) if len(t) else math.nan}


# ---- a study's selection section ------------------------------------------------------------------
def selection_frame(runs: pd.DataFrame, data_root=None) -> pd.DataFrame:
    """key + MAJORITY: what a study's compact table keeps so its report needs no data files."""
    return pd.DataFrame({"key": runs["key"].to_numpy(), MAJORITY: selection_majority(runs, data_root).to_numpy()})


def points_signed(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{100 * v:+.2f}"


def clustered_gain(df: pd.DataFrame, arm: str, base: str, metric: str, drop_degenerate: bool = False,
                   confidence: float = 0.95):
    """Paired (by seed) gain arm − base per experiment (task, upstream), averaged per task first, with a
    t-interval over tasks (tasks are the independent units). drop_degenerate: leave out every seed pair
    where either run selected a degenerate epoch. Returns (CI, pairs used, pairs dropped)."""
    from reports.stats import mean_ci

    col = f"metrics.{metric}"
    per_task: dict = {}
    used = dropped = 0
    for (task, _up), g in df.groupby(["task", "upstream"], sort=True):
        a = g[g["arm"] == arm].groupby("seed").agg(v=(col, "mean"), d=(DEGENERATE, "max") if DEGENERATE in g else (col, "size"))
        b = g[g["arm"] == base].groupby("seed").agg(v=(col, "mean"), d=(DEGENERATE, "max") if DEGENERATE in g else (col, "size"))
        seeds = a.index.intersection(b.index)
        if drop_degenerate and DEGENERATE in g:
            bad = [s for s in seeds if a.loc[s, "d"] == 1 or b.loc[s, "d"] == 1]
            dropped += len(bad)
            seeds = seeds.difference(bad)
        used += len(seeds)
        if len(seeds):
            per_task.setdefault(task, []).append(float((a.loc[seeds, "v"] - b.loc[seeds, "v"]).mean()))
    return mean_ci([sum(v) / len(v) for v in per_task.values()], confidence), used, dropped


def fisher_p(k1: int, n1: int, k2: int, n2: int) -> float:
    from scipy.stats import fisher_exact

    return float(fisher_exact([[k1, n1 - k1], [k2, n2 - k2]])[1]) if n1 and n2 else math.nan
