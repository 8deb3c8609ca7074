"""Reliability of the results store under concurrency and kills (real processes, no mocks of the FS).

- 50 processes writing into one results root at once leave 50 valid records and nothing torn;
- a process SIGKILLed during the final write leaves no result.json (or the previous one intact);
- a run killed while writing result.json is not done, and the next attempt completes it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench.store import ResultsStore
from sweeps.plan import done_keys

N = 50

WRITER = textwrap.dedent(
    """
    import os, sys, time, json
    from bench.store import ResultsStore
    root, i, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    store = ResultsStore(root)
    while not os.path.exists(go):
        time.sleep(0.005)
    key = f"{i:012x}"
    pad = "x" * 200_000  # a large record widens the write window
    for rep in range(10):
        store.write_result(key, {"key": key, "status": "done", "spec": {"task": "t", "method": "none", "seed": 0}, "metrics": {"test_acc": 0.5}, "writer": i, "rep": rep, "pad": pad})
        # every writer also fights over one shared run
        store.write_result("shared000000", {"key": "shared000000", "status": "done", "spec": {"task": "t", "method": "none", "seed": 0}, "metrics": {"test_acc": 0.5}, "writer": i, "rep": rep, "pad": pad})
    print("ok")
    """
)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def _leftovers(root: Path) -> list[Path]:
    return [p for p in (root / "runs").rglob("*") if p.is_file() and p.name != "result.json"]


def test_50_concurrent_writers_leave_50_valid_records(tmp_path):
    root, go = tmp_path / "results", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(i), str(go)], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(N)]
    time.sleep(0.5)
    go.touch()  # release them together
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and out.strip() == "ok", err
    store = ResultsStore(root)
    keys = [f"{i:012x}" for i in range(N)]
    assert store.done_keys() == set(keys) | {"shared000000"}
    assert done_keys(store, keys) == set(keys)
    for i, key in enumerate(keys):
        rec = store.read_result(key)
        assert rec["writer"] == i and rec["rep"] == 9 and len(rec["pad"]) == 200_000
    shared = json.loads((root / "runs" / "shared000000" / "result.json").read_text())  # parses: never torn
    assert shared["rep"] == 9 and 0 <= shared["writer"] < N
    assert _leftovers(root) == []  # no temp files left behind


KILLED = textwrap.dedent(
    """
    import os, sys, time
    from bench.store import ResultsStore
    root, marker, where = sys.argv[1], sys.argv[2], sys.argv[3]
    real_replace, real_fsync = os.replace, os.fsync
    def stall():
        open(marker, "w").close()
        time.sleep(600)
    if where == "rename":      # data fully written to the temp file, rename not done yet
        os.replace = lambda src, dst: (stall() if str(dst).endswith("result.json") else real_replace(src, dst))
    else:                      # in the middle of writing the data
        os.fsync = lambda fd: stall()
    ResultsStore(root).write_result("abcdefabcdef", {"key": "abcdefabcdef", "status": "done", "spec": {"task": "t", "method": "none", "seed": 0}, "metrics": {"test_acc": 0.5}, "v": 2})
    """
)


@pytest.mark.parametrize("where", ["rename", "data"])
@pytest.mark.parametrize("previous", [False, True])
def test_kill_during_final_write_leaves_no_record(tmp_path, where, previous):
    root, marker = tmp_path / "results", tmp_path / "marker"
    store = ResultsStore(root)
    if previous:  # an earlier valid record must survive a torn rewrite
        store.write_result("abcdefabcdef", {"key": "abcdefabcdef", "status": "done", "spec": {"task": "t", "method": "none", "seed": 0}, "metrics": {"test_acc": 0.5}, "v": 1})
    p = subprocess.Popen([sys.executable, "-c", KILLED, str(root), str(marker), where], env=_env())
    deadline = time.time() + 60
    while not marker.exists():
        assert p.poll() is None and time.time() < deadline, "writer did not reach the write"
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    result = root / "runs" / "abcdefabcdef" / "result.json"
    if previous:
        assert store.read_result("abcdefabcdef")["v"] == 1
    else:
        assert not result.exists()
        assert not store.is_done("abcdefabcdef") and store.done_keys() == set()
    # the torn temp file is ignored by readers, and the next write still succeeds
    store.write_result("abcdefabcdef", {"key": "abcdefabcdef", "status": "done", "spec": {"task": "t", "method": "none", "seed": 0}, "metrics": {"test_acc": 0.5}, "v": 3})
    assert store.read_result("abcdefabcdef")["v"] == 3


RUN_KILLED = textwrap.dedent(
    """
    import os, sys, time
    root, marker = sys.argv[1], sys.argv[2]
    real_replace = os.replace
    def replace(src, dst):
        if str(dst).endswith("result.json"):
            open(marker, "w").close()
            time.sleep(600)
        return real_replace(src, dst)
    os.replace = replace
    from bench.runner import run_spec
    from bench.spec import make_spec
    run_spec(make_spec("digits/sklearn", "none", 0, {"epochs": 1}), root, wandb_mode="disabled", progress=False)
    """
)


def test_run_killed_in_its_final_write_is_not_done_and_completes_later(tmp_path):
    from bench.runner import run_spec
    from bench.spec import make_spec

    root, marker = tmp_path / "results", tmp_path / "marker"
    spec = make_spec("digits/sklearn", "none", 0, {"epochs": 1})
    p = subprocess.Popen([sys.executable, "-c", RUN_KILLED, str(root), str(marker)], env=_env())
    deadline = time.time() + 300
    while not marker.exists():
        assert p.poll() is None and time.time() < deadline, "run did not reach its final write"
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    store = ResultsStore(root)
    run_dir = store.run_dir(spec.key)
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "result.json").exists()
    assert not store.is_done(spec.key)
    assert (store.read_attempt(spec.key) or {}).get("state") == "running"  # killed: no chance to say failed
    rec = run_spec(spec, root, wandb_mode="disabled", progress=False)  # resumes from the checkpoint
    assert store.is_done(spec.key) and rec["metrics"]["epochs_run"] == 1
    assert "resumed from checkpoint after epoch 1/1" in (run_dir / "run.log").read_text()
