"""Issue 10's contract: a new learner and a new non-image task are one module each — here, defined in
this file — and run end to end through `run`, `sweep` and `report` with no change to the trainer,
spec, store or reports."""
from __future__ import annotations

import textwrap
from typing import Any

import pytest
import torch
from torch import nn

from bench.cli import main as cli_main
from bench.config import Knobs
from bench.learners import Learner, list_learners, register_learner, split_method
from bench.tasks import Task, get_task, list_tasks, register_task
from bench.tasks.base import Split, TaskData


class LabelSmoothKnobs(Knobs):
    eps: float = 0.1


@register_learner("toysmooth")
class ToySmooth(Learner):
    """Label smoothing toward uniform: a learner that changes the targets, with one knob."""

    Knobs = LabelSmoothKnobs
    description = "toy: label smoothing"
    calls = {"loss": 0}

    def loss(self, batch):
        ToySmooth.calls["loss"] += 1
        k = batch.y_soft.shape[1]
        target = (1 - self.knobs.eps) * batch.y_soft + self.knobs.eps / k
        logits = self.forward(batch.x).float()
        return self.ctx.task.loss(logits, target), logits


class Blobs(Task):
    """Two Gaussian blobs in 5-D: a feature-vector task (no images anywhere)."""

    name = "toy/blobs"
    modality = "tabular"
    task_type = "multi-class"
    num_classes = 2

    def defaults(self) -> dict[str, Any]:
        return dict(model="toy_mlp", epochs=2, batch_size=32, lr=1e-2, optimizer="adam", schedule="constant",
                    select_metric="acc")

    def models(self):
        return ["toy_mlp"]

    def load(self, data_root, spec) -> TaskData:
        g = torch.Generator().manual_seed(0)

        def split(n):
            y = torch.arange(n) % 2
            x = torch.randn(n, 5, generator=g) + 2.0 * y[:, None].float()
            return Split(x, y)

        return TaskData(split(200), split(60), {"test": split(80), "test_shifted": Split(split(80).x + 0.5, split(80).y)})

    def build_model(self, spec):
        from bench.nets import Classifier

        return Classifier(nn.Sequential(nn.Linear(5, 16), nn.ReLU()), 16, 2)


register_task("toy/blobs", Blobs)


@pytest.fixture(autouse=True, scope="module")
def _unregister_toys():
    """The toy learner and task exist for this file only: other test files list the real registries."""
    yield
    from bench.learners.base import REGISTRY as LEARNERS
    from bench.tasks import REGISTRY as TASKS

    LEARNERS.unregister("toysmooth")
    TASKS.unregister("toy/blobs")


def test_registered_without_touching_other_modules():
    assert "toysmooth" in list_learners() and "toy/blobs" in list_tasks()
    assert split_method("none+toysmooth") == ("none", "toysmooth")
    assert get_task("toy/blobs").modality == "tabular"


def test_run_then_sweep_then_report(tmp_path, capsys):
    results = tmp_path / "results"
    code = cli_main(["run", "--task", "toy/blobs", "--method", "none+toysmooth", "--results", str(results), "--quiet",
                     "--wandb", "disabled", "--set", "toysmooth.eps=0.2"])
    out = capsys.readouterr().out
    assert code == 0 and "test_acc" in out and ToySmooth.calls["loss"] > 0
    import json

    rec = json.loads(next(results.glob("runs/*/result.json")).read_text())
    assert rec["spec"]["toysmooth"] == {"eps": 0.2} and rec["spec"]["saflex"] is None
    assert {"test_acc", "test_shifted_acc", "val_acc"} <= set(rec["metrics"])  # several evaluation sets

    sweep = tmp_path / "toy.yaml"
    sweep.write_text(textwrap.dedent("""
        name: toy
        fixed: {task: toy/blobs}
        grid:
          method: [none, none+toysmooth, none+saflex]
          seed: [0, 1]
        skip:
          - when: {method: "none+toysmooth", seed: 1}
            reason: one smoothed seed is enough here
    """))
    code = cli_main(["sweep", str(sweep), "--executor", "debug", "--results", str(results), "--wandb", "disabled"])
    out = capsys.readouterr().out
    assert code == 0 and "failed 0" in out
    code = cli_main(["report", "--results", str(results), "--sweep", "toy", "--out", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert code == 0
    text = "\n".join(p.read_text() for p in (tmp_path / "rep").glob("*.md"))
    assert "toysmooth" in text and "saflex" in text
    assert str(tmp_path) not in text  # a generated report names no path of the machine it ran on


def test_bad_knob_and_unknown_learner_are_one_line(capsys):
    code = cli_main(["run", "--task", "toy/blobs", "--method", "none+toysmooth", "--set", "toysmooth.nope=1"])
    err = capsys.readouterr().err
    assert code == 2 and "toysmooth knobs: unknown nope (valid: eps)" in err and err.count("\n") == 1
    code = cli_main(["run", "--task", "toy/blobs", "--method", "rand-m9-n2"])
    err = capsys.readouterr().err
    assert code == 2 and "does not support tabular data" in err


@pytest.mark.parametrize("learner", ["none", "saflex", "ref", "toysmooth"])
def test_every_learner_trains_on_the_feature_task(tmp_path, learner):
    from bench.runner import run_spec
    from bench.spec import make_spec

    method = "none" if learner == "none" else f"none+{learner}"
    rec = run_spec(make_spec("toy/blobs", method, 0, {"ref_frac": 0.5, "epochs": 1}), tmp_path, progress=False,
                   wandb_mode="disabled")
    assert 0.5 <= rec["metrics"]["test_acc"] <= 1  # the blobs are separable: better than chance after 1 epoch
