"""The SAFLEX MedMNIST study, written from stored results (never typed by hand):

    saflex-bench study --results R [--out reports/studies/saflex_medmnist.md]

Runs are selected by their specs (how they were launched does not matter):
- default selection: seed 0, `rand-m9-n2` with and without SAFLEX under several knob settings, on
  the TUNE_TASKS; settings are compared on VALIDATION accuracy only;
- main comparison: every X in UPSTREAMS with and without SAFLEX (current default knobs), all seeds;
- noisy-upstream diagnostic: `noisy(0.3,rand-m9-n2)` with and without SAFLEX.
"""
from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

import numpy as np
import pandas as pd

from reports.load import load_results
from reports.stats import mean_ci, paired_diff_ci
from reports.tables import average_gain, comparison_table, display_table, fmt_points, _md_table

TASKS = ("medmnist/breastmnist", "medmnist/pneumoniamnist", "medmnist/retinamnist")
UPSTREAMS = ("rand-m9-n2", "cutmix-a1.0", "mixup-a0.2")
NOISY = "noisy(0.3,rand-m9-n2)"
TUNE_TASKS = ("medmnist/breastmnist", "medmnist/retinamnist")
TUNE_UPSTREAM = "rand-m9-n2"
MODEL = "small_cnn"
DEFAULT_OUT = Path("reports/studies/saflex_medmnist.md")


def knob_label(row: pd.Series, defaults: dict) -> str:
    """The knobs of a SAFLEX run that differ from the current defaults ('default' if none)."""
    diff = []
    for k, v in defaults.items():
        got = row.get(f"saflex.{k}")
        if got is None or (isinstance(got, float) and math.isnan(got) and v is not None):
            continue
        same = (got == v) or (v is None and (got is None or (isinstance(got, float) and math.isnan(got))))
        if not same:
            diff.append(f"{k}={got:g}" if isinstance(got, float) else f"{k}={got}")
    return ",".join(diff) or "default"


def _with_labels(df: pd.DataFrame) -> pd.DataFrame:
    import saflex_core

    defaults = saflex_core.SaflexConfig().to_dict()
    df = df.copy()
    df["knobs"] = [knob_label(r, defaults) if r["saflex"] else "" for _, r in df.iterrows()]
    return df


def tuning_table(df: pd.DataFrame) -> pd.DataFrame:
    """Validation accuracy of each knob setting minus its upstream alone (seed 0), per tuning task."""
    t = df[df["task"].isin(TUNE_TASKS) & (df["seed"] == 0) & (df["upstream"] == TUNE_UPSTREAM) & (df["model"] == MODEL)]
    rows = []
    for task, g in t.groupby("task"):
        base = g[~g["saflex"]]
        if base.empty:
            continue
        b = float(base["metrics.val_acc"].iloc[0])
        for knobs, s in g[g["saflex"]].groupby("knobs"):
            rows.append(dict(task=task, knobs=knobs, val_x=b, val_saflex=float(s["metrics.val_acc"].mean()),
                             delta=float(s["metrics.val_acc"].mean()) - b))
    return pd.DataFrame(rows)


def choose(tune: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """The setting with the best mean validation gain over the tuning tasks that ran it on all of them."""
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

    n = df[(df["upstream"] == NOISY) & (df["model"] == MODEL) & (~df["saflex"] | (df["knobs"] == "default"))]
    rows = []
    for task, g in n.groupby("task"):
        x = g[~g["saflex"]].groupby("seed")["metrics.test_acc"].mean()
        s = g[g["saflex"]].groupby("seed")["metrics.test_acc"].mean()
        common = sorted(set(x.index) & set(s.index))
        aucs = []
        for _, r in g[g["saflex"]].iterrows():
            path = Path(r["run_dir"]) / "metrics.jsonl"
            if path.exists():
                last = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][-1]
                aucs.append(last.get("saflex_w_auc", math.nan))
        rows.append(dict(task=task, x=mean_ci(x), s=mean_ci(s), gain=paired_diff_ci(x[common], s[common]), auc=mean_ci(aucs)))
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
    for (task, up), g in main[main["saflex"]].groupby(["task", "upstream"]):
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


