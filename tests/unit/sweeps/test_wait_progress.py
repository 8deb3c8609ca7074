"""The sweep's wait loop (sweeps/cli.py `_wait`) with packed runs: each run is counted when its record is
done, while its pack job is still running; a job's failure still reaches the runs without a record."""
from __future__ import annotations

from types import SimpleNamespace

import sweeps.cli as cli


class FakeJob:
    def __init__(self, polls_until_done: int, error=None):
        self.polls, self.error, self.exception_calls = polls_until_done, error, 0

    def done(self) -> bool:
        self.polls -= 1
        return self.polls <= 0

    def exception(self):
        self.exception_calls += 1
        return self.error


class FakeStore:
    def __init__(self, done_keys):
        self.done_keys = set(done_keys)

    def read_result(self, key):
        return {"metrics": {"test_acc": 0.5}, "cost": {}} if key in self.done_keys else None

    def read_attempt(self, key):
        return {"state": "failed", "error": "boom"}


def _run(key):
    return SimpleNamespace(key=key, spec=SimpleNamespace(task="digits/sklearn", method="none", seed=0))


def test_a_packed_run_is_counted_when_its_record_is_done_before_its_job_ends(monkeypatch, capsys):
    monkeypatch.setattr(cli, "PACK_SCAN_S", 0.0)
    monkeypatch.setattr(cli.time, "sleep", lambda s: None)
    job = FakeJob(polls_until_done=50)
    store = FakeStore({"a", "b"})
    seen = []
    real_write = cli._row

    def row(key, state, spec, note=""):
        seen.append((key, state, job.polls))  # polls left on the job when the run was counted
        return real_write(key, state, spec, note)

    monkeypatch.setattr(cli, "_row", row)
    rc = cli._wait([(_run("a"), job), (_run("b"), job)], "local", store)
    assert rc == 0 and job.polls <= 0  # returns once the job itself has ended (its logs, its wandb record)
    assert [s[1] for s in seen] == ["done", "done"] and all(s[2] > 0 for s in seen), "counted only when the job ended"
    # a run without a record is failed once its job ends, and the job's error is asked once
    job, store, seen[:] = FakeJob(polls_until_done=50), FakeStore({"a"}), []
    assert cli._wait([(_run("a"), job), (_run("b"), job)], "local", store) == 1
    (a,), (b,) = [s for s in seen if s[0] == "a"], [s for s in seen if s[0] == "b"]
    assert a[1] == "done" and a[2] > 0 and b[1] == "failed" and b[2] <= 0
    assert job.exception_calls == 1 and job.polls <= 0  # returns once the job itself has ended
    assert "[1/2]" in capsys.readouterr().out


def test_one_job_per_run_reads_no_record_before_its_job_ends(monkeypatch):
    monkeypatch.setattr(cli, "PACK_SCAN_S", 0.0)
    monkeypatch.setattr(cli.time, "sleep", lambda s: None)
    reads = []
    store = FakeStore({"a", "b"})
    real = store.read_result
    jobs = {"a": FakeJob(5), "b": FakeJob(8)}

    def read(key):
        reads.append((key, jobs[key].polls))
        return real(key)

    store.read_result = read
    assert cli._wait([(_run(k), j) for k, j in jobs.items()], "local", store) == 0
    assert all(polls <= 0 for _, polls in reads)
