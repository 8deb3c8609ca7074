"""Sweep files, planning, the local/debug launchers and `status` (no SLURM needed; see test_slurm.py)."""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from bench.cli import main as cli_main
from bench.errors import UsageError
from bench.store import ResultsStore
from sweeps import load_sweep, plan_sweep
from sweeps.launcher import LEDGER, append_ledger, read_ledger, sweep_dir
from sweeps.plan import done_keys
from sweeps.status import FAILED, NOT_SUBMITTED, _expand_job_ids, last_error_line, run_states


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def fake_srun(tmp_path: Path, monkeypatch) -> None:
    """submitit refuses to build a SLURM executor where `srun` is not on PATH; rendering the sbatch
    script needs no cluster, so give it an `srun` that is never called."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---- shipped files ------------------------------------------------------------------------
def test_demo_sweep_plans_27_digits_runs_under_the_fair_protocol():
    cfg = load_sweep("demo")  # a shipped sweep by name
    plan = plan_sweep(cfg)
    assert cfg.name == "demo" and len(plan.runs) == 27 and not plan.skipped
    assert {r.spec.task for r in plan.runs} == {"digits/sklearn"}
    assert {r.spec.method for r in plan.runs} == {f"{u}{a}" for u in ("none", "rand-m9-n2", "cutmix-a1.0")
                                                  for a in ("", "+ref", "+saflex")}
    assert {r.spec.ref_frac for r in plan.runs} == {0.5}
    assert {r.spec.seed for r in plan.runs} == {0, 1, 2}
    assert cfg.launcher.array_parallelism == 2 and cfg.launcher.cpus_per_task == 1


def test_medmnist_sweep_is_3_sets_x_6_upstreams_x_3_arms_x_5_seeds():
    plan = plan_sweep(load_sweep(Path(__file__).resolve().parents[2] / "sweeps" / "medmnist.yaml"))
    assert len(plan.runs) == 3 * 6 * 3 * 5 == 270
    assert {r.spec.ref_frac for r in plan.runs} == {0.5} and {r.spec.learner for r in plan.runs} == {"none", "ref", "saflex"}
    assert {r.spec.task for r in plan.runs} == {"medmnist/breastmnist", "medmnist/pneumoniamnist", "medmnist/retinamnist"}
    ups = {r.spec.upstream for r in plan.runs}
    assert ups == {"none", "rand-m9-n2", "autoaug-imagenet", "trivialaug", "cutmix-a1.0", "mixup-a0.2"}
    assert {r.spec.uses_saflex for r in plan.runs} == {True, False}
    assert {(r.spec.model, r.spec.epochs) for r in plan.runs} == {("resnet18", 100)}  # official protocol
    assert plan.sweep.launcher.gpus_per_node == 1


# ---- malformed files: one line naming the file, the key and what was expected ----------------
BAD = [
    ("name: x\ngrid: {task: [digits/sklearn], method: [none]\n", "invalid YAML"),
    ("- just\n- a list\n", "top level: expected a mapping"),
    ("name: x\ngrids: {}\n", "unknown key 'grids' (valid: name, description, fixed, grid, skip, launcher, generate)"),
    ("grid: {task: [digits/sklearn], method: [none]}\n", "name: expected a sweep name"),
    ("name: x\n", "grid: expected a mapping of run field -> list of values"),
    ("name: x\ngrid: {method: [none]}\n", "grid: expected a 'task' axis (or fixed.task)"),
    ("name: x\ngrid: {task: [digits/sklearn], method: [none], colour: [red]}\n", "grid.colour: unknown run field 'colour'"),
    ("name: x\ngrid: {task: [digits/sklearn], method: [none], seed: [{a: 1}]}\n", "grid.seed: expected a list of scalar values"),
    ("name: x\ngrid: {task: [digits/sklearn], method: []}\n", "grid.method: expected a non-empty list of values"),
    ("name: x\nfixed: {epochs: 2}\ngrid: {task: [digits/sklearn], method: [none], epochs: [1]}\n", "grid.epochs: 'epochs' is also in fixed"),
    ("name: x\ngrid: {task: [digits/sklearn], method: [none]}\nskip: [{when: {method: none}}]\n", "skip[0].reason: expected a non-empty string"),
    ("name: x\ngrid: {task: [digits/sklearn], method: [none]}\nskip: [{when: {flavour: a}, reason: r}]\n", "skip[0].when.flavour: unknown run field"),
    ("name: x\ngrid: {task: [digits/sklearn], method: [none]}\nlauncher: {mem_gb: lots}\n", "launcher.mem_gb: expected a number > 0 (GB), got 'lots'"),
    ("name: x\ngrid: {task: [digits/sklearn], method: [none]}\nlauncher: {array_parallelism: 0}\n", "launcher.array_parallelism: expected an integer >= 1, got 0"),
    ("name: x\ngrid: {task: [digits/sklearn], method: [none]}\nlauncher: {gpus: 1}\n", "launcher.gpus: unknown launcher setting (valid: partition, gpus_per_node"),
    ("name: x\ngrid: {task: [digits/sklearn], method: [randaug]}\n", "grid point (task=digits/sklearn, method=randaug): unknown method 'randaug'"),
    ("name: x\ngrid: {task: [digits/mnist], method: [none]}\n", "grid point (task=digits/mnist, method=none): unknown task 'digits/mnist'"),
    ("name: x\ngrid: {task: [digits/sklearn], method: [none], epochs: [0]}\n", "run field 'epochs' must be >= 1"),
]


@pytest.mark.parametrize("text,expected", BAD)
def test_malformed_sweep_file_is_one_line_naming_file_and_key(tmp_path, capsys, text, expected):
    path = write(tmp_path, text, "bad.yaml")
    with pytest.raises(UsageError) as e:
        plan_sweep(load_sweep(path))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ") and expected in msg, msg
    code, out, err = run_cli(capsys, "sweep", path, "--dry-run", "--results", tmp_path / "r")
    assert code == 2 and err.strip() == f"saflex-bench: error: {msg}"


def test_missing_sweep_file_names_the_shipped_ones(tmp_path):
    with pytest.raises(UsageError, match=r"sweep file 'nope' not found .*shipped sweep: .*demo, .*medmnist"):
        load_sweep("nope")


# ---- planning ---------------------------------------------------------------------------------
def test_grid_skip_rules_dedupe_and_union(tmp_path):
    path = write(tmp_path, """
        name: plan-test
        fixed: {task: digits/sklearn, epochs: 1}
        grid:
          - method: [none, rand-m9-n2, none+saflex, cutmix-a1.0]
            seed: [0, 1]
            saflex.eps: [0.1, 0.2]
          - method: [mixup-a0.2]
            seed: [5]
        skip:
          - when: {method: "rand-*", seed: 1}
            reason: rand only on seed 0
          - when: {upstream: cutmix-*, uses_saflex: false}
            reason: derived fields work too
    """)
    plan = plan_sweep(load_sweep(path))
    assert plan.points == 4 * 2 * 2 + 1
    reasons = [s.reason for s in plan.skipped]
    assert reasons.count("rand only on seed 0") == 2 and reasons.count("derived fields work too") == 4
    # saflex.eps is identity only for +saflex methods: none x {0.1, 0.2} and rand x {0.1, 0.2} dedupe
    got = sorted((r.spec.method, r.spec.seed, (r.spec.saflex or {}).get("eps")) for r in plan.runs)
    assert got == sorted([("none", 0, None), ("none", 1, None), ("rand-m9-n2", 0, None),
                          ("none+saflex", 0, 0.1), ("none+saflex", 0, 0.2), ("none+saflex", 1, 0.1),
                          ("none+saflex", 1, 0.2), ("mixup-a0.2", 5, None)])
    assert plan.duplicates == 2 + 1  # none: 2 seeds x 1 extra eps; rand (seed 0 only): 1
    assert len({r.key for r in plan.runs}) == len(plan.runs)


def test_skip_rule_can_match_normalised_spec_fields(tmp_path):
    path = write(tmp_path, """
        name: spec-fields
        grid: {task: [digits/sklearn], method: [none], seed: [0, 1]}
        skip: [{when: {model: small_cnn, seed: 1}, reason: model comes from the task defaults}]
    """)
    plan = plan_sweep(load_sweep(path))
    assert [r.spec.seed for r in plan.runs] == [0] and plan.skipped[0].reason.startswith("model comes")


def test_invalid_modality_pair_is_skipped_by_rule(tmp_path, monkeypatch):
    import bench.tasks

    real = bench.tasks.supports
    monkeypatch.setattr(bench.tasks, "supports", lambda t, m: "no mixers here" if m.startswith("mixup") else real(t, m))
    path = write(tmp_path, "name: m\ngrid: {task: [digits/sklearn], method: [none, mixup-a0.2]}\n")
    plan = plan_sweep(load_sweep(path))
    assert [r.spec.method for r in plan.runs] == ["none"]
    assert plan.skipped[0].reason == "invalid pair: no mixers here"


def test_dry_run_prints_plan_counts_and_reasons_and_writes_nothing(tmp_path, capsys):
    path = write(tmp_path, """
        name: dry
        fixed: {task: digits/sklearn, epochs: 1}
        grid: {method: [none, autoaug-cifar10], seed: [0, 1]}
        skip: [{when: {task: "digits/*", method: "autoaug-*"}, reason: "8x8 digits are too small for AutoAugment"}]
    """)
    results = tmp_path / "results"
    code, out, _ = run_cli(capsys, "sweep", path, "--dry-run", "--results", results, "--executor", "local")
    assert code == 0
    assert "4 grid points -> 2 runs (2 skipped by rule, 0 duplicates merged)" in out
    assert out.count("8x8 digits are too small for AutoAugment") == 2
    assert "planned 2 | done 0 | skipped by rule 2 | in flight 0 | would submit 2" in out
    assert "executor local (--executor)" in out
    assert not results.exists()


# ---- running: local executor and debug executor --------------------------------------------
def _read_wandb_ids(run_dir: Path) -> set:
    from bench.tracking import offline_run_dirs, read_offline_run

    return {read_offline_run(d, wait_s=10)["run_id"] for d in offline_run_dirs(run_dir)}


# what wandb exports once a run opened in the submitting process (a notebook, a debug sweep): here that
# service has exited. Jobs inherit the environment and must start their own service, not fail on this one.
STALE_WANDB_SERVICE = "3-999999-unix-/tmp/wandb-999999-1-1/socket"


def test_local_sweep_runs_then_nothing_to_submit_then_status_done(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_SERVICE", STALE_WANDB_SERVICE)
    path = write(tmp_path, """
        name: local-e2e
        fixed: {task: digits/sklearn, epochs: 1, method: none}
        grid: {seed: [0, 1, 2]}
        launcher: {array_parallelism: 2, timeout_min: 15}
    """)
    results = tmp_path / "results"
    code, out, _ = run_cli(capsys, "sweep", path, "--executor", "local", "--results", results)
    assert code == 0, out
    assert "planned 3 | done 0 | skipped by rule 0 | in flight 0 | submitted 3" in out
    assert f"logs {results}/sweeps/local-e2e/logs/%j" in out
    assert "finished 3 jobs" in out and "done 3 / failed 0" in out
    plan = plan_sweep(load_sweep(path))
    store = ResultsStore(results)
    assert done_keys(store, plan.keys) == set(plan.keys)
    for key in plan.keys:
        rec = store.read_result(key)
        assert rec["sweep"] == "local-e2e" and rec["status"] == "done"
        assert _read_wandb_ids(store.run_dir(key)) == {key}  # offline wandb files in the run dir, id = key
    ledger = read_ledger(sweep_dir(results, "local-e2e") / LEDGER)
    assert set(ledger) == set(plan.keys) and {e["executor"] for e in ledger.values()} == {"local"}
    # the second sweep of a finished grid submits nothing
    code, out, _ = run_cli(capsys, "sweep", path, "--executor", "local", "--results", results)
    assert code == 0 and "submitted 0" in out and "nothing to submit (all runs done)" in out
    assert len((sweep_dir(results, "local-e2e") / LEDGER).read_text().splitlines()) == 3
    code, out, _ = run_cli(capsys, "status", path, "--results", results)
    assert "done 3 / running 0 / pending 0 / failed 0 / not submitted 0" in out


def test_failed_local_run_is_reported_and_resubmitted(tmp_path, capsys):
    """A run whose job fails (here: MedMNIST data missing) is `failed` with the error's last line; the
    next sweep resubmits it (and only it)."""
    path = write(tmp_path, """
        name: failing
        grid: {task: [medmnist/breastmnist], method: [none], seed: [0]}
        launcher: {timeout_min: 10}
    """)
    results = tmp_path / "results"
    empty = tmp_path / "no-data"
    empty.mkdir()
    code, out, _ = run_cli(capsys, "sweep", path, "--executor", "local", "--results", results, "--data-root", empty)
    assert code == 1 and "done 0 / failed 1" in out
    code, out, _ = run_cli(capsys, "status", path, "--results", results)
    line = next(ln for ln in out.splitlines() if " failed " in ln)
    assert "breastmnist" in line and "UsageError" in line  # the last line of the job's stderr
    assert "done 0 / running 0 / pending 0 / failed 1 / not submitted 0" in out
    code, out, _ = run_cli(capsys, "sweep", path, "--executor", "local", "--results", results, "--dry-run")
    assert "would submit 1" in out and "resubmit: job " in out


def test_debug_executor_runs_in_process(tmp_path, capsys):
    path = write(tmp_path, "name: dbg\nfixed: {task: digits/sklearn, epochs: 1}\ngrid: {method: [none], seed: [3]}\n")
    results = tmp_path / "results"
    code, out, _ = run_cli(capsys, "sweep", path, "--executor", "debug", "--results", results, "--wandb", "disabled")
    assert code == 0 and "done 1 / failed 0" in out
    (key,) = plan_sweep(load_sweep(path)).keys
    assert ResultsStore(results).is_done(key)
    assert not (ResultsStore(results).run_dir(key) / "wandb").exists()  # --wandb disabled respected


# ---- status from the ledger and attempt files (no scheduler needed) ---------------------------
def test_status_states_from_attempts_and_dead_local_jobs(tmp_path):
    path = write(tmp_path, "name: st\nfixed: {task: digits/sklearn, epochs: 1}\ngrid: {method: [none], seed: [0, 1, 2, 3]}\n")
    plan = plan_sweep(load_sweep(path))
    k_done, k_failed, k_dead, k_new = plan.keys
    results = tmp_path / "results"
    store = ResultsStore(results)
    store.write_result(k_done, {"key": k_done, "status": "done", "spec": {"task": "t", "method": "none", "seed": 0}, "metrics": {"test_acc": 0.5}})
    store.write_attempt(k_failed, {"state": "failed", "error": "RuntimeError: CUDA out of memory", "started_at": "2030-01-01T00:00:00Z"})
    logs = sweep_dir(results, "st") / "logs" / "%j"
    dead_pid = "999999999"  # no such process
    job_dir = Path(str(logs).replace("%j", dead_pid))
    job_dir.mkdir(parents=True)
    (job_dir / f"{dead_pid}_0_log.err").write_text("Traceback...\nValueError: boom\nsubmitit INFO (x) - Exiting\n")
    append_ledger(sweep_dir(results, "st") / LEDGER, [
        dict(key=k_failed, job_id="111111111", executor="local", folder=str(logs), submitted_at="2029-01-01T00:00:00Z"),
        dict(key=k_dead, job_id=dead_pid, executor="local", folder=str(logs), submitted_at="2029-01-01T00:00:00Z"),
    ])
    states = run_states(store, plan.keys, read_ledger(sweep_dir(results, "st") / LEDGER))
    assert states[k_done].state == "done"
    assert states[k_failed].state == FAILED and states[k_failed].detail.endswith("RuntimeError: CUDA out of memory")
    assert states[k_dead].state == FAILED and states[k_dead].detail == f"job {dead_pid} ended: ValueError: boom"
    assert states[k_new].state == NOT_SUBMITTED


def test_ledger_tolerates_torn_lines_and_keeps_latest(tmp_path):
    p = tmp_path / LEDGER
    append_ledger(p, [{"key": "a", "job_id": "1"}, {"key": "b", "job_id": "2"}])
    with open(p, "a") as f:
        f.write('{"key": "a", "job_id": "3"}\n{"key": "b", "jo')  # a torn last line
    assert {k: e["job_id"] for k, e in read_ledger(p).items()} == {"a": "3", "b": "2"}


def test_expand_slurm_array_ids_and_last_error_line(tmp_path):
    assert _expand_job_ids("45_[3-5,7%2]") == ["45_3", "45_4", "45_5", "45_7"]
    assert _expand_job_ids("45_1") == ["45_1"] and _expand_job_ids("46") == ["46"]
    f = tmp_path / "err"
    f.write_text("x\nslurmstepd: error: *** JOB 46 ON localhost CANCELLED AT 2026 ***\nsubmitit INFO (1) - y\n\n")
    assert last_error_line(f) == "slurmstepd: error: *** JOB 46 ON localhost CANCELLED AT 2026 ***"
    assert last_error_line(tmp_path / "missing") == ""


def test_wandb_flag_validation(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, "name: w\ngrid: {task: [digits/sklearn], method: [none]}\n")
    monkeypatch.setenv("WANDB_MODE", "loud")
    code, _, err = run_cli(capsys, "sweep", path, "--dry-run", "--results", tmp_path / "r")
    assert code == 2 and "unknown wandb mode 'loud' from WANDB_MODE (valid: online, offline, disabled)" in err
    os.environ.pop("WANDB_MODE", None)


def test_credentials_are_not_passed_to_sbatch():
    from sweeps.launcher import _without_secrets, secret_env_names

    env = {"WANDB_API_KEY": "k", "HF_TOKEN": "t", "AWS_SECRET_ACCESS_KEY": "s", "MY_PASSWORD": "p",
           "WANDB_MODE": "offline", "SLURM_JOB_ID": "1", "PATH": "/bin"}
    assert secret_env_names(env) == ["AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "MY_PASSWORD", "WANDB_API_KEY"]
    os.environ["WANDB_API_KEY"] = "secret-for-test"
    try:
        with _without_secrets() as removed:
            assert "WANDB_API_KEY" in removed and "WANDB_API_KEY" not in os.environ
        assert os.environ["WANDB_API_KEY"] == "secret-for-test"
    finally:
        os.environ.pop("WANDB_API_KEY", None)


def test_launcher_settings_reach_sbatch(tmp_path, monkeypatch):
    """partition / gpus / cpus / memory / time / account / qos / constraint / extra sbatch options and
    max_num_timeout are passed through to submitit's sbatch script (no cluster needed to render it)."""
    from sweeps.launcher import make_executor

    fake_srun(tmp_path, monkeypatch)

    path = write(tmp_path, """
        name: l
        grid: {task: [digits/sklearn], method: [none]}
        launcher:
          partition: gpu
          gpus_per_node: 1
          cpus_per_task: 4
          mem_gb: 16
          timeout_min: 240
          array_parallelism: 16
          max_num_timeout: 5
          account: lab
          qos: high
          constraint: a100
          setup: [module load cuda]
          slurm_additional_parameters: {exclude: node13}
    """)
    cfg = load_sweep(path)
    ex = make_executor("slurm", tmp_path / "logs" / "%j", cfg.launcher, "saflex-l", 10)
    text = ex._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=4", "--mem=16GB", "--time=240",
                 "--account=lab", "--qos=high", "--constraint=a100", "--exclude=node13", "--signal=USR2@90",
                 "--job-name=saflex-l"):
        assert f"#SBATCH {line}\n" in text, line
    assert "module load cuda" in text and ex._executor.max_num_timeout == 5
    assert ex._executor.parameters["array_parallelism"] == 16


