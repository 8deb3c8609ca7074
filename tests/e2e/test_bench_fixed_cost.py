"""benchmarks/bench_fixed_cost.py: the phases of a real `saflex-bench run` add up to its CPU time."""
from __future__ import annotations

import runpy
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_fixed_cost.py"


def test_phases_of_one_run_add_up(tmp_path):
    mod = runpy.run_path(str(BENCH))
    out = mod["one_run"]("digits", None, str(tmp_path), "disabled", seed=0)
    phases = [out[k] for k in mod["PHASES"]]
    assert all(v >= 0 for v in phases), out
    assert out["imports"] > 0.2 and out["training"] > 0 and out["build"] > 0  # torch, a step, a model
    assert sum(phases) == pytest.approx(out["total"], abs=1e-6)
    assert out["fixed"] == pytest.approx(out["total"] - out["training"] - out["test"])
    assert list(tmp_path.glob("runs/*/result.json"))  # the run really ran through the CLI
    table = mod["format_table"]({"digits": out})
    assert table.splitlines()[0].split()[1:] == [*mod["PHASES"], "fixed", "total"]
