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


@pytest.mark.slow  # two 600-step runs on 16 px digits: ~2 CPU-minutes
def test_augnet_weights_concentrate_on_rotation_for_rotated_digits(sanity):
    r = sanity.augnet_weights(steps=600)
    rot, up = r["rotated"], r["upright"]
    assert rot["moved"] > 0.1 and up["moved"] > 0.1  # weights and magnitudes learned
    assert rot["weights"]["rotate"] > 0.9  # the transformation matching the data's invariance
    assert rot["magnitudes"]["rotate"] > 0.9  # at its largest angle (30 degrees; the data: up to 90)
    assert up["weights"]["rotate"] < 0.5  # upright digits: rotation is not what the layer picks


@pytest.mark.slow  # one 600-step run on 16 px digits: ~40 CPU-seconds
def test_softaug_targets_follow_the_formula_and_the_model_learns_the_curve(sanity):
    r = sanity.softaug_confidence(steps=600)
    rows = r["rows"]
    assert r["moved"] > 0.1  # the model learned (Soft Augmentation trains no parameter of its own)
    assert all(row["target"] == pytest.approx(row["formula"], abs=1e-6) for row in rows)
    bins = [row for row in rows if row["n"] >= 20]
    assert len(bins) >= 3
    model = [row["model"] for row in bins]
    assert all(b > a for a, b in zip(model, model[1:]))  # less visible crops -> less confident predictions
    assert model[0] < 0.5 < model[-1]


@pytest.mark.slow  # one 600-step run on 16 px digits: ~2.5 CPU-minutes
def test_adautomix_generator_learns_and_its_cosine_term_falls(sanity):
    # ema 0.99: within 600 steps the teacher learns (at the default 0.999 it barely leaves its init)
    rows = sanity.adautomix_curves(steps=600, ema=0.99)["rows"]
    first, last = rows[0], rows[-1]
    assert last["moved"] > 0.1  # the generator's parameters learned
    assert first["cos"] > 0.95 and last["cos"] < 0.8  # -0.3 L + 0.7 cos: mixes the teacher reads apart from their images
    assert last["adv_loss"] < first["adv_loss"] - 0.5 and last["coop_loss"] < first["coop_loss"] - 0.5  # the teacher learns
