"""Learners: the compared methods plugged into the trainer (`none`, `saflex`, `ref`, ...).

A run is task x upstream x learner x seed; the user-facing method string is `UPSTREAM[+LEARNER]`
(`rand-m9-n2`, `rand-m9-n2+saflex`, `noisy(0.3,cutmix-a1.0)+ref`). A new learner is one module in
this package with `@register_learner("name")` on a `Learner` subclass: nothing to import elsewhere.
"""
from __future__ import annotations

from bench.learners.base import Learner, LearnerContext, StepBatch, create_learner, get_learner_class, \
    list_learners, register_learner, split_method

__all__ = ["Learner", "LearnerContext", "StepBatch", "create_learner", "get_learner_class", "list_learners",
           "register_learner", "split_method"]
