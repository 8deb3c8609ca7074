"""A study's main table in a paper's layout: one row per dataset (and upstream, and any other protocol
column that varies), one column per method (X, X+ref, X+<learner>, then the paired gains with their CIs),
for test accuracy and the task's second metric side by side (AUC; balanced accuracy on tabular tasks),
numbers right-aligned. A cell whose arm has degenerate selections (reports/selection.py) carries the
count: `86.0 ± 1.2 ᵈ2` (Markdown) / `$^{d2}$` (LaTeX).

LaTeX through pandas' Styler (booktabs rules, multicolumn metric headers); `latex_document` wraps it in
a minimal standalone document so a test can compile it where pdflatex exists.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

from reports.load import NONE, REF, arm_order, experiment_columns, method_label
from reports.selection import (CRITERION, DEGENERATE, RULE_PREFERENCE, TUNING_SEEDS, choose_rule, clustered_gain,
                                fisher_p, incumbent_rule, points_signed, rerun_cost, rule_selections)
from reports.stats import mean_ci, paired_diff_ci

ACC = "test_acc"
SECOND_METRIC = {"tabular": "test_bacc"}  # family -> the second metric; every other family: test_auc
METRIC_LABEL = {"test_acc": "accuracy", "test_auc": "AUC", "test_bacc": "balanced accuracy"}


def second_metric(df: pd.DataFrame) -> str | None:
    """The metric reported next to accuracy: balanced accuracy when every run is tabular, else AUC; None
    when the runs do not have it."""
    fams = set(df["family"].dropna()) if "family" in df else set()
    m = SECOND_METRIC.get(next(iter(fams)), "test_auc") if len(fams) == 1 else "test_auc"
    return m if f"metrics.{m}" in df and df[f"metrics.{m}"].notna().any() else None


def metrics_of(df: pd.DataFrame) -> list[str]:
    return [m for m in (ACC, second_metric(df)) if m and f"metrics.{m}" in df]


def _fmt(mean: float, lo: float, hi: float, signed: bool = False, nd: int = 1) -> str:
    if mean is None or math.isnan(mean):
        return "–"
    s = f"{100 * mean:+.{nd}f}" if signed else f"{100 * mean:.{nd}f}"
    if signed:  # a gain: its CI, so a reader sees whether it excludes 0
        return s + ("" if math.isnan(lo) else f" [{100 * lo:+.{nd}f}, {100 * hi:+.{nd}f}]")
    return s + ("" if math.isnan(lo) else f" ± {100 * (hi - lo) / 2:.{nd}f}")


def _per_seed(g: pd.DataFrame, col: str) -> pd.Series:
    return g.groupby("seed")[col].mean().dropna().sort_index() if len(g) else pd.Series(dtype=float)


def _n_degenerate(g: pd.DataFrame) -> int:
    return int((g[DEGENERATE] == 1).sum()) if DEGENERATE in g else 0


def paper_rows(df: pd.DataFrame, metrics: list[str] | None = None, confidence: float = 0.95) -> pd.DataFrame:
    """Long form of the paper table: one row per experiment x column (method or gain) x metric, with
    mean, ci_lo, ci_hi (fractions), n, n_degenerate. Gains are paired by seed against X and X+ref."""
    metrics = metrics or metrics_of(df)
    exp_cols = experiment_columns(df)
    rows = []
    for key, g in df.groupby(exp_cols, dropna=False, sort=True):
        key = dict(zip(exp_cols, key if isinstance(key, tuple) else (key,)))
        arms = arm_order(g["arm"].unique())
        learners = [a for a in arms if a not in (NONE, REF)]
        for m in metrics:
            col = f"metrics.{m}"
            seeds = {a: _per_seed(g[g["arm"] == a], col) for a in arms}
            for a in arms:
                c = mean_ci(seeds[a], confidence)
                rows.append({**key, "metric": m, "column": method_label(a), "kind": "arm", "mean": c.mean,
                             "ci_lo": c.lo, "ci_hi": c.hi, "n": c.n, "n_degenerate": _n_degenerate(g[g["arm"] == a])})
            for a in learners:
                for base in (NONE, REF):
                    if base not in seeds:
                        continue
                    pairs = seeds[base].index.intersection(seeds[a].index).sort_values()
                    c = paired_diff_ci(seeds[base].loc[pairs], seeds[a].loc[pairs], confidence)
                    rows.append({**key, "metric": m, "column": f"Δ {method_label(a)} − {method_label(base)}",
                                 "kind": "gain", "mean": c.mean, "ci_lo": c.lo, "ci_hi": c.hi, "n": c.n,
                                 "n_degenerate": _n_degenerate(g[g["arm"].isin([a, base])])})
    return pd.DataFrame(rows)


def _row_label_cols(long: pd.DataFrame) -> list[str]:
    skip = {"metric", "column", "kind", "mean", "ci_lo", "ci_hi", "n", "n_degenerate"}
    cols = [c for c in long.columns if c not in skip]
    # a column that only follows the task (e.g. its epochs) would repeat the dataset in every row
    return [c for c in cols if c in ("task", "upstream") or (long.groupby("task")[c].nunique(dropna=False) > 1).any()]


def paper_table(df: pd.DataFrame, metrics: list[str] | None = None, confidence: float = 0.95,
                degenerate_mark: str = " ᵈ{n}") -> pd.DataFrame:
    """Datasets (x upstream, x other varying columns) as rows; (metric, method) as columns; cells are
    strings in points. Arms first (X, X+ref, X+<learner>), then the gains; each cell of an arm with
    degenerate selections carries `degenerate_mark`."""
    long = paper_rows(df, metrics, confidence)
    if long.empty:
        return pd.DataFrame()
    long = long.copy()
    # "medmnist/breastmnist" -> "breastmnist", "tabular/pmlb:pima" -> "pima"; other ids stay whole ("digits/sklearn")
    long["task"] = long["task"].map(lambda t: t.split("/", 1)[-1].split(":")[-1] if t.startswith(("medmnist/", "tabular/")) else t)
    label_cols = _row_label_cols(long)
    long["cell"] = [_fmt(r.mean, r.ci_lo, r.ci_hi, signed=r.kind == "gain")
                    + (degenerate_mark.format(n=r.n_degenerate) if r.n_degenerate and r.kind == "arm" else "")
                    for r in long.itertuples()]
    order = list(dict.fromkeys(long.sort_values("kind", kind="stable")["column"]))
    metric_order = list(dict.fromkeys(long["metric"]))
    wide = long.pivot_table(index=label_cols, columns=["metric", "column"], values="cell", aggfunc="first")
    wide = wide.reindex(columns=pd.MultiIndex.from_tuples(
        [(m, c) for m in metric_order for c in order if (m, c) in wide.columns]))
    wide.columns = pd.MultiIndex.from_tuples([(METRIC_LABEL.get(m, m), c) for m, c in wide.columns])
    wide.index.names = [{"task": "dataset"}.get(n, n) for n in wide.index.names]
    return wide.fillna("–")


def degenerate_note(df: pd.DataFrame) -> str:
    if DEGENERATE not in df:
        return "Degenerate selections: not checked (no majority rate for these runs)."
    n, unknown = int((df[DEGENERATE] == 1).sum()), int(df[DEGENERATE].isna().sum())
    return (f"ᵈN: N runs of that arm selected an epoch whose selection-split accuracy is at or below the split's "
            f"majority rate (the model predicts one class there); {n} of {len(df)} runs in all"
            + (f", {unknown} unknown (majority rate not found)" if unknown else "") + ".")


def to_markdown(wide: pd.DataFrame) -> str:
    """Pipe table, two header levels flattened to 'metric: method', numbers right-aligned."""
    if wide.empty:
        return "(no runs)"
    from tabulate import tabulate

    flat = wide.reset_index()
    headers = [c if isinstance(c, str) else (c[0] if not c[1] else f"{c[0]}: {c[1]}") for c in flat.columns]
    n_lab = len(wide.index.names)
    return tabulate(flat.values.tolist(), headers=headers, tablefmt="pipe",
                    colalign=["left"] * n_lab + ["right"] * (len(headers) - n_lab), disable_numparse=True)


_TEX_ESCAPE = {"\\": r"\textbackslash{}", "<": r"\textless{}", ">": r"\textgreater{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
               "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(s: str) -> str:
    s = "".join(_TEX_ESCAPE.get(ch, ch) for ch in str(s))
    return (s.replace("±", r"$\pm$").replace("×", r"$\times$").replace("Δ", r"$\Delta$").replace("−", "--")
            .replace("–", "--"))


def _tex(s: str) -> str:
    s = str(s)
    mark = ""
    if " ᵈ" in s:
        s, n = s.split(" ᵈ", 1)
        mark = f"$^{{d{n}}}$"
    return tex_escape(s) + mark


def to_latex(wide: pd.DataFrame, caption: str = "", label: str = "tab:main") -> str:
    """A `table` environment (needs booktabs and multirow): multicolumn metric headers, label columns left-aligned,
    every number column right-aligned."""
    esc = wide.copy()
    esc = esc.map(_tex)
    esc.columns = pd.MultiIndex.from_tuples([(_tex(a), _tex(b)) for a, b in esc.columns])
    esc.index = esc.index.set_names([_tex(n) for n in esc.index.names])
    esc.index = (pd.MultiIndex.from_tuples([tuple(_tex(v) for v in t) for t in esc.index], names=esc.index.names)
                 if isinstance(esc.index, pd.MultiIndex) else esc.index.map(_tex))
    fmt = "l" * esc.index.nlevels + "r" * len(esc.columns)
    return esc.style.to_latex(column_format=fmt, hrules=True, multicol_align="c", position="t",
                              caption=_tex(caption) if caption else None, label=label, position_float="centering",
                              environment="table")


def latex_document(body: str) -> str:
    return ("\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{booktabs,multirow}\n"
            "\\usepackage[margin=1cm,landscape]{geometry}\n\\begin{document}\n\\tiny\n" + body + "\n\\end{document}\n")


def _tuning_choice(runs: pd.DataFrame, epochs: pd.DataFrame, seeds: tuple, with_selections: bool = False):
    """The rule CRITERION picks on the tuning seeds' runs (every rule's epoch read from `epochs`)."""
    eps = {key: g.to_dict("records") for key, g in epochs.groupby("key")} if len(epochs) else {}
    sel = rule_selections(runs, epochs_of=lambda r: eps.get(r["key"], []))
    choice = choose_rule(sel, seeds, incumbent_rule(runs))
    return (choice, sel) if with_selections else choice


def _choice_lines(choice) -> list[str]:
    return [f"**Chosen: {choice.rule}** ({choice.reason}).", "",
            "| rule | tuning runs | degenerate | unknown | mean val acc − majority |", "|---|---:|---:|---:|---:|",
            *(f"| {r.rule} | {r.runs} | {r.degenerate} | {r.unknown} | {points_signed(r.margin)} |"
              for r in choice.table.itertuples()), ""]


def selection_section(main: pd.DataFrame, all_runs: pd.DataFrame, epochs: pd.DataFrame, learner_arm: str,
                      learner_name: str = "X+SAFLEX", tuning_seeds: Iterable[int] = TUNING_SEEDS,
                      time_col: str = "cost.wall_s", rerun: pd.DataFrame | None = None) -> list[str]:
    """Markdown: the main comparison's accuracy and AUC side by side (reports/paper.py), degenerate
    selections per arm, the selection rule chosen on the tuning seeds (or why none can be), its cost,
    and the conclusions under it. `main` and `all_runs` must carry MAJORITY/DEGENERATE (annotate_selection);
    `epochs` is the per-epoch frame (key, epoch, val_*). Runs of the tuning seeds in `main` serve the rule
    only: the tables, counts and conclusions are over the other seeds. `rerun`: the main comparison's runs
    rerun under another rule (annotated like `main`); where their rule is the one the tuning seeds choose,
    the conclusions are given under it first, then under the stored rule for comparison."""
    seeds = tuple(tuning_seeds)
    with_tuning = main  # the rule reads the tuning seeds' epochs; tables and conclusions never do
    main = main[~main["seed"].isin(seeds)]
    rerun = rerun[~rerun["seed"].isin(seeds)] if rerun is not None and len(rerun) else None
    rerun_rule = incumbent_rule(rerun) if rerun is not None and len(rerun) else None
    covered, needed = rerun_coverage(main, rerun)
    m2 = second_metric(main) or "test_auc"
    L = [f"## Accuracy and {METRIC_LABEL.get(m2, m2)}, degenerate selections, and the selection rule", ""]
    if not len(main):
        if not len(with_tuning):
            return L + ["_No main-comparison runs._", ""]
        # the tuning seed ran first: its rule is the one the reported seeds are to run under
        choice = _tuning_choice(with_tuning, epochs, seeds)
        L += ["_No runs of the reported seeds yet: only the tuning seed's, which choose the rule they are to run under._", "",
              "### The selection rule, chosen on the tuning seed", "", f"Criterion, declared before looking: {CRITERION}", ""]
        return L + _choice_lines(choice) if choice.rule else L + [f"**No rule is chosen here:** {choice.reason}.", ""]
    L += [f"Test accuracy and test {METRIC_LABEL.get(m2, m2)} of the main comparison side by side.", "",
          to_markdown(paper_table(main)), "",
          "± = half-width of the 95 % Student-t interval over seeds, points; Δ: paired by seed, [95 % CI]. "
          + degenerate_note(main), ""]
    # degenerate counts per arm
    names = {NONE: "X", REF: "X+ref", learner_arm: learner_name}
    cnt = {a: (int((g[DEGENERATE] == 1).sum()), len(g)) for a, g in main.groupby("arm")}
    base_k = sum(cnt.get(a, (0, 0))[0] for a in (NONE, REF))
    base_n = sum(cnt.get(a, (0, 0))[1] for a in (NONE, REF))
    k, n = cnt.get(learner_arm, (0, 0))
    per_learner = all_runs.groupby("learner")[DEGENERATE].agg(lambda s: f"{int((s == 1).sum())}/{len(s)}")
    L += ["### Degenerate selections (selected epoch's selection-split accuracy at or below its majority rate)", "",
          "| arm | runs | degenerate | share |", "|---|---:|---:|---:|"]
    for a in (NONE, REF, learner_arm):
        if a in cnt:
            L.append(f"| {names[a]} | {cnt[a][1]} | {cnt[a][0]} | {100 * cnt[a][0] / cnt[a][1]:.1f} % |")
    L += ["", f"{learner_name} {k}/{n} against X and X+ref together {base_k}/{base_n} (two-sided Fisher exact "
          f"p = {fisher_p(k, n, base_k, base_n):.3f}). Over all {len(all_runs)} stored runs, per learner: "
          + ", ".join(f"{lr} {v}" for lr, v in per_learner.items()) + ".", ""]
    # the rule, on the tuning seeds only
    choice, sel = _tuning_choice(with_tuning, epochs, seeds, with_selections=True)
    seeds_s = ", ".join(map(str, seeds))
    L += ["### The selection rule, chosen on the tuning seed", "", f"Criterion, declared before looking: {CRITERION}", ""]
    if choice.rule is None:
        per_run = float(main[time_col].mean()) if time_col in main else math.nan
        n_need = main.groupby(["task", "upstream", "arm"]).ngroups
        L += [f"**No rule is chosen here:** {choice.reason}. The stored runs of this comparison use seeds "
              f"{', '.join(map(str, sorted(main['seed'].unique())))}; seed {seeds_s} is reserved for tuning and none "
              f"of its runs under this protocol is stored. Producing them costs {n_need} runs (one per task, upstream "
              f"and arm) x {per_run:.0f} s measured mean run time = {n_need * per_run / 60:.0f} CPU-minutes at 1 thread; "
              f"until then the runs keep the rule they ran with ({incumbent_rule(main) or 'their own'}) and every "
              "table flags the degenerate selections it produced.", ""]
    else:
        L += _choice_lines(choice)
    if len(choice.diagnostic):
        L += ["Diagnostic only (the reported seeds; never used to choose): degenerate selections each rule would "
              "make on the stored epochs: " + "; ".join(f"{r.rule} {r.degenerate}/{r.runs}" for r in choice.diagnostic.itertuples())
              + ". Test metrics exist only at the epoch the stored rule picked, so another rule's test numbers need reruns:", ""]
        for rule in RULE_PREFERENCE:
            c = rerun_cost(main, sel, rule, time_col)
            if c["runs"]:
                t = f"{c['seconds'] / 3600:.1f} CPU-hours" if c["seconds"] >= 3600 else f"{c['seconds'] / 60:.1f} CPU-minutes"
                state = ("not run" if rerun_rule != rule else "run: below" if covered == needed
                         else f"{covered} of the {needed} runs rerun so far")
                L.append(f"- {rule}: {c['runs']} of {c['of']} runs select another epoch -> {c['runs']} reruns x "
                         f"{c['mean_s']:.0f} s measured = {t} ({state}).")
        L += [""]
    # conclusions under the rule in force
    stored = incumbent_rule(main) or "the runs' own rules"
    if _reruns_stand(choice.rule, stored, rerun, main):
        L += [f"### Conclusions under {choice.rule} (chosen on the tuning seed; {len(rerun)} runs rerun under it)", "",
              f"Test accuracy and test {METRIC_LABEL.get(m2, m2)} of the main comparison under {choice.rule}.", "",
              to_markdown(paper_table(rerun)), "", degenerate_note(rerun), ""]
        L += _degenerate_lines(rerun, names, learner_arm) + _conclusion_lines(rerun, learner_arm, learner_name, names, m2)
        L += [f"### Conclusions under {stored} (the stored rule, for comparison)", ""]
    elif choice.rule and choice.rule != stored and rerun_rule == choice.rule:
        L += [f"### Conclusions under {stored} (the stored rule; under {choice.rule} {covered} of the {needed} "
              "reruns are in: resuming the rerun sweep completes them)", ""]
    elif choice.rule and choice.rule != stored:  # the test numbers exist at the stored rule's epochs only
        L += [f"### Conclusions under {stored} (the stored rule; under {choice.rule} they need the reruns above)", ""]
    else:
        L += [f"### Conclusions under {stored}", ""]
    return L + _conclusion_lines(main, learner_arm, learner_name, names, m2)


UNIT = ["task", "upstream", "arm", "seed"]


def _reruns_stand(chosen: str | None, stored: str | None, rerun: pd.DataFrame | None, reported: pd.DataFrame) -> bool:
    """Whether the reruns give the conclusions: they ran under the rule the tuning seeds chose (not the
    stored one) and cover every reported run (a half-finished rerun never stands in for the comparison)."""
    if not chosen or chosen == stored or rerun is None or not len(rerun) or incumbent_rule(rerun) != chosen:
        return False
    covered, needed = rerun_coverage(reported, rerun)
    return covered == needed


def rule_in_force(main: pd.DataFrame, epochs: pd.DataFrame, rerun: pd.DataFrame | None = None,
                  tuning_seeds: Iterable[int] = TUNING_SEEDS) -> tuple[str | None, pd.DataFrame, bool]:
    """(rule, the reported runs under it, whether that is the rule the tuning seeds chose). The chosen rule's
    reruns once they cover every reported run of `main` (which holds the tuning seeds' runs too); otherwise
    the stored runs under their own rule. As selection_section decides, for a study's summary."""
    seeds = tuple(tuning_seeds)
    reported = main[~main["seed"].isin(seeds)]
    rerun = rerun[~rerun["seed"].isin(seeds)] if rerun is not None and len(rerun) else None
    choice = _tuning_choice(main, epochs, seeds) if len(main) else None
    stored = incumbent_rule(reported) if len(reported) else None
    chosen = choice.rule if choice is not None else None
    if _reruns_stand(chosen, stored, rerun, reported):
        return chosen, rerun, True
    return stored, reported, chosen is not None and chosen == stored


def gain_summary_lines(runs: pd.DataFrame, learner_arm: str, learner_name: str, rule: str | None,
                       how: str) -> list[str]:
    """One summary line per baseline (X, X+ref): the task-clustered gain in accuracy and the second metric."""
    m2 = second_metric(runs) or "test_auc"
    gains = paper_rows(runs, ["test_acc", m2])
    gains = gains[gains["column"].str.startswith(f"Δ {method_label(learner_arm)} − ")]
    L = []
    for base, name in ((NONE, "X"), (REF, "X+ref")):
        if base not in set(runs["arm"]):
            continue
        parts, per_exp = [], []
        for metric in ("test_acc", m2):
            ci, used, _ = clustered_gain(runs, learner_arm, base, metric)
            label = METRIC_LABEL.get(metric, metric)
            parts.append(f"{label} {points_signed(ci.mean)} [{points_signed(ci.lo)}, {points_signed(ci.hi)}]")
            g = gains[(gains["metric"] == metric) & (gains["column"] == f"Δ {method_label(learner_arm)} − {method_label(base)}")]
            per_exp.append(f"{label} above 0 in {int((g['ci_lo'] > 0).sum())}, below 0 in {int((g['ci_hi'] < 0).sum())}")
        L.append(f"- Under {rule} ({how}): {learner_name} − {name}, task-clustered over {runs['task'].nunique()} "
                 f"tasks: " + "; ".join(parts) + f" ({used} pairs). Per experiment (uncorrected 95 % CIs), of "
                 f"{len(g)}: " + "; ".join(per_exp) + ".")
    return L


def rerun_coverage(main: pd.DataFrame, rerun: pd.DataFrame | None) -> tuple[int, int]:
    """(runs of `main` that have a rerun, runs of `main`), a run being one (task, upstream, arm, seed)."""
    need = set(map(tuple, main[UNIT].drop_duplicates().itertuples(index=False))) if len(main) else set()
    have = set(map(tuple, rerun[UNIT].drop_duplicates().itertuples(index=False))) if rerun is not None and len(rerun) else set()
    return len(need & have), len(need)


def _degenerate_lines(runs: pd.DataFrame, names: dict, learner_arm: str) -> list[str]:
    cnt = {a: (int((g[DEGENERATE] == 1).sum()), len(g)) for a, g in runs.groupby("arm")}
    return ["Degenerate selections: " + ", ".join(f"{names[a]} {cnt[a][0]}/{cnt[a][1]}" for a in (NONE, REF, learner_arm)
                                                  if a in cnt) + ".", ""]


def _conclusion_lines(main: pd.DataFrame, learner_arm: str, learner_name: str, names: dict, m2: str) -> list[str]:
    """Task-clustered gains of the learner over X and X+ref, with and without the degenerate pairs."""
    L = []
    for metric in ("test_acc", m2):
        for base in (NONE, REF):
            ci, used, _ = clustered_gain(main, learner_arm, base, metric)
            ci_d, used_d, dropped = clustered_gain(main, learner_arm, base, metric, drop_degenerate=True)
            L.append(f"- {learner_name} − {names[base]}, {METRIC_LABEL.get(metric, metric)}, task-clustered: "
                     f"{points_signed(ci.mean)} [{points_signed(ci.lo)}, {points_signed(ci.hi)}] ({used} pairs); without the {dropped} pairs with a "
                     f"degenerate selection: {points_signed(ci_d.mean)} [{points_signed(ci_d.lo)}, {points_signed(ci_d.hi)}] ({used_d} pairs).")
    n_tasks = main["task"].nunique()
    return L + ["", f"Intervals are over tasks (the independent units): {n_tasks} tasks, {n_tasks - 1} degree(s) of freedom"
                + (": none of these can confirm or rule out a 1-point gain." if n_tasks < 10 else "."), ""]
