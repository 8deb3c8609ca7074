"""bench/results: one definition of done across status, sweep, report and compare (issue 28's
"the store disagrees with itself"), the index, and locks that name their holder."""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from bench.results import ResultsStore
from bench.results.index import ResultsIndex, epochs_frame, load_index
from bench.results.store import LockHolderGone, exclusive
from reports import cli as rcli
from reports.compare import compare_roots, to_markdown
from reports.load import load_results
from sweeps.plan import done_keys
from sweeps.status import DONE, FAILED, run_states

REPO = Path(__file__).resolve().parents[4]
SPEC = dict(model="cnn", epochs=4, optimizer="adam", lr=1e-3, weight_decay=0.0, momentum=0.9, schedule="multistep",
            milestones=[0.5, 0.75], gamma=0.1, batch_size=128, select_metric="auc", as_rgb=False, saflex=None)


def record(key, seed, acc, method="rand-m9-n2", **over):
    return {"key": key, "status": "done", "sweep": "demo",
            "spec": dict(SPEC, task="medmnist/breastmnist", method=method, seed=seed),
            "metrics": {"test_acc": acc, "test_auc": acc, "val_acc": acc, "best_epoch": 2, "epochs_run": 4},
            "cost": {"epoch_s": 1.0, "wall_s": 4.0}, "host": "h", "device": "cpu", **over}


def make_store(root: Path, bad: dict[str, str] | None = None) -> ResultsStore:
    """Four done runs (two arms x two seeds) plus run folders holding `bad` result.json texts."""
    store = ResultsStore(root)
    for i, (method, seed) in enumerate([("rand-m9-n2", 0), ("rand-m9-n2", 1), ("rand-m9-n2+saflex", 0),
                                        ("rand-m9-n2+saflex", 1)]):
        key = f"good{i:08d}"
        store.write_result(key, record(key, seed, 0.6 + 0.1 * i, method))
        store.write_metrics(key, [{"epoch": e, "val_acc": 0.5 + 0.1 * e} for e in (1, 2)])
    for key, text in (bad or {}).items():
        store.run_dir(key).mkdir(parents=True, exist_ok=True)
        (store.run_dir(key) / "result.json").write_text(text)
    return store


KEY_ONLY = json.dumps({"key": "keyonly00000"})
TRUNCATED = json.dumps(record("truncated000", 2, 0.7), indent=2)[:150]


def test_a_record_holding_only_its_key_is_not_done_for_status_sweep_and_report(tmp_path, capsys):
    store = make_store(tmp_path, {"keyonly00000": KEY_ONLY})
    keys = ["good00000000", "keyonly00000"]
    assert done_keys(store, keys) == {"good00000000"}                  # sweep: resubmitted, not skipped
    st = run_states(store, keys, {})["keyonly00000"]
    assert (st.state, st.detail) == (FAILED, "result.json holds no metrics: rerun")  # status: says why
    assert run_states(store, keys, {})["good00000000"].state == DONE
    df = load_results(tmp_path)
    assert len(df) == 4 and df.attrs["not_done"] == {"keyonly00000": "result.json holds no metrics: rerun"}
    args = argparse.Namespace(results=str(tmp_path), sweep=None, out=str(tmp_path / "rep"), metric="test_acc",
                              from_wandb=None)
    assert rcli.cmd_report(args) == 0
    out = capsys.readouterr().out
    assert "not done: keyonly00000: result.json holds no metrics: rerun" in out  # report names it
    assert "1 result.json holds no metrics: rerun" in (tmp_path / "rep" / "table.md").read_text()


def test_a_truncated_record_shows_its_reason_not_the_jobs_last_stderr_line(tmp_path):
    store = make_store(tmp_path, {"truncated000": TRUNCATED})
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "77_0_log.err").write_text("UserWarning: BatchNorm running stats look odd\n")
    ledger = {"truncated000": {"key": "truncated000", "job_id": "77", "executor": "debug", "folder": str(logs),
                               "submitted_at": "2026-01-01T00:00:00Z"}}
    st = run_states(store, ["truncated000"], ledger)["truncated000"]
    assert st.state == FAILED
    assert st.detail == "job 77 ended: result.json truncated (the writer was killed mid-write?): rerun"
    assert done_keys(store, ["truncated000"]) == set()


