"""The SAFLEX MedMNIST study, written from stored results (never typed by hand):

    saflex-bench study --results R [--out reports/studies/saflex_medmnist.md]

Runs are selected by their specs (how they were launched does not matter):
- default selection: seed 0, `rand-m9-n2` alone and with each learner that has knobs (SAFLEX, ...)
  under several knob settings, on the TUNE_TASKS; settings are compared on VALIDATION accuracy only;
- main comparison: every X in UPSTREAMS alone and with every learner found (`saflex`, `ref`, ...;
  each at its current default knobs), all seeds; each learner arm against X, and against X+ref
  when the label-budget control ran;
- noisy-upstream diagnostic: `noisy(0.3,rand-m9-n2)` alone and with each learner.

Results of the first release (X and X+SAFLEX only) give the same sections as before.
"""
from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

import numpy as np
import pandas as pd

from reports.load import NONE, REF, arm_order, learner_defaults, load_results, method_label
from reports.stats import mean_ci, paired_diff_ci
from reports.tables import PAPER_HEADLINE_GAIN, average_gain, comparison_table, display_table, fmt_points, legend, \
    _md_table

TASKS = ("medmnist/breastmnist", "medmnist/pneumoniamnist", "medmnist/retinamnist")
UPSTREAMS = ("rand-m9-n2", "cutmix-a1.0", "mixup-a0.2")
NOISY = "noisy(0.3,rand-m9-n2)"
TUNE_TASKS = ("medmnist/breastmnist", "medmnist/retinamnist")
TUNE_UPSTREAM = "rand-m9-n2"
MODEL = "small_cnn"
DEFAULT_OUT = Path("reports/studies/saflex_medmnist.md")


def knob_label(row: pd.Series, defaults: dict, learner: str = "saflex") -> str:
    """The knobs of a learner's run that differ from the learner's current defaults ('default' if none)."""
    diff = []
    for k, v in defaults.items():
        got = row.get(f"{learner}.{k}")
        if got is None or (isinstance(got, float) and math.isnan(got) and v is not None):
            continue
        same = (got == v) or (v is None and (got is None or (isinstance(got, float) and math.isnan(got))))
        if not same:
            diff.append(f"{k}={got:g}" if isinstance(got, float) else f"{k}={got}")
    return ",".join(diff) or "default"


def _with_labels(df: pd.DataFrame) -> pd.DataFrame:
    """`knobs`: each learner run's knob setting relative to that learner's current defaults ("" for X)."""
    defaults = {lr: learner_defaults(lr) for lr in df["learner"].unique()}
    df = df.copy()
    df["knobs"] = [knob_label(r, defaults[r["learner"]], r["learner"]) if r["learner"] != NONE else ""
                   for _, r in df.iterrows()]
    return df


def tuning_table(df: pd.DataFrame) -> pd.DataFrame:
    """Validation accuracy of each knob setting of each learner with knobs minus its upstream alone
    (seed 0), per tuning task."""
    t = df[df["task"].isin(TUNE_TASKS) & (df["seed"] == 0) & (df["upstream"] == TUNE_UPSTREAM) & (df["model"] == MODEL)]
    tunable = [lr for lr in t["learner"].unique() if lr != NONE and learner_defaults(lr)]
    rows = []
    for task, g in t.groupby("task"):
        base = g[g["learner"] == NONE]
        if base.empty:
            continue
        b = float(base["metrics.val_acc"].iloc[0])
        for (learner, knobs), s in g[g["learner"].isin(tunable)].groupby(["learner", "knobs"]):
            v = float(s["metrics.val_acc"].mean())
            rows.append(dict(task=task, learner=learner, knobs=knobs, val_x=b, val_learner=v, delta=v - b))
    return pd.DataFrame(rows, columns=["task", "learner", "knobs", "val_x", "val_learner", "delta"])


