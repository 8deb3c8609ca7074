"""The task contract: what a task hands the trainer. The trainer knows no modality.

A task owns its data (any modality: uint8 images, float feature matrices, ...), how stored samples
become model input (`prepare`), its model factory, its loss, its metrics and which of them selects
the best epoch, and its evaluation sets (one `test`, or several: OOD tasks add `ood_<domain>`).

    data = task.load(data_root, spec)     -> TaskData(train, select, tests, reference)
    x = task.prepare(stored_batch)        -> float model input (after the upstream's sample stage)
    model = task.build_model(spec)        -> nn.Module with features(x) -> h and a linear `head`
    t = task.targets(y)                   -> [B, K] float targets (one-hot / multi-hot)
    task.loss(logits, t)                  -> scalar
    task.metrics(logits, y)               -> {"acc": ..., "auc": ..., ...}  (names in metric_names)

Splits: `train` is trained on; `select` (stored as "val" in records) picks the best epoch; `tests`
are read once, after training; `reference` is labelled data a learner may train on (SAFLEX's
reference set, the `ref` control's extra data), carved so it is never the selection or a test set.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from bench.errors import UsageError

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass
class Split:
    """Samples in the task's stored form ([N, ...] tensor) and labels ([N] int64, multi-label [N, L])."""

    x: Any
    y: Any

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx) -> "Split":
        return Split(self.x[idx], self.y[idx])


@dataclass
class TaskData:
    train: Split
    select: Split
    tests: dict[str, Split]
    reference: Split | None = None
    info: dict = field(default_factory=dict)  # sizes, split seeds: recorded in the result

    def eval_split(self, name: str) -> Split:
        if name == "val":
            return self.select
        return self.tests[name]


class Task:
    """Base of every task. Subclasses set the class attributes and implement load/prepare/build_model."""

    name: str = ""
    modality: ClassVar[str] = "image"
    # bump when a change alters what the family's runs compute (their data, model, loss or metrics):
    # the run keys follow (RunSpec.semantics)
    semantics: ClassVar[int] = 1
    task_type: str = "multi-class"  # MedMNIST vocabulary: multi-class, binary-class, ordinal-regression, multi-label, ...
    num_classes: int = 0
    metric_names: Sequence[str] = ("acc", "auc")
    description: str = ""

    # ---- identity / defaults -----------------------------------------------------------------
    @property
    def family(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def multi_label(self) -> bool:
        return self.task_type.startswith("multi-label")

    def defaults(self) -> dict[str, Any]:
        """Run fields this task's protocol sets (model, epochs, optimiser, select_metric, ...)."""
        return {}

    def models(self) -> Sequence[str] | None:
        """Model names valid for this task (None: every registered model of its modality)."""
        return None

    # ---- data ----------------------------------------------------------------------------------
    def load(self, data_root: Path | None, spec: Any) -> TaskData:
        raise NotImplementedError

    def check_data(self, data_root: Path | None) -> str | None:
        """Cheap check for `sweep --dry-run`: None when the files are there, else what is missing."""
        return None

    def prepare(self, x: "torch.Tensor") -> "torch.Tensor":
        """Stored samples -> float model input."""
        return x.float()

    # ---- model, loss, metrics --------------------------------------------------------------------
    def build_model(self, spec: Any):
        raise NotImplementedError

    def targets(self, y: "torch.Tensor") -> "torch.Tensor":
        import torch.nn.functional as F

        return y.float() if self.multi_label else F.one_hot(y.long(), self.num_classes).float()

    def loss(self, logits: "torch.Tensor", targets: "torch.Tensor") -> "torch.Tensor":
        import torch.nn.functional as F

        if self.multi_label:
            return F.binary_cross_entropy_with_logits(logits, targets)
        return F.cross_entropy(logits, targets)

    def scores(self, logits: "torch.Tensor") -> "torch.Tensor":
        import torch

        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)

    def metrics(self, logits: "torch.Tensor", y: "torch.Tensor") -> dict[str, float]:
        """Accuracy and AUC with MedMNIST's definitions (multi-class AUC one-vs-rest, averaged)."""
        from medmnist.evaluator import getACC, getAUC

        score = self.scores(logits.float()).numpy()
        labels = y.numpy()
        return {"acc": float(getACC(labels, score, self.task_type)), "auc": float(getAUC(labels, score, self.task_type))}

    # ---- applicability (skip rules) -------------------------------------------------------------
    def check_method(self, upstream: Any) -> None:
        """Raise UsageError when the upstream (a baselines.Upstream) does not apply to this task."""
        if self.modality not in upstream.modalities:
            raise UsageError(f"method '{upstream}' does not support {self.modality} data (task {self.name}; "
                             f"it supports {', '.join(sorted(upstream.modalities))})")

    def check_learner(self, learner: str) -> None:
        """Raise UsageError when the learner does not apply (the learner's own check runs too)."""


class ImageTask(Task):
    """Images stored as uint8 [N, C, H, W]; model input is (x/255 - mean) / std per channel."""

    in_channels: int = 1
    mean: float | Sequence[float] = 0.5
    std: float | Sequence[float] = 0.5

    def channels(self, spec: Any) -> int:
        return 3 if getattr(spec, "as_rgb", False) else self.in_channels

    def prepare(self, x: "torch.Tensor") -> "torch.Tensor":
        import torch

        x = x.float() / 255.0
        mean, std = self.mean, self.std
        if isinstance(mean, (int, float)) and isinstance(std, (int, float)):
            return (x - mean) / std
        shape = (1, -1, 1, 1) if x.ndim == 4 else (-1, 1, 1)
        # on x's device: the device-resident path prepares batches on the GPU
        return (x - torch.tensor(mean, device=x.device).view(shape)) / torch.tensor(std, device=x.device).view(shape)

    def build_model(self, spec: Any):
        from bench.models import create_model

        return create_model(spec.model, self.channels(spec), self.num_classes)


def as_tensor(a: "np.ndarray") -> "torch.Tensor":
    import numpy as np
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))


def concat_splits(a: Split, b: Split) -> Split:
    import torch

    return Split(torch.cat([a.x, b.x]), torch.cat([a.y, b.y]))