def test_compare_names_the_records_it_drops_and_why(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_store(a)
    make_store(b, {"good00000003": TRUNCATED})  # B's copy of a run A has done was cut short
    c = compare_roots(a, b)
    assert (c.only_a, c.only_b) == (1, 0)
    assert ("good00000003", "done in A only; B: result.json truncated (the writer was killed mid-write?): rerun") in c.dropped
    md = to_markdown(c)
    assert "| good00000003 | done in A only; B: result.json truncated" in md


def test_the_index_is_rebuilt_incrementally(tmp_path):
    store = make_store(tmp_path, {"keyonly00000": KEY_ONLY})
    idx = load_index(tmp_path)
    assert idx.last_build == {"runs": 5, "read": 5, "dropped": 0, "epochs_read": 5}
    assert (tmp_path / "index.sqlite").is_file()
    assert ResultsIndex(tmp_path).build().last_build["read"] == 0          # warm: nothing changed
    store.write_result("good00000001", record("good00000001", 1, 0.99))
    (store.run_dir("keyonly00000") / "result.json").unlink()
    os.rename(store.run_dir("good00000002"), tmp_path / "elsewhere")
    again = ResultsIndex(tmp_path).build()
    assert again.last_build == {"runs": 4, "read": 2, "dropped": 1, "epochs_read": 0}
    df = load_results(tmp_path)
    assert sorted(df["key"]) == ["good00000000", "good00000001", "good00000003"]
    assert float(df.set_index("key").loc["good00000001", "metrics.test_acc"]) == 0.99  # the new value, not the cached one
    assert again.problems()["keyonly00000"] == "no result.json (running, not started or died)"


def test_index_rows_match_the_record_and_the_epoch_frame_holds_metrics_rows(tmp_path):
    make_store(tmp_path)
    rows, not_done = ResultsIndex(tmp_path).build().frame_rows()
    assert not_done == {} and len(rows) == 4
    r = next(r for r in rows if r["key"] == "good00000002")
    assert (r["method"], r["learner"], r["upstream"], r["seed"]) == ("rand-m9-n2+saflex", "saflex", "rand-m9-n2", 0)
    assert r["metrics.test_acc"] == pytest.approx(0.8) and r["run_dir"] == str(tmp_path / "runs" / "good00000002")
    ep = epochs_frame(tmp_path, ["good00000001"])
    assert ep.to_dict("records") == [{"key": "good00000001", "epoch": 1, "val_acc": 0.6},
                                     {"key": "good00000001", "epoch": 2, "val_acc": 0.7}]


def test_the_index_judges_semantics_against_todays_code(tmp_path, monkeypatch):
    make_store(tmp_path)
    from bench.results import index, records

    load_index(tmp_path)
    monkeypatch.setattr(records, "expected_semantics", lambda spec: {"saflex": 2} if spec is not None else {})
    index._expected_for.cache_clear()
    _, not_done = ResultsIndex(tmp_path).build().frame_rows()
    assert set(not_done) == {f"good{i:08d}" for i in range(4)}
    assert not_done["good00000000"] == "made under semantics v1, today's is saflex=2: rerun"
    index._expected_for.cache_clear()


# ---- locks -------------------------------------------------------------------------------------
HOLDER = textwrap.dedent("""
    import os, sys, time
    from bench.results.store import exclusive
    with exclusive(sys.argv[1], "test"):
        if sys.argv[2] == "fork":   # the holder dies; its child keeps the lock (an inherited descriptor)
            if os.fork() == 0:
                open(sys.argv[1] + ".child", "w").write(str(os.getpid()))
                time.sleep(60)
                os._exit(0)
            while not os.path.exists(sys.argv[1] + ".child") or not os.path.getsize(sys.argv[1] + ".child"):
                time.sleep(0.01)
            print("LOCKED", flush=True)
            os._exit(0)
        print("LOCKED", flush=True)
        time.sleep(60)
""")


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _start_holder(lock: Path, mode: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), mode], stdout=subprocess.PIPE, text=True, env=_env())
    assert p.stdout.readline().strip() == "LOCKED"
    return p


def _wait(lock: Path, give_up_s: float) -> tuple[float, str]:
    """Wait in a thread, so that a waiter that never gives up fails the test instead of hanging it."""
    out: dict = {}

    def wait():
        t = time.monotonic()
        try:
            with exclusive(lock, "saflex-bench: run x is being trained by another process", give_up_s=give_up_s):
                out["got"] = True
        except LockHolderGone as e:
            out["took"], out["msg"] = time.monotonic() - t, str(e)

    th = threading.Thread(target=wait, daemon=True)
    th.start()
    th.join(give_up_s + 15)
    assert "msg" in out, "the waiter did not give up" if th.is_alive() else "the waiter got the lock"
    return out["took"], out["msg"]


def test_a_waiter_names_a_stopped_holder_and_gives_up(tmp_path, capfd):
    lock = tmp_path / ".job.lock"
    p = _start_holder(lock, "sleep")
    try:
        os.kill(p.pid, signal.SIGSTOP)
        took, msg = _wait(lock, 1.0)
        assert 1.0 <= took < 10
        assert f"pid {p.pid} on {socket.gethostname()} since " in msg and "is stopped (SIGSTOP" in msg
        err = capfd.readouterr().err
        assert f"held by pid {p.pid} on {socket.gethostname()} since 20" in err and "giving up if it stays" in err
    finally:
        os.kill(p.pid, signal.SIGKILL)
        os.kill(p.pid, signal.SIGCONT)
        p.wait()


def test_a_waiter_gives_up_when_the_holder_is_dead(tmp_path):
    lock = tmp_path / ".job.lock"
    p = _start_holder(lock, "fork")
    p.wait()  # the holder is gone; its forked child still holds the flock
    try:
        took, msg = _wait(lock, 0.5)
        assert 0.5 <= took < 10 and f"pid {p.pid}" in msg and "is gone" in msg
    finally:
        time.sleep(0.05)
        os.kill(int(Path(str(lock) + ".child").read_text()), signal.SIGKILL)  # the orphaned child


def test_a_waiter_waits_for_a_live_holder(tmp_path):
    lock = tmp_path / ".job.lock"
    p = _start_holder(lock, "sleep")
    try:
        t = time.monotonic()
        killer = subprocess.Popen([sys.executable, "-c", f"import time, os; time.sleep(1.5); os.kill({p.pid}, 9)"])
        with exclusive(lock, "waiting", give_up_s=0.5):  # alive, not stopped: never gives up; gets the lock once it ends
            took = time.monotonic() - t
        assert took >= 1.0
        killer.wait()
    finally:
        p.kill()
        p.wait()
