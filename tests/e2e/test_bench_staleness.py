"""benchmarks/bench_saflex_staleness.py chose SAFLEX's default reference step: its shadows must
measure what they claim. The exact setting as a shadow reproduces the exact weights; a subsampled,
averaged one does not; a budget setting resolves its period through saflex_core as a run does."""
import argparse
import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_saflex_staleness", ROOT / "benchmarks" / "bench_saflex_staleness.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_shadows_measure_distance_from_the_exact_weights(tmp_path):
    b = load_bench()
    shadows = [b.Shadow.parse(s) for s in ("all/1/0", "16/4/0.5", "all/b0.125/0")]
    args = argparse.Namespace(epochs=1, model="small_cnn", data_root=None)
    rows = {r["setting"]: r for r in b.run_one("digits/sklearn", "rand-m9-n2", 0, shadows, args, str(tmp_path))}
    exact, sub, budget = rows["all/1/0"], rows["16/4/0.5"], rows["all/b0.125/0"]
    assert exact["corr"] == pytest.approx(1.0, abs=1e-9) and exact["rel_l1"] == pytest.approx(0.0, abs=1e-9)
    assert sub["corr"] < 0.99 and sub["rel_l1"] > 0.01 and sub["period"] == 4
    assert budget["ref_images"] == exact["ref_images"]  # the whole reference part at each refresh
    assert budget["period"] == math.ceil(exact["ref_images"] / (0.125 * exact["batch"])) > 1
    # one epoch: the ramp's refreshes at steps 0, 1, 2, 4, 8, 16 dominate, still far below every step
    assert budget["ref_per_img"] < exact["ref_per_img"] / 2
