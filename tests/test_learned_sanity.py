"""Each learned-augmentation competitor passes a sanity experiment from its own paper
(benchmarks/bench_learner_sanity.py, which prints the figures quoted in docs/learners.md), and its
learned parameters move: every check fails if they stay within 10 % of their initial values."""
import importlib.util
import math

import pytest
import torch

from conftest import REPO


@pytest.fixture(scope="module")
def sanity():
    spec = importlib.util.spec_from_file_location("bench_learner_sanity", REPO / "benchmarks" / "bench_learner_sanity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.set_num_threads(1)
    return mod


@pytest.mark.slow  # two 600-step runs on 16 px digits: ~1.5 CPU-minutes
def test_augerino_learns_the_rotation_width_of_rotated_digits(sanity):
    r = sanity.augerino_widths(steps=600)
    rot, up = r["rotated"], r["upright"]
    assert rot["moved"] > 0.1 and up["moved"] > 0.1  # the widths learned
    # data rotated by U[-pi/2, pi/2]: a width (range) of pi
    assert 0.75 * math.pi < rot["rotate"] < 1.5 * math.pi
    assert up["rotate"] < rot["rotate"] - 1.0  # upright digits: a clearly smaller rotation width
    for g in ("translate_x", "translate_y", "scale", "stretch", "shear"):
        assert rot[g] < 0.1 and up[g] < 0.1  # the other widths stay near their (small) init
