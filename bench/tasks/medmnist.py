"""MedMNIST v2/v3 2D datasets (28 px) through the `medmnist` package: its INFO, npz layout, root,
official split sizes and its metric definitions (ACC/AUC)."""
from __future__ import annotations

import functools
import importlib.util
import os
import zipfile
from pathlib import Path
from typing import Any

from bench.errors import UsageError
from bench.tasks import register_task
from bench.tasks.base import ImageTask, Split, TaskData, as_tensor


@functools.lru_cache(maxsize=1)
def _info() -> dict:
    """medmnist.INFO without importing the package (its __init__ pulls in pandas, sklearn, torch)."""
    spec = importlib.util.find_spec("medmnist")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(list(spec.submodule_search_locations)[0]) / "info.py"
    mod_spec = importlib.util.spec_from_file_location("_medmnist_info", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.INFO


def _flags_2d() -> list[str]:
    return [f for f, info in _info().items() if not info["python_class"].endswith("3D")]


class MedMNISTTask(ImageTask):
    def __init__(self, flag: str):
        info = _info()[flag]
        self.flag = flag
        self.name = f"medmnist/{flag}"
        self.task_type = info["task"]
        self.num_classes = len(info["label"])
        self.in_channels = info["n_channels"]
        self.n_samples = info["n_samples"]
        self.python_class = info["python_class"]
        self.description = f"MedMNIST {self.python_class} (28 px, official splits {self.n_samples})"

    def defaults(self) -> dict[str, Any]:
        # the official MedMNIST v2 ResNet-18 (28) protocol; best epoch on validation AUC
        return dict(model="resnet18", epochs=100, batch_size=128, lr=1e-3, optimizer="adam",
                    schedule="multistep", milestones=(0.5, 0.75), gamma=0.1, select_metric="auc")

    def _file(self, data_root: Path | None) -> Path:
        """`DIR/<flag>.npz` (medmnist's own root), or `DIR/medmnist/<flag>.npz` so that one data root
        can serve every task family."""
        if data_root is None:
            raise UsageError(f"task {self.name} needs a data root (--data-root DIR or $SAFLEX_DATA)")
        direct = Path(data_root) / f"{self.flag}.npz"
        nested = Path(data_root) / "medmnist" / f"{self.flag}.npz"
        return nested if not direct.exists() and nested.exists() else direct

    def check_data(self, data_root: Path | None) -> str | None:
        try:
            path = self._file(data_root)
        except UsageError as e:
            return str(e)
        return None if path.is_file() else f"missing data file {path} for task {self.name}"

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
            raise UsageError(f"corrupt data file {path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}); "
                             f"copy the official {self.flag}.npz again") from None

    def _check_arrays(self, path: Path, split: str, imgs, labels) -> None:
        """The npz's arrays as MedMNIST ships them, checked before training (a label of 7 in a 2-class set
        would otherwise crash in one_hot mid-epoch, 100 labels for 546 images at the first batch)."""
        import numpy as np

        where = f"corrupt data file {path}: {split}"
        image_shape = (28, 28) if self.in_channels == 1 else (28, 28, self.in_channels)
        if imgs.dtype != np.uint8 or tuple(imgs.shape[1:]) != image_shape:
            raise UsageError(f"{where}_images is {imgs.dtype} {tuple(imgs.shape)}, expected uint8 "
                             f"(N, {', '.join(map(str, image_shape))}); copy the official {self.flag}.npz again")
        width = self.num_classes if self.multi_label else 1
        if labels.ndim != 2 or labels.shape != (len(imgs), width):
            raise UsageError(f"{where}_labels has shape {tuple(labels.shape)}, expected ({len(imgs)}, {width}) "
                             f"(one row per image); copy the official {self.flag}.npz again")
        if labels.dtype.kind not in "iub":
            raise UsageError(f"{where}_labels are {labels.dtype}, expected integer class codes")
        hi = 1 if self.multi_label else self.num_classes - 1
        if labels.size and (labels.min() < 0 or labels.max() > hi):
            bad = labels[(labels < 0) | (labels > hi)].ravel()[:3].tolist()
            raise UsageError(f"{where}_labels hold {bad}, outside 0..{hi} ({self.name} has {self.num_classes} "
                             f"classes); copy the official {self.flag}.npz again")

    def load(self, data_root: Path | None, spec: Any = None) -> TaskData:
        import numpy as np
        import torch

        as_rgb = bool(getattr(spec, "as_rgb", False))
        splits = {}
        for split in ("train", "val", "test"):
            ds = self._dataset(split, data_root, as_rgb)
            imgs, labels = np.asarray(ds.imgs), np.asarray(ds.labels)
            self._check_arrays(self._file(data_root), split, imgs, labels)
            imgs = imgs[:, None] if imgs.ndim == 3 else imgs.transpose(0, 3, 1, 2)  # -> [N,C,H,W]
            if as_rgb and imgs.shape[1] == 1:
                imgs = np.repeat(imgs, 3, axis=1)
            y = torch.from_numpy(labels.astype(np.float32)) if self.multi_label else torch.from_numpy(labels[:, 0].astype(np.int64))
            splits[split] = Split(as_tensor(imgs), y)
        return TaskData(splits["train"], splits["val"], {"test": splits["test"]})


for _flag in _flags_2d():
    register_task(f"medmnist/{_flag}", functools.partial(MedMNISTTask, _flag))
