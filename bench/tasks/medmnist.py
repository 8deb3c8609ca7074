"""MedMNIST v2/v3 2D datasets (28 px) through the `medmnist` package: its INFO, npz layout, root,
official split sizes and its own Evaluator for ACC/AUC."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.errors import UsageError
from bench.tasks.base import Splits, Task


def _flags_2d() -> list[str]:
    import medmnist

    return [f for f, info in medmnist.INFO.items() if not info["python_class"].endswith("3D")]


class MedMNISTTask(Task):
    def __init__(self, flag: str):
        import medmnist

        info = medmnist.INFO[flag]
        self.flag = flag
        self.name = f"medmnist/{flag}"
        self.task_type = info["task"]
        self.num_classes = len(info["label"])
        self.in_channels = info["n_channels"]
        self.n_samples = info["n_samples"]
        self.python_class = info["python_class"]

    def defaults(self) -> dict[str, Any]:
        # the official MedMNIST v2 ResNet-18 (28) protocol; best epoch on validation AUC
        return dict(model="resnet18", epochs=100, batch_size=128, lr=1e-3, optimizer="adam",
                    schedule="multistep", milestones=(0.5, 0.75), gamma=0.1, select_metric="auc")

    def _file(self, data_root: Path | None) -> Path:
        if data_root is None:
            raise UsageError(f"task {self.name} needs a data root (--data-root DIR or $SAFLEX_DATA)")
        return Path(data_root) / f"{self.flag}.npz"

    def _dataset(self, split: str, data_root: Path | None, as_rgb: bool = False):
        import medmnist

        path = self._file(data_root)
        if not path.is_file():
            raise UsageError(
                f"missing data file {path} for task {self.name} (put the official {self.flag}.npz there, "
                f"e.g. python -c \"import medmnist; medmnist.{self.python_class}(split='train', root='{path.parent}', download=True)\")"
            )
        try:
            ds = getattr(medmnist, self.python_class)(split=split, root=os.fspath(path.parent), as_rgb=as_rgb, download=False)
            expected = self.n_samples[split]
            if len(ds.imgs) != expected:
                raise ValueError(f"{split} split has {len(ds.imgs)} images, official size is {expected}")
            return ds
        except (zipfile.BadZipFile, ValueError, OSError, KeyError, EOFError) as e:
            raise UsageError(f"corrupt data file {path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'})") from None

    def load(self, data_root: Path | None, as_rgb: bool = False) -> Splits:
        tensors = []
        for split in ("train", "val", "test"):
            ds = self._dataset(split, data_root, as_rgb)
            imgs = np.asarray(ds.imgs)
            if imgs.ndim == 3:
                imgs = imgs[:, None]  # [N,1,H,W]
            else:
                imgs = imgs.transpose(0, 3, 1, 2)  # [N,H,W,C] -> [N,C,H,W]
            if as_rgb and imgs.shape[1] == 1:
                imgs = np.repeat(imgs, 3, axis=1)
            labels = np.asarray(ds.labels)
            y = torch.from_numpy(labels.astype(np.float32)) if self.multi_label else torch.from_numpy(labels[:, 0].astype(np.int64))
            tensors += [torch.from_numpy(np.ascontiguousarray(imgs)), y]
        return Splits(*tensors)

    def evaluate(self, split: str, y_score: np.ndarray, data_root: Path | None) -> dict[str, float]:
        import medmnist

        ev = medmnist.Evaluator(self.flag, split, root=os.fspath(self._file(data_root).parent))
        auc, acc = ev.evaluate(y_score)
        return {"acc": float(acc), "auc": float(auc)}


from bench.tasks import register_task  # noqa: E402

for _flag in _flags_2d():
    register_task(f"medmnist/{_flag}", lambda f=_flag: MedMNISTTask(f))
