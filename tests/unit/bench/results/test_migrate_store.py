"""scripts/migrate_store.py: the ramped refresh=auto records move to their semantics-2 keys, the
unramped ones to the key of what they ran (ref_ramp=false), everything else stays byte for byte;
a second run does nothing; --dry-run changes nothing."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from bench.learners.saflex import SaflexLearner
from bench.results import ResultsStore
from bench.spec import RunSpec

REPO = Path(__file__).resolve().parents[4]
_spec = importlib.util.spec_from_file_location("migrate_store", REPO / "scripts" / "migrate_store.py")
migrate_store = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(migrate_store)

SAFLEX = {"bn_mode": "train", "clean_weight": 0.0, "eps": 0.0, "label_T": 1.0, "labels": "lp", "normalize": True,
          "reference": "val", "refresh": "auto", "residual": "ce", "residual_T": 2.0, "residual_margin": 1.0, "rho": None,
          "tau": 1.0, "val_batch": 512, "warmup_epochs": 0, "weights": "sigmoid"}
SPEC = {"as_rgb": False, "batch_size": 128, "epochs": 20, "gamma": 0.1, "lr": 0.001, "method": "mixup-a0.2+saflex",
        "milestones": [0.5, 0.75], "model": "small_cnn", "momentum": 0.9, "optimizer": "adam", "ref_frac": 0.5,
        "saflex": SAFLEX, "schedule": "multistep", "seed": 2, "select_metric": "auc", "task": "medmnist/breastmnist",
        "weight_decay": 0.0}
RAMPED_OLD, RAMPED_NEW = "010dcd9b2ba5", "9fc749502723"  # the landed record and its semantics-2 key


def old_key(spec_dict, monkeypatch):
    """The key the code before semantics versions gave this spec."""
    with monkeypatch.context() as m:
        m.setattr(SaflexLearner, "semantics_for", classmethod(lambda cls, knobs: 1))
        return RunSpec.from_dict(spec_dict).key


def put(root, key, spec_dict, finished_at):
    run = root / "runs" / key
    run.mkdir(parents=True)
    (run / "spec.json").write_text(json.dumps({**spec_dict, "key": key}, indent=2, sort_keys=True))
    (run / "result.json").write_text(json.dumps({"key": key, "status": "done", "spec": spec_dict, "finished_at": finished_at,
                                                 "metrics": {"test_acc": 0.8, "test_auc": 0.8, "val_acc": 0.8,
                                                             "val_auc": 0.8, "best_epoch": 3}}, indent=2))
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    return run


def files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_migration_moves_each_record_to_the_key_of_what_it_ran(tmp_path, monkeypatch):
    root = tmp_path / "store"
    ramped = dict(SPEC)
    unramped = {**SPEC, "seed": 3}
    fixed = {**SPEC, "seed": 4, "saflex": {**SAFLEX, "refresh": 1}}
    keys = {name: old_key(d, monkeypatch) for name, d in (("ramped", ramped), ("unramped", unramped), ("fixed", fixed))}
    assert keys["ramped"] == RAMPED_OLD
    put(root, keys["ramped"], ramped, "2026-11-30T10:31:29Z")
    put(root, keys["unramped"], unramped, "2026-11-30T09:54:58Z")  # made before the ramp (3fd5407)
    put(root, keys["fixed"], fixed, "2026-11-29T12:00:00Z")
    (root / "sweeps" / "s").mkdir(parents=True)
    (root / "sweeps" / "s" / "plan.json").write_text(json.dumps({"keys": list(keys.values()), "sweep": "s"}))
    before = files(root)

    dry = migrate_store.migrate(root, dry_run=True)
    assert files(root) == before and dry[-1].startswith("dry run: 2 run(s) moved")

    lines = migrate_store.migrate(root)
    unramped_spec = RunSpec.from_dict(unramped).with_overrides({"saflex.ref_ramp": False})
    assert sorted(p.name for p in (root / "runs").iterdir()) == sorted([RAMPED_NEW, unramped_spec.key, keys["fixed"]])
    assert any(line.startswith(f"moved {RAMPED_OLD} -> {RAMPED_NEW}") for line in lines)
    assert files(root / "runs" / keys["fixed"]) == {k.relative_to(Path("runs") / keys["fixed"]): v
                                                     for k, v in before.items() if k.parts[1] == keys["fixed"]}
    store = ResultsStore(root)
    ramped_spec = RunSpec.from_dict(ramped)
    rec = store.read_result(RAMPED_NEW, ramped_spec)
    assert rec is not None and rec["semantics"] == {"learner:saflex": 2} and rec["migrated_from"] == RAMPED_OLD
    spec_json = json.loads((root / "runs" / RAMPED_NEW / "spec.json").read_text())
    assert spec_json["key"] == RAMPED_NEW and RunSpec.from_dict(spec_json).key == RAMPED_NEW
    back = store.read_result(unramped_spec.key, unramped_spec)  # served as what it ran: ref_ramp=false
    assert back is not None and back["spec"]["saflex"]["ref_ramp"] is False and back["semantics"] == {}
    assert store.read_result(RunSpec.from_dict(unramped).key, RunSpec.from_dict(unramped)) is None  # not as today's
    plan = json.loads((root / "sweeps" / "s" / "plan.json").read_text())
    assert plan["keys"] == [RAMPED_NEW, unramped_spec.key, keys["fixed"]]

    after = files(root)
    assert migrate_store.migrate(root)[-1] == "0 run(s) moved, 0 rewritten in place" and files(root) == after


def test_a_bump_without_a_known_history_leaves_its_records_to_rerun(tmp_path, monkeypatch):
    """A learner bumped to 2 whose old records cannot be told apart: they stay (not done: they rerun)."""
    from bench.learners.augerino import Augerino

    spec = {**SPEC, "method": "rand-m9-n2+augerino", "saflex": None,
            "augerino": {"init_width": 0.1, "reg": 0.01, "test_copies": 4}}
    key = RunSpec.from_dict(spec).key
    put(tmp_path / "store", key, spec, "2026-11-30T12:00:00Z")
    before = files(tmp_path / "store")
    monkeypatch.setattr(Augerino, "semantics", 2)
    lines = migrate_store.migrate(tmp_path / "store")
    assert files(tmp_path / "store") == before
    assert lines[0].startswith(f"left {key}: made under semantics {{}}, today's code gives {{'learner:augerino': 2}}")


def test_migration_on_a_copy_of_committed_run_folders(tmp_path):
    src = REPO / "reports" / "studies" / "saflex_fair_results"
    picked = [RAMPED_OLD, "017588f6a457", "00d915791436"]
    if not all((src / "runs" / k).is_dir() for k in picked):
        pytest.skip("the committed study store is not in this checkout")
    root = tmp_path / "copy"
    for k in picked:
        shutil.copytree(src / "runs" / k, root / "runs" / k)
    lines = migrate_store.migrate(root)
    assert sorted(p.name for p in (root / "runs").iterdir()) == sorted([RAMPED_NEW, "017588f6a457", "00d915791436"])
    assert lines[-1] == "1 run(s) moved, 0 rewritten in place"
    assert ResultsStore(root).read_result(RAMPED_NEW, RunSpec.from_dict(json.loads((root / "runs" / RAMPED_NEW / "spec.json").read_text())))


def test_migration_cli_rejects_a_folder_that_is_no_results_root(tmp_path, capsys):
    assert migrate_store.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no runs/ folder" in err
