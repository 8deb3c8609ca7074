"""bench.tracking: wandb offline by default, id = run key, resume continues the same run, no secrets."""
from __future__ import annotations

import os
import sys

import pytest

from bench.errors import UsageError
from bench.tracking import Tracker, offline_run_dirs, read_offline_run, resolve_mode, segment_run_id, start_tracking

SPEC = {"task": "digits/sklearn", "method": "rand-m9-n2", "seed": 1, "epochs": 3, "lr": 0.003}
KEY = "0123456789ab"
SECRET = "0123456789abcdef0123456789abcdef01234567"  # looks like a wandb API key (40 hex)


def test_mode_resolution(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert resolve_mode(None) == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(None) == "disabled"
    assert resolve_mode("online") == "online"  # explicit beats the environment
    monkeypatch.setenv("WANDB_MODE", "dryrun")  # wandb's legacy spelling
    assert resolve_mode(None) == "offline"


def test_bad_mode_is_a_usage_error_naming_choices(monkeypatch):
    with pytest.raises(UsageError, match=r"unknown wandb mode 'sometimes'.*online, offline, disabled"):
        resolve_mode("sometimes")
    monkeypatch.setenv("WANDB_MODE", "bogus")
    with pytest.raises(UsageError, match=r"WANDB_MODE"):
        start_tracking(SPEC, KEY, "/nonexistent", None, None)


def test_disabled_is_a_noop_and_writes_nothing(tmp_path):
    t = start_tracking(SPEC, KEY, tmp_path / "run", "disabled", "demo")
    assert type(t) is Tracker
    t.log_epoch({"epoch": 1, "train_loss": 1.0}, step=1)
    t.finish({"metrics": {"test_acc": 1.0}})
    assert not (tmp_path / "run").exists()


def test_offline_run_identity_config_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    run_dir = tmp_path / "runs" / KEY
    # first process: epochs 1-2, then "preempted"
    t = start_tracking(SPEC, KEY, run_dir, "offline", "demo")
    assert t.run_id == KEY and t.mode == "offline"
    for e in (1, 2):
        t.log_epoch({"epoch": e, "train_loss": 1.0 / e, "val_acc": 0.5 + e / 10}, step=e)
    t.finish(None, exit_code=1)
    # requeued process: resumes the same run id, epoch 3, final result
    t = start_tracking(SPEC, KEY, run_dir, "offline", "demo")
    t.log_epoch({"epoch": 3, "train_loss": 0.2, "val_acc": 0.9}, step=3)
    t.finish({"status": "done", "metrics": {"test_acc": 0.91, "best_epoch": 3}, "cost": {"wall_s": 2.5}})

    dirs = offline_run_dirs(run_dir)
    assert len(dirs) == 2 and all(segment_run_id(d) == KEY for d in dirs)  # files inside the run dir
    runs = [read_offline_run(d, wait_s=10) for d in dirs]
    assert {r["run_id"] for r in runs} == {KEY}  # one wandb run: both segments sync into id KEY
    for r in runs:
        assert r["resume"] is True
        assert r["group"] == "demo" and r["job_type"] == "rand-m9-n2"
        assert r["tags"] == ["digits/sklearn", "sklearn"]
        assert r["project"] == "saflex-bench"
        assert r["config"] == SPEC
    assert runs[0]["steps"] == [1, 2] and runs[0]["exit_code"] == 1
    assert runs[1]["steps"] == [3] and runs[1]["exit_code"] == 0  # continues, does not restart at 1
    assert runs[1]["summary"]["test_acc"] == 0.91 and runs[1]["summary"]["cost/wall_s"] == 2.5
    # no credential anywhere under the run directory
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_resumed_segment_replays_earlier_epochs_from_metrics(tmp_path):
    """A process killed before wandb flushed loses its segment; the resumed one re-logs epochs
    1..k from metrics.jsonl (rewritten from the checkpoint) so it holds the whole curve."""
    import json

    run_dir = tmp_path / KEY
    run_dir.mkdir()
    rows = [{"epoch": e, "train_loss": 1.0 / e, "val_acc": 0.5} for e in (1, 2, 3)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = start_tracking(SPEC, KEY, run_dir, "offline", "demo")
    t.log_epoch(rows[2], step=3)  # the first epoch this process trains is 3: 1 and 2 came before
    t.finish({"metrics": {"test_acc": 0.5}})
    (seg,) = offline_run_dirs(run_dir)
    r = read_offline_run(seg, wait_s=10)
    assert r["run_id"] == KEY and r["steps"] == [1, 2, 3]
    # a fresh run (first step 1) replays nothing; logging after finish is ignored
    t.log_epoch(rows[0], step=4)


def test_project_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "my-proj")
    t = start_tracking(SPEC, KEY, tmp_path, None, None)
    t.finish(None)
    (r,) = [read_offline_run(d, wait_s=10) for d in offline_run_dirs(tmp_path)]
    assert r["project"] == "my-proj" and r["group"] == ""


def test_run_spec_logs_every_epoch_to_wandb(tmp_path, monkeypatch):
    """End to end through the trainer: config = spec, one step per epoch, final metrics in the summary."""
    from bench.runner import run_spec
    from bench.spec import make_spec

    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    # a seed no other test uses: wandb refuses an id still open in this process (an interrupted run of
    # the same spec earlier in the session), and the run id is the run key
    spec = make_spec("digits/sklearn", "none", 11, {"epochs": 2})
    rec = run_spec(spec, tmp_path / "results", wandb_mode="offline", sweep="unit", progress=False)
    run_dir = tmp_path / "results" / "runs" / spec.key
    (r,) = [read_offline_run(d, wait_s=10) for d in offline_run_dirs(run_dir)]
    assert r["run_id"] == spec.key and r["group"] == "unit" and r["job_type"] == "none"
    assert r["config"]["task"] == "digits/sklearn" and r["config"]["epochs"] == 2
    assert r["steps"] == [1, 2] and r["exit_code"] == 0
    assert r["summary"]["test_acc"] == pytest.approx(rec["metrics"]["test_acc"])
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_disabled_mode_never_imports_wandb(tmp_path):
    import subprocess

    code = ("import sys; from bench.tracking import start_tracking; "
            "t = start_tracking({'task': 'a/b'}, 'k', '.', 'disabled', None); "
            "print('wandb' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "WANDB_MODE": "offline"})
    assert out.stdout.strip() == "False", out.stderr


def test_offline_record_is_written_at_the_end_not_during_the_epochs(tmp_path):
    """Offline, wandb is off the epochs: nothing under wandb/ until finish; then one segment with every
    step, the summary, and the completion marker."""
    from bench.tracking import COMPLETE

    run_dir = tmp_path / KEY
    t = start_tracking(SPEC, KEY, run_dir, "offline", "demo")
    for e in (1, 2):
        t.log_epoch({"epoch": e, "train_loss": 1.0 / e}, step=e)
    assert not (run_dir / "wandb").exists()
    t.finish({"status": "done", "metrics": {"test_acc": 0.7}})
    (seg,) = offline_run_dirs(run_dir)
    r = read_offline_run(seg, wait_s=10)
    assert r["steps"] == [1, 2] and r["summary"]["test_acc"] == 0.7 and r["exit_code"] == 0
    assert (run_dir / "wandb" / COMPLETE).exists()


def test_saflex_config_carries_every_knob(tmp_path):
    from bench.spec import make_spec

    spec = make_spec("digits/sklearn", "rand-m9-n2+saflex", 0, {"epochs": 1})
    assert "ref_budget" not in (spec.to_dict().get("saflex") or {})  # the spec dict leaves defaults out
    t = start_tracking(spec.to_dict(), spec.key, tmp_path, "offline", None, knobs=spec.knobs)
    t.finish(None)
    (r,) = [read_offline_run(d, wait_s=10) for d in offline_run_dirs(tmp_path)]
    for knob in ("ref_budget", "ref_ramp", "ref_ema", "val_batch", "refresh"):
        assert knob in r["config"]["learner_knobs"], knob
    assert r["config"]["learner_knobs"] == dict(spec.knobs)


def test_online_without_network_fails_fast_with_one_line(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    t0 = time.monotonic()
    with pytest.raises(UsageError, match=r"^wandb online mode: cannot reach 127.0.0.1:9 .*--wandb offline") as e:
        start_tracking(SPEC, KEY, tmp_path, "online", None)
    assert time.monotonic() - t0 < 5 and "\n" not in str(e.value)
    assert not (tmp_path / "wandb").exists()


def test_killed_after_result_repairs_wandb_record_on_next_call(tmp_path):
    """SIGKILL right after result.json (before wandb closed the run): the next `run` of the same spec
    returns the stored record and writes the wandb record from metrics.jsonl + result.json."""
    import json
    import subprocess

    from bench.spec import make_spec
    from bench.tracking import COMPLETE

    results = tmp_path / "results"
    spec = make_spec("digits/sklearn", "none+saflex", 12, {"epochs": 2})
    argv = [sys.executable, "-m", "bench.cli", "run", "--task", "digits/sklearn", "--method", "none+saflex", "--seed",
            "12", "--epochs", "2", "--quiet", "--results", str(results), "--wandb", "offline", "--threads", "1"]
    env = {**os.environ, "SAFLEX_FAULT": "after-result"}
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode != 0
    run_dir = results / "runs" / spec.key
    record = json.loads((run_dir / "result.json").read_text())
    assert not (run_dir / "wandb" / COMPLETE).exists()
    assert all(read_offline_run(d)["steps"] == [] for d in offline_run_dirs(run_dir))  # nothing usable
    from bench.runner import run_spec

    again = run_spec(spec, results, wandb_mode="offline", progress=False)
    assert again["metrics"] == record["metrics"]
    runs = [read_offline_run(d, wait_s=10) for d in offline_run_dirs(run_dir)]
    full = [r for r in runs if r["steps"]]
    assert len(full) == 1 and full[0]["steps"] == [1, 2] and full[0]["exit_code"] == 0
    assert full[0]["summary"]["test_acc"] == pytest.approx(record["metrics"]["test_acc"])
    assert full[0]["config"]["learner_knobs"]["ref_budget"] == spec.knobs["ref_budget"]
    assert (run_dir / "wandb" / COMPLETE).exists()
    # a third call finds the record complete and writes nothing more
    run_spec(spec, results, wandb_mode="offline", progress=False)
    assert len(offline_run_dirs(run_dir)) == len(runs)


def test_wandb_failing_after_the_result_leaves_a_done_run_and_a_repairable_record(tmp_path, monkeypatch, capsys):
    """wandb cannot write the record once result.json is on disk (no service, a full /tmp): the run is
    done, its attempt says done (not failed), one warning line says so; the next call writes the record."""
    import bench.tracking
    from bench.runner import run_spec
    from bench.spec import make_spec
    from bench.tracking import COMPLETE

    results = tmp_path / "results"
    spec = make_spec("digits/sklearn", "none", 13, {"epochs": 1})
    real_finish = bench.tracking.WandbTracker.finish

    def broken(self, result=None, exit_code=0):
        raise RuntimeError("Failed to connect to service on socket /tmp/wandb-1/socket")

    monkeypatch.setattr(bench.tracking.WandbTracker, "finish", broken)
    record = run_spec(spec, results, wandb_mode="offline", progress=False)
    err = capsys.readouterr().err
    assert record["status"] == "done"
    from bench.store import ResultsStore

    store = ResultsStore(results)
    assert store.is_done(spec.key) and store.read_attempt(spec.key)["state"] == "done"
    assert f"warning: run {spec.key} is done but its wandb record was not written (RuntimeError: Failed" in err
    run_dir = store.run_dir(spec.key)
    assert not (run_dir / "wandb" / COMPLETE).exists()
    monkeypatch.setattr(bench.tracking.WandbTracker, "finish", real_finish)
    run_spec(spec, results, wandb_mode="offline", progress=False)
    assert (run_dir / "wandb" / COMPLETE).exists()
    assert [read_offline_run(d, wait_s=10)["steps"] for d in offline_run_dirs(run_dir)] == [[1]]


def test_done_run_trained_without_wandb_gets_no_record_later(tmp_path):
    """A store trained with wandb off is never given wandb folders by a later call in offline mode."""
    from bench.runner import run_spec
    from bench.spec import make_spec

    spec = make_spec("digits/sklearn", "none", 13, {"epochs": 1})
    run_spec(spec, tmp_path, wandb_mode="disabled", progress=False)
    run_spec(spec, tmp_path, wandb_mode="offline", progress=False)
    assert not (tmp_path / "runs" / spec.key / "wandb").exists()


def test_online_probe_gives_up_on_a_server_that_never_answers(tmp_path, monkeypatch):
    """A lookup / connect that hangs (no DNS, a firewall dropping packets) still fails within the probe's time."""
    import socket
    import time

    from bench import tracking

    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: time.sleep(30))
    t0 = time.monotonic()
    with pytest.raises(UsageError, match=r"cannot reach api.wandb.ai:443 \(no answer within 0.2 s\)"):
        tracking.check_online(timeout=0.2)
    assert time.monotonic() - t0 < 3


def test_online_probe_is_paid_once_per_minute_per_server_and_failures_are_not_remembered(monkeypatch):
    """The runner probes before the run folder exists and the tracker again when it opens the run (and a
    serial pack opens many): a server that answered within the last minute is not probed again."""
    import socket

    from bench import tracking

    calls = []

    class Conn:
        def close(self):
            pass

    def connect(addr, timeout=None):
        calls.append(addr)
        if addr[0] == "down.example":
            raise OSError(111, "Connection refused")
        return Conn()

    monkeypatch.setattr(socket, "create_connection", connect)
    monkeypatch.setattr(tracking, "_online_ok", {})
    monkeypatch.setenv("WANDB_BASE_URL", "https://up.example")
    tracking.check_online()
    tracking.check_online()
    assert calls == [("up.example", 443)]
    monkeypatch.setenv("WANDB_BASE_URL", "https://down.example")
    for _ in range(2):
        with pytest.raises(UsageError, match="cannot reach down.example:443"):
            tracking.check_online()
    assert calls.count(("down.example", 443)) == 2  # a failure is probed again
    monkeypatch.setattr(tracking, "ONLINE_OK_FOR_S", 0.0)  # a minute later
    monkeypatch.setenv("WANDB_BASE_URL", "https://up.example")
    tracking.check_online()
    assert calls.count(("up.example", 443)) == 2
