"""The wandb report groups by the arm's full identity and filters to the loaded runs; `wandb-push`
writes stored results as offline wandb runs (uploading them needs a server: docs/interfaces.md)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("wandb_workspaces")

from wandb_workspaces import expr  # noqa: E402

from bench.spec import make_spec  # noqa: E402
from reports.load import load_results  # noqa: E402
from reports.wandb_report import build_report, group_runs, report_spec  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
STUDY = Path(__file__).resolve().parents[3] / "reports" / "studies" / "saflex_fair_results"
TASK = "digits/sklearn"


def _write(root: Path, method: str, seed: int, acc: float, sweep: str, knobs: dict | None = None) -> str:
    spec = make_spec(TASK, method, seed, {"epochs": 2, **{f"saflex.{k}": v for k, v in (knobs or {}).items()}})
    d = root / "runs" / spec.key
    d.mkdir(parents=True)
    rows = [{"epoch": e, "train_loss": 1.0 / e, "val_acc": acc - 0.1 / e} for e in (1, 2)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "result.json").write_text(json.dumps({
        "key": spec.key, "status": "done", "sweep": sweep, "spec": spec.to_dict(), "semantics": spec.semantics,
        "metrics": {"test_acc": acc, "test_auc": acc, "val_acc": acc, "val_auc": acc, "best_epoch": 2, "epochs_run": 2},
        "cost": {"wall_s": 2.0, "epoch_s": 1.0, "step_s": 0.01, "process_s": 4.0}}))
    return spec.key


@pytest.fixture()
def two_settings(tmp_path):
    """X and two SAFLEX settings of one method, 2 seeds each; one more X run in another sweep."""
    root = tmp_path / "r"
    for seed in (0, 1):
        _write(root, "rand-m9-n2", seed, 0.80 + seed / 100, "a")
        _write(root, "rand-m9-n2+saflex", seed, 0.82, "a", {"eps": 0.05})
        _write(root, "rand-m9-n2+saflex", seed, 0.84, "a", {"eps": 0.2})
    other = _write(root, "rand-m9-n2", 5, 0.5, "b")
    return root, other


def _task_runset(report: dict) -> dict:
    grid = next(b for b in report["blocks"] if b["type"] == "PanelGrid")
    (rs,) = grid["runsets"]
    return grid, rs


def _configs(root: Path, keys) -> list[dict]:
    return [json.loads((root / "runs" / k / "result.json").read_text())["spec"] for k in keys]


def test_two_knob_settings_are_two_groups_and_filters_take_the_loaded_runs(two_settings):
    root, other = two_settings
    df = load_results(root, "a")
    report = report_spec(build_report(df, "ent/proj", sweep="a"))
    grid, rs = _task_runset(report)
    assert rs["groupby"] == ["config.method", "config.saflex.eps"]
    assert all(p["groupby"] is None and p["aggregate"] for p in grid["panels"])  # panels follow the runset
    groups = group_runs(_configs(root, df["key"]), rs["groupby"])
    saflex = [g for g in groups if g[0] == "rand-m9-n2+saflex"]
    assert sorted(g[1] for g in saflex) == [0.05, 0.2] and len(groups) == 3
    assert all(len(v) == 2 for v in groups.values())  # each group = the 2 seeds of one arm
    # every loaded run is in sweep a: the runset is that wandb group
    assert rs["filters"] == f"Config('task') = '{TASK}' and Group = 'a' and State = 'finished'"
    # without --sweep: exactly the loaded runs (7, incl. sweep b's), by id = run key; no sweep clause
    df_all = load_results(root)
    _, rs = _task_runset(report_spec(build_report(df_all, "ent/proj")))
    leaf = next(f for f in expr.expr_to_filters(rs["filters"]).filters if f.op == "IN")
    assert sorted(leaf.value) == sorted(df_all["key"]) and other in leaf.value
    assert "Group" not in rs["filters"]


def test_study_records_each_saflex_setting_is_its_own_group():
    if not STUDY.is_dir():
        pytest.skip("committed study store absent")
    df = load_results(STUDY, "saflex_fair")
    bm = df[(df["task"] == "medmnist/breastmnist") & (df["method"] == "rand-m9-n2+saflex")]
    assert bm["arm"].nunique() >= 2  # the study's own knob variants
    report = report_spec(build_report(df, "ent/proj", sweep="saflex_fair"))
    grids = [b for b in report["blocks"] if b["type"] == "PanelGrid"]
    (rs,) = next(g for g in grids if "breastmnist" in g["runsets"][0]["filters"])["runsets"]
    keys = list(bm["key"])
    groups = group_runs(_configs(STUDY, keys), rs["groupby"])
    assert len(groups) == bm["arm"].nunique()
    # the same partition as the tables' arms
    arm_of = dict(zip(bm["key"], bm["arm"]))
    assert all(len({arm_of[keys[i]] for i in idx}) == 1 for idx in groups.values())


def test_cost_panel_claims_no_overhead_from_separate_runs(two_settings):
    root, _ = two_settings
    report = report_spec(build_report(load_results(root), "ent/proj"))
    cost = [b for b in report["blocks"] if b["type"] == "PanelGrid"][-1]
    md = cost["panels"][1]["markdown"]
    assert "not the learner's overhead" in md and "×" not in md


def test_wandb_push_writes_offline_runs_as_the_tracker_does(two_settings, tmp_path, capsys):
    from bench.cli import main
    from bench.tracking import offline_run_dirs, read_offline_run

    root, _ = two_settings
    out = tmp_path / "push"
    code = main(["wandb-push", "--project", "ent/proj", "--results", str(root), "--sweep", "b", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "wrote 1 offline wandb runs" in printed
    assert "wandb sync --project proj --entity ent" in printed
    (key,) = [p.name for p in out.iterdir()]
    (seg,) = offline_run_dirs(out / key)
    run = read_offline_run(seg, wait_s=30)
    spec = json.loads((root / "runs" / key / "result.json").read_text())["spec"]
    assert run["run_id"] == key and run["group"] == "b" and run["project"] == "proj"
    assert run["config"]["method"] == spec["method"] and run["config"]["seed"] == 5
    assert run["steps"] == [1, 2] and run["summary"]["test_acc"] == 0.5 and run["exit_code"] == 0
    assert not (root / "runs" / key / "wandb").exists()  # the store is left as it was
