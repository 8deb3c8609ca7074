"""Natural images: CIFAR-10, CIFAR-100 (32 px) and Tiny-ImageNet-200 (64 px), RGB.

Where the loaders look (first hit wins; `<root>` = --data-root):

  natural/cifar10       1. <root>/cifar-10-batches-py/            torchvision.datasets.CIFAR10(root, download=False)
                        2. <root>/images/cifar10_jpeg_subset.npz  (or <root>/cifar10_jpeg_subset.npz): the shared
                           JPEG copy, 2000 train images/class + the full 10k test set
  natural/cifar100      1. <root>/cifar-100-python/               torchvision.datasets.CIFAR100(root, download=False)
                           (no shared copy exists)
  natural/tinyimagenet  1. <root>/tiny-imagenet-200/              the official zip's layout: train/<wnid>/images/*.JPEG
                           (500/class) is the training pool, val/ (50/class, val_annotations.txt) the test set
                        2. <root>/images/tiny_imagenet200_val.npz (or <root>/tiny_imagenet200_val.npz): the official
                           validation images only; a seeded stratified 20% (10/class) is the test set, the rest the pool

Splits: the selection split is a seeded, stratified hold-out of `val_frac` of the training pool (task
option, recorded in the spec with `split_seed`); `train_per_class` / `test_per_class` take seeded
per-class subsets for CPU runs. The official test set is only read at the end.

Protocols. The defaults are the CPU protocol (small_cnn, Adam 1e-3, cosine, 30 epochs). The GPU
protocol is the standard CIFAR ResNet-18 recipe (bench's resnet18 has the CIFAR stem: 3x3 conv,
stride 1, no max-pool), given as run fields:

    --set model=resnet18 --set optimizer=sgd --set lr=0.1 --set momentum=0.9 \
    --set weight_decay=5e-4 --set schedule=cosine --set epochs=200 --set batch_size=128

(`GPU_PROTOCOL` below holds the same values, for sweep files.) Inputs are normalised per channel with
the dataset's mean/std. Every image upstream applies (RandAugment, AutoAugment with
`autoaug-cifar10`, TrivialAugment, CutMix, MixUp, noisy(...)).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import Field

from bench.config import Knobs
from bench.errors import UsageError
from bench.tasks import register_task
from bench.tasks.base import ImageTask, Split, TaskData, as_tensor

GPU_PROTOCOL = dict(model="resnet18", optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
                    schedule="cosine", epochs=200, batch_size=128)
CPU_PROTOCOL = dict(model="small_cnn", optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="cosine",
                    epochs=30, batch_size=128, select_metric="acc")

# per-channel statistics of the training sets (the values used throughout the literature)
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tinyimagenet": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "tinyimagenet": 200}
SIZE = {"cifar10": 32, "cifar100": 32, "tinyimagenet": 64}
TINY_TEST_FRAC = 0.2  # of the shared Tiny-ImageNet validation file (10 of 50 per class)


class Pools:
    """A dataset as read: labels of the training pool and of the test set (int64 [N]) and a reader of
    their images by index (uint8 [n,3,H,W]); JPEG files decode only the images a task draws."""

    def __init__(self, train_y, test_y, train_images, test_images, origin: str):
        self.train_y, self.test_y, self.origin = train_y, test_y, origin
        self.train_images, self.test_images = train_images, test_images  # callables: index array -> images

    @classmethod
    def from_arrays(cls, train_x, train_y, test_x, test_y, origin: str) -> "Pools":
        return cls(train_y, test_y, lambda i: train_x[i], lambda i: test_x[i], origin)


# ---- where the files are ------------------------------------------------------------------------
def torchvision_dir(root: Path, dataset: str) -> Path:
    return root / {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "tinyimagenet": "tiny-imagenet-200"}[dataset]


SHARED_FILE = {"cifar10": "cifar10_jpeg_subset.npz", "tinyimagenet": "tiny_imagenet200_val.npz"}


def locate(root: Path, dataset: str) -> tuple[str, Path] | None:
    """("torchvision" | "shared", path) of the first layout present, or None."""
    from bench.tasks._imagefiles import first_existing, shared_candidates

    tv = torchvision_dir(root, dataset)
    if tv.is_dir():
        return "torchvision", tv
    if dataset in SHARED_FILE:
        hit = first_existing(shared_candidates(root, SHARED_FILE[dataset]))
        if hit is not None:
            return "shared", hit
    return None


def missing_message(root: Path, dataset: str, task: str) -> str:
    looked = [str(torchvision_dir(root, dataset)) + "/"]
    if dataset in SHARED_FILE:
        looked.append(f"{root / 'images' / SHARED_FILE[dataset]} (or {root / SHARED_FILE[dataset]})")
    return f"missing data for task {task}: none of {' or '.join(looked)} found"


def read_pools(data_root: Path | None, dataset: str, task: str, seed: int = 0) -> Pools:
    """Read CIFAR-10/100 or Tiny-ImageNet from the first layout found (see the module docstring)."""
    from bench.tasks._imagefiles import need_root

    root = need_root(data_root, task)
    hit = locate(root, dataset)
    if hit is None:
        raise UsageError(missing_message(root, dataset, task))
    kind, path = hit
    if dataset in ("cifar10", "cifar100"):
        return _cifar_torchvision(root, dataset, path) if kind == "torchvision" else _cifar_shared(path)
    return _tiny_folder(path) if kind == "torchvision" else _tiny_shared(path, seed)


def _cifar_torchvision(root: Path, dataset: str, path: Path) -> Pools:
    import numpy as np
    from torchvision.datasets import CIFAR10, CIFAR100

    from bench.tasks._imagefiles import CORRUPT, describe_error

    cls = CIFAR10 if dataset == "cifar10" else CIFAR100
    out = []
    for train in (True, False):
        try:
            ds = cls(root=str(root), train=train, download=False)
        except (RuntimeError, *CORRUPT) as e:  # torchvision: "Dataset not found or corrupted"
            raise UsageError(f"corrupt or incomplete {path} ({describe_error(e)})") from None
        out += [np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)), np.asarray(ds.targets, dtype=np.int64)]
    return Pools.from_arrays(*out, origin=f"torchvision:{path}")


def _cifar_shared(path: Path) -> Pools:
    from bench.tasks._imagefiles import open_npz

    d = open_npz(path, [f"{s}_{k}" for s in ("train", "test") for k in ("jpeg", "offsets", "labels")])
    tr_y, te_y = (_labels(path, d, s, 10) for s in ("train", "test"))
    return Pools(tr_y, te_y, lambda i: _decoded(path, d, "train", i, 32), lambda i: _decoded(path, d, "test", i, 32),
                 origin=f"shared:{path}")


def _labels(path: Path, d, split: str, classes: int):
    import numpy as np

    from bench.tasks._imagefiles import read_array

    y = read_array(d, f"{split}_labels", path).astype(np.int64)
    if y.ndim != 1 or len(y) == 0 or y.min() < 0 or y.max() >= classes:
        raise UsageError(f"wrong layout in {path}: {split}_labels must be [N] in 0..{classes - 1}")
    return y


def _decoded(path: Path, d, split: str, index, size: int):
    from bench.tasks._imagefiles import decode_jpeg_split

    x, _ = decode_jpeg_split(path, d, split, index=index)
    if len(x) and x.shape[1:] != (3, size, size):
        raise UsageError(f"wrong layout in {path}: {split} images are {tuple(x.shape[1:])}, expected 3x{size}x{size}")
    return x


def _tiny_shared(path: Path, seed: int) -> Pools:
    from bench.tasks._imagefiles import holdout, open_npz, split_generator

    d = open_npz(path, ["val_jpeg", "val_offsets", "val_labels"])
    y = _labels(path, d, "val", 200)
    pool, test = holdout(y, TINY_TEST_FRAC, split_generator(seed, "tinyimagenet-test"))
    return Pools(y[pool], y[test], lambda i: _decoded(path, d, "val", pool[i], 64),
                 lambda i: _decoded(path, d, "val", test[i], 64), origin=f"shared:{path}")


def _tiny_folder(path: Path) -> Pools:
    import numpy as np

    from bench.tasks._imagefiles import read_image_file, stack_images

    wnids_file, ann = path / "wnids.txt", path / "val" / "val_annotations.txt"
    if not wnids_file.is_file() or not ann.is_file():
        raise UsageError(f"wrong layout in {path}: expected wnids.txt and val/val_annotations.txt (the official zip)")
    wnids = wnids_file.read_text().split()
    cls = {w: i for i, w in enumerate(wnids)}
    tr_files = [(f, cls[w]) for w in wnids for f in sorted((path / "train" / w / "images").glob("*.JPEG"))]
    te_files = []
    for line in ann.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1] in cls:
            te_files.append((path / "val" / "images" / parts[0], cls[parts[1]]))
    if not tr_files or not te_files:
        raise UsageError(f"wrong layout in {path}: no train/<wnid>/images/*.JPEG or val images found")
    reader = lambda files: lambda idx: stack_images([read_image_file(files[i][0], 64) for i in idx], path)  # noqa: E731
    labels = lambda files: np.array([c for _, c in files], dtype=np.int64)  # noqa: E731
    return Pools(labels(tr_files), labels(te_files), reader(tr_files), reader(te_files), origin=f"folder:{path}")


# ---- the task ---------------------------------------------------------------------------------
class NaturalOptions(Knobs):
    val_frac: float = Field(0.1, gt=0, lt=1, description="stratified hold-out of the training pool for selection")
    split_seed: int = Field(0, ge=0, description="seed of the hold-out and subset draws (part of the task)")
    train_per_class: Optional[int] = Field(None, ge=2, description="seeded per-class subset of the training pool (CPU runs)")
    test_per_class: Optional[int] = Field(None, ge=1, description="seeded per-class subset of the test set (CPU runs)")


class NaturalTask(ImageTask):
    Options = NaturalOptions
    task_type = "multi-class"
    in_channels = 3
    metric_names = ("acc", "auc")

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.name = f"natural/{dataset}"
        self.num_classes = NUM_CLASSES[dataset]
        self.mean, self.std = STATS[dataset]
        self.description = f"{dataset} ({SIZE[dataset]} px RGB); val = seeded stratified hold-out of train"

    def defaults(self) -> dict[str, Any]:
        return dict(CPU_PROTOCOL)

    def check_data(self, data_root: Path | None) -> str | None:
        if data_root is None:
            return f"task {self.name} needs a data root (--data-root DIR or $SAFLEX_DATA)"
        root = Path(data_root)
        return None if locate(root, self.dataset) else missing_message(root, self.dataset, self.name)

    def load(self, data_root: Path | None, spec: Any = None) -> TaskData:
        from bench.tasks._imagefiles import holdout, per_class, split_generator

        opt = NaturalOptions(**((getattr(spec, "options", None) or {})))
        pools = read_pools(data_root, self.dataset, self.name, opt.split_seed)
        pool = per_class(pools.train_y, opt.train_per_class, split_generator(opt.split_seed, self.dataset, "train-subset"))
        kept, held = holdout(pools.train_y[pool], opt.val_frac, split_generator(opt.split_seed, self.dataset, "val"))
        train_idx, val_idx = pool[kept], pool[held]
        test_idx = per_class(pools.test_y, opt.test_per_class, split_generator(opt.split_seed, self.dataset, "test-subset"))
        train = lambda i: Split(as_tensor(pools.train_images(i)), as_tensor(pools.train_y[i]))  # noqa: E731
        test = Split(as_tensor(pools.test_images(test_idx)), as_tensor(pools.test_y[test_idx]))
        return TaskData(train(train_idx), train(val_idx), {"test": test},
                        info=dict(origin=pools.origin, split_seed=opt.split_seed, val_frac=opt.val_frac))

    def metrics(self, logits, y) -> dict[str, float]:
        from bench.tasks._imagefiles import accuracy_auc

        return accuracy_auc(self.scores(logits.float()).numpy(), y.numpy())


for _dataset in NUM_CLASSES:
    register_task(f"natural/{_dataset}", lambda _d=_dataset: NaturalTask(_d))