def choose(tune: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """The setting with the best mean validation gain over the tuning tasks that ran it on all of them
    (`tune` holds one learner's rows)."""
    if tune.empty:
        return "default", pd.DataFrame()
    n_tasks = tune["task"].nunique()
    agg = tune.groupby("knobs").agg(mean_delta=("delta", "mean"), n_tasks=("task", "nunique")).reset_index()
    agg = agg[agg["n_tasks"] == n_tasks].sort_values("mean_delta", ascending=False)
    return (agg["knobs"].iloc[0] if len(agg) else "default"), agg


def _pts(v: float, signed: bool = False) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}")


def noisy_rows(df: pd.DataFrame, root: Path) -> pd.DataFrame:
    """Per task: test accuracy with / without SAFLEX on the noisy upstream, paired gain, and the
    ROC-AUC of -w against the flipped flag (last epoch, from metrics.jsonl)."""
    import json

    n = df[(df["upstream"] == NOISY) & (df["model"] == MODEL) & ((df["learner"] == NONE) | (df["knobs"] == "default"))]
    rows = []
    for task, g in n.groupby("task"):
        x = g[g["learner"] == NONE].groupby("seed")["metrics.test_acc"].mean()
        for learner in arm_order(lr for lr in g["learner"].unique() if lr != NONE):
            sub = g[g["learner"] == learner]
            s = sub.groupby("seed")["metrics.test_acc"].mean()
            common = sorted(set(x.index) & set(s.index))
            aucs = []  # SAFLEX's weights against the flipped flag; other learners log no weights
            for _, r in sub.iterrows():
                path = Path(r["run_dir"]) / "metrics.jsonl"
                if path.exists():
                    last = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][-1]
                    aucs.append(last.get(f"{learner}_w_auc", math.nan))
            rows.append(dict(task=task, learner=learner, x=mean_ci(x), s=mean_ci(s),
                             gain=paired_diff_ci(x[common], s[common]), auc=mean_ci(aucs)))
    return pd.DataFrame(rows)


def _last_epoch(run_dir: str | Path) -> dict:
    import json

    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return {}
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else {}


DIAG_COLUMNS = (("w_std", "std of w"), ("w_low_frac", "w < 0.5 (fraction)"),
                ("saflex_label_shift", "mean abs(q - y)"), ("saflex_argmax_change", "argmax(q) != argmax(y)"),
                ("saflex_time_frac", "SAFLEX share of epoch time"))


def diagnostics_rows(main: pd.DataFrame) -> pd.DataFrame:
    """Per (task, upstream): what SAFLEX did in the last epoch, averaged over seeds. The weight
    columns come from the per-sample weights the trainer keeps (saflex_diag.npz)."""
    rows = []
    for (task, up), g in main[main["learner"] == "saflex"].groupby(["task", "upstream"]):
        vals: dict[str, list[float]] = {k: [] for k, _ in DIAG_COLUMNS}
        for run_dir in g["run_dir"]:
            last = _last_epoch(run_dir)
            for k in ("saflex_label_shift", "saflex_argmax_change"):
                if k in last:
                    vals[k].append(float(last[k]))
            if last.get("saflex_s") is not None and last.get("epoch_s"):
                vals["saflex_time_frac"].append(float(last["saflex_s"]) / float(last["epoch_s"]))
            diag = Path(run_dir) / "saflex_diag.npz"
            if diag.exists():
                w = np.load(diag)["w"]
                vals["w_std"].append(float(w.std()))
                vals["w_low_frac"].append(float((w < 0.5).mean()))
        rows.append(dict(task=task, upstream=up, n=len(g), **{k: (float(np.mean(v)) if v else math.nan) for k, v in vals.items()}))
    return pd.DataFrame(rows)


def _n_val(task: str) -> int | None:
    """Validation split size of a MedMNIST task, from the medmnist package's INFO."""
    try:
        import medmnist

        return int(medmnist.INFO[task.split("/", 1)[1]]["n_samples"]["val"])
    except (ImportError, KeyError, IndexError):
        return None


