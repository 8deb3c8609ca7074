"""`launcher.runs_per_job`: several runs per array task, trained concurrently in child processes
(sweeps/pack.py). Local and debug executors; no GPU, no SLURM needed (the sbatch request is rendered)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from bench.errors import UsageError
from bench.store import ResultsStore
from sweeps import load_sweep, plan_sweep
from sweeps.launcher import LEDGER, make_executor, pack_resources, read_ledger, submit_runs, sweep_dir
from sweeps.pack import PACK_LOG, PackFailed, chunk
from test_sweeps import fake_srun, run_cli, write  # the sweep tests' helpers (tests/ is on sys.path under pytest)




def _wandb_ids(run_dir: Path) -> set:
    from bench.tracking import offline_run_dirs, read_offline_run

    return {read_offline_run(d, wait_s=10)["run_id"] for d in offline_run_dirs(run_dir)}


def test_chunk_keeps_plan_order():
    assert chunk(list("abcde"), 3) == [["a", "b", "c"], ["d", "e"]]
    assert chunk(list("ab"), 1) == [["a"], ["b"]]


def test_pack_of_3_over_5_runs_two_tasks_concurrent_and_same_metrics_as_one_per_job(tmp_path, capsys):
    path = write(tmp_path, """
        name: packed
        fixed: {task: digits/sklearn, epochs: 1, method: none}
        grid: {seed: [0, 1, 2, 3, 4]}
        launcher: {array_parallelism: 2, timeout_min: 15, runs_per_job: 3}
    """)
    plan = plan_sweep(load_sweep(path))
    packed = tmp_path / "packed"
    code, out, _ = run_cli(capsys, "sweep", path, "--executor", "local", "--results", packed)
    assert code == 0, out
    assert "2 local jobs" in out and "3 runs per job" in out, out
    assert "finished 5 runs in 2 jobs" in out and "done 5 / failed 0" in out, out
    # the ledger names every run; plan order, groups of 3, two array tasks
    ledger = read_ledger(sweep_dir(packed, "packed") / LEDGER)
    assert set(ledger) == set(plan.keys)
    jobs: dict[str, list] = {}
    for key in plan.keys:
        jobs.setdefault(ledger[key]["job_id"], []).append((ledger[key]["pack_index"], key))
    assert sorted([k for _, k in sorted(g)] for g in jobs.values()) == sorted([plan.keys[:3], plan.keys[3:]])
    store = ResultsStore(packed)
    for key in plan.keys:  # each run: its own record, wandb run and log files; threads = cpus_per_task
        rec = store.read_result(key)
        assert rec["status"] == "done" and rec["threads"] == 1
        assert _wandb_ids(store.run_dir(key)) == {key}
        folder = Path(ledger[key]["folder"].replace("%j", ledger[key]["job_id"]))
        assert f"run {key} done" in (folder / f"run_{key}.out").read_text()
    # the runs of a pack overlap in time: every child process started before any ended (each child
    # logs its own start and end; pack.jsonl has each run's state)
    for job_id, group in jobs.items():
        folder = Path(ledger[group[0][1]]["folder"].replace("%j", job_id))
        rows = [json.loads(ln) for ln in (folder / PACK_LOG).read_text().splitlines()]
        assert {r["key"] for r in rows} == {k for _, k in group} and {r["state"] for r in rows} == {"done"}
        spans = [tuple(map(float, re.findall(r"ran from ([\d.]+) to ([\d.]+)", (folder / f"run_{k}.out").read_text())[-1]))
                 for _, k in group]
        assert max(a for a, _ in spans) < min(b for _, b in spans), spans
    # the same runs one per job (the flag overrides the file), in this process: identical metrics
    single = tmp_path / "single"
    code, out, _ = run_cli(capsys, "sweep", path, "--executor", "debug", "--results", single,
                           "--runs-per-job", "1", "--wandb", "disabled")
    assert code == 0 and "finished 5 jobs" in out and "done 5 / failed 0" in out, out
    assert "pack_size" not in next(iter(read_ledger(sweep_dir(single, "packed") / LEDGER).values()))
    for key in plan.keys:
        assert ResultsStore(single).read_result(key)["metrics"] == store.read_result(key)["metrics"], key


def test_failed_run_of_a_pack_leaves_the_others_done_and_only_it_is_resubmitted(tmp_path, capsys):
    """One run of a pack fails (MedMNIST data missing): the others complete, the task's exception is
    one line naming it, `status` shows its own error, and the next `sweep` submits it alone."""
    path = write(tmp_path, """
        name: pack-fail
        fixed: {method: none}
        grid:  # the digits runs train for a while: the failing run ends while they are still training
          - {task: [digits/sklearn], seed: [0], epochs: [6], batch_size: [16]}
          - {task: [medmnist/breastmnist], seed: [0], epochs: [1]}
          - {task: [digits/sklearn], seed: [1], epochs: [6], batch_size: [16]}
        launcher: {runs_per_job: 3, timeout_min: 10}
    """)
    cfg = load_sweep(path)
    plan = plan_sweep(cfg)
    ok1, bad, ok2 = plan.keys
    assert plan.runs[1].spec.task == "medmnist/breastmnist"
    results, empty = tmp_path / "results", tmp_path / "no-data"
    empty.mkdir()
    pairs = submit_runs("debug", results, cfg.name, cfg.launcher, plan.runs, empty, "disabled")
    assert len({id(j) for _, j in pairs}) == 1  # one array task for the three runs
    err = pairs[0][1].exception()
    assert isinstance(err, PackFailed), err
    msg = str(err)
    assert "\n" not in msg and msg.startswith("1 of 3 runs of this pack failed: ") and bad in msg, msg
    assert ok1 not in msg and ok2 not in msg and "UsageError" in msg
    store = ResultsStore(results)
    assert store.is_done(ok1) and store.is_done(ok2) and not store.is_done(bad)
    code, out, _ = run_cli(capsys, "status", path, "--results", results)
    line = next(ln for ln in out.splitlines() if ln.startswith(bad))
    assert " failed " in line and "UsageError" in line and "breastmnist" in line, line  # its own stderr
    assert "done 2 / running 0 / pending 0 / failed 1 / not submitted 0" in out
    lines_before = len((sweep_dir(results, cfg.name) / LEDGER).read_text().splitlines())
    code, out, _ = run_cli(capsys, "sweep", path, "--executor", "debug", "--results", results,
                           "--data-root", empty, "--wandb", "disabled")
    assert code == 1 and "planned 3 | done 2 | skipped by rule 0 | in flight 0 | submitted 1 (1 failed before)" in out, out
    assert "finished 1 jobs" in out and "done 0 / failed 1" in out
    new = (sweep_dir(results, cfg.name) / LEDGER).read_text().splitlines()[lines_before:]
    assert [json.loads(ln)["key"] for ln in new] == [bad]


def test_a_requeued_pack_skips_its_done_runs(tmp_path):
    """Skip-done at run level: a pack whose runs are all done starts no child (as after a requeue)."""
    from sweeps.pack import PackJob

    store = ResultsStore(tmp_path / "r")
    path = write(tmp_path, "name: p\nfixed: {task: digits/sklearn, epochs: 1}\ngrid: {method: [none], seed: [0, 1]}\n")
    plan = plan_sweep(load_sweep(path))
    for r in plan.runs:
        store.write_result(r.key, {"key": r.key, "status": "done", "spec": {"task": "t", "method": "none", "seed": 0}, "metrics": {"test_acc": 0.5}})
    out = PackJob()([r.spec.to_dict() for r in plan.runs], str(store.root), logs_template=str(tmp_path / "logs" / "%j"))
    assert [s["key"] for s in out] == plan.keys and {s["status"] for s in out} == {"done"}
    assert not list((tmp_path / "logs").rglob("run_*"))  # no child was started


@pytest.mark.parametrize("value", [0, -2, "two", 1.5, True])
def test_runs_per_job_validation(tmp_path, value):
    path = write(tmp_path, f"name: x\ngrid: {{task: [digits/sklearn], method: [none]}}\nlauncher: {{runs_per_job: {json.dumps(value)}}}\n")
    with pytest.raises(UsageError) as e:
        load_sweep(path)
    msg = str(e.value)
    assert "\n" not in msg and f"{path}: launcher.runs_per_job: expected an integer >= 1, got" in msg, msg


def test_runs_per_job_flag_validation_and_default(tmp_path, capsys):
    path = write(tmp_path, "name: x\ngrid: {task: [digits/sklearn], method: [none]}\n")
    assert load_sweep(path).launcher.runs_per_job == 1
    code, _, err = run_cli(capsys, "sweep", path, "--runs-per-job", "0", "--results", tmp_path / "r")
    assert code == 2 and err.strip() == "saflex-bench: error: --runs-per-job: expected an integer >= 1, got 0"


def test_pack_job_requests_k_times_cpus_and_memory_and_the_sweeps_gpus(tmp_path, monkeypatch):
    fake_srun(tmp_path, monkeypatch)  # rendering the sbatch script needs no cluster, only an `srun` on PATH
    path = write(tmp_path, """
        name: l
        grid: {task: [digits/sklearn], method: [none]}
        launcher: {gpus_per_node: 1, cpus_per_task: 2, mem_gb: 8, runs_per_job: 4}
    """)
    launcher = load_sweep(path).launcher
    assert pack_resources(launcher.__class__(**{**launcher.to_dict(), "runs_per_job": 1})).cpus_per_task == 2
    ex = make_executor("slurm", tmp_path / "logs" / "%j", pack_resources(launcher), "saflex-l", 3)
    text = ex._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--cpus-per-task=8", "--mem=32GB", "--gpus-per-node=1"):
        assert f"#SBATCH {line}\n" in text, line


@pytest.mark.skipif(os.environ.get("SAFLEX_LONG_PACK") != "1",
                    reason="~2.5 min on 2 loaded cores: SAFLEX_LONG_PACK=1 pytest tests/e2e/test_packing.py -k preempted")
def test_preempted_pack_forwards_the_signal_and_each_run_resumes_from_its_checkpoint(tmp_path):
    """USR2 to a local pack job (as SLURM sends on preemption): its children stop keeping their
    checkpoints, submitit requeues the pack, and each run resumes from its own checkpoint."""
    import signal
    import time

    path = write(tmp_path, """
        name: pre
        fixed: {task: digits/sklearn, method: none, epochs: 12, batch_size: 16}
        grid: {seed: [0, 1]}
        launcher: {runs_per_job: 2, timeout_min: 30}
    """)
    cfg = load_sweep(path)
    plan = plan_sweep(cfg)
    store = ResultsStore(tmp_path / "r")
    ((_, job), _) = submit_runs("local", store.root, cfg.name, cfg.launcher, plan.runs, None, "disabled")
    deadline = time.time() + 300
    while not all(len(store.read_metrics(k)) >= 2 for k in plan.keys):
        assert time.time() < deadline, "the runs did not reach epoch 2"
        time.sleep(0.5)
    ctrl = job._process.pid  # the local controller; the job process is its child (SLURM signals the job)
    (pid,) = map(int, Path(f"/proc/{ctrl}/task/{ctrl}/children").read_text().split())
    os.kill(pid, signal.SIGUSR2)
    assert {s["status"] for s in job.result()} == {"done"}
    folder = Path(str(job.paths.folder))
    rows = [json.loads(ln) for ln in (folder / PACK_LOG).read_text().splitlines()]
    assert [r["state"] for r in rows] == ["stopped", "stopped", "done", "done"], rows
    for key in plan.keys:
        log = (folder / f"run_{key}.out").read_text()
        assert "from scratch" in log and "resuming from its checkpoint" in log, log
        assert len(store.read_metrics(key)) == 12
