"""What every task provides to the trainer."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.errors import UsageError


@dataclass
class Splits:
    """uint8 images [N,C,H,W] and integer labels [N] (multi-label: float [N,L])."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")


class Task:
    name: str
    modality: str = "image"
    task_type: str = "multi-class"  # medmnist vocabulary: multi-class, binary-class, ordinal-regression, multi-label, binary-class
    num_classes: int
    in_channels: int
    # pixel normalisation applied after augmentation: (x/255 - mean) / std
    mean: float = 0.5
    std: float = 0.5

    @property
    def multi_label(self) -> bool:
        return self.task_type.startswith("multi-label")

    def defaults(self) -> dict[str, Any]:
        raise NotImplementedError

    def channels(self, as_rgb: bool) -> int:
        return 3 if as_rgb else self.in_channels

    def load(self, data_root: Path | None, as_rgb: bool = False) -> Splits:
        raise NotImplementedError

    def evaluate(self, split: str, y_score: np.ndarray, data_root: Path | None) -> dict[str, float]:
        """Metrics of predicted scores (softmax probabilities; sigmoid for multi-label)."""
        raise NotImplementedError

    def check_method(self, upstream: str) -> None:
        import baselines

        up = baselines.create_method(upstream)
        if self.modality not in up.modalities:
            raise UsageError(
                f"method '{upstream}' does not support {self.modality} data (task {self.name}; "
                f"it supports {', '.join(sorted(up.modalities))})"
            )

    def check_saflex(self) -> None:
        if self.multi_label:
            raise UsageError(f"SAFLEX needs single-label classification; task {self.name} is {self.task_type}")