def _cost_driver(main: pd.DataFrame, defaults: dict) -> str:
    """Why the overhead differs by task: the validation forward's size against the training batch."""
    parts = []
    for t in TASKS:
        rows = main[main["task"] == t]
        n_val = _n_val(t)
        if not len(rows) or n_val is None or "batch_size" not in rows:
            continue
        parts.append(f"{t.split('/')[1]} {min(int(defaults['val_batch']), n_val)} vs {int(rows['batch_size'].iloc[0])}")
    if not parts:
        return ""
    return ("- What drives the cost: every refresh (`refresh="
            f"{defaults['refresh']}` steps) SAFLEX runs a forward/backward on min(`val_batch`, validation size) "
            "reference images against the training batch: " + ", ".join(parts) + ". A reference batch several times "
            "the training batch makes SAFLEX dominate the step; `saflex.refresh=k` or a smaller `saflex.val_batch` "
            "amortises it.")


def _summary(table: pd.DataFrame, avg: pd.DataFrame, tune: pd.DataFrame) -> list[str]:
    """A few sentences a reader can quote, every number taken from the tables above."""
    if not len(avg):
        return []
    L = ["## Summary", ""]
    for _, r in avg.iterrows():
        t = table[table["arm"] == r["arm"]]
        name = method_label(r["arm"])
        lo, hi = r["avg_gain_test_acc_ci_lo"], r["avg_gain_test_acc_ci_hi"]
        neg = t[t["gain_test_acc_mean"] < 0]
        verdict = "excludes zero" if lo > 0 or hi < 0 else "includes zero"
        any_single = ((t["gain_test_acc_ci_lo"] > 0) | (t["gain_test_acc_ci_hi"] < 0)).any()
        line = (f"- Averaged over {r['n_experiments']} experiments {name} gains {_pts(r['avg_gain_test_acc'], True)} "
                f"test points over X; the CI of that average {verdict}."
                + ("" if any_single else " No single experiment's paired CI excludes zero."))
        if r["n_experiments_ref"]:
            line += (f" Over X+ref (same labelled data) it gains {_pts(r['avg_gain_vs_ref_test_acc'], True)} points "
                     f"({r['n_experiments_ref']} experiment{'s' if r['n_experiments_ref'] != 1 else ''}).")
        L += [line, f"- Where {name} hurts (negative mean paired gain): "
              + (", ".join(f"{x.task.split('/')[1]}/{x.upstream} ({_pts(x.gain_test_acc_mean, True)})" for x in neg.itertuples())
                 or "nowhere") + "."]
    for learner, tl in tune.groupby("learner") if len(tune) else ():
        gains = tl.groupby("knobs")["delta"].mean()
        who = "" if tune["learner"].nunique() == 1 else f" ({learner})"
        L.append(f"- What we tried to make it help{who}: {len(gains)} knob settings on validation (table above); "
                 f"{int((gains > 0).sum())} beat the upstream alone there; the best (`{gains.idxmax()}`, "
                 f"{_pts(gains.max(), True)} validation points) "
                 + ("is the setting used here." if gains.idxmax() == "default" else
                    "is not the setting the runs above used: make it the default and rerun them."))
    L.append("- The validation split is both SAFLEX's reference set and the model-selection set (unless the runs set "
             "`ref_frac`), and the test sets are small: read the gains as the small-CNN, short-schedule CPU protocol's, "
             "not the paper's ResNet-18 one.")
    return L


def _ci(c) -> str:
    return fmt_points(c.mean, c.lo, c.hi)


def _tuning_section(tune: pd.DataFrame, learner: str) -> list[str]:
    chosen, ranking = choose(tune)
    piv = tune.pivot_table(index="knobs", columns="task", values="delta")
    base = tune.groupby("task")["val_x"].first()
    L = ["| knob setting (vs current defaults) | " + " | ".join(f"Δ val acc {c.split('/')[1]} (X = {_pts(base[c])})" for c in piv.columns) + " | mean Δ |",
         "|---|" + "---:|" * (len(piv.columns) + 1)]
    for knobs in ranking["knobs"] if len(ranking) else piv.index:
        r = piv.loc[knobs]
        L.append(f"| `{knobs}` | " + " | ".join(_pts(r[c], True) for c in piv.columns) + f" | {_pts(r.mean(), True)} |")
    n_val = ", ".join(f"{t.split('/')[1]} {_n_val(t)}" for t in piv.columns if _n_val(t))
    n_gain = int((piv.mean(axis=1) > 0).sum())
    cls = "`SaflexConfig`" if learner == "saflex" else f"the `{learner}` learner's knobs"
    return L + ["", f"Selected: **`{chosen}`** (relative to the defaults now in {cls}; `default` means the "
                "current defaults are the selected setting).", "",
                f"{n_gain} of {len(piv)} settings gain validation accuracy on average over the tuning tasks. "
                f"One seed on small validation splits ({n_val} images: one image is "
                + ", ".join(f"{100 / _n_val(t):.1f}" for t in piv.columns if _n_val(t))
                + " points) separates settings only coarsely; the ranking is a hypothesis for the paired runs below, "
                "not a finding.", ""]


