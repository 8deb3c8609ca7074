"""reports/: tables, figures and wandb report from a synthetic results root with known numbers.

Every expected number is recomputed here from the raw values with numpy/scipy (t.interval, sem),
independently of reports.stats.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import saflex_core
from scipy import stats

from bench.errors import UsageError
from reports import cli as rcli
from reports.figures import FAMILY_FIGURES, FIGURES, write_figures
from reports.load import experiment_columns, load_results, load_wandb, wandb_is_offline
from reports.stats import mean_ci, paired_diff_ci, roc_auc
from reports.tables import average_gain, comparison_table, write_tables

# wandb-workspaces' own pydantic-v1-style validators, nothing of ours
pytestmark = pytest.mark.filterwarnings("ignore:Pydantic V1 style:DeprecationWarning")

# ---- synthetic store ------------------------------------------------------------------------
SPEC_BASE = dict(model="cnn", epochs=4, optimizer="adam", lr=1e-3, weight_decay=0.0, momentum=0.9,
                 schedule="multistep", milestones=[0.5, 0.75], gamma=0.1, batch_size=128,
                 select_metric="auc", as_rgb=False)
KNOBS = {"eps": 0.1, "refresh_every": 1}
BM, DG = "medmnist/breastmnist", "digits/sklearn"
RA, CM, NZ = "rand-m9-n2", "cutmix-a1.0", "noisy(0.3,rand-m9-n2)"
# (task, upstream) -> {arm: {seed: test_acc}}
ACC = {
    (BM, RA): {"x": {0: .80, 1: .82, 2: .84}, "s": {0: .83, 1: .84, 2: .88}},
    (BM, CM): {"x": {0: .70, 1: .75, 2: .71}, "s": {0: .72, 1: .78}},         # seed 2 unpaired
    (DG, RA): {"x": {0: .90}, "s": {0: .93}},                                  # n = 1
    (DG, NZ): {"x": {0: .85, 1: .86}, "s": {0: .88, 1: .91}},
}
EPOCH_BASE = {(BM, RA): 2.0, (BM, CM): 2.5, (DG, RA): 0.4, (DG, NZ): 0.5}
N_EPOCHS = 4


def _diag(seed: int, noisy: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 + seed)
    n = 200
    corrupted = rng.random(n) < 0.3 if noisy else np.zeros(n, bool)
    w = np.where(corrupted, rng.uniform(0.0, 0.6, n), rng.uniform(0.4, 1.5, n)).astype(np.float32)
    shift = np.where(corrupted, rng.uniform(0.3, 1.0, n), rng.uniform(0.0, 0.4, n)).astype(np.float32)
    return {"w": w, "label_shift": shift, "corrupted": corrupted}


def write_run(root: Path, key: str, *, task: str, method: str, seed: int, acc: float | None = None,
              epoch_s: float = 1.0, status: str = "done", sweep: str | None = "demo", knobs=None,
              curve: list[float] | None = None, diag: dict | None = None, result: bool = True,
              **spec_over) -> Path:
    """One run dir as bench/store.py writes it (docs/interfaces.md)."""
    d = root / "runs" / key
    d.mkdir(parents=True)
    spec = dict(SPEC_BASE, task=task, method=method, seed=seed, saflex=knobs, **spec_over)
    (d / "spec.json").write_text(json.dumps(dict(spec, key=key)))
    if curve is not None:
        rows = [{"epoch": e + 1, "train_loss": 1.0 / (e + 1), "val_acc": v, "val_auc": v, "lr": 1e-3,
                 "epoch_s": epoch_s} for e, v in enumerate(curve)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if diag is not None:
        np.savez(d / "saflex_diag.npz", **diag)
    if result:
        rec = {"key": key, "status": status, "sweep": sweep, "spec": spec,
               "metrics": {"test_acc": acc, "test_auc": acc, "val_acc": acc, "val_auc": acc,
                           "best_epoch": 3, "epochs_run": N_EPOCHS},
               "cost": {"wall_s": epoch_s * N_EPOCHS, "epoch_s": epoch_s, "samples_per_s": 1000.0,
                        "peak_mem_mb": 100.0, "saflex_s": 0.0, "step_s": epoch_s / 100},
               "versions": {"python": "3.11.7", "torch": "2.14.1", "saflex_bench": "0.1.0"},
               "host": "node01", "device": "cpu", "finished_at": "2026-11-22T05:00:00Z"}
        (d / "result.json").write_text(json.dumps(rec))
    return d


def curve_of(acc: float, seed: int) -> list[float]:
    return [round(acc - 0.1 + 0.03 * e + 0.002 * seed, 6) for e in range(N_EPOCHS)]


def epoch_s_of(exp, arm, seed) -> float:
    return round(EPOCH_BASE[exp] * (1.5 if arm == "s" else 1.0) + 0.1 * seed, 6)


def build_root(root: Path, with_files: bool = True) -> Path:
    i = 0
    for (task, up), arms in ACC.items():
        for arm, seeds in arms.items():
            for seed, acc in seeds.items():
                i += 1
                method = up + ("+saflex" if arm == "s" else "")
                diag = _diag(seed, up.startswith("noisy")) if (with_files and arm == "s" and task == DG) else None
                curve = curve_of(acc, seed) if (with_files and task == BM and up == RA) else None
                write_run(root, f"run{i:03d}", task=task, method=method, seed=seed, acc=acc,
                          epoch_s=epoch_s_of((task, up), arm, seed), knobs=KNOBS if arm == "s" else None,
                          curve=curve, diag=diag)
    # not counted: a failed run, a corrupt record, a run still going (no result.json)
    write_run(root, "failed01", task=BM, method=RA, seed=3, acc=0.1, status="failed")
    write_run(root, "running1", task=BM, method=RA, seed=4, result=False)
    (root / "runs" / "garbage1").mkdir()
    (root / "runs" / "garbage1" / "result.json").write_text("{not json")
    # another sweep, another protocol (epochs=8): must never be averaged with epochs=4
    write_run(root, "other001", task=BM, method=RA, seed=0, acc=0.5, sweep="other", epochs=8)
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return build_root(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def df(root) -> pd.DataFrame:
    return load_results(root, sweep="demo")


def t_ci(vals) -> tuple[float, float, float]:
    a = np.asarray(list(vals), float)
    if a.size < 2:
        return float(a.mean()), math.nan, math.nan
    lo, hi = stats.t.interval(0.95, a.size - 1, loc=a.mean(), scale=stats.sem(a))
    return float(a.mean()), float(lo), float(hi)


def close(a, b) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def expected_gains() -> dict:
    out = {}
    for exp, arms in ACC.items():
        common = sorted(set(arms["x"]) & set(arms["s"]))
        out[exp] = t_ci([arms["s"][s] - arms["x"][s] for s in common])
    return out


# ---- stats ----------------------------------------------------------------------------------
def test_mean_ci_matches_scipy():
    for vals in ([1.0, 2.0, 4.0], [0.8, 0.82], [3.0, 3.0, 3.0, 7.5, 1.0]):
        ci = mean_ci(vals)
        m, lo, hi = t_ci(vals)
        assert close(ci.mean, m) and close(ci.lo, lo) and close(ci.hi, hi) and ci.n == len(vals)
    one = mean_ci([0.5])
    assert one.mean == 0.5 and math.isnan(one.lo) and math.isnan(one.hi) and one.n == 1
    assert mean_ci([]).n == 0 and math.isnan(mean_ci([]).mean)
    assert mean_ci([1.0, float("nan"), 3.0]).n == 2
    d = paired_diff_ci([1, 2, 3], [2, 2.5, 5])
    m, lo, hi = t_ci([1, 0.5, 2])
    assert close(d.mean, m) and close(d.lo, lo) and close(d.hi, hi)
    with pytest.raises(ValueError):
        paired_diff_ci([1, 2], [1])


def test_roc_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    s = rng.normal(size=300) + y + np.round(rng.random(300), 1)  # with ties
    assert math.isclose(roc_auc(s, y), roc_auc_score(y, s))
    assert math.isnan(roc_auc([1, 2], [False, False]))


# ---- loading --------------------------------------------------------------------------------
def test_load_frame(df, root):
    n_done = sum(len(s) for arms in ACC.values() for s in arms.values())
    assert len(df) == n_done
    assert df.attrs["skipped"] == {"result.json says status 'failed', not 'done': rerun": 1,
                                   "result.json does not parse (not JSON): rerun": 1,
                                   "no result.json (running, not started or died)": 1}
    assert df.attrs["not_done"]["garbage1"] == "result.json does not parse (not JSON): rerun"
    r = df[(df["task"] == DG) & (df["method"] == NZ + "+saflex") & (df["seed"] == 1)].iloc[0]
    assert r["family"] == "digits" and r["dataset"] == "sklearn"
    assert r["upstream"] == NZ and bool(r["saflex"]) and r["saflex_cfg"] == "saflex"
    assert r["learner"] == "saflex" and r["learner_cfg"] == "" and r["arm"] == "saflex"
    assert r["cost.learner_s"] == 0.0  # old records: filled from cost.saflex_s
    assert r["metrics.test_acc"] == 0.91 and r["cost.epoch_s"] == epoch_s_of((DG, NZ), "s", 1)
    assert r["saflex.eps"] == 0.1 and r["milestones"] == "0.5,0.75" and r["model"] == "cnn"
    x = df[df["method"] == RA].iloc[0]
    assert not x["saflex"] and x["saflex_cfg"] == "" and x["learner"] == "none" and x["arm"] == "none"
    assert experiment_columns(df) == ["task", "upstream"]
    # everything (both sweeps): epochs now varies -> part of the experiment identity
    full = load_results(root)
    assert len(full) == n_done + 1 and "epochs" in experiment_columns(full)
    assert len(load_results(root, sweep="other")) == 1


def test_load_errors(root, tmp_path):
    with pytest.raises(UsageError, match=r"unknown sweep 'nope' under .*\(sweeps there: demo, other\)"):
        load_results(root, sweep="nope")
    with pytest.raises(UsageError, match="no results store at"):
        load_results(tmp_path / "missing")
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    with pytest.raises(UsageError, match="no done runs in"):
        load_results(tmp_path / "empty")


# ---- tables ---------------------------------------------------------------------------------
def test_comparison_table_numbers(df):
    t = comparison_table(df)
    assert len(t) == len(ACC)
    gains = expected_gains()
    for exp, arms in ACC.items():
        r = t[(t["task"] == exp[0]) & (t["upstream"] == exp[1])]
        assert len(r) == 1
        r = r.iloc[0]
        for arm, pre in (("x", "none_"), ("s", "arm_")):
            m, lo, hi = t_ci(arms[arm].values())
            assert close(r[f"{pre}test_acc_mean"], m)
            assert close(r[f"{pre}test_acc_ci_lo"], lo) and close(r[f"{pre}test_acc_ci_hi"], hi)
        assert r["n_none"] == len(arms["x"]) and r["n_arm"] == len(arms["s"]) and r["arm"] == "saflex"
        m, lo, hi = gains[exp]
        assert close(r["gain_test_acc_mean"], m) and close(r["gain_test_acc_ci_lo"], lo)
        assert close(r["gain_test_acc_ci_hi"], hi)
        assert r["n_pairs"] == len(set(arms["x"]) & set(arms["s"]))
        ex = np.mean([epoch_s_of(exp, "x", s) for s in arms["x"]])
        es = np.mean([epoch_s_of(exp, "s", s) for s in arms["s"]])
        assert close(r["none_epoch_s_mean"], ex) and close(r["arm_epoch_s_mean"], es)
        assert close(r["overhead_epoch_s"], es / ex)
    flags = dict(zip(zip(t["task"], t["upstream"]), t["flags"]))
    assert flags[(BM, RA)] == "" and flags[(DG, NZ)] == "n<3"  # two seeds: CI very wide
    assert flags[(BM, CM)] == "missing_pair;n<3"
    assert flags[(DG, RA)] == "n<2"
    assert t.loc[t["upstream"] == CM, "unpaired_seeds"].item() == "X only: 2"
    # (BM, CM) paired diff uses seeds 0 and 1 only: (0.72-0.70 + 0.78-0.75)/2
    assert close(t.loc[t["upstream"] == CM, "gain_test_acc_mean"].item(), 0.025)


def test_average_gain(df):
    avg = average_gain(comparison_table(df))
    assert len(avg) == 1
    g = [m for m, _, _ in expected_gains().values()]
    m, lo, hi = t_ci(g)
    r = avg.iloc[0]
    assert r["n_experiments"] == 4 and r["n_without_pairs"] == 0
    assert close(r["avg_gain_test_acc"], m) and close(r["avg_gain_test_acc_ci_lo"], lo)
    assert close(r["avg_gain_test_acc_ci_hi"], hi)


def test_protocols_and_missing_arm_flagged(root):
    t = comparison_table(load_results(root))
    assert "epochs" in t.columns and len(t) == len(ACC) + 1
    r8 = t[t["epochs"] == 8].iloc[0]
    assert r8["arm"] == "" and r8["n_none"] == 1 and r8["n_arm"] == 0 and r8["n_pairs"] == 0
    assert r8["flags"] == "missing_pair;no_learner;n<2" and math.isnan(r8["gain_test_acc_mean"])
    r4 = t[(t["epochs"] == 4) & (t["task"] == BM) & (t["upstream"] == RA)].iloc[0]
    assert close(r4["none_test_acc_mean"], np.mean([.80, .82, .84]))  # the epochs=8 run is not mixed in
    avg = average_gain(t)
    assert avg.iloc[0]["n_experiments"] == 4 and avg.attrs["n_no_learner"] == 1


def test_saflex_knob_variants_not_averaged(tmp_path):
    x = {0: .80, 1: .82}
    sx = {0.1: {0: .83, 1: .86}, 0.05: {0: .81, 1: .81}}
    i = 0
    for seed, acc in x.items():
        i += 1
        write_run(tmp_path, f"r{i}", task=BM, method=RA, seed=seed, acc=acc)
    for eps, seeds in sx.items():
        for seed, acc in seeds.items():
            i += 1
            write_run(tmp_path, f"r{i}", task=BM, method=RA + "+saflex", seed=seed, acc=acc,
                      knobs=dict(KNOBS, eps=eps))
    t = comparison_table(load_results(tmp_path))
    assert sorted(t["learner_cfg"]) == ["eps=0.05", "eps=0.1"]
    assert sorted(t["arm"]) == ["saflex[eps=0.05]", "saflex[eps=0.1]"]
    for eps, seeds in sx.items():
        r = t[t["arm"] == f"saflex[eps={eps:g}]"].iloc[0]
        m, lo, hi = t_ci([seeds[s] - x[s] for s in x])
        assert close(r["gain_test_acc_mean"], m) and close(r["gain_test_acc_ci_lo"], lo)
        assert close(r["none_test_acc_mean"], np.mean(list(x.values())))
    avg = average_gain(t)
    assert sorted(avg["arm"]) == ["saflex[eps=0.05]", "saflex[eps=0.1]"] and (avg["n_experiments"] == 1).all()


def test_write_tables_formats(df, tmp_path):
    paths, lines = write_tables(df, tmp_path)
    assert [p.name for p in paths] == ["table.md", "table.tex", "table.csv", "gain_summary.csv", "main_table.tex"]
    md = paths[0].read_text()
    m, lo, hi = t_ci(ACC[(BM, RA)]["x"].values())
    assert f"{100 * m:.2f} ± {100 * (hi - lo) / 2:.2f}" in md           # points, half-width
    g, glo, ghi = expected_gains()[(BM, RA)]
    assert f"{100 * g:+.2f} ± {100 * (ghi - glo) / 2:.2f}" in md
    assert "90.00 ± n/a" in md and "missing_pair" in md and "n<2" in md
    assert "3 skipped" in md and "1 result.json says status 'failed'" in md and "result.json does not parse" in md
    avg_m, avg_lo, avg_hi = t_ci([v[0] for v in expected_gains().values()])
    assert f"{100 * avg_m:+.2f} points" in md and f"[{100 * avg_lo:+.2f}, {100 * avg_hi:+.2f}]" in md
    assert "paper" not in md and lines[0].startswith("Average gain of X+saflex over X (test_acc)")  # the study alone quotes the paper
    assert md.count("± = half-width of the 95 % Student-t interval") == md.count("\n|---")  # a legend under each table
    tex = paths[1].read_text()
    assert "\\toprule" in tex and "$\\pm$" in tex and "missing\\_pair" in tex and "n\\textless{}2" in tex
    # CSVs in points like the tables, and the column names say so
    csv = pd.read_csv(paths[2])
    r = csv[(csv["task"] == BM) & (csv["upstream"] == RA)].iloc[0]
    assert close(r["none_test_acc_pts_mean"], 100 * m) and close(r["none_test_acc_pts_ci_half"], 100 * (hi - lo) / 2)
    assert close(r["gain_test_acc_pts_mean"], 100 * g) and "none_test_acc_mean" not in csv.columns
    gs = pd.read_csv(paths[3])
    assert close(gs["avg_gain_test_acc_pts"].iloc[0], 100 * avg_m)
    assert close(gs["avg_gain_test_acc_pts_ci_lo"].iloc[0], 100 * avg_lo)


# ---- figures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def figs(df, root, tmp_path_factory):
    out = tmp_path_factory.mktemp("figs")
    return out, {name: why for name, _, why in write_figures(df, root, out)}


def test_figures_written(figs):
    out, whys = figs
    assert list(whys) == ["fig1_accuracy", "fig2_forest", "fig3_diagnostics", "fig5_learning_curves"]
    # no few-shot runs: no fig6; no side-by-side timings: no fig4 (the runs' own timings never make one)
    assert list(whys) == sorted(n for n in FIGURES if n not in FAMILY_FIGURES)
    assert all(w is None for w in whys.values())
    for name in whys:
        for ext in ("png", "pdf", "csv"):
            p = out / f"{name}.{ext}"
            assert p.is_file() and p.stat().st_size > 0
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / f"{name}.pdf").read_bytes()[:4] == b"%PDF"


def test_fig1_csv(figs):
    d = pd.read_csv(figs[0] / "fig1_accuracy.csv", keep_default_na=False, na_values=[""])
    assert len(d) == 2 * len(ACC)
    for (task, up), arms in ACC.items():
        for arm, label in (("x", "none"), ("s", "saflex")):
            r = d[(d["task"] == task) & (d["upstream"] == up) & (d["arm"] == label)].iloc[0]
            m, lo, hi = t_ci(arms[arm].values())
            assert r["n"] == len(arms[arm]) and close(r["test_acc_mean"], m)
            assert close(r["test_acc_ci_lo"], lo) and close(r["test_acc_ci_hi"], hi)


def test_fig2_csv(figs):
    d = pd.read_csv(figs[0] / "fig2_forest.csv", keep_default_na=False, na_values=[""])
    exp = sorted(expected_gains().items())
    rows = d[d["kind"] == "experiment"]
    assert list(zip(rows["task"], rows["upstream"])) == [k for k, _ in exp]  # one row per experiment, fixed order
    for (_, (m, lo, hi)), (_, r) in zip(exp, rows.iterrows()):
        assert close(r["gain_mean"], m) and close(r["gain_ci_lo"], lo) and close(r["gain_ci_hi"], hi)
    (avg,) = d[d["kind"] == "average"].itertuples()  # the average at the bottom, with its CI over experiments
    m, lo, hi = t_ci([v[0] for v in expected_gains().values()])
    assert d.iloc[-1]["kind"] == "average" and close(avg.gain_mean, m) and close(avg.gain_ci_lo, lo)
    assert avg.n == len(expected_gains())


def test_fig3_csv(figs, root, df):
    d = pd.read_csv(figs[0] / "fig3_diagnostics.csv")
    sx = df[df["saflex"] & (df["task"] == DG)].sort_values("key")
    z = [np.load(root / "runs" / k / "saflex_diag.npz") for k in sx["key"]]
    w = np.concatenate([a["w"] for a in z]).astype(float)
    ls = np.concatenate([a["label_shift"] for a in z]).astype(float)
    cor = np.concatenate([a["corrupted"] for a in z])
    from sklearn.metrics import roc_auc_score

    for q, vals, score in (("w", w, -w), ("label_shift", ls, ls)):
        edges = np.histogram_bin_edges(vals, bins=30)
        for grp, mask in (("clean", ~cor), ("corrupted", cor)):
            r = d[(d["quantity"] == q) & (d["group"] == grp)]
            cnt, _ = np.histogram(vals[mask], bins=edges)
            assert list(r["count"]) == list(cnt) and np.allclose(r["bin_lo"], edges[:-1])
            assert (r["n"] == mask.sum()).all() and np.allclose(r["mean"], vals[mask].mean())
            assert np.allclose(r["density"], cnt / (mask.sum() * np.diff(edges)))
        assert np.allclose(d.loc[d["quantity"] == q, "auc_corrupted"], roc_auc_score(cor, score))
    assert (d["n_runs"] == len(sx)).all()


def test_fig4_only_from_side_by_side_timings(df, root, tmp_path):
    """The runs' separately timed step_s (here ×1.5) never make a cost figure; a side-by-side CSV does."""
    assert "fig4_cost" not in {n for n, _, _ in write_figures(df, root, tmp_path / "a")}
    (name, _, why), = write_figures(df, root, tmp_path / "b", only=["fig4_cost"])
    assert why.startswith("no side-by-side timing")
    csv = tmp_path / "bench.csv"
    pd.DataFrame({"task": [DG, DG], "upstream": [RA, RA], "arm": ["saflex", "augnet"], "x_ms": [10.0, 10.0],
                  "arm_ms": [10.8, 19.0], "ratio": [1.08, 1.9]}).to_csv(csv, index=False)
    (name, paths, why), = write_figures(df, root, tmp_path / "c", only=["fig4_cost"], cost_csv=csv)
    assert why is None and list(pd.read_csv(paths[2])["ratio"]) == [1.08, 1.9]


