"""The PMLB power study's set list comes from its declared rule, and the committed sweep is that list."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INDEX = REPO.parent / "shared" / "data" / "tabular" / "pmlb" / "INDEX.tsv"


def script():
    spec = importlib.util.spec_from_file_location("tabular_power_sets", REPO / "scripts" / "tabular_power_sets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def row(name, rows, k=2, lo=100, hi=None):
    return {"dataset": name, "rows": str(rows), "n_classes": str(k), "min_class_count": str(lo),
            "max_class_count": str(hi if hi is not None else rows - lo)}


def test_rule_bounds_are_inclusive_and_small_classes_excluded():
    m = script()
    rows = [row("a", 500), row("b", 10000), row("c", 499), row("d", 10001), row("e", 800, lo=19), row("f", 800, lo=20)]
    assert m.eligible(rows) == ["a", "b", "f"]


def test_one_set_per_group_of_copies():
    m = script()
    rows = [row("pima", 768, lo=268), row("diabetes", 768, lo=268), row("mushroom", 8124, lo=3916),
            row("agaricus_lepiota", 8145, lo=3917), row("vowel", 990, k=11, lo=90, hi=90)]
    assert m.eligible(rows) == ["agaricus_lepiota", "diabetes", "vowel"]


@pytest.mark.skipif(not INDEX.is_file(), reason="no shared PMLB copy")
def test_committed_sweep_is_the_rule_applied_to_the_shared_index(capsys):
    m = script()
    names = m.eligible(m.read_index(INDEX))
    assert len(names) >= 30
    assert m.main(["--index", str(INDEX), "--check", str(REPO / "studies" / "tabular_power" / "sweeps")]) == 0


def test_sweeps_plan_every_set_x_2_upstreams_x_3_arms_tuning_seed_then_5_seeds_fairly():
    from sweeps.config import load_sweep
    from sweeps.plan import plan_sweep
    from conftest import unfair_groups

    from studies.tabular_power import SWEEP_FILES, planned_keys

    tuning, main = (plan_sweep(load_sweep(f)) for f in SWEEP_FILES)
    tasks = {r.spec.task for r in main.runs}
    assert len(tasks) >= 30 and {r.spec.task for r in tuning.runs} == tasks
    assert len(tuning.runs) == len(tasks) * 2 * 3 and {r.spec.seed for r in tuning.runs} == {0}
    assert len(main.runs) == len(tasks) * 2 * 3 * 5 and {r.spec.seed for r in main.runs} == {1, 2, 3, 4, 5}
    # the reported seeds run under the rule chosen on the tuning seed (the script's SELECT)
    assert {r.spec.select_metric for r in main.runs} == {script().SELECT}
    assert unfair_groups(tuning.runs) == [] and unfair_groups(main.runs) == []
    assert len(set(planned_keys())) == len(tuning.runs) + len(main.runs)


def test_missing_index_is_one_line_and_exit_2(tmp_path, capsys):
    assert script().main(["--index", str(tmp_path / "nope.tsv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no index file" in err[0]


def test_committed_report_is_what_the_committed_table_gives(tmp_path):
    from reports.study_loader import load_study

    study = load_study("tabular_power", REPO / "studies")
    for p in study.write_report(None, tmp_path):
        assert (study.REPORT / p.name).read_text() == p.read_text(), p.name


def test_power_gains_are_paired_then_averaged_per_set():
    import pandas as pd

    from studies.tabular_power.report import per_set_gains, power_markdown, projected_half_width

    rows = []
    for task, gains in (("a", (0.02, 0.04)), ("b", (-0.01, -0.01))):
        for seed, g in zip((1, 2), gains):
            base = 0.5 + 0.1 * seed  # a seed effect the pairing removes
            rows += [{"task": task, "upstream": "u", "seed": seed, "arm": "none", "metrics.test_acc": base},
                     {"task": task, "upstream": "u", "seed": seed, "arm": "saflex", "metrics.test_acc": base + g}]
    g = per_set_gains(pd.DataFrame(rows), "test_acc", "none")
    assert g.to_dict() == pytest.approx({"a": 0.03, "b": -0.01})
    assert projected_half_width(0.0290, 35) == pytest.approx(0.00996, abs=1e-4)  # sd 2.9 points -> 1 point
    md = power_markdown(pd.DataFrame(rows))
    assert "| X+SAFLEX − X | accuracy | 2 | +1.00 |" in md
