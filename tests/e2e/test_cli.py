"""The console script as a user runs it: one clear line and exit code 2 for every bad input."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True,
                          env={**os.environ, "WANDB_MODE": "disabled", **(env or {})}, timeout=600)


def test_list_tasks_and_methods(capsys):
    assert main(["list", "tasks"]) == 0
    tasks = capsys.readouterr().out.split()
    assert "digits/sklearn" in tasks and "medmnist/breastmnist" in tasks
    assert main(["list", "methods"]) == 0
    methods = capsys.readouterr().out.split()
    assert {"none", "rand-m9-n2", "cutmix-a1.0", "mixup-a0.2", "trivialaug", "rand-m9-n2+saflex"} <= set(methods)


def test_run_prints_key_and_record_path(tmp_path):
    r = cli("run", "--task", "digits/sklearn", "--method", "mixup-a0.2", "--epochs", "1", "--results", str(tmp_path),
            "--set", "batch_size=128", "--quiet")
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines() if line.startswith(("key ", "result ")))
    assert Path(lines["result"]).is_file() and lines["key"] in lines["result"]


@pytest.mark.parametrize("args, needle", [
    (["--task", "medmnist/nope", "--method", "none"], "unknown task 'medmnist/nope' (valid:"),
    (["--task", "digits/sklearn", "--method", "randaug"], "randaug"),
    (["--task", "digits/sklearn", "--method", "none", "--model", "vit"], "unknown model 'vit' (valid:"),
    (["--task", "digits/sklearn", "--method", "none", "--set", "lr"], "malformed --set 'lr'"),
    (["--task", "digits/sklearn", "--method", "none", "--set", "colour=red"], "unknown run field 'colour'"),
    (["--task", "digits/sklearn", "--method", "none+saflex", "--set", "saflex.bogus=1"], "bogus"),
    (["--task", "medmnist/breastmnist", "--method", "none", "--data-root", "/nonexistent"], "missing data file /nonexistent/breastmnist.npz"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, needle):
    other = tmp_path / "runs" / "otherrun"
    other.mkdir(parents=True)
    (other / "result.json").write_text('{"key": "otherrun"}')
    r = cli("run", *args, "--results", str(tmp_path), "--quiet")
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("saflex-bench: error:") and needle in err[0], r.stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["otherrun"]
    assert (other / "result.json").read_text() == '{"key": "otherrun"}'


def test_corrupt_npz_via_cli(tmp_path):
    (tmp_path / "breastmnist.npz").write_bytes(b"garbage")
    r = cli("run", "--task", "medmnist/breastmnist", "--method", "none", "--data-root", str(tmp_path), "--results", str(tmp_path / "r"))
    assert r.returncode == 2 and "corrupt data file" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["list", "tasks"], ["list", "methods"], ["list", "learners"], ["list", "models"],
                                  ["list", "knobs"], ["--help"]])
def test_listing_imports_no_torch(argv):
    """`list ...` and `--help` must answer without importing torch (seconds of imports otherwise)."""
    import subprocess
    import sys

    probe = ("import sys, runpy; sys.argv = ['saflex-bench', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('bench.cli', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:3]")
    out = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-500:]
