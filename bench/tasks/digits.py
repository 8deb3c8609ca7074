"""scikit-learn's bundled 8x8 digits: the demo task, needs no download."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.tasks import register_task
from bench.tasks.base import ImageTask, Split, TaskData, as_tensor

SPLIT_SEED = 0  # the split is part of the task, not of the run: every run sees the same one


@register_task("digits/sklearn")
class SklearnDigits(ImageTask):
    name = "digits/sklearn"
    task_type = "multi-class"
    num_classes = 10
    in_channels = 1
    description = "scikit-learn's 8x8 digits (bundled, no download); 60/20/20 stratified split"

    def defaults(self) -> dict[str, Any]:
        return dict(model="small_cnn", epochs=15, batch_size=64, lr=3e-3, optimizer="adam",
                    schedule="cosine", select_metric="acc")

    def load(self, data_root: Path | None = None, spec: Any = None) -> TaskData:
        import numpy as np
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        data = load_digits()
        x = np.clip(data.images * 16, 0, 255).astype(np.uint8)[:, None]  # 0..16 -> 0..255
        y = data.target.astype(np.int64)
        idx = np.arange(len(y))
        train, rest = train_test_split(idx, test_size=0.4, stratify=y, random_state=SPLIT_SEED)
        val, test = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=SPLIT_SEED)
        if getattr(spec, "as_rgb", False):
            x = np.repeat(x, 3, axis=1)
        split = lambda i: Split(as_tensor(x[i]), as_tensor(y[i]))  # noqa: E731
        return TaskData(split(train), split(val), {"test": split(test)})
