"""Comparison tables: every learner arm against X (the `none` learner) on the same upstream and seeds.

Per experiment (task, upstream and every other varying protocol column) and per non-`none` arm:
mean and Student-t CI over seeds of X and of the arm, the paired difference arm − X (pairs = same
seed), the paired difference arm − X+ref when the label-budget control `ref` ran too, cost (step-time
overhead), flags; plus the average gain per arm over experiments.

In memory (the DataFrames returned here) metrics are raw fractions; every written output (Markdown,
LaTeX and CSV) is in points (x100) and the CSV columns say so (`..._test_acc_pts_...`).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from reports.load import NONE, REF, arm_order, describe_skipped, experiment_columns, method_label
from reports.compare import numerics_mismatch
from reports.paper import tex_escape
from reports.stats import mean_ci, paired_diff_ci

FLAG_HELP = {
    "missing_pair": "a seed has X but not this arm or the reverse (see unpaired_seeds); Δ uses the pairs only",
    "no_baseline": "no X run at all for this experiment",
    "no_learner": "only X runs in this experiment: nothing to compare",
    "no_ref": "other experiments have X+ref runs, this one has none: no Δ vs X+ref",
    "n<2": "an arm or the pairs have fewer than 2 seeds: no CI",
    "n<3": "only 2 seeds or pairs: CI very wide (the t-quantile for 1 degree of freedom is 12.7)",
    "dup_seed": "several runs share a seed (e.g. from wandb); they were averaged per seed",
    "mixed_numerics": "X and the arm ran under different numerics (threads, device, library builds, deterministic "
                      "mode; see the runs' numerics.*): part of their difference can be float order, not the method",
    "mixed_cost": "X and the arm were timed under different thread counts or devices: the overhead column compares "
                  "unlike measurements",
    "degenerate": "some runs of X or the arm selected an epoch whose selection-split accuracy is at or below the "
                  "split's majority rate (one class predicted there; column `degenerate (X/arm)`, reports/selection.py)",
}


def _usage_error(msg: str) -> Exception:
    from bench.errors import UsageError

    return UsageError(msg)


def _metric_col(df: pd.DataFrame, metric: str) -> str:
    col = f"metrics.{metric}"
    if col not in df.columns:
        have = sorted(c[len("metrics."):] for c in df.columns if c.startswith("metrics."))
        raise _usage_error(f"unknown metric '{metric}' (in these results: {', '.join(have) or 'none'})")
    return col


def _per_seed(g: pd.DataFrame, col: str) -> pd.Series:
    if g.empty or col not in g.columns:
        return pd.Series(dtype=float)
    return g.groupby("seed")[col].mean().dropna().sort_index()


def _mean(g: pd.DataFrame, col: str) -> float:
    return float(g[col].mean()) if col in g.columns and len(g) and g[col].notna().any() else math.nan


def _n_degenerate(g: pd.DataFrame) -> float:
    """Runs whose selected epoch is degenerate (reports/selection.py annotate_selection); NaN when not checked."""
    from reports.selection import DEGENERATE

    return int((g[DEGENERATE] == 1).sum()) if DEGENERATE in g.columns else math.nan


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def _groups(df: pd.DataFrame, cols: list[str]):
    for key, g in df.groupby(cols, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        yield dict(zip(cols, key)), g


def _ci_cols(prefix: str, ci) -> dict[str, float]:
    return {f"{prefix}_mean": ci.mean, f"{prefix}_ci_lo": ci.lo, f"{prefix}_ci_hi": ci.hi}


def arm_stats(df: pd.DataFrame, metric: str = "test_acc", confidence: float = 0.95) -> pd.DataFrame:
    """One row per experiment and arm (X = `none`, `saflex`, `saflex[eps=0.05]`, `ref`, ...): n seeds,
    mean and CI of the metric (fractions), mean cost."""
    col = _metric_col(df, metric)
    exp_cols = experiment_columns(df)
    rows = []
    for key, g in _groups(df, exp_cols + ["learner", "arm"]):
        ci = mean_ci(_per_seed(g, col), confidence)
        rows.append({**key, "family": g["family"].iloc[0], "dataset": g["dataset"].iloc[0],
                     "method": g["method"].iloc[0], "n": ci.n, **_ci_cols(metric, ci),
                     "epoch_s_mean": _mean(g, "cost.epoch_s"), "step_s_mean": _mean(g, "cost.step_s")})
    return pd.DataFrame(rows)


def _unpaired(x_only: list, a_only: list, arm: str) -> str:
    return "; ".join(s for s in (f"X only: {','.join(map(str, x_only))}" if x_only else "",
                                 f"{method_label(arm)} only: {','.join(map(str, a_only))}" if a_only else "") if s)


def comparison_table(df: pd.DataFrame, metric: str = "test_acc", confidence: float = 0.95) -> pd.DataFrame:
    """One row per experiment x non-`none` arm (see `experiment_columns`; knob settings are separate
    arms, never averaged together); an experiment with X runs only gets one row with arm "".

    Columns (fractions): learner, arm, learner_cfg; n_none, n_arm, n_pairs;
    none_<m>_{mean,ci_lo,ci_hi}, arm_<m>_{...}; gain_<m>_{...} (paired arm − X);
    n_pairs_ref, gain_vs_ref_<m>_{...} (paired arm − X+ref, where the experiment has `ref` runs and
    the arm is not `ref`); {none,arm}_{epoch,step}_s_mean, overhead_{epoch,step}_s (arm / X),
    arm_learner_s_mean; flags (';'-joined, see FLAG_HELP), unpaired_seeds."""
    col = _metric_col(df, metric)
    exp_cols = experiment_columns(df)
    m = metric
    used = {*exp_cols, "family", "dataset", "learner", "arm", "learner_cfg", "seed", col, "device"}
    df = df[[c for c in df.columns if c in used or c.startswith(("cost.", "numerics.", "selection."))]]  # groups copy every column
    ref_anywhere = (df["learner"] == REF).any()
    rows = []
    for key, g in _groups(df, exp_cols):
        base = g[g["learner"] == NONE]
        xs = _per_seed(base, col)
        ref = g[g["arm"] == REF]
        rs = _per_seed(ref, col)
        arms = [a for a in arm_order(g["arm"]) if a != NONE] or [""]
        for arm in arms:
            a = g[g["arm"] == arm]
            ss = _per_seed(a, col)
            pairs = xs.index.intersection(ss.index).sort_values()
            cx, cs = mean_ci(xs, confidence), mean_ci(ss, confidence)
            cd = paired_diff_ci(xs.loc[pairs], ss.loc[pairs], confidence)
            learner = a["learner"].iloc[0] if len(a) else ""
            vs_ref = bool(len(ref)) and learner not in ("", REF)
            rpairs = rs.index.intersection(ss.index).sort_values() if vs_ref else pd.Index([])
            cr = paired_diff_ci(rs.loc[rpairs], ss.loc[rpairs], confidence) if vs_ref else mean_ci([])
            x_only = sorted(set(xs.index) - set(ss.index)) if arm else []
            a_only = sorted(set(ss.index) - set(xs.index))
            flags = []
            if x_only or a_only or not arm:
                flags.append("missing_pair")
            if xs.empty:
                flags.append("no_baseline")
            if not arm:
                flags.append("no_learner")
            if ref_anywhere and arm and learner != REF and ref.empty:
                flags.append("no_ref")
            n_min = min(cx.n, cs.n, cd.n)
            if n_min < 2:
                flags.append("n<2")
            elif n_min < 3:
                flags.append("n<3")
            if base["seed"].duplicated().any() or a["seed"].duplicated().any():
                flags.append("dup_seed")
            both = pd.concat([base, a])
            if numerics_mismatch(both):
                flags.append("mixed_numerics")
            if any(c in both and both[c].dropna().nunique() > 1 for c in ("numerics.threads", "numerics.device", "device")):
                flags.append("mixed_cost")
            n_deg_x, n_deg_a = _n_degenerate(base), _n_degenerate(a)
            if n_deg_x > 0 or n_deg_a > 0:  # NaN (not checked) is not a flag
                flags.append("degenerate")
            ex, ea = _mean(base, "cost.epoch_s"), _mean(a, "cost.epoch_s")
            tx, ta = _mean(base, "cost.step_s"), _mean(a, "cost.step_s")
            rows.append({
                **key, "family": g["family"].iloc[0], "dataset": g["dataset"].iloc[0],
                "learner": learner, "arm": arm, "learner_cfg": a["learner_cfg"].iloc[0] if len(a) else "",
                "n_none": cx.n, "n_arm": cs.n, "n_pairs": cd.n,
                **_ci_cols(f"none_{m}", cx), **_ci_cols(f"arm_{m}", cs), **_ci_cols(f"gain_{m}", cd),
                "n_pairs_ref": cr.n, **_ci_cols(f"gain_vs_ref_{m}", cr),
                "none_epoch_s_mean": ex, "arm_epoch_s_mean": ea, "overhead_epoch_s": _ratio(ea, ex),
                "none_step_s_mean": tx, "arm_step_s_mean": ta, "overhead_step_s": _ratio(ta, tx),
                "arm_learner_s_mean": _mean(a, "cost.learner_s"),
                "n_degenerate_none": n_deg_x, "n_degenerate_arm": n_deg_a,
                "flags": ";".join(flags), "unpaired_seeds": _unpaired(x_only, a_only, arm),
            })
    return pd.DataFrame(rows)


def average_gain(table: pd.DataFrame, metric: str = "test_acc", confidence: float = 0.95) -> pd.DataFrame:
    """Per arm: the average of the per-experiment paired gains over X (and over X+ref), fractions,
    with a t-CI over experiments. Experiments without a pair cannot contribute and are counted in
    n_without_pairs; attrs['n_no_learner'] counts experiments with X runs only."""
    g, gr = f"gain_{metric}_mean", f"gain_vs_ref_{metric}_mean"
    rows = []
    arms = arm_order(a for a in table["arm"].unique() if a) if len(table) else []
    for arm in arms:
        sub = table[table["arm"] == arm]
        ci = mean_ci(sub[g], confidence)
        cr = mean_ci(sub[gr], confidence)
        rows.append({"learner": sub["learner"].iloc[0], "arm": arm, "n_experiments": ci.n,
                     **{f"avg_gain_{metric}" if k.endswith("_mean") else k: v
                        for k, v in _ci_cols(f"avg_gain_{metric}", ci).items()},
                     "n_without_pairs": int(sub[g].isna().sum()), "n_experiments_ref": cr.n,
                     **{f"avg_gain_vs_ref_{metric}" if k.endswith("_mean") else k: v
                        for k, v in _ci_cols(f"avg_gain_vs_ref_{metric}", cr).items()}})
    cols = ["learner", "arm", "n_experiments", f"avg_gain_{metric}", f"avg_gain_{metric}_ci_lo",
            f"avg_gain_{metric}_ci_hi", "n_without_pairs", "n_experiments_ref", f"avg_gain_vs_ref_{metric}",
            f"avg_gain_vs_ref_{metric}_ci_lo", f"avg_gain_vs_ref_{metric}_ci_hi"]
    out = pd.DataFrame(rows, columns=cols)
    out.attrs["n_no_learner"] = int((table["arm"] == "").sum()) if len(table) else 0
    return out


# ---- rendering --------------------------------------------------------------------------------
def _isnan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def fmt_points(mean: float, lo: float, hi: float, signed: bool = False) -> str:
    """'86.00 ± 1.23' in points; '86.00 ± n/a' when the CI is undefined; '–' when no value."""
    if _isnan(mean):
        return "–"
    s = f"{100 * mean:+.2f}" if signed else f"{100 * mean:.2f}"
    return s + (" ± n/a" if _isnan(lo) else f" ± {100 * (hi - lo) / 2:.2f}")


def _fmt_num(v: float, spec: str, prefix: str = "", scale: float = 1.0) -> str:
    return "–" if _isnan(v) else f"{prefix}{scale * v:{spec}}"


def _extra_cols(table: pd.DataFrame) -> list[str]:
    """Identity columns besides task and upstream that tell rows of one task apart (a column that only
    follows the task, e.g. a family's task options, would repeat the task in every row)."""
    known = {"task", "upstream", "family", "dataset"}
    cols = list(table.columns)
    extra = [c for c in cols[: cols.index("family")] if c not in known] if "family" in cols else []
    return [c for c in extra if (table.groupby("task")[c].nunique(dropna=False) > 1).any()]


def _has_ref(table: pd.DataFrame) -> bool:
    return bool(len(table)) and (table["learner"] == REF).any()


def _ci3(r: pd.Series, prefix: str, signed: bool = False) -> str:
    return fmt_points(r[f"{prefix}_mean"], r[f"{prefix}_ci_lo"], r[f"{prefix}_ci_hi"], signed=signed)


def display_table(table: pd.DataFrame, metric: str = "test_acc") -> pd.DataFrame:
    """The human table (strings, points) shared by Markdown, LaTeX, the study and the wandb report."""
    m = metric
    ref = _has_ref(table)
    rows = []
    for _, r in table.iterrows():
        d = {"Task": r["task"], "Upstream": r["upstream"]}
        for c in _extra_cols(table):
            d[c] = str(r[c])
        d["Arm"] = method_label(r["arm"]) if r["arm"] else "–"
        n = f"{r['n_none']}/{r['n_arm']}/{r['n_pairs']}"
        d["n (X/arm/pairs/ref pairs)" if ref else "n (X/arm/pairs)"] = n + (f"/{r['n_pairs_ref']}" if ref else "")
        d["X"] = _ci3(r, f"none_{m}")
        d["arm"] = _ci3(r, f"arm_{m}")
        d["Δ vs X"] = _ci3(r, f"gain_{m}", signed=True)
        if ref:
            d["Δ vs X+ref"] = _ci3(r, f"gain_vs_ref_{m}", signed=True)
        d["ms/step X"] = _fmt_num(r["none_step_s_mean"], ".1f", scale=1000)
        d["ms/step arm"] = _fmt_num(r["arm_step_s_mean"], ".1f", scale=1000)
        over = r["overhead_step_s"] if not _isnan(r["overhead_step_s"]) else r["overhead_epoch_s"]
        d["overhead"] = _fmt_num(over, ".2f", "×")
        if "n_degenerate_arm" in table.columns and table["n_degenerate_arm"].notna().any():
            d["degenerate (X/arm)"] = f"{_fmt_num(r['n_degenerate_none'], '.0f')}/{_fmt_num(r['n_degenerate_arm'], '.0f')}"
        d["flags"] = r["flags"].replace(";", ", ")
        rows.append(d)
    return pd.DataFrame(rows)


def ood_table(df: pd.DataFrame, metric: str = "acc", confidence: float = 0.95) -> pd.DataFrame:
    """In-distribution vs out-of-distribution, side by side (a human table, points): per experiment and
    arm, the ID test metric, each OOD test set's (``metrics.ood_<target>_<metric>``), and the ID -> OOD
    drop (ID minus the mean over the OOD sets; per seed, then mean ± CI). Empty without OOD metrics."""
    ood_cols = sorted(c for c in df.columns if c.startswith("metrics.ood_") and c.endswith(f"_{metric}"))
    id_col = f"metrics.test_{metric}"
    if not ood_cols or id_col not in df.columns:
        return pd.DataFrame()
    rows = []
    exp_cols = experiment_columns(df)
    for key, g in _groups(df[df[ood_cols].notna().any(axis=1)], exp_cols):
        for arm in arm_order(g["arm"].unique()):
            a = g[g["arm"] == arm]
            d = {"Task": key["task"], "Upstream": key["upstream"], "Arm": method_label(arm), "n": str(a["seed"].nunique())}
            ci = mean_ci(_per_seed(a, id_col), confidence)
            d["ID"] = fmt_points(ci.mean, ci.lo, ci.hi)
            present = [c for c in ood_cols if a[c].notna().any()]
            for c in present:
                ci = mean_ci(_per_seed(a, c), confidence)
                d[c[len("metrics."):-len(metric) - 1]] = fmt_points(ci.mean, ci.lo, ci.hi)
            per_seed = a.groupby("seed").apply(lambda r: float(r[id_col].mean() - r[present].mean(axis=1).mean()),
                                               include_groups=False) if present else pd.Series(dtype=float)
            ci = mean_ci(per_seed.dropna(), confidence)
            d["ID→OOD drop"] = fmt_points(ci.mean, ci.lo, ci.hi, signed=True)
            rows.append(d)
    return pd.DataFrame(rows).fillna("–")


def average_by_upstream(table: pd.DataFrame, metric: str = "test_acc", confidence: float = 0.95) -> pd.DataFrame:
    """Per upstream: each arm's average gain over the tasks it ran on (a human table); empty unless
    some upstream ran on several tasks (otherwise it would repeat the main table)."""
    if not len(table) or table.groupby("upstream")["task"].nunique().max() < 2:
        return pd.DataFrame()
    parts = []
    for up, sub in table.groupby("upstream", sort=True):
        disp = display_average(average_gain(sub, metric, confidence), metric)
        if len(disp):
            disp.insert(0, "Upstream", up)
            parts.append(disp)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def display_average(avg: pd.DataFrame, metric: str = "test_acc") -> pd.DataFrame:
    """The per-arm average gains as a human table (points)."""
    ref = bool(len(avg)) and (avg["n_experiments_ref"] > 0).any()
    rows = []
    for _, r in avg.iterrows():
        d = {"Arm": method_label(r["arm"]), "experiments": str(r["n_experiments"]),
             "avg Δ vs X": _ci3(r.rename({f"avg_gain_{metric}": f"avg_gain_{metric}_mean"}), f"avg_gain_{metric}", True)}
        if ref:
            d["experiments with ref"] = str(r["n_experiments_ref"])
            d["avg Δ vs X+ref"] = _ci3(r.rename({f"avg_gain_vs_ref_{metric}": f"avg_gain_vs_ref_{metric}_mean"}),
                                       f"avg_gain_vs_ref_{metric}", True)
        rows.append(d)
    return pd.DataFrame(rows)


def legend(confidence: float = 0.95, over: str = "seeds", ref: bool = False) -> str:
    """The line under every table: what ± means, and the columns that need saying."""
    pct = f"{100 * confidence:g} %"
    s = f"± = half-width of the {pct} Student-t interval over {over}, in points (metric × 100); n/a: fewer than 2."
    if over == "seeds":
        s += (" X = the upstream alone (learner `none`); arm = X with the learner; Δ vs X = arm − X paired over "
              "the seeds both have" + ("; Δ vs X+ref = arm − X+ref (label-budget control) paired likewise" if ref else "")
              + "; overhead = time per step of the arm / of X (per epoch where steps were not timed), from "
              "runs timed separately: runs that shared a machine unevenly distort it, and "
              "benchmarks/bench_saflex_overhead.py --learners measures the ratio side by side in one process.")
    else:
        s += " Each experiment's paired Δ counts once; experiments without pairs are left out."
    return s


def headline(avg: pd.DataFrame, metric: str = "test_acc", confidence: float = 0.95) -> list[str]:
    """'Average gain of X+saflex over X (test_acc): +1.23 points (95 % CI [...], over 7 experiments;
    paper: +1.2 points); over X+ref: ...' per arm."""
    out = []
    pct = f"{100 * confidence:g} %"

    def part(r: pd.Series, name: str, n_col: str) -> str:
        g, lo, hi = (r[f"avg_gain_{name}{s}"] for s in ("", "_ci_lo", "_ci_hi"))
        ci = "CI n/a" if _isnan(lo) else f"{pct} CI [{100 * lo:+.2f}, {100 * hi:+.2f}]"
        g_s = "n/a" if _isnan(g) else f"{100 * g:+.2f} points"
        n = r[n_col]
        return f"{g_s} ({ci}, over {n} experiment{'s' if n != 1 else ''}"

    for _, r in avg.iterrows():
        line = f"Average gain of {method_label(r['arm'])} over X ({metric}): " + part(r, metric, "n_experiments")
        if r["n_without_pairs"]:
            line += f"; {r['n_without_pairs']} without pairs excluded"
        line += ")"  # the paper's own figure is quoted once, under its protocol, by the study alone
        if r["n_experiments_ref"]:
            line += "; over X+ref: " + part(r, f"vs_ref_{metric}", "n_experiments_ref") + ")"
        out.append(line)
    if not out:
        out.append("Average gain: n/a (no runs of any learner besides X)")
    return out


def _md_table(disp: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|")

    text = {"Task", "Upstream", "Arm", "flags"}
    lines = ["| " + " | ".join(map(cell, disp.columns)) + " |",
             "|" + "|".join("---" if c in text else "---:" for c in disp.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in disp.itertuples(index=False)]
    return "\n".join(lines)




def public_source(src: str) -> str:
    """Where results came from, without a path of the machine the report ran on (a report is shared)."""
    if src.startswith("wandb:"):
        return src
    return f"results store '{Path(src).name or src}'"


def _header_lines(df: pd.DataFrame, metric: str) -> list[str]:
    src = public_source(df.attrs.get("source", "?"))
    sweep = df.attrs.get("sweep")
    skipped = describe_skipped(df.attrs.get("skipped") or {})
    arms = arm_order(df["arm"].unique()) if len(df) else []
    return [f"Source: {src}" + (f" (sweep: {sweep})" if sweep else "") + f"; {len(df)} done runs loaded"
            + (f"; {skipped}" if skipped else "; 0 skipped") + ".",
            f"Metric: {metric}. Arms: {', '.join(method_label(a) for a in arms)}."]


def main_table_md(df: pd.DataFrame, confidence: float = 0.95) -> list[str]:
    """The paper-layout table (reports/paper.py): every arm as a column, test accuracy and AUC (balanced
    accuracy on tabular) side by side, degenerate selections marked; then the per-arm counts."""
    from reports.paper import degenerate_note, metrics_of, paper_table, to_markdown as paper_md
    from reports.selection import DEGENERATE, degenerate_counts

    if not len(df) or not metrics_of(df):
        return []
    out = ["## Main table: every arm, accuracy and " + ("balanced accuracy" if "test_bacc" in metrics_of(df) else "AUC"),
           "", paper_md(paper_table(df, confidence=confidence)), "",
           "Arms: mean ± half-width of the 95 % t-interval over seeds, points; Δ: paired by seed, "
           "[95 % CI]. " + degenerate_note(df), ""]
    if DEGENERATE in df.columns:
        c = degenerate_counts(df, ["arm"])
        out += ["Degenerate selections per arm: " + "; ".join(
            f"{method_label(r.arm)} {r.degenerate}/{r.runs}" + (f" ({r.unknown} unknown)" if r.unknown else "")
            for r in c.itertuples()) + ".", ""]
        out += _rule_line(df)
    return out


def _rule_line(df: pd.DataFrame) -> list[str]:
    """The selection rule reports/selection.py picks on the tuning seed, from the runs' metrics.jsonl
    (local store only; runs from wandb carry no run files)."""
    from reports.selection import CRITERION, TUNING_SEEDS, choose_rule, incumbent_rule, rule_selections

    if "run_dir" not in df.columns or df["run_dir"].isna().all():
        return []
    choice = choose_rule(rule_selections(df), TUNING_SEEDS, incumbent_rule(df))
    if choice.table.empty or not choice.table["runs"].sum():
        return [f"Selection rule: not chosen ({choice.reason}).", ""]
    counts = "; ".join(f"{r.rule} {r.degenerate}/{r.runs}" for r in choice.table.itertuples())
    return [f"Selection rule on the tuning seed ({', '.join(map(str, TUNING_SEEDS))}): "
            + (f"**{choice.rule}** ({choice.reason})" if choice.rule else f"none ({choice.reason})")
            + f"; degenerate selections per rule: {counts}. Criterion: {CRITERION}", ""]


def to_markdown(df: pd.DataFrame, table: pd.DataFrame, avg: pd.DataFrame, metric: str = "test_acc",
                confidence: float = 0.95) -> str:
    parts = [f"# Learners vs X: {metric}", "", *_header_lines(df, metric), "", *main_table_md(df, confidence),
             f"## Every arm against X: {metric}", "",
             _md_table(display_table(table, metric)), "", legend(confidence, "seeds", _has_ref(table)), ""]
    if len(avg):
        parts += ["## Average gain per arm", "", _md_table(display_average(avg, metric)), "",
                  legend(confidence, "experiments"), ""]
    ood = ood_table(df, metric.split("_", 1)[-1] if metric.startswith("test_") else "acc", confidence)
    if len(ood):
        parts += ["## In-distribution vs out-of-distribution test sets", "", _md_table(ood), "",
                  legend(confidence, "seeds").split(" X = ")[0] + " ID = the source domain's test split; "
                  "ID→OOD drop = ID minus the mean over the OOD test sets, per seed.", ""]
    by_up = average_by_upstream(table, metric, confidence)
    if len(by_up):
        parts += ["## Average gain per arm and upstream (over tasks)", "", _md_table(by_up), "",
                  legend(confidence, "experiments"), ""]
    parts += [f"- **{line}**" for line in headline(avg, metric, confidence)]
    used = sorted({f for fl in table["flags"] for f in fl.split(";") if f}) if len(table) else []
    if used:
        parts += ["", "Flags:"] + [f"- `{f}`: {FLAG_HELP.get(f, f)}" for f in used]
    return "\n".join(parts) + "\n"


def _tex_tabular(disp: pd.DataFrame) -> list[str]:
    lines = [f"\\begin{{tabular}}{{{'l' * len(disp.columns)}}}", "\\toprule",
             " & ".join(tex_escape(c) for c in disp.columns) + r" \\", "\\midrule"]
    lines += [" & ".join(tex_escape(v) for v in row) + r" \\" for row in disp.itertuples(index=False)]
    return lines + ["\\bottomrule", "\\end{tabular}"]


def to_latex(df: pd.DataFrame, table: pd.DataFrame, avg: pd.DataFrame, metric: str = "test_acc",
             confidence: float = 0.95) -> str:
    lines = ["% generated by `saflex-bench report`; needs \\usepackage{booktabs}",
             "\\begin{table}[t]", "\\centering", "\\small", *_tex_tabular(display_table(table, metric))]
    caption = " ".join(_header_lines(df, metric) + [legend(confidence, "seeds", _has_ref(table))]
                       + headline(avg, metric, confidence))
    lines += [f"\\caption{{{tex_escape(caption)}}}", "\\label{tab:learner-gain}", "\\end{table}"]
    if len(avg):
        lines += ["", "\\begin{table}[t]", "\\centering", "\\small", *_tex_tabular(display_average(avg, metric)),
                  f"\\caption{{{tex_escape(f'Average gain per arm ({metric}). ' + legend(confidence, 'experiments'))}}}",
                  "\\label{tab:learner-avg-gain}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def in_points(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The table as written to CSV: every column holding the metric (or a difference of it) x100 and
    renamed `<...>_<metric>_pts_<...>`; a `_ci_half` column (the ± of the tables) after each CI."""
    pat = re.compile(rf"(^|_){re.escape(metric)}(_|$)")
    out = {}
    for c in table.columns:
        if not pat.search(c):
            out[c] = table[c]
            continue
        name = pat.sub(lambda mo: f"{mo.group(1)}{metric}_pts{mo.group(2)}", c, count=1)
        out[name] = 100 * table[c].astype(float)
        if c.endswith("_ci_hi"):
            lo = c[: -len("_hi")] + "_lo"
            out[name[: -len("_hi")] + "_half"] = 100 * (table[c].astype(float) - table[lo].astype(float)) / 2
    return pd.DataFrame(out)


def write_tables(df: pd.DataFrame, out_dir: str | Path, metric: str = "test_acc",
                 confidence: float = 0.95) -> tuple[list[Path], list[str]]:
    """Write table.{md,tex,csv}, gain_summary.csv (both CSVs in points) and main_table.tex (the paper
    layout); returns (paths, headline lines)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_table(df, metric, confidence)
    avg = average_gain(table, metric, confidence)
    paths = [out / "table.md", out / "table.tex", out / "table.csv", out / "gain_summary.csv"]
    paths[0].write_text(to_markdown(df, table, avg, metric, confidence))
    paths[1].write_text(to_latex(df, table, avg, metric, confidence))
    in_points(table, metric).to_csv(paths[2], index=False)
    in_points(avg, metric).to_csv(paths[3], index=False)
    from reports.paper import metrics_of, paper_table, to_latex as paper_tex

    if len(df) and metrics_of(df):  # the paper-layout table as LaTeX (booktabs, multirow)
        paths.append(out / "main_table.tex")
        paths[-1].write_text(paper_tex(paper_table(df, confidence=confidence), caption="Test metrics per dataset "
                             "and method (points); Δ paired by seed with its 95 % CI; d: degenerate selections.",
                             label="tab:main") + "\n")
    return paths, headline(avg, metric, confidence)
