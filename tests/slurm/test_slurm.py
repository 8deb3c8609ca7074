"""The sweep layer against a REAL SLURM cluster (start one with `.ci/slurm_up.sh STATE_DIR`).

Covers: a job array completes and every result is readable; a second `sweep` of a finished grid
submits nothing; `scancel` of one run shows as failed in `status` and the next `sweep` resubmits it
(resuming); a run preempted by a higher-priority partition resumes from its checkpoint and ends with
the same metrics as an uninterrupted run; a run restarted by `scontrol requeue` (no signal) resumes
too, continuing one wandb run id.

Skips with a reason where `sbatch` is absent or no cluster answers. Runs on CPU, a few minutes.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

if shutil.which("sbatch") is None:
    pytest.skip("no sbatch on PATH: start a local cluster with .ci/slurm_up.sh STATE_DIR", allow_module_level=True)
_sinfo = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True)
if _sinfo.returncode != 0 or "urgent" not in _sinfo.stdout:
    pytest.skip(f"sbatch found but no cluster with partitions debug/urgent answers (sinfo: "
                f"{(_sinfo.stderr or _sinfo.stdout).strip()[:120]!r}); see .ci/slurm_up.sh", allow_module_level=True)

from bench.cli import main as cli_main  # noqa: E402
from bench.spec import RunSpec  # noqa: E402
from bench.store import ResultsStore  # noqa: E402
from bench.tracking import COMPLETE, offline_run_dirs, read_offline_run, segment_run_id  # noqa: E402
from sweeps import load_sweep, plan_sweep  # noqa: E402
from sweeps.launcher import LEDGER, read_ledger, sweep_dir  # noqa: E402
from sweeps.status import run_states  # noqa: E402
from bench.trainer import TIMING_KEYS  # noqa: E402

NODE_CPUS = int(subprocess.run(["sinfo", "-h", "-N", "-o", "%c"], capture_output=True, text=True).stdout.split()[0])
# long enough to be interrupted mid-training (batch 16: ~1 s per epoch on one core)
PREEMPT = {"task": "digits/sklearn", "method": "none", "seed": 0, "epochs": 20, "batch_size": 16}
REQUEUE = {"task": "digits/sklearn", "method": "none", "seed": 1, "epochs": 30, "batch_size": 16}
TIMING_FIELDS = TIMING_KEYS  # wall-clock fields: never reproduced exactly


def sweep_file(tmp: Path, name: str, fixed: dict, grid: dict, **launcher) -> Path:
    launcher = {"partition": "debug", "cpus_per_task": 1, "mem_gb": 1, "timeout_min": 20, **launcher}
    text = json.dumps({"name": name, "fixed": fixed, "grid": grid, "launcher": launcher})  # JSON is YAML
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return path


def cli(capsys, *argv) -> str:
    code = cli_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    return out


def wait_for(cond, timeout: float, what: str, interval: float = 1.0):
    deadline = time.time() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def wandb_closed(store: ResultsStore, key: str) -> bool:
    """The job wrote its wandb record: offline, the runner writes it AFTER result.json (the result is what
    counts), so a run is done a few seconds before its wandb segment exists on a loaded node."""
    return (store.run_dir(key) / "wandb" / COMPLETE).exists()


def states_of(results: Path, path: Path) -> dict:
    plan = plan_sweep(load_sweep(path))
    ledger = read_ledger(sweep_dir(results, plan.sweep.name) / LEDGER)
    return run_states(ResultsStore(results), plan.keys, ledger)


def job_log(results: Path, sweep: str, job_id: str) -> str:
    folder = sweep_dir(results, sweep) / "logs" / job_id
    return "".join(p.read_text(errors="replace") for p in sorted(folder.glob("*_log.*")))


def sacct_history(job_id: str) -> list[str]:
    out = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "JobID,State", "-j", job_id],
                         capture_output=True, text=True).stdout
    return [ln.split("|", 1)[1].split()[0] for ln in out.splitlines() if ln.split("|", 1)[0] == job_id]


def metric_rows(store: ResultsStore, key: str) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in store.read_metrics(key)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs of PREEMPT and REQUEUE (same code path and thread count as the jobs),
    computed in the background while the cluster tests run."""
    root = tmp_path_factory.mktemp("reference")
    code = textwrap.dedent(f"""
        from bench.spec import make_spec
        from sweeps.launcher import RunJob
        for d in ({PREEMPT!r}, {REQUEUE!r}):
            d = dict(d)
            spec = make_spec(d.pop("task"), d.pop("method"), d.pop("seed"), d)
            RunJob()(spec.to_dict(), {str(root)!r}, None, "disabled", None, 1)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def get(spec_fields: dict) -> tuple[dict, list[dict]]:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
        d = dict(spec_fields)
        from bench.spec import make_spec

        spec = make_spec(d.pop("task"), d.pop("method"), d.pop("seed"), d)
        store = ResultsStore(root)
        return store.read_result(spec.key), metric_rows(store, spec.key)

    yield get
    if proc.poll() is None:
        proc.kill()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("slurm-results")


def _state_save_location() -> Path:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    return Path(re.search(r"^StateSaveLocation\s*=\s*(\S+)", out, re.M).group(1))


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_job_array_completes_and_second_sweep_submits_nothing(tmp_path, results, capsys, reference, monkeypatch):
    secret = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    # the submitter's wandb service (exported once a run opened in this process) has exited: the jobs,
    # which inherit the environment, must start their own instead of failing after their result
    monkeypatch.setenv("WANDB_SERVICE", "3-999999-unix-/tmp/wandb-999999-1-1/socket")
    # seeds no in-process test uses: a wandb run of the same key left open by an earlier test of the session
    # is "in use" for the jobs too (they inherit the session's wandb service)
    path = sweep_file(tmp_path, "slurm-array", {"task": "digits/sklearn", "epochs": 2, "method": "none"},
                      {"seed": [40, 41, 42]}, array_parallelism=2)
    out = cli(capsys, "sweep", path, "--executor", "slurm", "--results", results)
    assert "planned 3 | done 0 | skipped by rule 0 | in flight 0 | submitted 3" in out
    m = re.search(r"job array (\d+) \(3 tasks, 2 at a time, partition debug\)", out)
    assert m, out
    array_id = m.group(1)
    # SLURM keeps each live job's environment on disk: the API key must not be in it
    spool = _state_save_location()
    env_files = [p for p in spool.rglob("environment") if f"job.{array_id}" in str(p)]
    assert env_files and b"WANDB_MODE=" in env_files[0].read_bytes()  # the environment is stored ...
    assert _files_containing(spool, secret.encode()) == []  # ... without the key
    assert f"logs {results}/sweeps/slurm-array/logs/%j" in out
    # while queued/running, a second sweep must not duplicate them
    out = cli(capsys, "sweep", path, "--executor", "slurm", "--results", results)
    assert "submitted 0" in out and ("in flight 3" in out or "done 3" in out or "in flight" in out)

    wait_for(lambda: all(s.state == "done" for s in states_of(results, path).values()), 600, "the array to finish", 2)
    store = ResultsStore(results)
    plan = plan_sweep(load_sweep(path))
    ledger = read_ledger(sweep_dir(results, "slurm-array") / LEDGER)
    assert sorted(e["job_id"] for e in ledger.values()) == [f"{array_id}_{i}" for i in range(3)]
    for run in plan.runs:
        rec = store.read_result(run.key)
        assert rec["status"] == "done" and rec["key"] == run.key and rec["sweep"] == "slurm-array"
        assert RunSpec.from_dict(rec["spec"]).key == run.key and 0 < rec["metrics"]["test_acc"] <= 1
        wait_for(lambda: wandb_closed(store, run.key), 120, f"run {run.key}'s wandb record")
        (seg,) = offline_run_dirs(store.run_dir(run.key))  # wandb offline files in the run dir
        w = read_offline_run(seg, wait_s=10)
        assert w["run_id"] == run.key and w["group"] == "slurm-array" and w["steps"] == [1, 2] and w["exit_code"] == 0
    out = cli(capsys, "sweep", path, "--executor", "slurm", "--results", results)
    assert "planned 3 | done 3 | skipped by rule 0 | in flight 0 | submitted 0" in out
    assert "nothing to submit (all runs done)" in out
    out = cli(capsys, "status", path, "--results", results)
    assert "done 3 / running 0 / pending 0 / failed 0 / not submitted 0" in out
    assert _files_containing(results, secret.encode()) == []
    assert os.environ["WANDB_API_KEY"] == secret  # the submitting process keeps it


def test_scancel_is_failed_in_status_and_resubmitted_by_next_sweep(tmp_path, results, capsys):
    path = sweep_file(tmp_path, "slurm-cancel", {"task": "digits/sklearn", "epochs": 10, "batch_size": 16, "method": "none"},
                      {"seed": [0, 1]}, array_parallelism=2)
    cli(capsys, "sweep", path, "--executor", "slurm", "--results", results)
    plan = plan_sweep(load_sweep(path))
    store = ResultsStore(results)
    victim, other = plan.runs[1].key, plan.runs[0].key
    job = read_ledger(sweep_dir(results, "slurm-cancel") / LEDGER)[victim]["job_id"]
    wait_for(lambda: len(store.read_metrics(victim)) >= 1, 240, "the victim's first epoch")
    subprocess.run(["scancel", job], check=True)
    st = wait_for(lambda: (s := states_of(results, path)[victim]).state == "failed" and s, 120, "status to report failed")
    assert f"job {job} CANCELLED" in st.detail
    out = cli(capsys, "status", path, "--results", results)
    line = next(ln for ln in out.splitlines() if ln.startswith(victim))
    assert " failed " in line and "CANCELLED" in line  # with the job's last stderr line
    assert not store.is_done(victim)

    wait_for(lambda: store.is_done(other), 240, "the other run to finish")
    out = cli(capsys, "sweep", path, "--executor", "slurm", "--results", results)
    assert "planned 2 | done 1 | skipped by rule 0 | in flight 0 | submitted 1 (1 failed before)" in out
    new_job = read_ledger(sweep_dir(results, "slurm-cancel") / LEDGER)[victim]["job_id"]
    assert new_job != job
    wait_for(lambda: store.is_done(victim), 240, "the resubmitted run to finish")
    assert [r["epoch"] for r in store.read_metrics(victim)] == list(range(1, 11))
    assert "resumed from checkpoint after epoch" in (store.run_dir(victim) / "run.log").read_text()
    out = cli(capsys, "sweep", path, "--executor", "slurm", "--results", results)
    assert "submitted 0" in out


def _single_run_sweep(tmp_path, name: str, fields: dict) -> Path:
    fixed = {k: v for k, v in fields.items() if k != "seed"}
    return sweep_file(tmp_path, name, fixed, {"seed": [fields["seed"]]}, array_parallelism=1)


def _check_resumed_like_reference(store, key, reference_result, ref_rows, epochs, segments_min=2):
    rec = store.read_result(key)
    log = (store.run_dir(key) / "run.log").read_text()
    m = re.search(r"resumed from checkpoint after epoch (\d+)/(\d+)", log)
    assert m and 1 <= int(m.group(1)) < epochs, log
    resumed_at = int(m.group(1))
    # metrics.jsonl continues from the checkpoint: every epoch once, no restart from epoch 1
    assert [r["epoch"] for r in store.read_metrics(key)] == list(range(1, epochs + 1))
    # deterministic on CPU: same final metrics and the same per-epoch curve as the uninterrupted run
    assert rec["metrics"] == reference_result["metrics"]
    assert metric_rows(store, key) == ref_rows
    # one wandb run: every offline segment is named for and (where its process lived to write the
    # run record) carries the run key as id; the last one holds the whole curve, ending cleanly
    wait_for(lambda: wandb_closed(store, key), 120, f"run {key}'s wandb record")
    dirs = offline_run_dirs(store.run_dir(key))
    assert len(dirs) >= segments_min and all(segment_run_id(d) == key for d in dirs)
    segs = [read_offline_run(d) for d in dirs[:-1]] + [read_offline_run(dirs[-1], wait_s=10)]
    assert {s["run_id"] for s in segs} - {None} == {key}
    last = segs[-1]
    assert last["run_id"] == key and last["resume"] and last["exit_code"] == 0
    assert last["steps"] == list(range(1, epochs + 1))
    assert last["summary"]["test_acc"] == reference_result["metrics"]["test_acc"]
    return resumed_at


def test_preempted_run_resumes_and_matches_uninterrupted_run(tmp_path, results, capsys, reference):
    path = _single_run_sweep(tmp_path, "slurm-preempt", PREEMPT)
    cli(capsys, "sweep", path, "--executor", "slurm", "--results", results)
    (run,) = plan_sweep(load_sweep(path)).runs
    store = ResultsStore(results)
    job = read_ledger(sweep_dir(results, "slurm-preempt") / LEDGER)[run.key]["job_id"]
    wait_for(lambda: len(store.read_metrics(run.key)) >= 2, 240, "two epochs before preemption")
    # a job in the high-priority partition that needs every CPU of the node preempts (requeues) ours
    blocker = subprocess.run(["sbatch", "--parsable", "-p", "urgent", "-c", str(NODE_CPUS), "--mem=100",
                              "-o", "/dev/null", "--wrap", "sleep 3"], capture_output=True, text=True, check=True).stdout.strip()
    wait_for(lambda: "PREEMPTED" in sacct_history(job) or "REQUEUED" in sacct_history(job), 120, "the preemption")
    wait_for(lambda: store.is_done(run.key), 300, "the preempted run to resume and finish", 2)
    assert "COMPLETED" in sacct_history(blocker.split(";")[0])
    log = job_log(results, "slurm-preempt", job)
    assert "SIGUSR2" in log and "this job is preempted" in log  # submitit's Checkpointable got the signal
    assert "resuming from its checkpoint" in log
    attempt = store.read_attempt(run.key)
    assert attempt["state"] == "done" and int(attempt.get("slurm_restart_count", 0)) >= 1
    ref_result, ref_rows = reference(PREEMPT)
    _check_resumed_like_reference(store, run.key, ref_result, ref_rows, PREEMPT["epochs"])


def test_scontrol_requeue_without_signal_resumes(tmp_path, results, capsys, reference):
    path = _single_run_sweep(tmp_path, "slurm-requeue", REQUEUE)
    cli(capsys, "sweep", path, "--executor", "slurm", "--results", results)
    (run,) = plan_sweep(load_sweep(path)).runs
    store = ResultsStore(results)
    job = read_ledger(sweep_dir(results, "slurm-requeue") / LEDGER)[run.key]["job_id"]
    wait_for(lambda: len(store.read_metrics(run.key)) >= 2, 240, "two epochs before the requeue")
    subprocess.run(["scontrol", "requeue", job], check=True)
    wait_for(lambda: "REQUEUED" in sacct_history(job) or store.read_attempt(run.key).get("slurm_restart_count"),
             120, "the requeue")
    # status while requeued: pending or running again, never failed (so `sweep` will not duplicate it)
    assert states_of(results, path)[run.key].state in ("pending", "running", "done")
    wait_for(lambda: store.is_done(run.key), 300, "the requeued run to resume and finish", 2)
    log = job_log(results, "slurm-requeue", job)
    assert "SIGUSR2" not in log  # no checkpoint signal: resumed from the periodic checkpoint
    assert re.search(r"restart \d+, resuming from its checkpoint", log), log
    ref_result, ref_rows = reference(REQUEUE)
    _check_resumed_like_reference(store, run.key, ref_result, ref_rows, REQUEUE["epochs"])
