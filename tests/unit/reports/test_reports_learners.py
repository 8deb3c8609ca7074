"""reports/ with any number of learners: none, saflex, ref and a learner made up here ("toy").

The expected gains below are worked out by hand from the accuracies in ACC (differences per seed,
their mean; half-width = t_{0.975, n-1} * sd / sqrt(n) with t = 4.302653 for 3 pairs, 12.706205
for 2), not recomputed through reports.stats.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.config import Knobs
from bench.learners import Learner, register_learner
from bench.learners.base import REGISTRY
from reports.figures import FAMILY_FIGURES, FIGURES, arm_colors, write_figures
from reports.load import experiment_columns, load_results
from reports.tables import average_gain, comparison_table, headline, to_markdown, write_tables

BM, DG = "medmnist/breastmnist", "digits/sklearn"
RA, CM = "rand-m9-n2", "cutmix-a1.0"
SPEC = dict(model="cnn", epochs=4, optimizer="adam", lr=1e-3, weight_decay=0.0, momentum=0.9, schedule="multistep",
            milestones=[0.5, 0.75], gamma=0.1, batch_size=128, select_metric="auc", as_rgb=False, ref_frac=0.5)
SAFLEX_KNOBS = {"eps": 0.1}
# (task, upstream) -> learner -> {seed: test_acc}
ACC = {
    (BM, RA): {"none": {0: .80, 1: .82, 2: .84}, "saflex": {0: .83, 1: .84, 2: .88},
               "ref": {0: .81, 1: .83, 2: .84}, "toy": {0: .79, 1: .85, 2: .86}},
    (BM, CM): {"none": {0: .70, 1: .75, 2: .71}, "saflex": {0: .72, 1: .78, 2: .74},
               "ref": {0: .71, 1: .74}, "toy": {0: .69, 1: .77, 2: .73}},            # ref lacks seed 2
    (DG, RA): {"none": {0: .90, 1: .91}, "saflex": {0: .93, 1: .92}, "toy": {0: .95, 1: .90}},  # no ref, 2 seeds
}
STEP_S = {"none": 0.010, "saflex": 0.015, "ref": 0.011, "toy": 0.020}
T3, T2 = 4.302653, 12.706205  # t_{0.975, 2}, t_{0.975, 1}


def half(diffs, t):
    d = np.asarray(diffs, float)
    return t * d.std(ddof=1) / math.sqrt(d.size)


# by hand: (mean, half-width) of the paired gains arm − X and arm − X+ref per experiment
GAIN = {
    ((BM, RA), "saflex"): (0.03, half([.03, .02, .04], T3)),
    ((BM, RA), "ref"): (0.02 / 3, half([.01, .01, .00], T3)),
    ((BM, RA), "toy"): (0.04 / 3, half([-.01, .03, .02], T3)),
    ((BM, CM), "saflex"): (0.08 / 3, half([.02, .03, .03], T3)),
    ((BM, CM), "ref"): (0.0, half([.01, -.01], T2)),                            # seeds 0, 1 only
    ((BM, CM), "toy"): (0.03 / 3, half([-.01, .02, .02], T3)),
    ((DG, RA), "saflex"): (0.02, half([.03, .01], T2)),
    ((DG, RA), "toy"): (0.02, half([.05, -.01], T2)),
}
GAIN_VS_REF = {
    ((BM, RA), "saflex"): (0.07 / 3, half([.02, .01, .04], T3)),
    ((BM, RA), "toy"): (0.02 / 3, half([-.02, .02, .02], T3)),
    ((BM, CM), "saflex"): (0.025, half([.01, .04], T2)),
    ((BM, CM), "toy"): (0.005, half([-.02, .03], T2)),
}
AVG = {"saflex": (0.03 + 0.08 / 3 + 0.02) / 3, "ref": (0.02 / 3 + 0.0) / 2, "toy": (0.04 / 3 + 0.01 + 0.02) / 3}
AVG_VS_REF = {"saflex": (0.07 / 3 + 0.025) / 2, "toy": (0.02 / 3 + 0.005) / 2}


class ToyKnobs(Knobs):
    width: float = 0.5


class Toy(Learner):
    Knobs = ToyKnobs
    description = "a learner made up for the reports tests"


@pytest.fixture(scope="module", autouse=True)
def toy_learner():
    """Register `toy` for this module only, so other test files see the real learner list."""
    register_learner("toy")(Toy)
    yield
    REGISTRY.unregister("toy")


def put(root: Path, key: str, task: str, learner: str, seed: int, acc: float, *, old_format: bool = False,
        knobs=None, curve=False, diag=False, **spec_over) -> Path:
    """One run dir. old_format: a record of the first release (cost.saflex_s, no data, no ref_frac)."""
    d = root / "runs" / key
    d.mkdir(parents=True)
    up = spec_over.pop("upstream", RA)
    method = up if learner == "none" else f"{up}+{learner}"
    spec = dict(SPEC, task=task, method=method, seed=seed, saflex=SAFLEX_KNOBS if learner == "saflex" else None,
                **spec_over)
    if learner == "toy":
        spec["toy"] = knobs or {"width": 0.5}
    cost = {"wall_s": 4.0, "epoch_s": 1.0, "step_s": STEP_S[learner], "samples_per_s": 1.0, "peak_mem_mb": 1.0}
    rec = {"key": key, "status": "done", "sweep": "s", "spec": spec,
           "metrics": {"test_acc": acc, "test_auc": acc, "val_acc": acc, "val_auc": acc, "ood_usps_acc": acc - 0.1,
                       "best_epoch": 3, "epochs_run": 4}, "host": "h", "device": "cpu"}
    if old_format:
        spec.pop("ref_frac")
        rec["cost"] = dict(cost, saflex_s=0.4 if learner == "saflex" else 0.0)
    else:
        rec["cost"] = dict(cost, learner_s=0.3 if learner != "none" else 0.0)
        rec["data"] = {"train": 100, "val": 20, "reference": 20, "test": 50}
    if curve:
        rows = [{"epoch": e + 1, "val_acc": acc - 0.1 + 0.03 * e} for e in range(4)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if diag:
        rng = np.random.default_rng(seed)
        np.savez(d / "saflex_diag.npz", w=rng.uniform(0, 2, 50), label_shift=rng.uniform(0, 1, 50),
                 corrupted=rng.random(50) < 0.3)
    (d / "result.json").write_text(json.dumps(rec))
    return d


def build(root: Path, learners=("none", "saflex", "ref", "toy"), files: bool = True) -> Path:
    i = 0
    for (task, up), arms in ACC.items():
        for learner, seeds in arms.items():
            if learner not in learners:
                continue
            for seed, acc in seeds.items():
                i += 1
                put(root, f"r{i:03d}", task, learner, seed, acc, upstream=up,
                    curve=files and task == BM and up == RA, diag=files and learner == "saflex" and task == DG)
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("learners"))


@pytest.fixture(scope="module")
def df(root) -> pd.DataFrame:
    return load_results(root)


@pytest.fixture(scope="module")
def table(df) -> pd.DataFrame:
    return comparison_table(df)


def row(table, exp, arm) -> pd.Series:
    r = table[(table["task"] == exp[0]) & (table["upstream"] == exp[1]) & (table["arm"] == arm)]
    assert len(r) == 1, (exp, arm, len(r))
    return r.iloc[0]


def near(a, b) -> bool:
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-9)


# ---- loading ----------------------------------------------------------------------------------
def test_learner_columns(df):
    assert set(df["learner"]) == {"none", "saflex", "ref", "toy"}
    assert set(df["arm"]) == {"none", "saflex", "ref", "toy"}  # one knob setting per learner: no label
    toy = df[df["learner"] == "toy"].iloc[0]
    assert toy["upstream"] in (RA, CM) and toy["toy.width"] == 0.5 and not toy["saflex"]
    assert "toy" not in df.columns  # the knob dict is flattened, not an identity column
    assert (df.loc[df["learner"] == "saflex", "saflex.eps"] == 0.1).all()
    assert (df["cost.learner_s"] == np.where(df["learner"] == "none", 0.0, 0.3)).all()
    assert (df["data.reference"] == 20).all() and (df["metrics.ood_usps_acc"] > 0).all()
    # knobs and derived columns never split an experiment; ref_frac is the same everywhere
    assert experiment_columns(df) == ["task", "upstream"]


def test_old_format_record_still_loads(tmp_path):
    """A first-release record (X+saflex, cost.saflex_s, no learner keys, no data) next to new ones."""
    put(tmp_path, "old_x", DG, "none", 0, 0.90, old_format=True)
    put(tmp_path, "old_s", DG, "saflex", 0, 0.93, old_format=True)
    put(tmp_path, "old_x1", DG, "none", 1, 0.91, old_format=True)
    put(tmp_path, "old_s1", DG, "saflex", 1, 0.92, old_format=True)
    df = load_results(tmp_path)
    s = df[df["key"] == "old_s"].iloc[0]
    assert s["learner"] == "saflex" and s["upstream"] == RA and s["arm"] == "saflex" and s["saflex_cfg"] == "saflex"
    assert s["cost.learner_s"] == 0.4 and s["cost.saflex_s"] == 0.4 and bool(s["saflex"])
    x = df[df["key"] == "old_x"].iloc[0]
    assert x["learner"] == "none" and x["cost.learner_s"] == 0.0
    r = comparison_table(df).iloc[0]
    m, h = GAIN[((DG, RA), "saflex")]
    assert near(r["gain_test_acc_mean"], m) and near((r["gain_test_acc_ci_hi"] - r["gain_test_acc_ci_lo"]) / 2, h)


def test_unknown_learner_recognised_by_its_knobs(tmp_path):
    """Results of a learner not registered on this machine: its knob key names it."""
    d = put(tmp_path, "a", BM, "toy", 0, 0.8)
    rec = json.loads((d / "result.json").read_text())
    rec["spec"]["method"] = RA + "+augerino"
    rec["spec"]["augerino"] = rec["spec"].pop("toy")
    rec["semantics"] = {"learner:augerino": 2}  # made by today's augerino (as its authors built it)
    (d / "result.json").write_text(json.dumps(rec))
    r = load_results(tmp_path).iloc[0]
    assert r["learner"] == "augerino" and r["upstream"] == RA and r["augerino.width"] == 0.5


# ---- tables -----------------------------------------------------------------------------------
def test_paired_gain_per_learner(table):
    arms = {(r.task, r.upstream): [] for r in table.itertuples()}
    for r in table.itertuples():
        arms[(r.task, r.upstream)].append(r.arm)
    assert arms[(BM, RA)] == ["ref", "saflex", "toy"] and arms[(DG, RA)] == ["saflex", "toy"]
    for (exp, arm), (m, h) in GAIN.items():
        r = row(table, exp, arm)
        assert near(r["gain_test_acc_mean"], m), (exp, arm)
        assert near((r["gain_test_acc_ci_hi"] - r["gain_test_acc_ci_lo"]) / 2, h), (exp, arm)
        assert r["n_none"] == len(ACC[exp]["none"]) and r["n_arm"] == len(ACC[exp][arm])
        assert near(r["arm_test_acc_mean"], np.mean(list(ACC[exp][arm].values())))
        assert near(r["none_test_acc_mean"], np.mean(list(ACC[exp]["none"].values())))
        assert near(r["overhead_step_s"], STEP_S[arm] / STEP_S["none"])


def test_gain_over_ref(table):
    for (exp, arm), (m, h) in GAIN_VS_REF.items():
        r = row(table, exp, arm)
        assert near(r["gain_vs_ref_test_acc_mean"], m), (exp, arm)
        assert near((r["gain_vs_ref_test_acc_ci_hi"] - r["gain_vs_ref_test_acc_ci_lo"]) / 2, h), (exp, arm)
    assert row(table, (BM, CM), "saflex")["n_pairs_ref"] == 2  # ref has no seed 2
    # the ref arm has no gain over itself; an experiment without ref runs has none and is flagged
    assert math.isnan(row(table, (BM, RA), "ref")["gain_vs_ref_test_acc_mean"])
    r = row(table, (DG, RA), "saflex")
    assert math.isnan(r["gain_vs_ref_test_acc_mean"]) and r["n_pairs_ref"] == 0
    assert r["flags"] == "no_ref;n<3"  # and two seeds only: CI very wide
    assert row(table, (BM, RA), "saflex")["flags"] == ""
    assert row(table, (BM, CM), "ref")["flags"] == "missing_pair;n<3"


def test_average_per_learner(table):
    avg = average_gain(table).set_index("arm")
    assert list(avg.index) == ["ref", "saflex", "toy"]  # ref first: it is the second baseline
    for arm, m in AVG.items():
        assert near(avg.loc[arm, "avg_gain_test_acc"], m), arm
    assert avg.loc["ref", "n_experiments"] == 2 and avg.loc["saflex", "n_experiments"] == 3
    for arm, m in AVG_VS_REF.items():
        assert near(avg.loc[arm, "avg_gain_vs_ref_test_acc"], m) and avg.loc[arm, "n_experiments_ref"] == 2
    assert avg.loc["ref", "n_experiments_ref"] == 0
    lines = headline(average_gain(table))
    assert lines[1].startswith(f"Average gain of X+saflex over X (test_acc): {100 * AVG['saflex']:+.2f} points")
    assert not any("paper" in line for line in lines)  # the study alone quotes the paper, under its protocol
    assert f"over X+ref: {100 * AVG_VS_REF['toy']:+.2f} points" in lines[2]


def test_any_metric_including_extra_test_sets(df):
    t = comparison_table(df, "ood_usps_acc")
    r = row(t, (BM, RA), "saflex")
    assert near(r["gain_ood_usps_acc_mean"], GAIN[((BM, RA), "saflex")][0])  # the same shift of −0.1 on both arms
    assert near(r["none_ood_usps_acc_mean"], np.mean([.80, .82, .84]) - 0.1)


def test_written_tables(df, tmp_path):
    paths, lines = write_tables(df, tmp_path)
    md = paths[0].read_text()
    m, h = GAIN_VS_REF[((BM, RA), "saflex")]
    assert "| Δ vs X+ref |" in md and f"{100 * m:+.2f} ± {100 * h:.2f}" in md
    assert "| medmnist/breastmnist | rand-m9-n2 | X+toy | 3/3/3/3 |" in md
    assert "| digits/sklearn | rand-m9-n2 | X+saflex | 2/2/2/0 |" in md
    assert md.count("± = half-width of the 95 % Student-t interval") == md.count("\n|---")
    assert "`n<3`: only 2 seeds or pairs: CI very wide" in md and "`no_ref`" in md
    assert "## Average gain per arm" in md and f"| X+toy | 3 | {100 * AVG['toy']:+.2f} ±" in md
    tex = paths[1].read_text()
    assert tex.count("\\begin{tabular}") == 2 and "X+ref" in tex
    csv = pd.read_csv(paths[2])
    r = csv[(csv["task"] == BM) & (csv["upstream"] == RA) & (csv["arm"] == "toy")].iloc[0]
    m, h = GAIN[((BM, RA), "toy")]
    assert near(r["gain_test_acc_pts_mean"], 100 * m) and near(r["gain_test_acc_pts_ci_half"], 100 * h)
    gs = pd.read_csv(paths[3]).set_index("arm")
    assert near(gs.loc["saflex", "avg_gain_test_acc_pts"], 100 * AVG["saflex"])
    assert near(gs.loc["saflex", "avg_gain_vs_ref_test_acc_pts"], 100 * AVG_VS_REF["saflex"])
    assert not [c for c in gs.columns if "test_acc" in c and "_pts" not in c]  # every metric column labelled


def test_knob_settings_of_a_made_up_learner_are_separate_arms(tmp_path):
    for s, (x, a, b) in enumerate([(.80, .82, .90), (.81, .84, .85)]):
        put(tmp_path, f"x{s}", BM, "none", s, x)
        put(tmp_path, f"a{s}", BM, "toy", s, a)                        # default width
        put(tmp_path, f"b{s}", BM, "toy", s, b, knobs={"width": 0.9})
    t = comparison_table(load_results(tmp_path)).set_index("arm")
    assert sorted(t.index) == ["toy[default]", "toy[width=0.9]"]
    assert near(t.loc["toy[default]", "gain_test_acc_mean"], 0.025)
    assert near(t.loc["toy[width=0.9]", "gain_test_acc_mean"], 0.07)
    assert "X+toy[width=0.9]" in to_markdown(load_results(tmp_path), t.reset_index(), average_gain(t.reset_index()))


# ---- figures ----------------------------------------------------------------------------------
def _written(out: Path, results) -> dict:
    whys = {name: why for name, _, why in results}
    assert list(whys) == sorted(n for n in FIGURES if n not in FAMILY_FIGURES)  # optional ones: no data, no figure
    for name in whys:
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / f"{name}.pdf").read_bytes()[:4] == b"%PDF"
    return whys


@pytest.mark.parametrize("learners", [("none", "saflex"), ("none", "saflex", "ref"), ("none", "saflex", "ref", "toy")])
def test_figures_for_any_number_of_learners(tmp_path, learners):
    root = build(tmp_path / "r", learners)
    df = load_results(root)
    out = tmp_path / "o"
    whys = _written(out, write_figures(df, root, out))
    assert all(w is None for w in whys.values()), whys
    arms = set(learners) - {"none"}
    f1 = pd.read_csv(out / "fig1_accuracy.csv")
    assert set(f1["arm"]) == set(learners)
    f2 = pd.read_csv(out / "fig2_forest.csv", keep_default_na=False, na_values=[""])
    rows, avgs = f2[f2["kind"] == "experiment"], f2[f2["kind"] == "average"]
    assert set(f2["arm"]) == arms and len(rows) == sum(len(set(ACC[e]) & arms) for e in ACC)
    for r in rows.itertuples():
        assert near(r.gain_mean, GAIN[((r.task, r.upstream), r.arm)][0])
    assert set(avgs["arm"]) == arms  # one panel per comparison, its average at the bottom
    if learners == ("none", "saflex", "ref", "toy"):
        assert all(near(r.gain_mean, AVG[r.arm]) for r in avgs.itertuples())
    f5 = pd.read_csv(out / "fig5_learning_curves.csv")
    assert set(f5["arm"]) == set(learners) and set(f5["epoch"]) == {1, 2, 3, 4}
    assert set(f5["group"]) == arms  # one panel group per learner, X in each
    colors = arm_colors(df)
    assert len(set(colors[a] for a in learners)) == len(learners)  # one colour per arm


def test_figures_placeholder_when_an_arm_is_absent(tmp_path):
    root = build(tmp_path / "r", ("none", "ref", "toy"))  # no SAFLEX
    out = tmp_path / "o"
    whys = _written(out, write_figures(load_results(root), root, out))
    assert whys["fig3_diagnostics"].startswith("no X+saflex runs loaded")
    assert [n for n, w in whys.items() if w] == ["fig3_diagnostics"]
    root = build(tmp_path / "x", ("none",))  # X alone: nothing to compare
    out = tmp_path / "ox"
    whys = _written(out, write_figures(load_results(root), root, out))
    assert whys["fig2_forest"].startswith("no experiment has X and a learner's arm")
    assert whys["fig5_learning_curves"].startswith("no learner's runs besides X")
    assert whys["fig1_accuracy"] is None
    assert pd.read_csv(out / "fig2_forest.csv").empty


def test_cli_report_any_metric(root, tmp_path, capsys):
    import argparse

    from bench.errors import UsageError
    from reports import cli as rcli

    parser = argparse.ArgumentParser(prog="saflex-bench")
    rcli.register(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(["report", "--results", str(root), "--out", str(tmp_path), "--metric", "ood_usps_acc"])
    assert args.func(args) == 0
    assert "# Learners vs X: ood_usps_acc" in capsys.readouterr().out
    args = parser.parse_args(["report", "--results", str(root), "--out", str(tmp_path), "--metric", "nope_acc"])
    with pytest.raises(UsageError, match=r"unknown metric 'nope_acc' \(in these results: .*ood_usps_acc"):
        args.func(args)


def test_wandb_frame_has_the_learners_and_extra_test_sets(root, df):
    from reports.load import load_wandb
    from test_reports import FakeApi

    wdf = load_wandb("ent/proj", api=FakeApi(root))
    cols = ["key", "learner", "arm", "upstream", "toy.width", "metrics.test_acc", "metrics.ood_usps_acc", "cost.learner_s"]
    pd.testing.assert_frame_equal(wdf[cols].sort_values("key").reset_index(drop=True),
                                  df[cols].sort_values("key").reset_index(drop=True), check_dtype=False)


def test_average_per_upstream_over_tasks(table):
    """rand-m9-n2 ran on two tasks: its per-upstream average is the mean of those two paired gains."""
    from reports.tables import average_by_upstream

    by = average_by_upstream(table)
    r = by[(by["Upstream"] == RA) & (by["Arm"] == "X+saflex")].iloc[0]
    gains = [np.mean([ACC[(t, RA)]["saflex"][s] - ACC[(t, RA)]["none"][s] for s in ACC[(t, RA)]["none"]])
             for t in (BM, DG)]
    assert r["experiments"] == "2" and r["avg Δ vs X"].startswith(f"{100 * np.mean(gains):+.2f} ± ")
    assert set(by["Upstream"]) == {RA, CM}
    assert average_by_upstream(table[table["upstream"] == CM]).empty  # one task per upstream: nothing to add


def test_mixed_numerics_and_cost_are_flagged(tmp_path):
    """X timed/computed with 1 thread and X+saflex with 2: the report says so (issues 12 and 19)."""
    for seed in range(3):
        for learner, threads in (("none", 1), ("saflex", 2)):
            d = put(tmp_path, f"{learner}{seed}", BM, learner, seed, 0.8 + 0.01 * seed)
            rec = json.loads((d / "result.json").read_text())
            rec["numerics"] = {"threads": threads, "device": "cpu", "torch": "2.14.1"}
            (d / "result.json").write_text(json.dumps(rec))
    flags = comparison_table(load_results(tmp_path)).iloc[0]["flags"]
    assert "mixed_numerics" in flags and "mixed_cost" in flags
    same = tmp_path / "same"
    for seed in range(3):
        for learner in ("none", "saflex"):
            d = put(same, f"{learner}{seed}", BM, learner, seed, 0.8)
            rec = json.loads((d / "result.json").read_text())
            rec["numerics"] = {"threads": 1, "device": "cpu", "torch": "2.14.1"}
            (d / "result.json").write_text(json.dumps(rec))
    flags = comparison_table(load_results(same)).iloc[0]["flags"]
    assert "mixed_numerics" not in flags and "mixed_cost" not in flags


def test_ood_table_and_fewshot_figure(tmp_path):
    """OOD: ID and each OOD test set side by side with the per-seed drop; few-shot: accuracy against K."""
    from reports.figures import fig_fewshot
    from reports.tables import ood_table

    for seed, (idv, oodv) in enumerate([(0.90, 0.60), (0.80, 0.60), (0.85, 0.55)]):
        d = put(tmp_path, f"o{seed}", "ood/mnist-to-usps", "none", seed, idv)
        rec = json.loads((d / "result.json").read_text())
        rec["metrics"]["ood_usps_acc"] = oodv
        (d / "result.json").write_text(json.dumps(rec))
    for k, base in ((4, 0.3), (16, 0.5)):
        for seed in range(2):
            put(tmp_path, f"f{k}{seed}", f"fewshot/cifar10-k{k}", "none", seed, base + 0.02 * seed)
            put(tmp_path, f"f{k}{seed}s", f"fewshot/cifar10-k{k}", "saflex", seed, base + 0.05)
    df = load_results(tmp_path)
    t = ood_table(df)
    row = t[t["Task"] == "ood/mnist-to-usps"].iloc[0]
    drops = [0.30, 0.20, 0.30]
    half = T3 * np.std(drops, ddof=1) / math.sqrt(3)
    assert row["ID→OOD drop"] == f"{100 * np.mean(drops):+.2f} ± {100 * half:.2f}"
    assert row["ood_usps"].startswith(f"{100 * np.mean([0.6, 0.6, 0.55]):.2f} ± ")
    fig, data = fig_fewshot(df)
    x = data[(data["method"] == RA) & (data["dataset"] == "cifar10")].sort_values("K")
    assert list(x["K"]) == [4, 16] and near(x["test_acc_mean"].iloc[1], 0.51)
    assert set(data["method"]) == {RA, f"{RA}+saflex"}
