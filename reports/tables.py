"""Comparison tables X vs X+SAFLEX: per experiment, the mean and Student-t CI over seeds of each arm,
the paired difference (pairs = same seed), cost, flags; plus the average gain over experiments.

CSV keeps raw fractions (columns say which metric, e.g. `x_test_acc_mean`); Markdown/LaTeX show
points (x100).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from reports.load import describe_skipped, experiment_columns
from reports.stats import mean_ci, paired_diff_ci

PAPER_HEADLINE_GAIN = 1.2  # points, the SAFLEX paper's average gain
FLAG_HELP = {
    "missing_pair": "a seed has X but not X+SAFLEX or the reverse (see unpaired_seeds); Δ uses the pairs only",
    "no_baseline": "no X run at all for this experiment",
    "no_saflex": "no X+SAFLEX run at all for this experiment",
    "n<2": "an arm or the pairs have fewer than 2 seeds: no CI",
    "dup_seed": "several runs share a seed (e.g. from wandb); they were averaged per seed",
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


def _groups(df: pd.DataFrame, cols: list[str]):
    for key, g in df.groupby(cols, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        yield dict(zip(cols, key)), g


def arm_stats(df: pd.DataFrame, metric: str = "test_acc", confidence: float = 0.95) -> pd.DataFrame:
    """One row per experiment and arm (X, or one X+SAFLEX knob variant): n seeds, mean and CI of the
    metric (fractions), mean cost."""
    col = _metric_col(df, metric)
    exp_cols = experiment_columns(df)
    rows = []
    for key, g in _groups(df, exp_cols + ["saflex", "saflex_cfg"]):
        ci = mean_ci(_per_seed(g, col), confidence)
        rows.append({**key, "family": g["family"].iloc[0], "dataset": g["dataset"].iloc[0],
                     "method": g["method"].iloc[0], "n": ci.n,
                     f"{metric}_mean": ci.mean, f"{metric}_ci_lo": ci.lo, f"{metric}_ci_hi": ci.hi,
                     "epoch_s_mean": _mean(g, "cost.epoch_s"), "step_s_mean": _mean(g, "cost.step_s")})
    return pd.DataFrame(rows)


def comparison_table(df: pd.DataFrame, metric: str = "test_acc", confidence: float = 0.95) -> pd.DataFrame:
    """One row per experiment x SAFLEX variant (see `experiment_columns`; knob settings are never
    averaged together). Columns (fractions): x_/saflex_<metric>_{mean,ci_lo,ci_hi}, n_x, n_saflex,
    n_pairs, gain_<metric>_{mean,ci_lo,ci_hi} (paired, SAFLEX - X), cost, flags, unpaired_seeds."""
    col = _metric_col(df, metric)
    exp_cols = experiment_columns(df)
    m = metric
    rows = []
    for key, g in _groups(df, exp_cols):
        base = g[~g["saflex"]]
        xs = _per_seed(base, col)
        variants = sorted(g.loc[g["saflex"], "saflex_cfg"].unique()) or [""]
        for v in variants:
            sx = g[g["saflex"] & (g["saflex_cfg"] == v)]
            ss = _per_seed(sx, col)
            pairs = xs.index.intersection(ss.index).sort_values()
            cx, cs = mean_ci(xs, confidence), mean_ci(ss, confidence)
            cd = paired_diff_ci(xs.loc[pairs], ss.loc[pairs], confidence)
            x_only = sorted(set(xs.index) - set(ss.index))
            s_only = sorted(set(ss.index) - set(xs.index))
            flags = []
            if x_only or s_only:
                flags.append("missing_pair")
            if xs.empty:
                flags.append("no_baseline")
            if ss.empty:
                flags.append("no_saflex")
            if min(cx.n, cs.n, cd.n) < 2:
                flags.append("n<2")
            if base["seed"].duplicated().any() or sx["seed"].duplicated().any():
                flags.append("dup_seed")
            unpaired = "; ".join(s for s in (
                f"X only: {','.join(map(str, x_only))}" if x_only else "",
                f"X+SAFLEX only: {','.join(map(str, s_only))}" if s_only else "") if s)
            ex, es = _mean(base, "cost.epoch_s"), _mean(sx, "cost.epoch_s")
            tx, ts = _mean(base, "cost.step_s"), _mean(sx, "cost.step_s")
            rows.append({
                **key, "family": g["family"].iloc[0], "dataset": g["dataset"].iloc[0],
                "saflex_cfg": v,
                "n_x": cx.n, "n_saflex": cs.n, "n_pairs": cd.n,
                f"x_{m}_mean": cx.mean, f"x_{m}_ci_lo": cx.lo, f"x_{m}_ci_hi": cx.hi,
                f"saflex_{m}_mean": cs.mean, f"saflex_{m}_ci_lo": cs.lo, f"saflex_{m}_ci_hi": cs.hi,
                f"gain_{m}_mean": cd.mean, f"gain_{m}_ci_lo": cd.lo, f"gain_{m}_ci_hi": cd.hi,
                "x_epoch_s_mean": ex, "saflex_epoch_s_mean": es, "overhead_epoch_s": es / ex if ex else math.nan,
                "x_step_s_mean": tx, "saflex_step_s_mean": ts, "overhead_step_s": ts / tx if tx else math.nan,
                "flags": ";".join(flags), "unpaired_seeds": unpaired,
            })
    return pd.DataFrame(rows)


def average_gain(table: pd.DataFrame, metric: str = "test_acc", confidence: float = 0.95) -> pd.DataFrame:
    """Average of the per-experiment paired gains, per SAFLEX variant (fractions), with a t-CI over
    experiments. Experiments without any pair cannot contribute and are counted in n_without_pairs."""
    g = f"gain_{metric}_mean"
    rows = []
    variants = sorted(v for v in table["saflex_cfg"].unique() if v) if len(table) else []
    for v in variants:
        sub = table[table["saflex_cfg"] == v]
        ci = mean_ci(sub[g], confidence)
        rows.append({"saflex_cfg": v, "n_experiments": ci.n, f"avg_gain_{metric}": ci.mean,
                     f"avg_gain_{metric}_ci_lo": ci.lo, f"avg_gain_{metric}_ci_hi": ci.hi,
                     "n_without_pairs": int(sub[g].isna().sum())})
    cols = ["saflex_cfg", "n_experiments", f"avg_gain_{metric}", f"avg_gain_{metric}_ci_lo",
            f"avg_gain_{metric}_ci_hi", "n_without_pairs"]
    out = pd.DataFrame(rows, columns=cols)
    out.attrs["n_no_saflex"] = int((table["saflex_cfg"] == "").sum()) if len(table) else 0
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


def _fmt_num(v: float, spec: str, prefix: str = "") -> str:
    return "–" if _isnan(v) else f"{prefix}{v:{spec}}"


def _extra_cols(table: pd.DataFrame) -> list[str]:
    known = {"task", "upstream", "family", "dataset", "saflex_cfg"}
    cols = list(table.columns)
    return [c for c in cols[: cols.index("family")] if c not in known] if "family" in cols else []


def display_table(table: pd.DataFrame, metric: str = "test_acc") -> pd.DataFrame:
    """The human table (strings, points) shared by Markdown, LaTeX and the wandb report."""
    m = metric
    show_cfg = table.loc[table["saflex_cfg"] != "", "saflex_cfg"].nunique() > 1  # several knob settings
    rows = []
    for _, r in table.iterrows():
        d = {"Task": r["task"], "Upstream": r["upstream"]}
        for c in _extra_cols(table):
            d[c] = str(r[c])
        if show_cfg:
            d["SAFLEX cfg"] = r["saflex_cfg"] or "–"
        d["n (X/S/pairs)"] = f"{r['n_x']}/{r['n_saflex']}/{r['n_pairs']}"
        d["X"] = fmt_points(r[f"x_{m}_mean"], r[f"x_{m}_ci_lo"], r[f"x_{m}_ci_hi"])
        d["X+SAFLEX"] = fmt_points(r[f"saflex_{m}_mean"], r[f"saflex_{m}_ci_lo"], r[f"saflex_{m}_ci_hi"])
        d["Δ paired"] = fmt_points(r[f"gain_{m}_mean"], r[f"gain_{m}_ci_lo"], r[f"gain_{m}_ci_hi"], signed=True)
        d["s/epoch X"] = _fmt_num(r["x_epoch_s_mean"], ".2f")
        d["s/epoch X+S"] = _fmt_num(r["saflex_epoch_s_mean"], ".2f")
        d["overhead"] = _fmt_num(r["overhead_epoch_s"], ".2f", "×")
        d["flags"] = r["flags"].replace(";", ", ")
        rows.append(d)
    return pd.DataFrame(rows)


def headline(avg: pd.DataFrame, metric: str = "test_acc", confidence: float = 0.95) -> list[str]:
    """'Average SAFLEX gain: +1.23 points (95 % CI [...], 7 experiments; paper: +1.2)' per variant."""
    out = []
    pct = f"{100 * confidence:g} %"
    for _, r in avg.iterrows():
        name = "" if r["saflex_cfg"] == "saflex" else f" [{r['saflex_cfg']}]"
        g, lo, hi = (r[f"avg_gain_{metric}{s}"] for s in ("", "_ci_lo", "_ci_hi"))
        ci = "CI n/a" if _isnan(lo) else f"{pct} CI [{100 * lo:+.2f}, {100 * hi:+.2f}]"
        g_s = "n/a" if _isnan(g) else f"{100 * g:+.2f} points"
        excl = f"; {r['n_without_pairs']} without pairs excluded" if r["n_without_pairs"] else ""
        n = r["n_experiments"]
        out.append(f"Average SAFLEX gain{name} ({metric}): {g_s} ({ci}, over {n} "
                   f"experiment{'s' if n != 1 else ''}{excl}; paper: +{PAPER_HEADLINE_GAIN} points)")
    if not out:
        out.append("Average SAFLEX gain: n/a (no X+SAFLEX runs)")
    return out


def _md_table(disp: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|")

    numeric = {"n (X/S/pairs)", "X", "X+SAFLEX", "Δ paired", "s/epoch X", "s/epoch X+S", "overhead"}
    lines = ["| " + " | ".join(map(cell, disp.columns)) + " |",
             "|" + "|".join("---:" if c in numeric else "---" for c in disp.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in disp.itertuples(index=False)]
    return "\n".join(lines)


_TEX_ESCAPE = {"\\": r"\textbackslash{}", "<": r"\textless{}", ">": r"\textgreater{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
               "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(s: str) -> str:
    s = "".join(_TEX_ESCAPE.get(ch, ch) for ch in str(s))
    return s.replace("±", r"$\pm$").replace("×", r"$\times$").replace("Δ", r"$\Delta$").replace("–", "--")


def _header_lines(df: pd.DataFrame, metric: str, confidence: float) -> list[str]:
    src = df.attrs.get("source", "?")
    sweep = df.attrs.get("sweep")
    skipped = describe_skipped(df.attrs.get("skipped") or {})
    return [f"Source: {src}" + (f" (sweep: {sweep})" if sweep else "") + f"; {len(df)} done runs loaded"
            + (f"; {skipped}" if skipped else "; 0 skipped") + ".",
            f"Metric: {metric} in points (x100): mean ± half-width of the {100 * confidence:g} % "
            "Student-t CI over seeds; Δ paired = X+SAFLEX − X over the seeds both have; "
            "overhead = s/epoch(X+SAFLEX) / s/epoch(X)."]


def to_markdown(df: pd.DataFrame, table: pd.DataFrame, avg: pd.DataFrame, metric: str = "test_acc",
                confidence: float = 0.95) -> str:
    parts = [f"# X vs X+SAFLEX: {metric}", "", *_header_lines(df, metric, confidence), "",
             _md_table(display_table(table, metric)), ""]
    parts += [f"- **{line}**" for line in headline(avg, metric, confidence)]
    used = sorted({f for fl in table["flags"] for f in fl.split(";") if f})
    if used:
        parts += ["", "Flags:"] + [f"- `{f}`: {FLAG_HELP.get(f, f)}" for f in used]
    return "\n".join(parts) + "\n"


def to_latex(df: pd.DataFrame, table: pd.DataFrame, avg: pd.DataFrame, metric: str = "test_acc",
             confidence: float = 0.95) -> str:
    disp = display_table(table, metric)
    align = "ll" + "l" * (len(disp.columns) - 2)
    lines = ["% generated by `saflex-bench report`; needs \\usepackage{booktabs}",
             "\\begin{table}[t]", "\\centering", "\\small", f"\\begin{{tabular}}{{{align}}}", "\\toprule",
             " & ".join(tex_escape(c) for c in disp.columns) + r" \\", "\\midrule"]
    lines += [" & ".join(tex_escape(v) for v in row) + r" \\" for row in disp.itertuples(index=False)]
    caption = " ".join(_header_lines(df, metric, confidence)) + " " + " ".join(headline(avg, metric, confidence))
    lines += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{tex_escape(caption)}}}",
              "\\label{tab:saflex-gain}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def write_tables(df: pd.DataFrame, out_dir: str | Path, metric: str = "test_acc",
                 confidence: float = 0.95) -> tuple[list[Path], list[str]]:
    """Write table.{md,tex,csv} and gain_summary.csv; returns (paths, headline lines)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_table(df, metric, confidence)
    avg = average_gain(table, metric, confidence)
    paths = [out / "table.md", out / "table.tex", out / "table.csv", out / "gain_summary.csv"]
    paths[0].write_text(to_markdown(df, table, avg, metric, confidence))
    paths[1].write_text(to_latex(df, table, avg, metric, confidence))
    table.to_csv(paths[2], index=False)
    avg.to_csv(paths[3], index=False)
    return paths, headline(avg, metric, confidence)

