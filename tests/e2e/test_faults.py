"""Fault injection: kill runs at random points of their life; nothing computed is lost or faked.

How the faults are injected: `bench.store.fault_point(name)` is called at named points of a run's
life; when `$SAFLEX_FAULT` is `<name>:<n>` the process calls `os._exit(86)` the n-th time it reaches
that point: no `finally`, no flush, no wandb teardown, exactly like SIGKILL at that instant. Points:

  step                    before an optimiser step (mid-epoch)
  write-checkpoint.pt     half of the new checkpoint written to its temp file
  between-checkpoint.pt   old checkpoint moved to checkpoint.prev.pt, new one not renamed in yet
  after-checkpoint        checkpoint saved, metrics.jsonl not yet rewritten
  write-metrics.jsonl     half of metrics.jsonl written to its temp file
  before-result           training and test evaluation done, result.json not written
  write-result.json       half of result.json written to its temp file
  after-result            result.json in place, attempt.json still says running
  wandb-finish            result written, killed while wandb (offline) closes the run

A campaign (run in one subprocess that imports torch once, then forks one child per attempt) trains
one run per "life": each attempt gets a seeded random fault (point, n) until an attempt completes.
After every attempt it checks: a result.json that parses must be the complete, correct record (else
"looks done but is not"); a result that existed must still be there, unchanged (else "lost"). At the
end the run's metrics and its metrics.jsonl (timings aside) must equal an uninterrupted run's.

Each child's stderr goes to a file; a child that ends in an error (exit neither 0 nor 86) is reported
with the fault injected into it, the fault of the attempt before it and its last lines (error_report).
The campaign stops at 4 attempts per fault + 20, after 3 errors in a row (a full disk fails every
attempt) or after a time limit, whichever comes first, and says which.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bench.trainer import TIMING_KEYS

REPO = Path(__file__).resolve().parents[2]
POINTS = {  # point -> the most times one process can reach it in a 2-epoch digits run
    "step": 20, "write-checkpoint.pt": 2, "between-checkpoint.pt": 1, "after-checkpoint": 2,
    "write-metrics.jsonl": 3, "before-result": 1, "write-result.json": 1, "after-result": 1, "wandb-finish": 1,
}
TIMING = TIMING_KEYS  # wall-clock fields: never reproduced exactly


def _child(root: str, fault: str | None, wandb_mode: str, disk_full: bool = False) -> None:
    """One attempt, in a forked child: it exits 0 (done), 86 (fault fired) or 1 (an error). disk_full:
    every atomic write fails with ENOSPC, as on a results root with no space left."""
    code = 1
    try:
        # a job has its own wandb service: a forked child must not reuse one the test process started
        # (a killed attempt's run would stay open in it, and the next attempt's run with the same id
        # would be refused as "in use")
        os.environ.pop("WANDB_SERVICE", None)
        if fault:
            os.environ["SAFLEX_FAULT"] = fault
        else:
            os.environ.pop("SAFLEX_FAULT", None)
        if disk_full:
            import errno

            import bench.results.store

            def full(*args, **kwargs):
                raise OSError(errno.ENOSPC, "No space left on device")

            bench.results.store.write_bytes_atomic = full
        from bench.runner import run_spec
        from bench.spec import make_spec

        run_spec(make_spec("digits/sklearn", "none", 0, {"epochs": 2}), root, progress=False,
                 wandb_mode=wandb_mode, threads=1)
        code = 0
    except BaseException:  # noqa: BLE001 - report, then leave like a crashed process
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _attempt(root: Path, fault: str | None, wandb_mode: str = "disabled", disk_full: bool = False,
             log: Path | None = None) -> int:
    """Fork one attempt; its stderr goes to `log` (kept for the report when it errs)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        if log is not None:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 2)
            os.close(fd)
        _child(str(root), fault, wandb_mode, disk_full)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _tail(path: Path, n: int = 6) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def _rows(store, key):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in store.read_metrics(key)]


MAX_ERRORS_IN_A_ROW = 3  # a broken environment (a full disk) fails every attempt: stop and say why


