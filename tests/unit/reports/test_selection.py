"""reports/selection.py on synthetic records: which epoch each rule picks, degenerate selections, the
rule chosen on the tuning seed only, never a test metric."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from reports.selection import (CRITERION, RULE_PREFERENCE, annotate_selection, choose_rule, degenerate_counts, is_degenerate,
                               majority_rate, rerun_cost, rule_selections, select_epoch, selection_majority)


def ep(epoch, acc, loss, auc, test_acc=0.0):
    # test_acc deliberately disagrees with val: a rule that read it would pick another epoch
    return {"epoch": epoch, "val_acc": acc, "val_loss": loss, "val_auc": auc, "test_acc": test_acc, "test_auc": 1 - auc}


EPOCHS = [ep(1, 0.50, 0.9, 0.70, test_acc=0.99), ep(2, 0.80, 0.5, 0.60), ep(3, 0.70, 0.7, 0.90)]


@pytest.mark.parametrize("rule, epoch", [("val_loss", 2), ("val_acc", 2), ("val_auc", 3)])
def test_each_rule_picks_its_best_val_epoch_never_test(rule, epoch):
    assert select_epoch(EPOCHS, rule)["epoch"] == epoch


def test_ties_go_to_the_later_epoch_as_in_the_trainer():
    rows = [ep(1, 0.6, 0.5, 0.8), ep(2, 0.6, 0.5, 0.8)]
    assert {select_epoch(rows, r)["epoch"] for r in RULE_PREFERENCE} == {2}
    assert select_epoch([{"epoch": 1}], "val_auc") is None


def test_majority_rate_and_degenerate():
    assert majority_rate([0, 0, 0, 1]) == 0.75 and math.isnan(majority_rate([]))
    assert is_degenerate(0.75, 0.75) == 1.0 and is_degenerate(0.7, 0.75) == 1.0
    assert is_degenerate(0.76, 0.75) == 0.0 and math.isnan(is_degenerate(0.8, math.nan))


def frame(rows):
    return pd.DataFrame(rows)


def test_degenerate_uses_the_selection_split_not_test():
    df = frame([{"key": "a", "arm": "none", "seed": 1, "metrics.val_acc": 0.9, "metrics.test_acc": 0.1},
                {"key": "b", "arm": "saflex", "seed": 1, "metrics.val_acc": 0.5, "metrics.test_acc": 0.99}])
    out = annotate_selection(df, majority=pd.Series([0.6, 0.6]))
    assert out["selection.degenerate"].tolist() == [0.0, 1.0]
    counts = degenerate_counts(out).set_index("arm")
    assert counts.loc["saflex", "degenerate"] == 1 and counts.loc["none", "degenerate"] == 0


def test_majority_recorded_first_then_computed_once_per_split(tmp_path):
    recs = {"r0": {"info": {"select_majority": 0.3}, "spec": {"task": "t", "seed": 1}},
            "r1": {"info": {}, "spec": {"task": "t", "seed": 1, "ref_frac": 0.5}},
            "r2": {"info": {}, "spec": {"task": "t", "seed": 1, "ref_frac": 0.5}},
            "r3": {"info": {}, "spec": {"task": "t", "seed": 2, "ref_frac": 0.5}}}
    for k, rec in recs.items():
        (tmp_path / k).mkdir()
        (tmp_path / k / "result.json").write_text(json.dumps(rec))
    calls = []

    def compute(spec, root):
        calls.append(spec["seed"])
        return 0.5 + spec["seed"] / 10

    df = frame([{"run_dir": str(tmp_path / k)} for k in recs] + [{"run_dir": None}])
    got = selection_majority(df, compute=compute).tolist()
    assert got[:4] == [0.3, 0.6, 0.6, 0.7] and math.isnan(got[4])
    assert sorted(calls) == [1, 2]


def runs_with_epochs():
    """Seed 0 (tuning): val_auc picks a degenerate epoch (acc 0.5 <= majority 0.6), val_loss and val_acc
    do not. Seeds 1-2: val_loss picks degenerate epochs, val_auc does not. val_acc is never degenerate."""
    tune = [ep(1, 0.5, 0.6, 0.95), ep(2, 0.8, 0.4, 0.90), ep(3, 0.85, 0.5, 0.80)]
    other = [ep(1, 0.55, 0.3, 0.70), ep(2, 0.7, 0.6, 0.90), ep(3, 0.9, 0.7, 0.85)]
    rows, eps = [], {}
    for seed in (0, 1, 2):
        for arm in ("none", "saflex"):
            k = f"{arm}{seed}"
            rows.append({"key": k, "arm": arm, "seed": seed, "selection.majority": 0.6, "select_metric": "auc",
                         "metrics.best_epoch": 1 if seed == 0 else 2, "cost.wall_s": 10.0})
            eps[k] = tune if seed == 0 else other
    return frame(rows), eps


def test_rule_is_chosen_on_the_tuning_seed_only():
    df, eps = runs_with_epochs()
    sel = rule_selections(df, epochs_of=lambda r: eps[r["key"]])
    choice = choose_rule(sel)
    t = choice.table.set_index("rule")
    assert t.loc["val_auc", "degenerate"] == 2 and t.loc["val_loss", "degenerate"] == 0
    # tied at 0 with val_acc: the declared preference order puts val_loss first
    assert choice.rule == "val_loss" and "tied with val_acc" in choice.reason
    # the other seeds would have ruled val_loss out: they are a diagnostic only
    assert choice.diagnostic.set_index("rule").loc["val_loss", "degenerate"] == 4
    assert choose_rule(sel, tuning_seeds=(1, 2)).rule == "val_auc"  # there val_loss degenerates; val_auc ties val_acc
    # a tie goes to the runs' own rule first (no reruns)
    assert choose_rule(sel, incumbent="val_acc").rule == "val_acc"
    assert choose_rule(sel, incumbent="val_auc").rule == "val_loss"  # val_auc is not among the tied


def test_no_tuning_seed_means_no_choice():
    df, eps = runs_with_epochs()
    sel = rule_selections(df[df["seed"] > 0], epochs_of=lambda r: eps[r["key"]])
    choice = choose_rule(sel)
    assert choice.rule is None and "no run of tuning seed" in choice.reason and len(choice.diagnostic)


def test_rerun_cost_counts_runs_whose_epoch_changes():
    df, eps = runs_with_epochs()
    sel = rule_selections(df, epochs_of=lambda r: eps[r["key"]])
    c = rerun_cost(df, sel, "val_loss")
    # seed 0: stored epoch 1, val_loss picks 2 -> rerun; seeds 1-2: stored 2, val_loss picks 1 -> rerun
    assert c["runs"] == 6 and c["seconds"] == 60.0
    assert rerun_cost(df, sel, "val_auc")["runs"] == 0  # the runs' own rule costs nothing


def test_recorded_majority_equals_the_one_recomputed_from_the_data(tmp_path):
    """A real run records its selection split's majority rate; an older record (without it) gets the same
    value from the task's data, carve included."""
    from bench.cli import main

    assert main(["run", "--task", "digits/sklearn", "--method", "none", "--epochs", "1", "--set", "ref_frac=0.5",
                 "--set", "seed=3", "--results", str(tmp_path)]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    rec = json.loads((run_dir / "result.json").read_text())
    recorded = rec["info"]["select_majority"]
    assert 0.09 < recorded < 0.12  # 10 balanced classes, 179 selection images
    rec["info"].pop("select_majority")
    (run_dir / "result.json").write_text(json.dumps(rec))
    got = selection_majority(frame([{"run_dir": str(run_dir)}]))
    assert got.iloc[0] == pytest.approx(recorded)


def test_clustered_gain_averages_per_task_first_and_drops_degenerate_pairs():
    from reports.selection import DEGENERATE, clustered_gain

    rows = []
    # task a: two upstreams with gains +2 and +4 (task mean +3); task b: one upstream, gain -1,
    # except seed 2 whose X run is degenerate with a gain of +9
    for task, ups in (("a", {"u1": 0.02, "u2": 0.04}), ("b", {"u1": -0.01})):
        for up, gain in ups.items():
            for seed in (1, 2):
                g = 0.09 if (task == "b" and seed == 2) else gain
                deg = float(task == "b" and seed == 2)
                rows += [{"task": task, "upstream": up, "seed": seed, "arm": "none", "metrics.test_acc": 0.5, DEGENERATE: deg},
                         {"task": task, "upstream": up, "seed": seed, "arm": "saflex", "metrics.test_acc": 0.5 + g,
                          DEGENERATE: 0.0}]
    df = frame(rows)
    ci, used, dropped = clustered_gain(df, "saflex", "none", "test_acc")
    assert ci.mean == pytest.approx((0.03 + 0.04) / 2) and ci.n == 2 and used == 6 and dropped == 0
    ci, used, dropped = clustered_gain(df, "saflex", "none", "test_acc", drop_degenerate=True)
    assert ci.mean == pytest.approx((0.03 - 0.01) / 2) and used == 5 and dropped == 1


def test_selection_section_says_which_rule_and_why():
    from reports.paper import selection_section
    from reports.selection import DEGENERATE

    df, eps = runs_with_epochs()
    df = df.assign(task="medmnist/breastmnist", upstream="rand-m9-n2", family="medmnist", learner=df["arm"],
                   **{"metrics.test_acc": 0.8, "metrics.test_auc": 0.9, "metrics.val_acc": 0.7, DEGENERATE: 0.0})
    epochs = frame([{"key": k, **e} for k, rows in eps.items() for e in rows])
    df.loc[df["seed"] == 0, "metrics.test_acc"] = 0.1  # the tuning seed's test numbers must stay out
    text = "\n".join(selection_section(df, df, epochs, "saflex"))
    assert "80.0 ± 0.0" in text and "10.0 ±" not in text and "56.7" not in text  # 56.7: seeds 0-2 averaged
    assert "Conclusions under val_auc (the stored rule; under val_loss they need the reruns above)" in text
    assert "**Chosen: val_loss**" in text and "tied with val_acc" in text and "test" not in CRITERION.split("No test")[0]
    text = "\n".join(selection_section(df[df["seed"] > 0], df, epochs, "saflex"))
    assert "No rule is chosen here" in text and "reruns" in text


def test_selection_section_with_only_the_tuning_seed_names_the_rule_to_run_the_reported_seeds_under():
    """The study's order: the tuning seed runs first; its section must already say which rule the reported
    seeds are to run under (and show no test number, there being no reported run)."""
    from reports.paper import selection_section
    from reports.selection import DEGENERATE

    df, eps = runs_with_epochs()
    df = df.assign(task="medmnist/breastmnist", upstream="rand-m9-n2", family="medmnist", learner=df["arm"],
                   **{"metrics.test_acc": 0.8, "metrics.test_auc": 0.9, "metrics.val_acc": 0.7, DEGENERATE: 0.0})
    epochs = frame([{"key": k, **e} for k, rows in eps.items() for e in rows])
    tuning = df[df["seed"] == 0]
    text = "\n".join(selection_section(tuning, tuning, epochs, "saflex"))
    assert "No runs of the reported seeds yet" in text and "**Chosen: val_loss**" in text
    assert "80.0" not in text
    assert "_No main-comparison runs._" in "\n".join(selection_section(df.iloc[:0], df.iloc[:0], epochs, "saflex"))


def _stored_and_rerun():
    """Seeds 0-2 stored under val AUC (SAFLEX +2 points over X) and seeds 1-2 rerun under val loss (−3)."""
    from reports.selection import DEGENERATE

    df, eps = runs_with_epochs()
    df = df.assign(task="medmnist/breastmnist", upstream="rand-m9-n2", family="medmnist", learner=df["arm"],
                   **{"metrics.test_acc": 0.8, "metrics.test_auc": 0.9, "metrics.val_acc": 0.7, DEGENERATE: 0.0})
    df.loc[df["arm"] == "saflex", "metrics.test_acc"] = 0.82  # stored rule: +2.00
    epochs = frame([{"key": k, **e} for k, rows in eps.items() for e in rows])
    rerun = df[df["seed"] > 0].assign(select_metric="loss", key=lambda d: d["key"] + "L")
    rerun.loc[rerun["arm"] == "saflex", "metrics.test_acc"] = 0.77  # under val loss: −3.00
    return df, epochs, rerun


def test_selection_section_gives_the_conclusions_under_the_chosen_rule_from_its_reruns():
    """With the main comparison rerun under the rule the tuning seed chose, the conclusions come from those
    runs first (their own test numbers, never the stored rule's), then under the stored rule for comparison."""
    from reports.paper import selection_section

    df, epochs, rerun = _stored_and_rerun()
    text = "\n".join(selection_section(df, df, epochs, "saflex", rerun=rerun))
    head = "### Conclusions under val_loss (chosen on the tuning seed; 4 runs rerun under it)"
    assert head in text and "### Conclusions under val_auc (the stored rule, for comparison)" in text
    under_loss, under_auc = text.split(head)[1].split("### Conclusions under val_auc")
    assert "X+SAFLEX − X, accuracy, task-clustered: -3.00" in under_loss and "-3.00" not in under_auc
    assert "X+SAFLEX − X, accuracy, task-clustered: +2.00" in under_auc
    assert "(run: below)" in text and "need the reruns" not in text
    # reruns under another rule than the chosen one do not count as the chosen rule's
    other = rerun.assign(select_metric="acc")
    text = "\n".join(selection_section(df, df, epochs, "saflex", rerun=other))
    assert head not in text and "under val_loss they need the reruns above" in text


def test_a_half_finished_rerun_never_stands_in_for_the_comparison():
    """Until every reported run has its rerun, the conclusions stay under the stored rule and the section
    says how many reruns are in; the summary's rule in force is the stored one."""
    from reports.paper import rerun_coverage, rule_in_force, selection_section

    df, epochs, rerun = _stored_and_rerun()
    part = rerun.iloc[1:]
    assert rerun_coverage(df[df["seed"] > 0], part) == (len(rerun) - 1, len(rerun))
    text = "\n".join(selection_section(df, df, epochs, "saflex", rerun=part))
    assert f"under val_loss {len(rerun) - 1} of the {len(rerun)} reruns are in" in text
    assert "Conclusions under val_loss" not in text and "-3.00" not in text
    rule, runs, chosen = rule_in_force(df, epochs, part)
    assert rule == "val_auc" and not chosen and set(runs["seed"]) == {1, 2}
    rule, runs, chosen = rule_in_force(df, epochs, rerun)
    assert rule == "val_loss" and chosen and (runs["key"].str.endswith("L")).all()


def test_gain_summary_lines_give_accuracy_and_auc_against_both_baselines():
    from reports.paper import gain_summary_lines, rule_in_force

    df, epochs, rerun = _stored_and_rerun()
    ref = rerun[rerun["arm"] == "none"].assign(arm="ref", learner="ref", key=lambda d: d["key"] + "R",
                                                **{"metrics.test_acc": 0.75, "metrics.test_auc": 0.95})
    rule, runs, _ = rule_in_force(df, epochs, pd.concat([rerun, ref]))
    x, x_ref = gain_summary_lines(runs, "saflex", "SAFLEX", rule, "chosen")
    assert x.startswith("- Under val_loss (chosen): SAFLEX − X, task-clustered over 1 tasks: accuracy -3.00")
    assert "AUC +0.00" in x and "(2 pairs)" in x
    assert "SAFLEX − X+ref" in x_ref and "accuracy +2.00" in x_ref and "AUC -5.00" in x_ref
    # one experiment, seeds in lockstep (zero spread): every gain's CI is a point, so it counts as above or below
    assert "of 1: accuracy above 0 in 0, below 0 in 1; AUC above 0 in 0, below 0 in 0." in x
    assert "of 1: accuracy above 0 in 1, below 0 in 0; AUC above 0 in 0, below 0 in 1." in x_ref