def _summary(table: pd.DataFrame, avg: pd.DataFrame, tune: pd.DataFrame, defaults: dict) -> list[str]:
    """A few sentences a reader can quote, every number taken from the tables above."""
    if not len(avg):
        return []
    r = avg.iloc[0]
    lo, hi = r["avg_gain_test_acc_ci_lo"], r["avg_gain_test_acc_ci_hi"]
    neg = table[table["gain_test_acc_mean"] < 0]
    verdict = "excludes zero" if lo > 0 or hi < 0 else "includes zero"
    any_single = ((table["gain_test_acc_ci_lo"] > 0) | (table["gain_test_acc_ci_hi"] < 0)).any()
    L = ["## Summary", "",
         f"- Averaged over {r['n_experiments']} experiments SAFLEX gains {_pts(r['avg_gain_test_acc'], True)} test "
         f"points; the CI of that average {verdict}." + ("" if any_single else " No single experiment's paired CI excludes zero."),
         "- Where it hurts (negative mean paired gain): "
         + (", ".join(f"{x.task.split('/')[1]}/{x.upstream} ({_pts(x.gain_test_acc_mean, True)})" for x in neg.itertuples()) or "nowhere")
         + "."]
    if len(tune):
        gains = tune.groupby("knobs")["delta"].mean()
        L.append(f"- What we tried to make it help: {len(gains)} knob settings on validation (table above); "
                 f"{int((gains > 0).sum())} beat the upstream alone there; the best (`{gains.idxmax()}`, "
                 f"{_pts(gains.max(), True)} validation points) "
                 + ("is the setting used here." if gains.idxmax() == "default" else
                    "is not the setting the runs above used: make it the default and rerun them."))
    L.append("- The validation split is both SAFLEX's reference set and the model-selection set, and the test sets "
             "are small: read the gains as the small-CNN, short-schedule CPU protocol's, not the paper's ResNet-18 one.")
    return L


def _ci(c) -> str:
    return fmt_points(c.mean, c.lo, c.hi)


