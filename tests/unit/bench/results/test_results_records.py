"""bench/results/records.py: schema versions, decoding of older records, the metrics.jsonl rule and
the one definition of done."""
import json
from types import SimpleNamespace

import pytest

from bench.results import SCHEMA_VERSION, ResultsStore, read_metrics, record_problem
from bench.results.records import decode_record, parse_metrics_lines, parse_result_text

# the shape of a record written before schema_version existed (a committed record of
# reports/studies/saflex_fair_results, trimmed), with the first release's cost.saflex_s
V1_RECORD = {
    "cost": {"epoch_s": 3.67, "saflex_s": 6.33, "samples_per_s": 294.2, "wall_s": 79.07},
    "data": {"reference": 60, "test": 400, "train": 1080, "val": 60},
    "device": "cpu", "finished_at": "2026-11-30T08:27:59Z", "host": "vm",
    "info": {"n_reference": 60, "n_select": 60, "ref_from": "val"},
    "key": "001790b7df7c",
    "metrics": {"best_epoch": 9, "epochs_run": 20, "test_acc": 0.5, "test_auc": 0.712, "val_acc": 0.5, "val_auc": 0.81},
    "numerics": {"device": "cpu", "threads": 1, "torch": "2.14.1+cu130"},
    "spec": {"as_rgb": False, "batch_size": 128, "epochs": 20, "gamma": 0.1, "lr": 0.001, "method": "rand-m9-n2",
             "milestones": [0.5, 0.75], "model": "small_cnn", "momentum": 0.9, "optimizer": "adam",
             "saflex": None, "schedule": "multistep", "seed": 0, "select_metric": "auc",
             "task": "medmnist/breastmnist", "weight_decay": 0.0},
    "status": "done", "sweep": "learned_slice", "threads": 1,
    "versions": {"python": "3.11.7", "saflex_bench": "0.1.0", "torch": "2.14.1+cu130"},
    "warnings": [], "workers": 0,
}


def complete(key="k1", **over):
    return {"key": key, "status": "done", "spec": {"task": "t", "method": "none", "seed": 0},
            "metrics": {"test_acc": 0.5}, **over}


def test_a_record_of_the_previous_schema_is_read_in_todays_shape(tmp_path):
    key = V1_RECORD["key"]
    d = tmp_path / "runs" / key
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps(V1_RECORD))
    store = ResultsStore(tmp_path)
    rec = store.read_result(key)
    assert rec is not None, store.result_problem(key)
    assert rec["schema_version"] == SCHEMA_VERSION == 2
    assert rec["semantics"] == {}                      # made before semantics versions: every component at 1
    assert rec["cost"]["learner_s"] == 6.33            # the first release's saflex_s, under today's name
    assert rec["metrics"] == V1_RECORD["metrics"] and rec["spec"] == V1_RECORD["spec"]
    assert json.loads((d / "result.json").read_text()) == V1_RECORD  # reading never rewrites the file


def test_written_records_carry_the_schema_version_and_the_specs_semantics(tmp_path):
    store = ResultsStore(tmp_path)
    spec = SimpleNamespace(key="k1", semantics={"saflex": 2, "rand-m9-n2": 1})
    store.write_result("k1", complete(), spec)
    raw = json.loads((tmp_path / "runs" / "k1" / "result.json").read_text())
    assert raw["schema_version"] == 2 and raw["semantics"] == {"saflex": 2}  # entries equal to 1 left out
    assert store.is_done("k1", spec)
    assert not store.is_done("k1", SimpleNamespace(key="k1", semantics={}))  # another semantics: not done
    assert "made under semantics saflex=2, today's is v1" in store.result_problem("k1", SimpleNamespace(semantics={}))


def test_a_newer_schema_is_refused_with_a_reason():
    rec, why = parse_result_text(json.dumps(complete(schema_version=3)))
    assert rec is None and "schema_version 3" in why and "1-2" in why


def test_decoding_is_idempotent_and_keeps_todays_fields():
    once = decode_record(V1_RECORD)
    assert decode_record(once) == once
    new = decode_record({**complete(), "schema_version": 2, "cost": {"saflex_s": 1.0, "learner_s": 2.0}})
    assert new["cost"] == {"saflex_s": 1.0, "learner_s": 2.0}


@pytest.mark.parametrize("record, why", [
    ({"key": "k1"}, "result.json holds no metrics: rerun"),
    (complete(metrics={}), "result.json holds no metrics: rerun"),
    (complete(status="failed"), "result.json says status 'failed', not 'done': rerun"),
    (complete(status=None), "result.json holds no status: rerun"),
    (complete(spec=None), "result.json holds no spec: rerun"),
    (complete(spec={"task": "t", "method": "none"}), "result.json's spec lacks seed: rerun"),
    (complete(metrics={"val_acc": 0.5}), "result.json holds no test metric (metrics.test_*): rerun"),
    (complete(metrics={"test_acc": True}), "result.json holds no test metric (metrics.test_*): rerun"),
    ({"status": "done"}, "result.json names no run key: rerun"),
    ([1, 2], "result.json holds no record: rerun"),
])
def test_what_is_not_done_says_why(record, why):
    assert record_problem(record) == why


def test_done_needs_the_semantics_of_the_spec_asked_about():
    rec = decode_record(complete())                                     # a v1 record: semantics {}
    assert record_problem(rec) is None
    assert record_problem(rec, SimpleNamespace()) is None                  # a spec without semantics: {}
    assert record_problem(rec, SimpleNamespace(semantics={"saflex": 1})) is None  # 1 = the first meaning
    assert record_problem(rec, SimpleNamespace(semantics={"saflex": 2})).startswith("made under semantics v1")
    rec2 = decode_record(complete(schema_version=2, semantics={"saflex": 2}))
    assert record_problem(rec2, SimpleNamespace(semantics={"saflex": 2})) is None
    assert record_problem(rec2) is not None


@pytest.mark.parametrize("text, why", [
    ('{"key": "k1", "sta', "result.json truncated (the writer was killed mid-write?): rerun"),
    ("", "result.json is empty: rerun"),
    ("{not json} trailing", "result.json does not parse (not JSON): rerun"),
    ("[1]", "result.json holds a list, not a record: rerun"),
])
def test_unreadable_result_files_say_why(text, why):
    assert parse_result_text(text) == (None, why)


def test_the_torn_line_rule(tmp_path):
    rows = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.75}]
    good = [json.dumps(r) for r in rows]
    assert parse_metrics_lines(good + ['{"epoch": 3, "va']) == rows          # torn last line: dropped
    assert parse_metrics_lines([good[0], "", good[1]]) == rows              # blank lines: skipped
    assert parse_metrics_lines([good[0], "garbage", good[1]]) == rows[:1]   # everything after a bad line: dropped
    assert parse_metrics_lines([good[0], "[1, 2]", good[1]]) == rows[:1]    # a non-object line counts as bad
    (tmp_path / "metrics.jsonl").write_text("\n".join(good) + '\n{"epoch": 3')
    assert read_metrics(tmp_path) == rows == read_metrics(tmp_path / "metrics.jsonl")
    assert read_metrics(tmp_path / "absent") == []