def write_study(root: str | Path, out: str | Path = DEFAULT_OUT) -> Path:
    root = Path(root)
    df = _with_labels(load_results(root))
    df = df[df["task"].isin(TASKS)]
    tune = tuning_table(df)
    main = df[df["upstream"].isin(UPSTREAMS) & (df["model"] == MODEL)
              & ((df["learner"] == NONE) | (df["knobs"] == "default"))].copy()
    # one setting per learner left: the knob label is not an experiment axis any more
    main = main.assign(learner_cfg="", arm=main["learner"]).drop(columns="knobs")
    table = comparison_table(main) if len(main) else pd.DataFrame()
    avg = average_gain(table) if len(table) else pd.DataFrame()
    noisy = noisy_rows(df, root)
    defaults = learner_defaults("saflex")
    learners = [lr for lr in arm_order(df["learner"].unique()) if lr != NONE]
    has_ref = REF in learners

    L: list[str] = []
    L += ["# Does SAFLEX beat the augmentations it sits on? MedMNIST study", "",
          f"_Generated by `saflex-bench study --results {root}` on "
          f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC from {len(df)} stored runs; do not edit by hand._", ""]
    L += ["## Protocol", "",
          f"- Model `{MODEL}` (3 conv blocks, BatchNorm), CPU, short schedules; Adam, lr x0.1 at 50 % and 75 % of the "
          "epochs; best epoch on validation AUC (MedMNIST's own Evaluator); test ACC of that epoch reported.",
          "- Epochs per task: " + ", ".join(f"{t.split('/')[1]} {sorted(set(main.loc[main['task'] == t, 'epochs']))}" for t in TASKS) + ".",
          "- Learners compared with X (the upstream alone): " + (", ".join(f"`{lr}`" for lr in learners) or "none") + "."
          + (" `ref` is the label-budget control: X trained on the training split plus SAFLEX's reference images."
             if has_ref else ""),
          "- Pairs: X and X+LEARNER with the same seed see the same data order and the same upstream draws (seeded "
          "per sample / per batch), so the paired difference isolates the learner.",
          "- SAFLEX's reference set is the validation split unless the runs set `ref_frac` (then a seeded part of it, "
          "also given to X+ref): the same split model selection uses. Its validation accuracy is therefore optimistic "
          "for SAFLEX runs; test accuracy is not.",
          "- SAFLEX defaults in force: " + ", ".join(f"`{k}={v}`" for k, v in defaults.items()) + ".", ""]

    L += ["## Choosing SAFLEX's defaults (validation split only)", "",
          f"Seed 0, `{TUNE_UPSTREAM}`, tasks {', '.join(t.split('/')[1] for t in TUNE_TASKS)}; each knob setting is "
          "compared with the upstream alone on **validation** accuracy; the setting with the best mean gain over the "
          "tasks becomes the default. Test accuracy is not looked at here.", ""]
    if len(tune):
        several = tune["learner"].nunique() > 1
        for learner, tl in tune.groupby("learner"):
            L += ([f"### `{learner}`", ""] if several else []) + _tuning_section(tl, learner)
    else:
        L += ["_No tuning runs found._", ""]

    L += ["## X vs X+LEARNER (test accuracy, points)" if learners != ["saflex"] else "## X vs X+SAFLEX (test accuracy, points)", ""]
    if len(table):
        L += [_md_table(display_table(table)), "", legend(ref=has_ref), ""]
        for _, r in avg.iterrows():
            paper = PAPER_HEADLINE_GAIN.get(r["learner"])
            L.append(f"**Average gain of {method_label(r['arm'])} over X: {_pts(r['avg_gain_test_acc'], True)} points "
                     f"(95 % CI [{_pts(r['avg_gain_test_acc_ci_lo'], True)}, {_pts(r['avg_gain_test_acc_ci_hi'], True)}], "
                     f"{r['n_experiments']} experiments)" + (f"; the paper reports +{paper}" if paper else "") + ".**")
        L.append("")
        for _, r in avg.iterrows():
            t = table[table["arm"] == r["arm"]]
            name = method_label(r["arm"])
            helps = t[t["gain_test_acc_ci_lo"] > 0]
            hurts = t[t["gain_test_acc_ci_hi"] < 0]
            pos = int((t["gain_test_acc_mean"] > 0).sum())
            L += [f"- {name}: mean paired gain positive in {pos} of {len(t)} experiments; CI above zero (helps): "
                  + (", ".join(f"{x.task.split('/')[1]}/{x.upstream}" for x in helps.itertuples()) or "none")
                  + "; CI below zero (hurts): "
                  + (", ".join(f"{x.task.split('/')[1]}/{x.upstream}" for x in hurts.itertuples()) or "none") + ".",
                  f"- Cost of {name}: its epoch time / the upstream's epoch time, median over experiments: "
                  f"{t['overhead_epoch_s'].median():.2f}x (CPU; runs of a sweep share the machine unevenly, so this is "
                  "indicative; benchmarks/bench_saflex_overhead.py measures the step ratio within one process)."]
        if "saflex" in learners and defaults:
            L.append(_cost_driver(main, defaults))
        L.append("")
        L += _summary(table, avg, tune) + [""]
    else:
        L += ["_No main-comparison runs found._", ""]

    diag = diagnostics_rows(main) if len(main) else pd.DataFrame()
    if len(diag):
        L += ["## What SAFLEX did (last epoch, mean over seeds)", "",
              "Weights are rescaled to mean 1 over the batch (`normalize`), so their mean is not informative; "
              "these columns say how far SAFLEX moved away from the upstream's own weights and labels."
              + (" With `eps=0` the label step keeps q = y by construction, so the label columns are 0: SAFLEX "
                 "acts through the weights alone here (settings that move labels were tried in the tuning above)."
                 if defaults.get("eps") == 0 else ""), "",
              "| task | upstream | n | " + " | ".join(label for _, label in DIAG_COLUMNS) + " |",
              "|---|---|---:|" + "---:|" * len(DIAG_COLUMNS)]
        for r in diag.itertuples():
            L.append(f"| {r.task.split('/')[1]} | {r.upstream} | {r.n} | "
                     + " | ".join("–" if math.isnan(getattr(r, k)) else f"{getattr(r, k):.3f}" for k, _ in DIAG_COLUMNS) + " |")
        L.append("")

    L += ["## Noisy upstream: 30 % of augmented labels flipped (design section 8.4 on real data)", ""]
    if len(noisy):
        L += ["| task | arm | n seeds | X test acc | arm test acc | Δ paired | ROC-AUC of −w for flipped samples (last epoch) |",
              "|---|---|---:|---:|---:|---:|---:|"]
        for r in noisy.itertuples():
            auc = "–" if math.isnan(r.auc.mean) else f"{r.auc.mean:.3f}" + ("" if math.isnan(r.auc.lo) else f" [{r.auc.lo:.3f}, {r.auc.hi:.3f}]")
            L.append(f"| {r.task.split('/')[1]} | {method_label(r.learner)} | {r.gain.n} | {_ci(r.x)} | {_ci(r.s)} | "
                     f"{fmt_points(r.gain.mean, r.gain.lo, r.gain.hi, signed=True)} | {auc} |")
        L += ["", legend(), ""]
    else:
        L += ["_No noisy-upstream runs found._", ""]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(L) + "\n")
    return out
