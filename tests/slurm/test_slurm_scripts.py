""".ci/slurm_up.sh / slurm_down.sh: syntax, and that slurm_down stops exactly the PIDs it was given
(never a process that merely reuses one of their numbers). Starting a cluster is covered by running
slurm_up.sh before test_slurm.py; these checks need no root and no SLURM."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

CI = Path(__file__).resolve().parents[2] / ".ci"
UP, DOWN = CI / "slurm_up.sh", CI / "slurm_down.sh"


@pytest.mark.parametrize("script", [UP, DOWN], ids=["up", "down"])
def test_script_syntax(script):
    assert script.is_file()
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_up_needs_a_state_dir():
    out = subprocess.run(["bash", str(UP)], capture_output=True, text=True)
    assert out.returncode != 0 and "usage" in out.stderr


def test_down_without_pids_is_a_noop(tmp_path):
    out = subprocess.run(["bash", str(DOWN), str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0 and "nothing to stop" in out.stdout


def test_down_stops_its_daemons_and_leaves_strangers_alone(tmp_path):
    if shutil.which("setsid") is None:
        pytest.skip("setsid not available")
    # a "daemon" named like ours (a copy of sleep called munged), and a stranger whose PID is listed
    # under a daemon's name (as after PID reuse)
    fake = tmp_path / "munged"
    shutil.copy(shutil.which("sleep"), fake)
    ours = subprocess.Popen([str(fake), "300"])
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        (tmp_path / "pids").write_text(f"munged {ours.pid}\nslurmd {stranger.pid}\nslurmctld 999999999\n")
        out = subprocess.run(["bash", str(DOWN), str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"stopped munged ({ours.pid})" in out.stdout
        assert f"slurmd ({stranger.pid}) is now" in out.stdout and "not ours; left alone" in out.stdout
        assert "slurmctld (999999999) not running" in out.stdout
        ours.wait(timeout=5)
        time.sleep(0.2)
        assert stranger.poll() is None  # untouched
        assert not (tmp_path / "pids").exists() and (tmp_path / "pids.stopped").exists()
        # idempotent
        again = subprocess.run(["bash", str(DOWN), str(tmp_path)], capture_output=True, text=True)
        assert again.returncode == 0 and "nothing to stop" in again.stdout
    finally:
        for p in (ours, stranger):
            if p.poll() is None:
                p.kill()
