"""Run identity follows semantics: a component's version bump changes the keys of the runs it touches
(and only those), records carry the semantics and code version they were made with, and a store that
holds a record of another semantics for the same spec reruns it."""
import json

import pytest

from bench.learners.saflex import SaflexLearner
from bench.runner import run_spec
from bench.spec import RunSpec, make_spec
from bench.store import ResultsStore


def tiny(method="none", **over):
    return make_spec("digits/sklearn", method, 0, {"epochs": 1, **over})


def test_a_learner_bump_changes_only_the_keys_it_declares(monkeypatch):
    auto, fixed = tiny("rand-m9-n2+saflex"), tiny("rand-m9-n2+saflex", **{"saflex.refresh": 4})
    plain = tiny("rand-m9-n2")
    assert auto.semantics == {"learner:saflex": 2} and fixed.semantics == {} and plain.semantics == {}
    before = {s.key for s in (fixed, plain)}
    monkeypatch.setattr(SaflexLearner, "semantics", 3)  # a later bump through the same rule
    monkeypatch.setattr(SaflexLearner, "semantics_for", classmethod(lambda cls, k: 3 if k.get("refresh") == "auto" else 1))
    assert auto.semantics == {"learner:saflex": 3} and {fixed.key, plain.key} == before


def test_upstream_and_task_bumps_enter_the_key(monkeypatch):
    import baselines
    from bench.tasks.digits import SklearnDigits

    spec = tiny("noisy(0.3,cutmix-a1.0)")
    key = spec.key
    monkeypatch.setattr(baselines.CutMix, "semantics", 2)  # nested inside noisy(...): still counted
    from bench import spec as spec_module

    spec_module._upstream_semantics.cache_clear()
    assert spec.semantics == {"upstream:CutMix": 2} and spec.key != key
    monkeypatch.setattr(SklearnDigits, "semantics", 2)
    assert spec.semantics == {"task:digits": 2, "upstream:CutMix": 2}
    monkeypatch.setattr(baselines.CutMix, "semantics", 1)
    spec_module._upstream_semantics.cache_clear()
    monkeypatch.setattr(SklearnDigits, "semantics", 1)
    assert spec.semantics == {} and spec.key == key


def test_the_ramp_case_reruns_a_record_of_the_unramped_rule(tmp_path, monkeypatch):
    """A store made between 3fd5407 and 11360e8 held today's default spec under the unramped rule.
    With semantics versions the two rules have two keys, and today's spec trains instead of being
    served the other rule's record."""
    root = tmp_path / "results"
    spec = tiny("rand-m9-n2+saflex")
    with monkeypatch.context() as m:  # the engine before the ramp: SAFLEX semantics 1 for every run
        m.setattr(SaflexLearner, "semantics_for", classmethod(lambda cls, knobs: 1))
        m.setattr(SaflexLearner, "semantics", 1)
        old = run_spec(spec, root, progress=False, wandb_mode="disabled")
        old_key = spec.key
    assert old["semantics"] == {} and old["key"] == old_key
    store = ResultsStore(root)
    assert spec.key != old_key and not store.is_done(spec.key)  # two rules, two keys: not served as done
    new = run_spec(spec, root, progress=False, wandb_mode="disabled")
    assert new["key"] == spec.key and new["semantics"] == {"learner:saflex": 2}
    # the old record stays on disk, and read back it is not done: its semantics are not today's
    assert (store.run_dir(old_key) / "result.json").exists() and store.read_result(old_key) is None
    written = json.loads((store.run_dir(spec.key) / "spec.json").read_text())
    assert written["semantics"] == {"learner:saflex": 2} and RunSpec.from_dict(written).key == spec.key
    assert new["versions"]["saflex_bench"] and "python" in new["versions"]


def test_a_record_of_another_semantics_under_the_same_key_is_not_done():
    """Where a record sits in the folder of a spec's key but names another semantics (a store copied
    by hand, a half-run migration), the results module's one done definition refuses it."""
    results = pytest.importorskip("bench.results")
    spec = tiny("rand-m9-n2+saflex")
    record = {"key": spec.key, "status": "done", "spec": spec.to_dict(), "metrics": {"test_acc": 0.9}}
    assert results.record_problem({**record, "semantics": {"learner:saflex": 2}}, spec) is None
    assert results.record_problem({**record, "semantics": {}}, spec)
    assert results.record_problem(record, spec)  # missing = {}


def test_records_name_the_commit_in_a_checkout():
    from pathlib import Path

    from bench.runner import git_commit

    commit = git_commit()
    if not (Path(__file__).resolve().parents[3] / ".git").exists():
        assert commit is None
    else:
        assert commit and len(commit.split("+")[0]) == 40
