"""Issue 18's loop features: where an epoch's time goes, what stays after a run, data-loader workers
and the batched augmentation path — none of which may change what a run computes."""
from __future__ import annotations

import hashlib

import pytest
import torch

from bench.data import default_workers, with_reference
from bench.runner import run_spec
from bench.spec import make_spec
from bench.store import ResultsStore
from bench.tasks import get_task
from bench.trainer import PHASES, Trainer


def spec(method="rand-m9-n2", **over):
    return make_spec("digits/sklearn", method, 0, {"epochs": 2, **over})


def test_timing_columns_in_metrics_and_result(tmp_path):
    rec = run_spec(spec("rand-m9-n2+saflex"), tmp_path, progress=False, wandb_mode="disabled", threads=1)
    rows = ResultsStore(tmp_path).read_metrics(rec["key"])
    for row in rows:
        assert all(row[k] >= 0 for k in (*PHASES, "learner_s"))
        assert row["data_s"] + row["compute_s"] + row["learner_s"] <= row["epoch_s"] * 1.05 + 0.05
        assert row["compute_s"] > 0 and row["val_s"] > 0 and row["ckpt_s"] > 0
    for k in PHASES:
        assert rec["cost"][k] == pytest.approx(sum(r[k] for r in rows), rel=1e-6, abs=1e-9)
    assert rec["cost"]["learner_s"] > 0


@pytest.mark.parametrize("keep, present, absent", [
    ("best", ["best.pt"], ["checkpoint.pt", "checkpoint.prev.pt"]),
    ("full", ["checkpoint.pt"], ["best.pt"]),
    ("none", [], ["checkpoint.pt", "checkpoint.prev.pt", "best.pt"]),
])
def test_keep_checkpoints(tmp_path, keep, present, absent):
    rec = run_spec(spec("none"), tmp_path, progress=False, wandb_mode="disabled", threads=1, keep_checkpoints=keep)
    d = ResultsStore(tmp_path).run_dir(rec["key"])
    assert all((d / f).exists() for f in present) and not any((d / f).exists() for f in absent)
    assert (d / "result.json").exists()
    if keep == "best":  # the selected epoch's weights reproduce the test accuracy
        task = get_task("digits/sklearn")
        model = task.build_model(spec("none"))
        model.load_state_dict(torch.load(d / "best.pt"))
        model.eval()
        test = task.load(None, spec("none")).tests["test"]
        with torch.no_grad():
            acc = task.metrics(model(task.prepare(test.x)), test.y)["acc"]
        assert acc == pytest.approx(rec["metrics"]["test_acc"])


def test_default_workers_follow_the_cpus():
    assert default_workers(1, "cpu") == 0 and default_workers(2, "cpu") == 0 and default_workers(16, "cpu") == 4
    assert default_workers(2, "cuda") == 1 and default_workers(32, "cuda") == 8


def batch_digest(tmp_path, method, workers=0, aug_path="auto"):
    s = spec(method)
    task = get_task(s.task)
    data = with_reference(task.load(None, s), s.ref_frac, s.ref_from, s.seed)
    store = ResultsStore(tmp_path / f"{method}-{workers}-{aug_path}")
    store.run_dir(s.key).mkdir(parents=True)
    tr = Trainer(s, task, data, store, device="cpu", progress=False, workers=workers, aug_path=aug_path)
    h = hashlib.sha256()
    for b in tr.batches(1):
        h.update(b.x.numpy().tobytes())
        h.update(b.y_soft.numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("upstream", ["rand-m9-n2", "noisy(0.3,cutmix-a1.0)"])
def test_pairing_holds_with_any_number_of_workers(tmp_path, upstream):
    digests = {(m, w): batch_digest(tmp_path, m, w) for m in (upstream, f"{upstream}+saflex") for w in (0, 2)}
    assert len(set(digests.values())) == 1, digests


@pytest.mark.parametrize("upstream", ["rand-m9-n2", "trivialaug", "autoaug-cifar10"])
def test_batched_augmentation_path_gives_the_same_batches(tmp_path, upstream):
    assert batch_digest(tmp_path, upstream, aug_path="batched") == batch_digest(tmp_path, upstream, aug_path="per-image")


def test_bad_loop_settings_are_one_line(tmp_path):
    from bench.errors import UsageError

    with pytest.raises(UsageError, match=r"unknown keep_checkpoints 'some' \(valid: best, full, none\)"):
        run_spec(spec(), tmp_path, progress=False, wandb_mode="disabled", keep_checkpoints="some")
    with pytest.raises(UsageError, match="unknown aug_path"):
        run_spec(spec(), tmp_path, progress=False, wandb_mode="disabled", aug_path="gpu")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
