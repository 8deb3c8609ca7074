"""The learner protocol: what a compared method plugs into the trainer.

The trainer owns data order, upstream augmentation, the optimiser step, evaluation and checkpoints;
a learner decides what loss an augmented batch produces (and may run a reference forward first,
train extra parameters, keep its own optimiser, change how the model predicts). The trainer never
names a learner.

Per run:  Learner.check(task, upstream)        (at spec time: raise UsageError = skip by rule)
          learner = cls(ctx, knobs)             (knobs validated once, at spec time)
          learner.train_split(data)             (what it trains on; `ref` adds the reference part)
          learner.extra_parameters()            (trained by the main optimiser, e.g. Augerino's widths)
per epoch: start_epoch(e) -> per step: loss(batch) -> [trainer: backward, step] -> after_step(batch)
          -> end_epoch(e, last) -> dict of diagnostics for metrics.jsonl (prefixed with the name)
eval:     predict(x) -> logits                  (default: the model; Augerino averages samples)
resume:   state_dict() / load_state_dict()
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

from bench.config import Knobs, validate
from bench.errors import UsageError
from bench.registry import Registry

if TYPE_CHECKING:  # torch stays out of `saflex-bench list` and `--help`
    import torch

    from bench.tasks.base import Split, Task, TaskData

NONE = "none"
REGISTRY = Registry("learner", "bench.learners")


def register_learner(name: str):
    """Class decorator: `@register_learner("saflex")`; sets `cls.name`."""

    def deco(cls):
        cls.name = name
        return REGISTRY.register(name)(cls)

    return deco


def list_learners() -> list[str]:
    return REGISTRY.names()


def get_learner_class(name: str) -> type["Learner"]:
    return REGISTRY.factory(name)


def split_method(method: str) -> tuple[str, str]:
    """`UPSTREAM[+LEARNER]` -> (upstream, learner). The learner is the last `+` part outside
    parentheses when it names a registered learner; otherwise the whole string is the upstream."""
    s = str(method).strip()
    depth, cut = 0, -1
    for i, c in enumerate(s):
        depth += (c == "(") - (c == ")")
        if c == "+" and depth == 0:
            cut = i
    if cut >= 0 and s[cut + 1:] in REGISTRY.valid_choices():
        return s[:cut], s[cut + 1:]
    return s, NONE


def join_method(upstream: str, learner: str) -> str:
    return upstream if learner == NONE else f"{upstream}+{learner}"


@dataclass
class StepBatch:
    """One augmented training batch, as the learner sees it (inputs already prepared by the task)."""

    x: "torch.Tensor"              # model input after the upstream's batch stage, on the device
    y_soft: "torch.Tensor"         # [B, K] targets after the batch stage (mixed / noisy rows)
    clean: "torch.Tensor"          # the same samples, prepared but not augmented (CPU)
    y: "torch.Tensor"              # original labels [B] (multi-label: float [B, L])
    corrupted: "torch.Tensor | None"  # bool [B] from noisy(...) upstreams, else None
    epoch: int
    index: int                     # batch index within the epoch
    step: int                      # global optimiser step
    info: dict = field(default_factory=dict)  # per-sample upstream metadata, when an upstream gives it


@dataclass
class LearnerContext:
    """What the trainer lends a learner. It holds no test split: a learner cannot read it."""

    spec: Any
    task: "Task"
    model: "torch.nn.Module"
    device: "torch.device"
    reference: "Split | None"      # labelled data a learner may train on (never selection, never test)
    run_dir: Any
    autocast: Callable[[], Any]
    generator: Callable[..., "torch.Generator"]  # generator(*keys): a stream derived from the run seed
    seconds: dict = field(default_factory=lambda: {"learner_s": 0.0})

    def timed(self):
        """`with ctx.timed():` adds the block's wall time to the learner's cost."""
        return _Timer(self)


class _Timer:
    def __init__(self, ctx: LearnerContext):
        self.ctx = ctx

    def __enter__(self):
        if self.ctx.device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        if self.ctx.device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        self.ctx.seconds["learner_s"] += time.perf_counter() - self.t0
        return False


class Learner:
    """Plain training: the task's loss on the augmented batch. Subclasses override what differs."""

    name: ClassVar[str] = NONE
    Knobs: ClassVar[type[Knobs] | None] = None  # pydantic schema of the learner's knobs
    uses_reference: ClassVar[bool] = False      # reads ctx.reference
    # True: the run needs a reference part apart from the selection split (ref_frac set); False: with
    # ref_frac unset, the selection split serves as the reference (the first study's protocol)
    needs_reference_part: ClassVar[bool] = False
    description: ClassVar[str] = ""
    # bump when a change alters what the learner computes: the keys of the runs it touches follow
    # (RunSpec.semantics), so a record made under another version is never served as done
    semantics: ClassVar[int] = 1

    # ---- spec time ---------------------------------------------------------------------------
    @classmethod
    def semantics_for(cls, knobs: Mapping[str, Any] | None) -> int:
        """The version a run with these (canonical) knobs computes under. A bump that changed only
        some runs returns the older version for the others, so their keys stay."""
        return cls.semantics

    @classmethod
    def parse_knobs(cls, knobs: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """Validate and canonicalise knobs (defaults filled in); None for a learner without knobs."""
        if cls.Knobs is None:
            if knobs:
                raise UsageError(f"learner '{cls.name}' has no knobs (got {', '.join(sorted(knobs))})")
            return None
        return validate(cls.Knobs, knobs or {}, f"{cls.name} knobs").model_dump(mode="json")

    @classmethod
    def default_knobs(cls) -> dict[str, Any]:
        return cls.parse_knobs({}) or {}

    @classmethod
    def check(cls, task: "Task", upstream: Any) -> None:
        """Raise UsageError (the reason) when this learner cannot run on `task` with `upstream`."""

    # ---- run time ----------------------------------------------------------------------------
    def __init__(self, ctx: LearnerContext, knobs: Mapping[str, Any] | None = None):
        self.ctx = ctx
        self.knobs = self.Knobs.model_validate(dict(knobs or {})) if self.Knobs is not None else None

    def train_split(self, data: "TaskData") -> "Split":
        return data.train

    def extra_parameters(self) -> list:
        return []

    def start_epoch(self, epoch: int) -> None:
        pass

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        with self.ctx.autocast():
            return self.ctx.model(x)

    def loss(self, batch: StepBatch) -> tuple["torch.Tensor", "torch.Tensor"]:
        """(loss to minimise, logits of the augmented samples [B, K] for train accuracy)."""
        logits = self.forward(batch.x).float()
        return self.ctx.task.loss(logits, batch.y_soft), logits

    def after_step(self, batch: StepBatch) -> None:
        pass

    def predict(self, x: "torch.Tensor") -> "torch.Tensor":
        return self.forward(x)

    def end_epoch(self, epoch: int, last: bool) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


def create_learner(name: str, ctx: LearnerContext, knobs: Mapping[str, Any] | None) -> Learner:
    return get_learner_class(name)(ctx, knobs)
