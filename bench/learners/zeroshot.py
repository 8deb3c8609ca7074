"""`zeroshot`: train nothing, evaluate the model as the task builds it (a CLIP zero-shot classifier).

The loop still runs (one epoch is enough: the selection split then picks epoch 1 of identical
weights). The loss is a constant zero leaf tensor: backward reaches no parameter, every .grad stays
None, and optimisers skip parameters without a gradient, so weight decay (AdamW, SGD) does not move
them either. The training forward runs without a graph only to report train accuracy.
"""
from __future__ import annotations

from bench.errors import UsageError
from bench.learners.base import Learner, StepBatch, register_learner


@register_learner("zeroshot")
class ZeroShot(Learner):
    description = "trains nothing: the task's zero-shot classifier (clip/* tasks) is evaluated as built"

    @classmethod
    def check(cls, task, upstream) -> None:
        if not getattr(task, "zero_shot", False):
            raise UsageError(f"task {task.name} has no zero-shot classifier (the clip/* tasks have one)")
        if str(upstream) != "none":
            raise UsageError(f"zeroshot trains nothing, so an augmentation has no effect: use none+zeroshot "
                             f"(got {upstream}+zeroshot)")

    def loss(self, batch: StepBatch):
        import torch

        with torch.no_grad():
            logits = self.forward(batch.x).float()
        return torch.zeros((), device=logits.device, requires_grad=True), logits
