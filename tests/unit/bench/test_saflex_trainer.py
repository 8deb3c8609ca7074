"""SAFLEX wired into the trainer: knobs in the spec, diagnostics per epoch, exact resume."""
import math

import numpy as np
import pytest

from bench.runner import run_spec
from bench.spec import make_spec
from bench.store import ResultsStore


class Stop(Exception):
    pass


def spec(method, epochs=2, **knobs):
    return make_spec("digits/sklearn", method, 0, {"epochs": epochs, **{f"saflex.{k}": v for k, v in knobs.items()}})


def test_noisy_upstream_diagnostics(results):
    s = spec("noisy(0.3,none)+saflex", refresh=4, weights="sigmoid", normalize="false")
    rec = run_spec(s, results, progress=False, wandb_mode="disabled")
    assert rec["spec"]["saflex"]["refresh"] == 4 and rec["spec"]["saflex"]["weights"] == "sigmoid"
    assert rec["cost"]["learner_s"] > 0
    rows = ResultsStore(results).read_metrics(rec["key"])
    for row in rows:
        assert 0 <= row["saflex_w_mean"] <= 1 and 0 <= row["saflex_w_zero_frac"] <= 1
        assert 0 <= row["saflex_label_shift"] <= 1 and 0 <= row["saflex_argmax_change"] <= 1
        assert 0 <= row["saflex_w_auc"] <= 1
    # by the second epoch the weights already tell flipped labels apart from clean ones
    assert rows[-1]["saflex_w_auc"] > 0.6
    diag = np.load(ResultsStore(results).run_dir(rec["key"]) / "saflex_diag.npz")
    n = len(diag["w"])
    assert n == len(diag["corrupted"]) == len(diag["label_shift"]) and n > 1000
    assert 0.25 < diag["corrupted"].mean() < 0.35
    assert diag["w"][diag["corrupted"]].mean() < diag["w"][~diag["corrupted"]].mean()


def test_warmup_epochs_keep_saflex_off(results):
    rec = run_spec(spec("none+saflex", warmup_epochs=1), results, progress=False, wandb_mode="disabled")
    rows = ResultsStore(results).read_metrics(rec["key"])
    assert "saflex_w_mean" not in rows[0] and "saflex_w_mean" in rows[1]
    # refresh=auto, resolved from the reference part (here the validation split) and the batch size
    period = math.ceil(min(512, rec["data"]["val"]) / (0.125 * rec["spec"]["batch_size"]))
    assert rec["spec"]["saflex"]["refresh"] == "auto" and rows[1]["saflex_refresh"] == period > 1


@pytest.mark.parametrize("knobs", [dict(refresh=3), dict(), dict(reference="clean", bn_mode="eval", clean_weight=0.5)])
def test_resume_with_saflex_is_exact(tmp_path, knobs):
    s = spec("cutmix-a1.0+saflex", epochs=3, **knobs)
    straight = run_spec(s, tmp_path / "a", progress=False, wandb_mode="disabled")

    def crash(epoch, row):
        if epoch == 2:
            raise Stop()

    with pytest.raises(Stop):
        run_spec(s, tmp_path / "b", progress=False, wandb_mode="disabled", on_epoch_end=crash)
    resumed = run_spec(s, tmp_path / "b", progress=False, wandb_mode="disabled")
    assert resumed["metrics"] == straight["metrics"]
    a = ResultsStore(tmp_path / "a").read_metrics(s.key)
    b = ResultsStore(tmp_path / "b").read_metrics(s.key)
    assert [r["saflex_w_mean"] for r in a] == [r["saflex_w_mean"] for r in b]