def test_fig5_csv(figs):
    d = pd.read_csv(figs[0] / "fig5_learning_curves.csv")
    # one panel per dataset and arm group (here: saflex), X in it over the group's upstreams
    assert set(d["group"]) == {"saflex"} and set(d["arm"]) == {"none", "saflex"} and set(d["upstreams"]) == {RA}
    assert set(d["epoch"]) == set(range(1, N_EPOCHS + 1))
    for label, arm in (("none", "x"), ("saflex", "s")):
        seeds = ACC[(BM, RA)][arm]
        for e in range(N_EPOCHS):
            r = d[(d["arm"] == label) & (d["epoch"] == e + 1)].iloc[0]
            m, lo, hi = t_ci([curve_of(acc, s)[e] for s, acc in seeds.items()])
            assert r["n"] == len(seeds) and close(r["val_acc_mean"], m) and close(r["val_acc_ci_lo"], lo)


def test_figures_placeholders(tmp_path, capsys):
    root = build_root(tmp_path / "res", with_files=False)
    args = _parse(["figures", "--results", str(root), "--sweep", "demo", "--out", str(tmp_path / "o")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "fig3_diagnostics: no data: no saflex_diag.npz" in out
    assert "fig5_learning_curves: no data: no metrics.jsonl" in out
    for name in ("fig3_diagnostics", "fig5_learning_curves"):
        assert (tmp_path / "o" / f"{name}.png").is_file() and (tmp_path / "o" / f"{name}.pdf").is_file()
        csv = pd.read_csv(tmp_path / "o" / f"{name}.csv")
        assert csv.empty and len(csv.columns) > 0
    assert len(pd.read_csv(tmp_path / "o" / "fig1_accuracy.csv")) == 2 * len(ACC)


# ---- CLI ------------------------------------------------------------------------------------
def _parse(argv):
    parser = argparse.ArgumentParser(prog="saflex-bench")
    rcli.register(parser.add_subparsers(dest="cmd", required=True))
    return parser.parse_args(argv)


def test_cli_report(root, tmp_path, capsys, monkeypatch):
    args = _parse(["report", "--results", str(root), "--sweep", "demo", "--out", str(tmp_path / "r")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "Average gain of X+saflex over X" in out and f"wrote {tmp_path / 'r' / 'table.md'}" in out
    # default results root from $SAFLEX_RESULTS, default out = <results>/report
    monkeypatch.setenv("SAFLEX_RESULTS", str(root))
    args = _parse(["report", "--sweep", "demo"])
    assert args.func(args) == 0 and (root / "report" / "table.csv").is_file()
    with pytest.raises(UsageError, match="unknown sweep 'x'.*demo, other"):
        a = _parse(["report", "--results", str(root), "--sweep", "x"])
        a.func(a)
    with pytest.raises(UsageError, match="unknown figure"):
        a = _parse(["figures", "--results", str(root), "--only", "fig9"])
        a.func(a)


# ---- wandb ----------------------------------------------------------------------------------
class FakeApi:
    """wandb.Api stand-in: runs built from the local records, as tracking logs them."""

    def __init__(self, root: Path):
        self.calls = []
        self._runs = []
        for f in sorted((root / "runs").glob("*/result.json")):
            try:
                rec = json.loads(f.read_text())
            except ValueError:
                continue
            # as bench/tracking.py: bare metrics, cost/<name>, status; config = spec; group = sweep
            summary = {**rec["metrics"], **{f"cost/{k}": v for k, v in rec["cost"].items()},
                       "status": rec["status"], "_step": 4}
            self._runs.append(SimpleNamespace(
                id=rec["key"], state="finished" if rec["status"] == "done" else "crashed",
                group=rec["sweep"], config={k: {"value": v, "desc": None} for k, v in rec["spec"].items()},
                summary_metrics=summary))

    def runs(self, path, filters=None):
        self.calls.append((path, filters))
        sw = (filters or {}).get("group")
        return [r for r in self._runs if sw is None or r.group == sw]


def test_load_wandb_matches_local(root, df):
    api = FakeApi(root)
    wdf = load_wandb("ent/proj", sweep="demo", api=api)
    assert api.calls == [("ent/proj", {"group": "demo"})]
    assert wdf.attrs["skipped"] == {"not_done": 1} and len(wdf) == len(df)
    cols = ["key", "task", "family", "dataset", "method", "upstream", "saflex", "saflex_cfg", "seed", "epochs",
            "milestones", "saflex.eps", "metrics.test_acc", "metrics.val_acc", "cost.epoch_s", "cost.step_s"]
    pd.testing.assert_frame_equal(wdf[cols].reset_index(drop=True), df[cols].reset_index(drop=True),
                                  check_dtype=False)
    pd.testing.assert_frame_equal(comparison_table(wdf), comparison_table(df))
    with pytest.raises(UsageError, match="ENTITY/PROJECT"):
        load_wandb("proj", api=api)


def test_figures_from_wandb_frame(root, df, tmp_path):
    wdf = load_wandb("ent/proj", sweep="demo", api=FakeApi(root))
    only = ["fig3_diagnostics", "fig5_learning_curves"]
    whys = {n: w for n, _, w in write_figures(wdf, None, tmp_path / "a", only=only)}
    assert all(w.startswith("runs loaded from wandb carry no run files") for w in whys.values())
    # wandb run id == run key: with the local store at hand, the run files are found
    whys = {n: w for n, _, w in write_figures(wdf, root, tmp_path / "b", only=only)}
    assert whys == {n: None for n in only}
    write_figures(df, root, tmp_path / "c", only=only)
    for n in only:
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "b" / f"{n}.csv"), pd.read_csv(tmp_path / "c" / f"{n}.csv"))


def test_wandb_offline_detection(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_is_offline(dry_run=True)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_is_offline()
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_is_offline()


def test_wandb_report_spec_offline(root, tmp_path, capsys, monkeypatch):
    from wandb_workspaces import expr

    monkeypatch.setenv("WANDB_MODE", "offline")
    args = _parse(["wandb-report", "--project", "ent/proj", "--sweep", "demo", "--results", str(root),
                   "--out", str(tmp_path)])
    assert args.func(args) == 0
    path = tmp_path / "wandb_report_spec.json"
    assert f"wrote {path}" in capsys.readouterr().out
    spec = json.loads(path.read_text())
    assert spec["meta"]["saved"] is False and spec["meta"]["project"] == "ent/proj"
    rep = spec["report"]
    assert rep["type"] == "Report" and rep["entity"] == "ent" and rep["project"] == "proj"
    blocks = rep["blocks"]
    grids = [b for b in blocks if b["type"] == "PanelGrid"]
    heads = [b["text"] for b in blocks if b["type"] == "H2"]
    assert heads == sorted([BM, DG]) + ["Learner gains", "Cost"]
    for task, grid in zip(sorted([BM, DG]), grids[:2]):                     # one grid per dataset
        (rs,) = grid["runsets"]
        assert rs["entity"] == "ent" and rs["project"] == "proj" and rs["groupby"] == ["config.method"]
        assert rs["filters"] == f"Config('task') = '{task}' and Group = 'demo' and State = 'finished'"
        expr.expr_to_filters(rs["filters"])  # a filter wandb-workspaces can parse
        assert [p["type"] for p in grid["panels"]] == ["BarPlot", "LinePlot"]
        assert all(p["groupby"] is None and p["aggregate"] for p in grid["panels"])  # the runset's grouping
        assert grid["panels"][0]["metrics"] == ["test_acc"] and grid["panels"][1]["y"] == ["val_acc"]
    gain = blocks[blocks.index(next(b for b in blocks if b.get("text") == "Learner gains")) + 1]
    assert gain["type"] == "MarkdownBlock"
    g, glo, ghi = expected_gains()[(BM, RA)]
    assert f"{100 * g:+.2f} ± {100 * (ghi - glo) / 2:.2f}" in gain["text"] and "missing_pair" in gain["text"]
    avg = np.mean([v[0] for v in expected_gains().values()])
    assert f"{100 * avg:+.2f} points" in gain["text"]
    cost = grids[2]
    assert [p["type"] for p in cost["panels"]] == ["BarPlot", "MarkdownPanel"]
    assert cost["panels"][0]["aggregate"] and cost["panels"][0]["metrics"] == ["cost/epoch_s"]
    assert "overhead" in cost["panels"][1]["markdown"]
    assert "api_key" not in path.read_text().lower()


def test_wandb_report_dry_run_and_missing_package(root, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    args = _parse(["wandb-report", "--project", "ent/proj", "--results", str(root), "--out", str(tmp_path),
                   "--dry-run"])
    assert args.func(args) == 0 and (tmp_path / "wandb_report_spec.json").is_file()
    with pytest.raises(UsageError, match="ENTITY/PROJECT"):
        a = _parse(["wandb-report", "--project", "proj", "--results", str(root), "--dry-run"])
        a.func(a)
    for mod in ("wandb_workspaces", "wandb_workspaces.reports", "wandb_workspaces.reports.v2"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(UsageError, match=r"pip install 'saflex-bench\[wandb-report\]'"):
        args.func(args)


def test_learner_cfg_labels_name_only_what_differs_from_the_defaults():
    from reports.load import _saflex_cfg_labels, learner_cfg_labels

    d = saflex_core.SaflexConfig().to_dict()

    def sx(**over):
        return dict(learner="saflex", **{f"saflex.{k}": (math.nan if v is None else v) for k, v in {**d, **over}.items()})

    rows = [dict(learner="none", **{f"saflex.{k}": math.nan for k in d}), sx(), sx(eps=0.3, labels="kl"), sx(tau=3.0)]
    frame = pd.DataFrame(rows)
    assert list(learner_cfg_labels(frame)) == ["", "default", "eps=0.3,labels=kl", "tau=3"]
    assert list(_saflex_cfg_labels(frame)) == ["", "default", "eps=0.3,labels=kl", "tau=3"]
    # one shared setting: no label (learner_cfg) / the first release's "saflex" (saflex_cfg)
    same = pd.DataFrame([rows[0], sx(eps=0.3), sx(eps=0.3)])
    assert list(learner_cfg_labels(same)) == ["", "", ""] and list(_saflex_cfg_labels(same)) == ["", "saflex", "saflex"]


def test_fig5_from_a_study_tables_epochs_frame_equals_fig5_from_the_run_folders(df, root, tmp_path):
    """A study table keeps the logged epochs as a frame (reports/study_table.py) and no run folders:
    fig5 drawn from that frame plots the same numbers as fig5 read from metrics.jsonl."""
    from reports.figures import get_figure
    from reports.study_table import epochs_frame, read_table, write_table

    write_table(tmp_path / "t", {"runs": df.drop(columns="run_dir"), "epochs": epochs_frame(root, df["key"])})
    frames, _ = read_table(tmp_path / "t")  # through the table's round trip, as `saflex-bench study` reads it
    fig5 = get_figure("fig5_learning_curves")
    _, from_runs = fig5(df, root)
    _, from_table = fig5(frames["runs"], None, epochs=frames["epochs"])
    assert len(from_runs) > 0
    pd.testing.assert_frame_equal(from_table, from_runs)
