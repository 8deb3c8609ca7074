"""Every failure a user can cause or suffer ends in one line and a way forward (issue 12).

User mistakes exit 2 with one `saflex-bench: error: ...` line and write nothing; Ctrl-C exits 130 and
says how to resume; nothing already computed is lost or changed.
"""
from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench.cli import main as cli_main
from bench.runner import default_threads, mixed_cost_settings, run_spec
from bench.spec import make_spec
from bench.store import ResultsStore, run_lock, write_bytes_atomic

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
TASK = ["--task", "digits/sklearn", "--method", "none"]


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    env.update(extra)
    return env


def _sigint_default():  # a test started from a background shell inherits SIGINT ignored; Ctrl-C would be a no-op
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("saflex-bench: error: "), err
    assert "Traceback" not in err
    return lines[0]


def spec(epochs=3, **over):
    return make_spec("digits/sklearn", "none", 0, {"epochs": epochs, **over})


def quiet(s, root, **kw):
    return run_spec(s, root, progress=False, wandb_mode="disabled", threads=1, **kw)


class Stop(Exception):
    pass


def stop_after(n):
    def hook(epoch, row):
        if epoch == n:
            raise Stop(f"stop after {n}")
    return hook


# ---- results root ----------------------------------------------------------------------------------
def test_results_that_is_a_file_is_one_line_for_run_and_sweep(tmp_path, capsys):
    f = tmp_path / "results.txt"
    f.write_text("not a dir")
    code, _, err = cli(capsys, "run", *TASK, "--epochs", 1, "--results", f, "--wandb", "disabled")
    assert code == 2 and "is a file, not a directory" in one_error_line(err) and "--results" in err
    code, _, err = cli(capsys, "sweep", "demo", "--executor", "local", "--results", f)
    assert code == 2 and "is a file, not a directory" in one_error_line(err)
    code, _, err = cli(capsys, "sweep", "demo", "--dry-run", "--results", f / "sub")
    assert code == 2 and "is a file, not a directory" in one_error_line(err)
    assert f.read_text() == "not a dir"