def test_report_of_a_sweep_includes_the_runs_it_shares_with_another(tmp_path, capsys):
    """Same spec, same key: a run sweep B plans but sweep A ran first keeps A's name in its record.
    `sweep` writes B's plan, and `report --sweep B` (load_results) takes B's runs from it."""
    from reports.load import load_results

    a = write(tmp_path, "name: a\nfixed: {task: digits/sklearn, epochs: 1}\ngrid: {method: [none], seed: [3]}\n", "a.yaml")
    b = write(tmp_path, "name: b\nfixed: {task: digits/sklearn, epochs: 1}\ngrid: {method: [none], seed: [3, 4]}\n", "b.yaml")
    results = tmp_path / "results"
    for path in (a, b):
        code, out, _ = run_cli(capsys, "sweep", path, "--executor", "debug", "--results", results, "--wandb", "disabled")
        assert code == 0
    assert "done 1 | skipped by rule 0 | in flight 0 | submitted 1" in out  # seed 3 was A's
    shared, own = plan_sweep(load_sweep(b)).keys
    assert json.loads((sweep_dir(results, "b") / "plan.json").read_text())["keys"] == [shared, own]
    assert set(load_results(results, sweep="b")["key"]) == {shared, own}
    assert set(load_results(results, sweep="a")["key"]) == {shared}
    (sweep_dir(results, "b") / "plan.json").unlink()  # a store from before plans: the records' names only
    assert set(load_results(results, sweep="b")["key"]) == {own}