def campaign(workdir: str, n_faults: int, seed: int, disk_full: bool = False, time_limit_s: float = 3000.0) -> dict:
    """Counts, plus `errors`: every attempt that ended in an error (exit not 0 or 86), each with the
    fault injected into it, the fault of the attempt before it and the tail of its stderr. Bounded by
    attempts (4 per fault + 20), by MAX_ERRORS_IN_A_ROW and by `time_limit_s`, not only by faults fired:
    `stopped` says which bound ended it."""
    import random
    import time

    import sklearn.datasets  # noqa: F401 - imported once here, not in every child

    import bench.tasks.digits  # noqa: F401
    from bench.spec import make_spec
    from bench.store import FAULT_EXIT, ResultsStore

    work = Path(workdir)
    logs = work / "stderr"
    logs.mkdir(parents=True, exist_ok=True)
    key = make_spec("digits/sklearn", "none", 0, {"epochs": 2}).key
    ref_code = _attempt(work / "reference", None, log=logs / "reference.txt")
    assert ref_code == 0, _tail(logs / "reference.txt", 20)
    ref_store = ResultsStore(work / "reference")
    ref, ref_rows = ref_store.read_result(key), _rows(ref_store, key)
    rng = random.Random(seed)
    counts = dict(faults=0, not_fired=0, attempts=0, lives=0, lost=0, looks_done_but_not=0, resumed_differs=0,
                  errors=0, by_point={}, error_list=[], stopped="faults fired")
    max_attempts = 4 * n_faults + 20
    t0 = time.monotonic()
    in_a_row = 0
    while counts["faults"] < n_faults:
        if counts["attempts"] >= max_attempts:
            counts["stopped"] = f"{max_attempts} attempts"
            break
        if in_a_row >= MAX_ERRORS_IN_A_ROW:
            counts["stopped"] = f"{in_a_row} attempts in a row ended in an error"
            break
        if time.monotonic() - t0 > time_limit_s:
            counts["stopped"] = f"{time_limit_s:.0f} s"
            break
        root = work / f"life{counts['lives']}"
        counts["lives"] += 1
        store = ResultsStore(root)
        result_bytes = None
        previous = None  # the fault of the attempt before, in this life
        for _ in range(12):  # attempts in one life; the last ones run clean so every life ends
            point = rng.choice(sorted(POINTS))
            fault = f"{point}:{rng.randint(1, POINTS[point])}" if _ < 10 and counts["faults"] < n_faults else None
            log = logs / f"attempt{counts['attempts']}.txt"
            code = _attempt(root, fault, "offline" if point == "wandb-finish" else "disabled", disk_full, log)
            counts["attempts"] += 1
            if code == FAULT_EXIT:
                counts["faults"] += 1
                counts["by_point"][point] = counts["by_point"].get(point, 0) + 1
                in_a_row = 0
            elif code != 0:
                counts["errors"] += 1
                in_a_row += 1
                counts["error_list"].append(dict(life=counts["lives"] - 1, attempt=counts["attempts"] - 1, exit=code,
                                                 fault=fault, fault_before=previous, stderr=_tail(log)))
                if in_a_row >= MAX_ERRORS_IN_A_ROW or counts["attempts"] >= max_attempts:
                    break
            else:
                in_a_row = 0
            previous = fault
            if code == 0 and fault:
                counts["not_fired"] += 1
            if code in (0, FAULT_EXIT):
                log.unlink(missing_ok=True)  # an error's log stays beside the tail in error_list
            path = store.run_dir(key) / "result.json"
            if result_bytes is not None and (not path.exists() or path.read_bytes() != result_bytes):
                counts["lost"] += 1
            rec = store.read_result(key)
            if rec is not None:
                if rec["metrics"] != ref["metrics"] or rec["metrics"]["epochs_run"] != 2:
                    counts["looks_done_but_not"] += 1
                result_bytes = path.read_bytes()
            if code == 0:
                break
        if in_a_row >= MAX_ERRORS_IN_A_ROW or counts["attempts"] >= max_attempts and code != 0:
            continue  # an unfinished life: the bound that stopped it is reported instead
        rec = store.read_result(key)
        if rec is None or rec["metrics"] != ref["metrics"] or _rows(store, key) != ref_rows:
            counts["resumed_differs"] += 1
    return counts


