"""Contract: a learner that changes training must change the loss.

Every registered learner, except those whose loss is by design the plain task loss (PLAIN_LOSS), must
return a loss that differs from the task's loss on the upstream's batch, on a batch where its rule
applies. A learner whose extra term is silently switched off (multiplied by 0, its transformed batch
replaced by the original, its targets hardened) fails here even when its diagnostics still look normal.
"""
from __future__ import annotations

import contextlib
import functools

import pytest
import torch

from bench.errors import UsageError
from bench.learners.base import LearnerContext, StepBatch, get_learner_class
from bench.seeding import generator
from bench.spec import make_spec
from bench.tasks import get_task

from contract_helpers import shipped_learners

TASK = "digits/sklearn"
# the loss is the task's own: `none` trains plainly, `ref` adds labelled data (not a loss term),
# `zeroshot` trains nothing (constant zero)
PLAIN_LOSS = {"none", "ref", "zeroshot"}
# learners that need a task of their own kind: checked by their task's tests
STEPS = 4
OTHER_TASK = {"saflex-clip": "needs a clip/* task (tests/unit/bench/tasks/test_clip.py)"}


def learner_on_digits(name, tmp_path):
    task = get_task(TASK)
    spec = make_spec(TASK, f"none+{name}", 0, {"epochs": 1})
    torch.manual_seed(0)
    model = task.build_model(spec)
    data = task.load(None, spec)
    ctx = LearnerContext(spec=spec, task=task, model=model, device=torch.device("cpu"), reference=data.select,
                         run_dir=tmp_path, autocast=contextlib.nullcontext, generator=functools.partial(generator, 0))
    return get_learner_class(name)(ctx, spec.knobs), ctx, data


@pytest.mark.parametrize("name", sorted(set(shipped_learners()) - PLAIN_LOSS))
def test_learner_loss_differs_from_the_plain_task_loss(name, tmp_path):
    if name in OTHER_TASK:
        pytest.skip(OTHER_TASK[name])
    try:
        get_learner_class(name).check(get_task(TASK), __import__("baselines").create_method("none"))
    except UsageError as e:
        pytest.fail(f"{name} refuses {TASK} ({e}): give it a task it accepts in OTHER_TASK")
    learner, ctx, data = learner_on_digits(name, tmp_path)
    task = ctx.task
    ctx.model.train()
    learner.start_epoch(0)
    for step in range(STEPS):  # several draws: a learner's rule may take several forms (AdAutoMix: 2 or 3 images)
        x = task.prepare(data.train.x[64 * step: 64 * (step + 1)])
        y = data.train.y[64 * step: 64 * (step + 1)]
        batch = StepBatch(x=x, y_soft=task.targets(y), clean=x, y=y, corrupted=None, epoch=0, index=step, step=step)
        with torch.no_grad():
            plain = float(task.loss(ctx.model(x).float(), batch.y_soft))
        loss, logits = learner.loss(batch)
        assert logits.shape == (64, task.num_classes) and torch.isfinite(loss)
        assert abs(float(loss) - plain) > 1e-3, f"{name}'s loss equals the plain task loss ({plain:.5f}) at step {step}"