def write_study(root: str | Path, out: str | Path = DEFAULT_OUT) -> Path:
    import saflex_core

    root = Path(root)
    df = _with_labels(load_results(root))
    df = df[df["task"].isin(TASKS)]
    tune = tuning_table(df)
    chosen, ranking = choose(tune)
    main = df[df["upstream"].isin(UPSTREAMS) & (df["model"] == MODEL) & (~df["saflex"] | (df["knobs"] == "default"))].copy()
    main["saflex_cfg"] = np.where(main["saflex"], "saflex", "")
    main = main.drop(columns="knobs")  # one setting left: not an experiment axis
    table = comparison_table(main) if len(main) else pd.DataFrame()
    avg = average_gain(table) if len(table) else pd.DataFrame()
    noisy = noisy_rows(df, root)
    defaults = saflex_core.SaflexConfig().to_dict()

    L: list[str] = []
    L += ["# Does SAFLEX beat the augmentations it sits on? MedMNIST study", "",
          f"_Generated by `saflex-bench study --results {root}` on "
          f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC from {len(df)} stored runs; do not edit by hand._", ""]
    L += ["## Protocol", "",
          f"- Model `{MODEL}` (3 conv blocks, BatchNorm), CPU, short schedules; Adam, lr x0.1 at 50 % and 75 % of the "
          "epochs; best epoch on validation AUC (MedMNIST's own Evaluator); test ACC of that epoch reported.",
          "- Epochs per task: " + ", ".join(f"{t.split('/')[1]} {sorted(set(main.loc[main['task'] == t, 'epochs']))}" for t in TASKS) + ".",
          "- Pairs: X and X+SAFLEX with the same seed see the same data order and the same upstream draws (seeded "
          "per sample / per batch), so the paired difference isolates SAFLEX.",
          "- SAFLEX's reference set is the validation split (no task here has a third split): the same split model "
          "selection uses. Its validation accuracy is therefore optimistic for SAFLEX runs; test accuracy is not.",
          "- SAFLEX defaults in force: " + ", ".join(f"`{k}={v}`" for k, v in defaults.items()) + ".", ""]

    L += ["## Choosing SAFLEX's defaults (validation split only)", "",
          f"Seed 0, `{TUNE_UPSTREAM}`, tasks {', '.join(t.split('/')[1] for t in TUNE_TASKS)}; each knob setting is "
          "compared with the upstream alone on **validation** accuracy; the setting with the best mean gain over the "
          "tasks becomes the default. Test accuracy is not looked at here.", ""]
    if len(tune):
        piv = tune.pivot_table(index="knobs", columns="task", values="delta")
        base = tune.groupby("task")["val_x"].first()
        L += ["| knob setting (vs current defaults) | " + " | ".join(f"Δ val acc {c.split('/')[1]} (X = {_pts(base[c])})" for c in piv.columns) + " | mean Δ |",
              "|---|" + "---:|" * (len(piv.columns) + 1)]
        for knobs in ranking["knobs"] if len(ranking) else piv.index:
            r = piv.loc[knobs]
            L.append(f"| `{knobs}` | " + " | ".join(_pts(r[c], True) for c in piv.columns) + f" | {_pts(r.mean(), True)} |")
        n_val = ", ".join(f"{t.split('/')[1]} {_n_val(t)}" for t in piv.columns if _n_val(t))
        n_gain = int((piv.mean(axis=1) > 0).sum())
        L += ["", f"Selected: **`{chosen}`** (relative to the defaults now in `SaflexConfig`; `default` means the "
              "current defaults are the selected setting).", "",
              f"{n_gain} of {len(piv)} settings gain validation accuracy on average over the tuning tasks. "
              f"One seed on small validation splits ({n_val} images: one image is "
              + ", ".join(f"{100 / _n_val(t):.1f}" for t in piv.columns if _n_val(t))
              + " points) separates settings only coarsely; the ranking is a hypothesis for the paired runs below, "
              "not a finding.", ""]
    else:
        L += ["_No tuning runs found._", ""]

    L += ["## X vs X+SAFLEX (test accuracy, points)", ""]
    if len(table):
        L += [_md_table(display_table(table)), ""]
        for _, r in avg.iterrows():
            L.append(f"**Average SAFLEX gain: {_pts(r['avg_gain_test_acc'], True)} points (95 % CI "
                     f"[{_pts(r['avg_gain_test_acc_ci_lo'], True)}, {_pts(r['avg_gain_test_acc_ci_hi'], True)}], "
                     f"{r['n_experiments']} experiments); the paper reports +1.2.**")
        L.append("")
        helps = table[table["gain_test_acc_ci_lo"] > 0]
        hurts = table[table["gain_test_acc_ci_hi"] < 0]
        pos = int((table["gain_test_acc_mean"] > 0).sum())
        L += [f"- SAFLEX's mean paired gain is positive in {pos} of {len(table)} experiments.",
              "- CI above zero (helps): " + (", ".join(f"{r.task.split('/')[1]}/{r.upstream}" for r in helps.itertuples()) or "none") + ".",
              "- CI below zero (hurts): " + (", ".join(f"{r.task.split('/')[1]}/{r.upstream}" for r in hurts.itertuples()) or "none") + ".",
              f"- Cost: SAFLEX epoch time / upstream epoch time, median over experiments: "
              f"{table['overhead_epoch_s'].median():.2f}x (CPU; runs of a sweep share the machine unevenly, so this is "
              "indicative; benchmarks/bench_saflex_overhead.py measures the step ratio within one process).",
              _cost_driver(main, defaults), ""]
        L += _summary(table, avg, tune, defaults) + [""]
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
        L += ["| task | n seeds | X test acc | X+SAFLEX test acc | Δ paired | ROC-AUC of −w for flipped samples (last epoch) |",
              "|---|---:|---:|---:|---:|---:|"]
        for r in noisy.itertuples():
            auc = "–" if math.isnan(r.auc.mean) else f"{r.auc.mean:.3f}" + ("" if math.isnan(r.auc.lo) else f" [{r.auc.lo:.3f}, {r.auc.hi:.3f}]")
            L.append(f"| {r.task.split('/')[1]} | {r.gain.n} | {_ci(r.x)} | {_ci(r.s)} | {fmt_points(r.gain.mean, r.gain.lo, r.gain.hi, signed=True)} | {auc} |")
        L.append("")
    else:
        L += ["_No noisy-upstream runs found._", ""]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(L) + "\n")
    return out
