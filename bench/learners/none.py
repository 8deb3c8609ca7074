"""`none`: plain training on the upstream's augmented batches (the X arm of every comparison)."""
from bench.learners.base import Learner, register_learner


@register_learner("none")
class Plain(Learner):
    description = "plain training: the task's loss on the upstream's augmented batch"