def error_report(counts: dict) -> str:
    """Every child error with the fault that preceded it, one block each (the assertion message)."""
    out = [f"stopped after: {counts['stopped']}; {counts['errors']} error(s) in {counts['attempts']} attempts"]
    for e in counts["error_list"]:
        out.append(f"  life {e['life']} attempt {e['attempt']}: exit {e['exit']} with fault {e['fault']} "
                   f"(after fault {e['fault_before']}): {e['stderr'][-600:]}")
    return "\n".join(out)


def _run_campaign(tmp_path: Path, n: int, seed: int, disk_full: bool = False, timeout: int = 3000) -> dict:
    code = (f"import sys, json; sys.path.insert(0, {str(REPO / 'tests' / 'e2e')!r}); import test_faults; "
            f"print('COUNTS', json.dumps(test_faults.campaign({str(tmp_path)!r}, {n}, {seed}, {disk_full})))")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("COUNTS ")), None)
    assert p.returncode == 0 and line, p.stdout[-3000:] + p.stderr[-3000:]
    counts = json.loads(line[len("COUNTS "):])
    print(error_report(counts))
    print({k: v for k, v in counts.items() if k != "error_list"})
    return counts


def _check(counts: dict, n: int) -> None:
    report = error_report(counts)
    assert counts["errors"] == 0, report
    assert counts["faults"] >= n, report
    assert counts["lost"] == 0, report
    assert counts["looks_done_but_not"] == 0, report
    assert counts["resumed_differs"] == 0, report


def test_10_injected_faults(tmp_path):
    _check(_run_campaign(tmp_path, 10, seed=1), 10)


def test_full_disk_stops_the_campaign_within_a_minute_with_the_errors(tmp_path):
    """A results root with no space fails every attempt: the campaign stops after MAX_ERRORS_IN_A_ROW
    attempts (it used to start 747 failing children and run until its outer bound) and reports each
    child's error with the fault before it."""
    t0 = time.monotonic()
    counts = _run_campaign(tmp_path, 60, seed=3, disk_full=True, timeout=120)
    assert time.monotonic() - t0 < 60
    assert counts["stopped"] == f"{MAX_ERRORS_IN_A_ROW} attempts in a row ended in an error"
    assert counts["attempts"] == MAX_ERRORS_IN_A_ROW and len(counts["error_list"]) == MAX_ERRORS_IN_A_ROW
    report = error_report(counts)
    assert report.count("OSError: [Errno 28] No space left on device") == MAX_ERRORS_IN_A_ROW, report
    assert "(after fault None)" in report and all(e["fault_before"] == prev["fault"] for prev, e in
                                                   zip(counts["error_list"], counts["error_list"][1:]))


def test_campaign_is_bounded_by_attempts_not_only_by_faults(tmp_path, monkeypatch):
    """Attempts whose fault never fires (here: every attempt ends without one) must not keep the
    campaign going: it stops at 4 attempts per fault + 20. Pure bookkeeping: the attempts are stubbed."""
    import bench.results.store

    module = sys.modules[__name__]
    monkeypatch.setattr(module, "_attempt", lambda root, fault, *a, **k: 0)
    monkeypatch.setattr(bench.store.ResultsStore, "read_result", lambda self, key: None)
    counts = campaign(str(tmp_path), 5, seed=4)
    assert counts["stopped"] == f"{4 * 5 + 20} attempts" and counts["attempts"] == 4 * 5 + 20
    assert counts["faults"] == 0 and counts["not_fired"] == counts["attempts"]


@pytest.mark.slow  # ~4-17 min on 2 cores: runs in CI's full command (scripts/test.sh), not in -m "not slow"
def test_60_injected_faults(tmp_path):
    counts = _run_campaign(tmp_path, 60, seed=2)
    _check(counts, 60)
    assert len(counts["by_point"]) == len(POINTS)  # every point was hit
