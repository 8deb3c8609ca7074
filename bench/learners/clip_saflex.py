"""`saflex-clip`: SAFLEX's contrastive variant (design/SAFLEX.md section 7) for clip/* tasks.

The same learner as `saflex` (reference refresh, diagnostics, state) with the task's adapter in place
of saflex_core.Saflex: the prompt head s * h T^T has no bias, so the reference summary is
(G = dL_ref/d(sT), g = 0), exactly saflex_core.contrastive.contrastive_summary; weights w are per
image and soft labels q are over the class prompts; the loss is the w-weighted FLYP loss whose
captions are the q-mixtures of class prompts (task.objective=ce: w-weighted soft CE against q).

bench/learners/saflex.py now builds its adapter through `task.saflex_adapter(cfg)` when the task has
one (`uses_task_adapter = True`), so `X+saflex` computes the same on clip tasks. This name stays: the
shipped clip sweeps (sweeps/clip.yaml, sweeps/clip_cpu.yaml) and their stored runs use it, and the
learner's name is part of a run's key.
"""
from __future__ import annotations

from bench.errors import UsageError
from bench.learners.base import register_learner
from bench.learners.saflex import SaflexLearner


@register_learner("saflex-clip")
class ClipSaflexLearner(SaflexLearner):
    description = "SAFLEX, contrastive variant for clip/* tasks: image weights, soft labels over class prompts"

    @classmethod
    def check(cls, task, upstream) -> None:
        if not hasattr(task, "saflex_adapter"):
            raise UsageError(f"saflex-clip needs a clip/* task (got {task.name}; use saflex there)")
        super().check(task, upstream)

    def __init__(self, ctx, knobs=None):
        super().__init__(ctx, knobs)
        self.sfx = ctx.task.saflex_adapter(self.cfg)
