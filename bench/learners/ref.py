"""`ref`: the label-budget control. It trains X on the training split plus the reference part (the
labelled images SAFLEX uses as its reference set), each passing through the same upstream, so X,
X+ref and X+saflex are compared on equal labelled data."""
from __future__ import annotations

from bench.errors import UsageError
from bench.learners.base import Learner, register_learner


@register_learner("ref")
class ReferenceControl(Learner):
    uses_reference = True
    needs_reference_part = True  # trained on: must never be the selection split
    description = "label-budget control: plain training on train + the reference part"

    @classmethod
    def check(cls, task, upstream) -> None:
        pass

    def train_split(self, data):
        from bench.tasks.base import concat_splits

        ref = self.ctx.reference
        if ref is None:
            raise UsageError("learner 'ref' needs a reference part: set ref_frac (e.g. --set ref_frac=0.5)")
        return concat_splits(data.train, ref)