def test_read_only_results_is_one_line(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root ignores permission bits: make the write probe fail as it would
        import bench.store

        def denied(*a, **k):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(bench.store.tempfile, "TemporaryFile", denied)
        monkeypatch.setattr(bench.store.os, "access", lambda *a, **k: False)
    else:
        ro.chmod(0o500)
    try:
        code, _, err = cli(capsys, "run", *TASK, "--epochs", 1, "--results", ro, "--wandb", "disabled")
        assert code == 2 and "not writable" in one_error_line(err)
        code, _, err = cli(capsys, "sweep", "demo", "--dry-run", "--results", ro)
        assert code == 2 and "not writable" in one_error_line(err)
    finally:
        ro.chmod(0o700)
    assert list(ro.iterdir()) == []


# ---- devices, threads ---------------------------------------------------------------------------
@pytest.mark.parametrize("device,expected", [("tpu", "unknown device 'tpu'"), ("cuda", "no CUDA GPU"),
                                             ("cuda:99", "GPU")])
def test_bad_device_is_one_line_and_writes_nothing(tmp_path, capsys, device, expected):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    results = tmp_path / "r"
    code, _, err = cli(capsys, "run", *TASK, "--epochs", 1, "--results", results, "--device", device, "--wandb", "disabled")
    assert code == 2 and expected in one_error_line(err)
    assert not results.exists()  # validated before spec.json / attempt.json


def test_threads_default_recorded_and_restored(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert default_threads() == 3
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert default_threads() == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_threads() == len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    seen = []
    rec = quiet(spec(1), tmp_path, on_epoch_end=lambda e, r: seen.append(torch.get_num_threads()))
    assert rec["threads"] == 1 and seen == [1] and torch.get_num_threads() == before
    assert mixed_cost_settings([rec, rec]) is None
    note = mixed_cost_settings([rec, {**rec, "threads": 4}])
    assert note and "threads 1, 4" in note


def test_threads_flag_validated(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["run", *TASK, "--threads", "0", "--results", str(tmp_path)])
    assert e.value.code == 2 and "expected an integer >= 1" in capsys.readouterr().err


# ---- broken pipe -----------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["list", "tasks"], ["sweep", "demo", "--dry-run", "--executor", "local"]])
def test_closed_stdout_is_quiet(tmp_path, argv):
    r, w = os.pipe()
    os.close(r)  # the reader is gone before we write: like `| head` that has exited
    p = subprocess.run([PY, "-m", "bench.cli", *argv, "--results", str(tmp_path / "r")] if argv[0] == "sweep"
                       else [PY, "-m", "bench.cli", *argv], stdout=w, stderr=subprocess.PIPE, text=True, env=_env(),
                       cwd=REPO, timeout=120)
    os.close(w)
    assert p.returncode == 141 and p.stderr == "", p.stderr


# ---- SLURM not there ------------------------------------------------------------------------------
def test_slurm_executor_without_srun_is_one_line(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    results = tmp_path / "r"
    code, _, err = cli(capsys, "sweep", "demo", "--executor", "slurm", "--results", results)
    assert code == 2 and "no `srun` on PATH" in one_error_line(err)
    assert not (results / "sweeps" / "demo" / "submissions.jsonl").exists()
    code, out, err = cli(capsys, "sweep", "demo", "--executor", "slurm", "--results", results, "--dry-run")
    assert code == 2 and "cannot start" in one_error_line(err) and "would fail" in out


# ---- dry run checks the data -------------------------------------------------------------------
def test_dry_run_names_missing_data(tmp_path, capsys):
    empty = tmp_path / "no-data"
    empty.mkdir()
    results = tmp_path / "r"
    code, out, err = cli(capsys, "sweep", REPO / "sweeps" / "medmnist.yaml", "--dry-run", "--executor", "local",
                         "--results", results, "--data-root", empty)
    line = one_error_line(err)
    assert code == 2 and "270 of the 270 runs to submit cannot start: missing data file" in line
    assert out.count("would fail") == 270 and "breastmnist.npz" in out
    assert not results.exists()
    code, out, err = cli(capsys, "sweep", "demo", "--dry-run", "--executor", "local", "--results", results)
    assert code == 0 and "would fail" not in out  # digits needs no files


# ---- Ctrl-C during run ------------------------------------------------------------------------------
def test_ctrl_c_during_run_exits_130_with_resume_hint_and_resumes_identically(tmp_path):
    results = tmp_path / "r"
    cmd = [PY, "-m", "bench.cli", "run", *TASK, "--epochs", "4", "--results", str(results), "--quiet",
           "--wandb", "disabled", "--threads", "1"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO,
                         preexec_fn=_sigint_default)
    for line in p.stdout:
        if line.startswith("epoch 2/4"):  # --quiet keeps the epoch lines
            break
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    m = re.search(r"saflex-bench: interrupted; (\d)/4 epochs of run \w+ are saved: re-run the same command to resume "
                  r"from epoch (\d)", err)
    assert m and int(m.group(2)) == int(m.group(1)) + 1 and int(m.group(1)) >= 2, err
    key = spec(4).key
    store = ResultsStore(results)
    assert not store.is_done(key) and store.read_attempt(key)["state"] == "interrupted"
    assert len(store.read_metrics(key)) == int(m.group(1))
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300)
    assert done.returncode == 0 and f"resumed from checkpoint after epoch {m.group(1)}/4" in done.stdout
    straight = quiet(spec(4), tmp_path / "straight")
    assert store.read_result(key)["metrics"] == straight["metrics"]


# ---- a second `run` of the same run waits ------------------------------------------------------------
def test_second_run_waits_for_the_lock_and_does_not_train_again(tmp_path):
    results = tmp_path / "r"
    s = spec(1)
    store = ResultsStore(results)
    fake = {"key": s.key, "status": "done", "spec": s.to_dict(), "metrics": {"test_acc": 0.125, "test_auc": 0.5, "best_epoch": 1},
            "cost": {"epoch_s": 0.0}}
    with run_lock(store.run_dir(s.key)):  # "the first process" holds the run
        p = subprocess.Popen([PY, "-m", "bench.cli", "run", *TASK, "--epochs", "1", "--results", str(results),
                              "--wandb", "disabled", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=_env(), cwd=REPO)
        deadline = time.time() + 120
        line = ""
        while "being trained by another process" not in line:
            line = p.stderr.readline()
            assert line and time.time() < deadline, "the second run did not wait"
        store.write_result(s.key, fake)  # the first process finishes
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and "test_acc 0.1250" in out, err
    assert not (store.run_dir(s.key) / "checkpoint.pt").exists()  # it did not train


# ---- a corrupt checkpoint ----------------------------------------------------------------------------
@pytest.mark.parametrize("also_prev", [False, True])
def test_truncated_checkpoint_is_moved_aside_and_the_run_recovers(tmp_path, capsys, also_prev):
    straight = quiet(spec(3), tmp_path / "a")
    root = tmp_path / "b"
    with pytest.raises(Stop):
        quiet(spec(3), root, on_epoch_end=stop_after(2))
    run_dir = ResultsStore(root).run_dir(straight["key"])
    ck, prev = run_dir / "checkpoint.pt", run_dir / "checkpoint.prev.pt"
    assert prev.exists()  # the previous good checkpoint is kept
    ck.write_bytes(ck.read_bytes()[:1000])  # truncated (a copy that stopped, a full disk)
    if also_prev:
        prev.write_bytes(b"")
    capsys.readouterr()
    rec = quiet(spec(3), root)
    err = capsys.readouterr().err
    assert rec["metrics"] == straight["metrics"]
    assert len(list(run_dir.glob("checkpoint.pt.corrupt-*"))) == 1
    assert len(list(run_dir.glob("checkpoint.prev.pt.corrupt-*"))) == int(also_prev)
    warn = [ln for ln in err.splitlines() if "is unreadable" in ln]
    assert len(warn) == 1 + int(also_prev) and warn[0].startswith("saflex-bench: warning: run ")
    log = (run_dir / "run.log").read_text()
    if also_prev:
        assert "resumed from checkpoint" not in log  # started over
    else:
        assert "resumed from checkpoint after epoch 1/3" in log
    assert "corrupt_checkpoint" in rec["warnings"]


# ---- file modes follow the umask ---------------------------------------------------------------------
@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_run_files_follow_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        write_bytes_atomic(tmp_path / "x.json", b"{}")
        assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == mode
        if mask == 0o022:
            rec = quiet(spec(1), tmp_path / "r")
            run_dir = ResultsStore(tmp_path / "r").run_dir(rec["key"])
            files = ["result.json", "metrics.jsonl", "spec.json", "attempt.json", "best.pt", "run.log"]
            assert {f: oct(stat.S_IMODE((run_dir / f).stat().st_mode)) for f in files} == {f: oct(mode) for f in files}
    finally:
        os.umask(old)


# ---- --quiet, BatchNorm warning, status progress ---------------------------------------------------------
def test_quiet_keeps_epoch_lines_and_help_says_so(tmp_path, capsys):
    code, out, err = cli(capsys, "run", *TASK, "--epochs", 2, "--results", tmp_path, "--quiet", "--wandb", "disabled",
                         "--threads", 1)
    assert code == 0 and "epoch 1/2 loss" in out and "epoch 2/2 loss" in out
    with pytest.raises(SystemExit):
        cli_main(["run", "--help"])
    assert "no progress bars (the per-epoch lines stay)" in " ".join(capsys.readouterr().out.split())


def test_batchnorm_with_few_steps_is_flagged(tmp_path, capsys):
    rec = quiet(spec(1), tmp_path)  # small_cnn has BatchNorm; 1 epoch of digits is ~10 steps
    err = capsys.readouterr().err
    assert rec["warnings"] == ["batchnorm_few_steps"]
    assert "has BatchNorm and the run makes only" in err
    assert "warning: run" in (ResultsStore(tmp_path).run_dir(rec["key"]) / "run.log").read_text()


def test_status_shows_last_epoch_of_a_run_in_flight(tmp_path):
    from sweeps.status import progress_line

    store = ResultsStore(tmp_path)
    s = spec(5)
    store.write_spec(s.key, s.to_dict())
    assert progress_line(store, s.key) == ""
    store.write_metrics(s.key, [{"epoch": 1, "train_loss": 0.9, "val_acc": 0.5}, {"epoch": 2, "train_loss": 0.5, "val_acc": 0.75}])
    assert progress_line(store, s.key) == "epoch 2/5 loss 0.5000 val_acc 0.7500"


# ---- Ctrl-C during a local sweep ---------------------------------------------------------------------
@pytest.mark.slow
def test_ctrl_c_during_local_sweep(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent("""
        name: ctrlc
        fixed: {task: digits/sklearn, method: none, epochs: 6}
        grid: {seed: [0, 1, 2]}
        launcher: {array_parallelism: 1, timeout_min: 15}
    """))
    results = tmp_path / "r"
    base = [PY, "-m", "bench.cli"]
    p = subprocess.Popen([*base, "sweep", str(path), "--executor", "local", "--results", str(results), "--wandb", "disabled"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO,
                         preexec_fn=_sigint_default)
    deadline = time.time() + 240
    while not list(results.glob("runs/*/metrics.jsonl")):
        assert p.poll() is None and time.time() < deadline, "no run started"
        time.sleep(0.5)
    p.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground `sweep` (its jobs have their own session)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "Traceback" not in err, err
    assert "2 never started; re-run the same `sweep` command to resume" in err
    st = subprocess.run([*base, "status", str(path), "--results", str(results)], capture_output=True, text=True,
                        env=_env(), cwd=REPO, timeout=120)
    assert "failed 1 / not submitted 2" in st.stdout, st.stdout
    assert st.stdout.count("was stopped before the run started") == 2
    again = subprocess.run([*base, "sweep", str(path), "--executor", "local", "--results", str(results), "--wandb",
                            "disabled"], capture_output=True, text=True, env=_env(), cwd=REPO, timeout=600)
    assert again.returncode == 0 and "done 3 / failed 0" in again.stdout, again.stdout + again.stderr
    logs = "".join(p.read_text() for p in results.glob("runs/*/run.log"))
    assert "resumed from checkpoint after epoch" in logs
