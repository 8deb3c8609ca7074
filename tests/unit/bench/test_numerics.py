"""bench/numerics.py: the numerics record in result.json, deterministic mode (`run --deterministic`,
sweep `launcher.deterministic`), and its sweep-file validation."""
from __future__ import annotations

import json
import os

import pytest
import torch

from bench.cli import main
from bench.errors import UsageError
from bench.numerics import enable_deterministic, is_deterministic, numerics_info
from bench.spec import make_spec
from sweeps.config import load_sweep
from sweeps.launcher import RunJob

DIGITS = dict(task="digits/sklearn", method="cutmix-a1.0", seed=1, epochs=2)


@pytest.fixture
def restore_numerics():
    """Deterministic mode and thread counts are process-wide: put them back after each test."""
    threads, algos = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(algos)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
    if cublas is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


def test_numerics_info_on_cpu(restore_numerics, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    torch.set_num_threads(1)
    info = numerics_info("cpu")
    assert info["threads"] == 1 and info["omp_num_threads"] == "3"
    assert info["device"] == "cpu" and info["device_name"] == info["cpu_model"] != ""
    assert info["torch"] == torch.__version__ and info["cuda"] == torch.version.cuda
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["deterministic"] is False and info["deterministic_algorithms"] is False
    # flat scalars: reports/load.py turns them into groupable numerics.<name> columns
    assert all(v is None or isinstance(v, (str, int, float, bool)) for v in info.values())
    json.dumps(info)


def test_enable_deterministic_sets_every_switch_and_threads(restore_numerics):
    torch.set_num_threads(2)
    assert enable_deterministic(1) == 1
    assert torch.get_num_threads() == 1
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert is_deterministic() and numerics_info("cpu")["deterministic"] is True
    if torch.cuda.is_available():
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_enable_deterministic_rejects_zero_threads(restore_numerics):
    with pytest.raises(UsageError, match="thread count >= 1"):
        enable_deterministic(0)


def test_sweep_launcher_deterministic_key(tmp_path):
    base = "name: x\ngrid: {task: [digits/sklearn], method: [none]}\n"
    f = tmp_path / "s.yaml"
    f.write_text(base + "launcher: {deterministic: true}\n")
    assert load_sweep(f).launcher.deterministic is True
    f.write_text(base)
    assert load_sweep(f).launcher.deterministic is False
    f.write_text(base + "launcher: {deterministic: yes please}\n")
    with pytest.raises(UsageError, match=r"launcher\.deterministic: expected true or false, got 'yes please'"):
        load_sweep(f)


def _result(root, key):
    return json.loads((root / "runs" / key / "result.json").read_text())


@pytest.mark.slow
def test_deterministic_runs_of_one_spec_give_identical_metrics(restore_numerics, tmp_path, capsys):
    """`run --deterministic` and a sweep job with launcher.deterministic, same spec and thread count,
    in two results roots: bit-identical metrics, and both record deterministic mode and 1 thread."""
    torch.set_num_threads(1)
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["run", "--task", DIGITS["task"], "--method", DIGITS["method"], "--seed", str(DIGITS["seed"]),
            "--epochs", str(DIGITS["epochs"]), "--results", str(a), "--wandb", "disabled", "--quiet", "--deterministic", "--threads", "1"]
    assert main(args) == 0
    spec = make_spec(DIGITS["task"], DIGITS["method"], DIGITS["seed"], {"epochs": DIGITS["epochs"]})
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(2)  # the job must pin its own thread count (cpus_per_task = 1)
    RunJob()(spec.to_dict(), str(b), None, "disabled", None, 1, None, 1, True)
    ra, rb = _result(a, spec.key), _result(b, spec.key)
    for r in (ra, rb):
        assert r["numerics"]["deterministic"] is True and r["numerics"]["threads"] == 1
    assert ra["metrics"] == rb["metrics"]


@pytest.mark.slow
def test_sweep_with_launcher_deterministic_runs_every_job_deterministic(restore_numerics, tmp_path, capsys):
    f = tmp_path / "det.yaml"
    f.write_text("name: det\nfixed: {task: digits/sklearn, epochs: 1}\ngrid: {method: [none], seed: [0]}\n"
                 "launcher: {cpus_per_task: 1, deterministic: true}\n")
    torch.set_num_threads(2)
    assert main(["sweep", str(f), "--executor", "debug", "--results", str(tmp_path / "r"), "--wandb", "disabled"]) == 0
    key = make_spec("digits/sklearn", "none", 0, {"epochs": 1}).key
    numerics = _result(tmp_path / "r", key)["numerics"]
    assert numerics["deterministic"] is True and numerics["threads"] == 1
