"""One run end to end on the bundled digits task (CPU, seconds)."""
import json
import signal
import subprocess
import sys
import textwrap

import pytest

from bench.runner import run_spec
from bench.spec import make_spec
from bench.store import ResultsStore


def spec(method="none", **over):
    return make_spec("digits/sklearn", method, 0, {"epochs": 3, **over})


class Stop(Exception):
    pass


def test_run_writes_complete_record(results):
    rec = run_spec(spec(), results, progress=False, wandb_mode="disabled")
    store = ResultsStore(results)
    d = store.run_dir(rec["key"])
    assert rec["status"] == "done" and store.read_result(rec["key"]) == rec
    assert set(rec["metrics"]) >= {"test_acc", "test_auc", "val_acc", "val_auc", "best_epoch"}
    assert set(rec["cost"]) >= {"wall_s", "epoch_s", "samples_per_s", "peak_mem_mb", "learner_s", "step_s"}
    assert 0.5 < rec["metrics"]["test_acc"] <= 1 and 1 <= rec["metrics"]["best_epoch"] <= 3
    assert [r["epoch"] for r in store.read_metrics(rec["key"])] == [1, 2, 3]
    assert json.loads((d / "spec.json").read_text())["key"] == rec["key"]
    assert (d / "best.pt").exists() and not (d / "checkpoint.pt").exists() and (d / "run.log").exists()
    # a second call is a no-op that returns the stored record
    assert run_spec(spec(), results, progress=False, wandb_mode="disabled") == rec


def test_resume_from_checkpoint_gives_same_final_metrics(tmp_path):
    straight = run_spec(spec("rand-m9-n2"), tmp_path / "a", progress=False, wandb_mode="disabled")

    def crash_after_2(epoch, row):
        if epoch == 2:
            raise Stop("simulated preemption")

    with pytest.raises(Stop):
        run_spec(spec("rand-m9-n2"), tmp_path / "b", progress=False, wandb_mode="disabled", on_epoch_end=crash_after_2)
    store = ResultsStore(tmp_path / "b")
    key = straight["key"]
    assert not store.is_done(key)
    assert store.read_attempt(key)["state"] == "failed" and "simulated preemption" in store.read_attempt(key)["error"]
    resumed = run_spec(spec("rand-m9-n2"), tmp_path / "b", progress=False, wandb_mode="disabled")
    assert resumed["metrics"] == straight["metrics"]
    assert [r["epoch"] for r in store.read_metrics(key)] == [1, 2, 3]
    assert "resumed from checkpoint after epoch 2/3" in (store.run_dir(key) / "run.log").read_text()


def test_killed_run_leaves_no_result_and_resumes(tmp_path):
    code = textwrap.dedent(f"""
        from bench.runner import run_spec
        from bench.spec import make_spec
        def hang(epoch, row):
            if epoch == 1:
                print("EPOCH1", flush=True); import time; time.sleep(120)
        run_spec(make_spec("digits/sklearn", "none", 0, {{"epochs": 2}}), {str(tmp_path)!r}, progress=False,
                 wandb_mode="disabled", on_epoch_end=hang)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "EPOCH1"
    p.send_signal(signal.SIGKILL)
    p.wait()
    key = make_spec("digits/sklearn", "none", 0, {"epochs": 2}).key
    store = ResultsStore(tmp_path)
    assert store.run_dir(key).exists() and not (store.run_dir(key) / "result.json").exists()
    assert not store.is_done(key)
    rec = run_spec(make_spec("digits/sklearn", "none", 0, {"epochs": 2}), tmp_path, progress=False, wandb_mode="disabled")
    assert rec["metrics"]["epochs_run"] == 2 and store.is_done(key)


def test_methods_with_same_seed_see_same_data_order_and_draws():
    # the upstream draw of sample i in epoch e is a function of (seed, e, i) only
    import torch

    import baselines
    from bench.data import AugmentedTrainSet, epoch_batches

    x = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    y = torch.zeros(16, dtype=torch.long)
    up = baselines.create_method("rand-m9-n2")
    a, b = AugmentedTrainSet(x, y, up, seed=3), AugmentedTrainSet(x, y, up, seed=3)
    a.epoch = b.epoch = 1
    assert torch.equal(a[5][0], b[5][0])
    assert epoch_batches(16, 4, 3, 1) == epoch_batches(16, 4, 3, 1) != epoch_batches(16, 4, 4, 1)


@pytest.mark.parametrize("rule", ["acc", "auc", "loss", "last"])
def test_every_selection_rule_trains_with_the_progress_bar_and_keeps_the_epoch_it_names(rule, tmp_path):
    """Each `select_metric` a spec accepts: the run completes with the progress bar on (`loss` once collided
    with the bar's own `loss` field) and its best epoch is the one the rule picks from metrics.jsonl
    (ties to the later epoch)."""
    rec = run_spec(spec(select_metric=rule), tmp_path, progress=True, wandb_mode="disabled")
    rows = ResultsStore(tmp_path).read_metrics(rec["key"])
    if rule == "last":
        want = rows[-1]["epoch"]
    else:
        sign = -1 if rule == "loss" else 1
        want = max(rows, key=lambda r: (sign * r[f"val_{rule}"], r["epoch"]))["epoch"]
    assert rec["status"] == "done" and rec["metrics"]["best_epoch"] == want
