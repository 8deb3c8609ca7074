"""scripts/gpu_check.sh --dry: every section of the GPU check runs on the CPU and fills its row."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_prints_every_section(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    out = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry"], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    rows = [ln.split() for ln in out.stdout.splitlines() if ln.startswith("  ")]
    sections = {r[0] for r in rows}
    assert {"loop", "saflex", "augment", "data", "packing", "epoch", "projection"} <= sections, out.stdout
    assert "FAILED" not in out.stdout
    import re

    assert re.search(r"^  projection\s+MedMNIST sweep, one run at a time\s+\d+\.\d+ h", out.stdout, re.M), out.stdout
    assert "dry run" in out.stdout.splitlines()[0]


def test_gpu_check_without_gpu_says_so(tmp_path):
    import torch

    if torch.cuda.is_available():
        return
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py")], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 2 and "no CUDA GPU visible (use --dry" in out.stderr


def test_a_failing_section_is_a_row_and_the_others_go_on(capsys):
    import runpy

    mod = runpy.run_path(str(REPO / "benchmarks" / "gpu_check.py"), run_name="gpu_check_under_test")
    calls = []

    @mod["section"]("broken")
    def broken():
        raise RuntimeError("no such kernel\nsecond line")

    @mod["section"]("fine")
    def fine():
        calls.append("fine")

    broken()
    fine()
    assert mod["FAILED"] == ["broken"] and calls == ["fine"]
    assert ("broken", "FAILED", "-", "RuntimeError: no such kernel") in mod["ROWS"]
