"""Checkpoints by time: skipped while the last one's cost would be a large share of the time since it,
always after the last epoch; resuming from an older checkpoint still gives the same result."""
from __future__ import annotations

import pytest

from bench.runner import run_spec
from bench.spec import make_spec
from bench.store import is_shared_fs
from bench.trainer import Trainer


def test_local_tmp_is_not_a_shared_file_system(tmp_path):
    assert is_shared_fs(tmp_path) is False


def _saved_epochs(monkeypatch):
    saved = []
    real = Trainer._save_checkpoint

    def spy(self):
        real(self)
        saved.append(self.state.epoch)

    monkeypatch.setattr(Trainer, "_save_checkpoint", spy)
    return saved


def test_cheap_checkpoints_every_epoch_costly_ones_spaced_and_the_last_always(tmp_path, monkeypatch):
    saved = _saved_epochs(monkeypatch)
    spec = make_spec("digits/sklearn", "none", 0, {"epochs": 4})
    # a checkpoint that costs nothing next to an epoch: saved every epoch (set, not timed: on a loaded
    # machine a digits epoch can be shorter than 20 checkpoint writes)
    monkeypatch.setattr(Trainer, "CKPT_COST_FACTOR", 0.0)
    ref = run_spec(spec, tmp_path / "a", wandb_mode="disabled", progress=False, threads=1)
    assert saved == [1, 2, 3, 4]
    saved.clear()
    monkeypatch.setattr(Trainer, "CKPT_EVERY_S", 1e9)
    monkeypatch.setattr(Trainer, "CKPT_COST_FACTOR", 1e9)  # as if a checkpoint cost as much as many epochs
    out = run_spec(spec, tmp_path / "b", wandb_mode="disabled", progress=False, threads=1)
    assert saved == [1, 4]  # the first (nothing to fall back on yet) and the last
    assert out["metrics"] == ref["metrics"]
    assert 0 <= out["cost"]["ckpt_s"] <= ref["cost"]["ckpt_s"] * 2 + 0.5


def test_resume_from_a_spaced_checkpoint_is_exact(tmp_path, monkeypatch):
    """Killed after epoch 3 with the last checkpoint at epoch 1: the rerun resumes from epoch 1 and
    ends with the uninterrupted run's metrics and metrics.jsonl rows (timings aside)."""
    from bench.store import ResultsStore
    from bench.trainer import TIMING_KEYS

    spec = make_spec("digits/sklearn", "rand-m9-n2", 3, {"epochs": 4})
    ref = run_spec(spec, tmp_path / "ref", wandb_mode="disabled", progress=False, threads=1)
    monkeypatch.setattr(Trainer, "CKPT_EVERY_S", 1e9)
    monkeypatch.setattr(Trainer, "CKPT_COST_FACTOR", 1e9)

    def stop(epoch, row):
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_spec(spec, tmp_path / "r", wandb_mode="disabled", progress=False, threads=1, on_epoch_end=stop)
    import torch

    ck = torch.load(tmp_path / "r" / "runs" / spec.key / "checkpoint.pt", weights_only=False)
    assert ck["epoch"] == 1
    out = run_spec(spec, tmp_path / "r", wandb_mode="disabled", progress=False, threads=1)
    assert out["metrics"] == ref["metrics"]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]  # noqa: E731
    assert strip(ResultsStore(tmp_path / "r").read_metrics(spec.key)) == strip(ResultsStore(tmp_path / "ref").read_metrics(spec.key))
