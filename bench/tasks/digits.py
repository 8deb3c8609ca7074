"""scikit-learn's bundled 8x8 digits: the demo task, needs no download."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.tasks.base import Splits, Task

SPLIT_SEED = 0  # the split is part of the task, not of the run: every run sees the same one


class SklearnDigits(Task):
    name = "digits/sklearn"
    task_type = "multi-class"
    num_classes = 10
    in_channels = 1

    def defaults(self) -> dict[str, Any]:
        return dict(model="small_cnn", epochs=15, batch_size=64, lr=3e-3, optimizer="adam",
                    schedule="cosine", select_metric="acc")

    def load(self, data_root: Path | None = None, as_rgb: bool = False) -> Splits:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        data = load_digits()
        x = np.clip(data.images * 16, 0, 255).astype(np.uint8)[:, None]  # 0..16 -> 0..255
        y = data.target.astype(np.int64)
        idx = np.arange(len(y))
        train, rest = train_test_split(idx, test_size=0.4, stratify=y, random_state=SPLIT_SEED)
        val, test = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=SPLIT_SEED)
        if as_rgb:
            x = np.repeat(x, 3, axis=1)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        self._labels = {"train": y[train], "val": y[val], "test": y[test]}
        return Splits(t(x[train]), t(y[train]), t(x[val]), t(y[val]), t(x[test]), t(y[test]))

    def evaluate(self, split: str, y_score: np.ndarray, data_root: Path | None = None) -> dict[str, float]:
        from medmnist.evaluator import getACC, getAUC  # same definitions as the MedMNIST tasks

        if not hasattr(self, "_labels"):
            self.load()
        y = self._labels[split]
        return {"acc": float(getACC(y, y_score, self.task_type)), "auc": float(getAUC(y, y_score, self.task_type))}


from bench.tasks import register_task  # noqa: E402

register_task(SklearnDigits.name, SklearnDigits)
