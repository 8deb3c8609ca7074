"""sweep without --executor: a SLURM install whose controller does not answer costs seconds, not ~9 s."""
from __future__ import annotations

import os
import time

from sweeps.launcher import SINFO_TIMEOUT_S, detect_executor


def _fake(tmp_path, sinfo_body: str) -> str:
    for name, body in (("sbatch", "exit 0"), ("sinfo", sinfo_body)):
        path = tmp_path / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return f"{tmp_path}{os.pathsep}{os.environ['PATH']}"


def test_hanging_sinfo_falls_back_to_local_within_the_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _fake(tmp_path, "exec sleep 30"))
    t0 = time.monotonic()
    kind, why = detect_executor(timeout=0.5)
    assert kind == "local" and "did not answer within 0.5 s" in why
    assert time.monotonic() - t0 < 5
    assert SINFO_TIMEOUT_S <= 3


def test_answering_sinfo_is_slurm_and_empty_is_local(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _fake(tmp_path, "echo debug"))
    assert detect_executor()[0] == "slurm"
    monkeypatch.setenv("PATH", _fake(tmp_path, "exit 1"))
    assert detect_executor()[0] == "local"
