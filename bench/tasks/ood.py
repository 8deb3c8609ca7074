"""Out-of-distribution generalisation: `ood/<source>-to-<target>`. Train on the source, select the
best epoch on a source validation split, and report the source test set (`test_*`) and every target
test set (`ood_<target>_*`) as separate metrics of the same run.

Tasks, sizes and where the files are looked for (`<root>` = --data-root; first hit wins):

  ood/mnist-to-usps      28 px, 1 channel. MNIST: <root>/MNIST/raw/{train,t10k}-*-ubyte[.gz] (torchvision's
                         layout: train 60k is the pool, t10k the source test) else <root>/digits/mnist/t10k-*.gz
                         (the shared copy is the test set only: a seeded stratified `source_test_frac` of it is
                         the source test, the rest the pool). USPS: <root>/digits/usps/usps.npz (or
                         <root>/usps/usps.npz) else torchvision's <root>/usps.t.bz2; target = its 2007 test
                         images, 16x16 in [0,1] -> uint8 -> resized to 28x28 (bilinear, antialiased) so
                         the digit fills the frame as USPS's do (the usual ADDA/DANN preprocessing).
  ood/mnist-to-mnistm    32 px, 3 channels: MNIST resized 28 -> 32 (bilinear) and grey replicated to RGB;
                         MNIST-M: <root>/digits/mnist_m_subset/mnist_m_subset.npz (or <root>/mnist_m_subset.npz),
                         32x32 RGB, target = its test split.
  ood/amazon-to-webcam   Office-31, `image_size` px (default 64, PIL bilinear), 3 channels:
                         <root>/office31/<domain>/images/<class>/*.jpg else the shared
                         <root>/images/office31_amazon1000_webcam.npz. Source amazon is split seeded/stratified
                         into train/val/test (`source_test_frac`, `val_frac`); target = every webcam image.
  ood/cifar10-to-cifar10c  32 px RGB; CIFAR-10 as in natural/cifar10. Targets `ood_<corruption>_s<severity>`
                         (options `corruptions`, `severities`): the real <root>/CIFAR-10-C/<corruption>.npy +
                         labels.npy when present, else generated deterministically from the source test set
                         (bench/tasks/_cifar_c.py: an approximation, documented there).
  ood/wilds-camelyon17, ood/wilds-iwildcam  WILDS (needs `pip install wilds`; data under
                         <root>/camelyon17_v1.0/ or <root>/iwildcam_v2.0/, wilds' own layout, never downloaded):
                         train on WILDS' train split, select on id_val, `test` = id_test (camelyon17 has none:
                         a seeded half of id_val), `ood_test` = WILDS' OOD test split; `max_per_split` caps
                         every split (seeded), images resized to `image_size`.

Normalisation uses the source's statistics. All resizing happens here at load time; every image
upstream applies unchanged to 1- and 3-channel images of any of these sizes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import Field, field_validator

from bench.config import Knobs
from bench.errors import UsageError
from bench.tasks import register_task
from bench.tasks.base import ImageTask, Split, TaskData, as_tensor

MNIST_STATS = (0.1307, 0.3081)
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class OODOptions(Knobs):
    split_seed: int = Field(0, ge=0, description="seed of the source splits and subsets (part of the task)")
    val_frac: float = Field(0.1, gt=0, lt=1, description="stratified hold-out of the source pool for selection")
    source_test_frac: float = Field(0.2, gt=0, lt=1, description="source test share when the source has no test split")
    train_per_class: Optional[int] = Field(None, ge=2, description="seeded per-class subset of the source pool")
    test_per_class: Optional[int] = Field(None, ge=1, description="seeded per-class subset of every test set")
    image_size: int = Field(64, ge=8, le=512, description="amazon-to-webcam / WILDS: images resized to this size")
    corruptions: list[str] = Field(default_factory=lambda: list(_corruption_names()), description="cifar10c targets")
    severities: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5], description="cifar10c severities")
    corruption_seed: int = Field(0, ge=0, description="seed of generated corruptions")
    max_per_split: int = Field(20000, ge=10, description="WILDS: seeded cap on every split")

    @field_validator("corruptions", "severities", mode="before")
    @classmethod
    def _comma_list(cls, v):  # `--set task.corruptions=fog,snow` from the CLI
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v


def _corruption_names() -> tuple[str, ...]:
    # mirrors _cifar_c.CORRUPTIONS without importing numpy at registration time
    return ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
            "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression")


USPS_FILES = ("digits/usps/usps.npz", "usps/usps.npz", "usps.t.bz2")
MNISTM_FILES = ("digits/mnist_m_subset/mnist_m_subset.npz", "mnist_m_subset/mnist_m_subset.npz", "mnist_m_subset.npz")


# ---- digit readers -------------------------------------------------------------------------------
def _mnist_files(root: Path, split: str) -> tuple[Path, Path] | None:
    for folder in (root / "MNIST" / "raw", root / "digits" / "mnist", root / "mnist"):
        for ext in (".gz", ""):
            img, lab = folder / f"{split}-images-idx3-ubyte{ext}", folder / f"{split}-labels-idx1-ubyte{ext}"
            if img.is_file() and lab.is_file():
                return img, lab
    return None


def read_mnist(root: Path, task: str):
    """(pool x, pool y, test x | None, test y | None, origin), uint8 [N, 1, 28, 28]."""
    from bench.tasks._imagefiles import read_idx

    test = _mnist_files(root, "t10k")
    if test is None:
        raise UsageError(f"missing data for task {task}: no MNIST t10k-images-idx3-ubyte[.gz] in {root / 'MNIST' / 'raw'} "
                         f"or {root / 'digits' / 'mnist'}")
    read = lambda files: (read_idx(files[0], 16, (28, 28))[:, None], read_idx(files[1], 8, ()).astype("int64"))  # noqa: E731
    te_x, te_y = read(test)
    if len(te_x) != len(te_y) or te_y.max() > 9:
        raise UsageError(f"corrupt data file {test[1]} ({len(te_y)} labels for {len(te_x)} images, max {te_y.max()})")
    train = _mnist_files(root, "train")
    if train is None:
        return te_x, te_y, None, None, f"mnist-test-only:{test[0].parent}"
    tr_x, tr_y = read(train)
    return tr_x, tr_y, te_x, te_y, f"mnist:{train[0].parent}"


def read_usps_test(root: Path, task: str):
    import numpy as np

    from bench.tasks._imagefiles import first_existing, open_npz, read_array

    hit = first_existing([root / f for f in USPS_FILES])
    if hit is None:
        raise UsageError(f"missing data for task {task}: none of {root / 'digits' / 'usps' / 'usps.npz'} or "
                         f"{root / 'usps.t.bz2'} (torchvision USPS) found")
    if hit.suffix == ".bz2":
        from torchvision.datasets import USPS

        try:
            ds = USPS(str(root), train=False, download=False)
        except (RuntimeError, OSError, ValueError, EOFError) as e:
            raise UsageError(f"corrupt data file {hit} ({type(e).__name__}: {e})") from None
        return np.asarray(ds.data, dtype=np.uint8)[:, None], np.asarray(ds.targets, dtype=np.int64)
    d = open_npz(hit, ["test_images", "test_labels"])
    x, y = read_array(d, "test_images", hit), read_array(d, "test_labels", hit).astype(np.int64)
    if x.ndim != 3 or x.shape[1:] != (16, 16) or len(x) != len(y) or x.min() < 0 or x.max() > 1 or y.max() > 9:
        raise UsageError(f"wrong layout in {hit}: test_images must be [N,16,16] floats in [0,1] with N labels 0..9")
    return np.round(x * 255).astype(np.uint8)[:, None], y


def read_mnistm_test(root: Path, task: str):
    import numpy as np

    from bench.tasks._imagefiles import first_existing, open_npz, read_array

    hit = first_existing([root / f for f in MNISTM_FILES])
    if hit is None:
        raise UsageError(f"missing data for task {task}: no {root / 'digits' / 'mnist_m_subset' / 'mnist_m_subset.npz'}")
    d = open_npz(hit, ["test_images", "test_labels"])
    x, y = read_array(d, "test_images", hit), read_array(d, "test_labels", hit).astype(np.int64)
    if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or x.dtype != np.uint8 or len(x) != len(y) or y.max() > 9:
        raise UsageError(f"wrong layout in {hit}: test_images must be uint8 [N,32,32,3] with N labels 0..9")
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y


def read_cifar10c(root: Path, corruption: str, severities: list[int], per_class_n: int | None, g):
    """Real CIFAR-10-C (10000 test images per severity block, labels.npy) or None; `per_class_n`
    takes the same seeded per-class subset of every block."""
    import numpy as np

    folder = root / "CIFAR-10-C"
    f, lab = folder / f"{corruption}.npy", folder / "labels.npy"
    if not f.is_file() or not lab.is_file():
        return None
    try:
        x, y = np.load(f, mmap_mode="r"), np.load(lab, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        raise UsageError(f"corrupt data file {f} ({type(e).__name__}: {e})") from None
    if x.shape != (50000, 32, 32, 3) or y.shape[0] != 50000:
        raise UsageError(f"wrong layout in {f}: {x.shape}, expected (50000, 32, 32, 3) with labels.npy (50000,)")
    from bench.tasks._imagefiles import per_class

    test_idx = per_class(np.asarray(y[:10000], dtype=np.int64), per_class_n, g)
    return {s: (np.ascontiguousarray(x[(s - 1) * 10000 + test_idx].transpose(0, 3, 1, 2)),
                np.asarray(y[(s - 1) * 10000 + test_idx], dtype=np.int64)) for s in severities}


# ---- the task --------------------------------------------------------------------------------------
SPECS = {  # name -> (classes, channels, size or None = image_size, mean, std)
    "mnist-to-usps": (10, 1, 28, MNIST_STATS[0], MNIST_STATS[1]),
    "mnist-to-mnistm": (10, 3, 32, (MNIST_STATS[0],) * 3, (MNIST_STATS[1],) * 3),
    "amazon-to-webcam": (31, 3, None, None, None),
    "cifar10-to-cifar10c": (10, 3, 32, None, None),
    "wilds-camelyon17": (2, 3, None, IMAGENET_STATS[0], IMAGENET_STATS[1]),  # ImageNet's statistics (no own
    "wilds-iwildcam": (182, 3, None, IMAGENET_STATS[0], IMAGENET_STATS[1]),    # values shipped with WILDS)
}
WILDS_DIRS = {"wilds-camelyon17": ("camelyon17", "camelyon17_v1.0"), "wilds-iwildcam": ("iwildcam", "iwildcam_v2.0")}


class OODTask(ImageTask):
    Options = OODOptions
    task_type = "multi-class"
    metric_names = ("acc", "auc")

    def __init__(self, pair: str):
        from bench.tasks import fewshot, natural

        self.pair = pair
        self.name = f"ood/{pair}"
        self.num_classes, self.in_channels, self.size, mean, std = SPECS[pair]
        if pair == "amazon-to-webcam":
            mean, std = fewshot.OFFICE31_STATS
        elif pair == "cifar10-to-cifar10c":
            mean, std = natural.STATS["cifar10"]
        self.mean, self.std = mean, std
        self.description = f"train on {pair.split('-to-')[0]}, test on source and {pair.split('-to-')[-1]}"

    def defaults(self) -> dict[str, Any]:
        return dict(model="small_cnn", optimizer="adam", lr=1e-3, schedule="cosine", epochs=30, batch_size=128,
                    select_metric="acc")

    def check_data(self, data_root: Path | None) -> str | None:
        try:
            self._source(data_root, OODOptions(), probe=True)
        except UsageError as e:
            return str(e)
        return None

    # ---- reading ---------------------------------------------------------------------------
    def _source(self, data_root, opt: OODOptions, probe: bool = False):
        """(pool x, pool y, test x | None, test y | None, origin, targets {name: (x, y)} or a callable)."""
        from bench.tasks import natural
        from bench.tasks._imagefiles import need_root, office31_present, read_office31

        root = need_root(data_root, self.name)
        if self.pair.startswith("mnist-to-"):
            if probe:
                if _mnist_files(root, "t10k") is None:
                    raise UsageError(f"missing MNIST t10k files under {root} for task {self.name}")
                target = USPS_FILES if self.pair.endswith("usps") else MNISTM_FILES
                if not any((root / f).is_file() for f in target):
                    raise UsageError(f"missing data for task {self.name}: none of {', '.join(str(root / f) for f in target)}")
                return None
            px, py, tx, ty, origin = read_mnist(root, self.name)
            target = read_usps_test(root, self.name) if self.pair.endswith("usps") else read_mnistm_test(root, self.name)
            return px, py, tx, ty, origin, {self.pair.split("-to-")[1]: target}
        if self.pair == "amazon-to-webcam":
            if probe:
                for dom in ("amazon", "webcam"):
                    if not office31_present(root, dom):
                        raise UsageError(f"missing Office-31 {dom} data under {root} for task {self.name}")
                return None
            ax, ay, origin = read_office31(root, "amazon", opt.image_size, self.name)
            wx, wy, _ = read_office31(root, "webcam", opt.image_size, self.name)
            return ax, ay, None, None, origin, {"webcam": (wx, wy)}
        if self.pair == "cifar10-to-cifar10c":
            if probe:
                if natural.locate(root, "cifar10") is None:
                    raise UsageError(natural.missing_message(root, "cifar10", self.name))
                return None
            return natural.read_pools(root, "cifar10", self.name), None
        name, folder = WILDS_DIRS[self.pair]
        if not (root / folder).is_dir():
            raise UsageError(f"missing data for task {self.name}: no {root / folder}/ (WILDS layout; fetch once with "
                             f"python -c \"import wilds; wilds.get_dataset('{name}', root_dir='{root}', download=True)\")")
        if probe:
            return None
        return _read_wilds(root, name, opt, self.name)

    def load(self, data_root: Path | None, spec: Any = None) -> TaskData:
        import numpy as np

        from bench.tasks._imagefiles import holdout, per_class, resize_uint8, split_generator, to_channels

        opt = OODOptions(**((getattr(spec, "options", None) or {})))
        g = lambda *k: split_generator(opt.split_seed, self.name, *k)  # noqa: E731
        if self.pair.startswith("wilds-"):
            return self._source(data_root, opt)
        if self.pair == "cifar10-to-cifar10c":
            return self._load_cifar10c(data_root, opt, g)
        px, py, tx, ty, origin, targets = self._source(data_root, opt)
        if tx is None:  # the source has no test split: carve one (seeded, stratified)
            pool, test = holdout(py, opt.source_test_frac, g("source-test"))
            px, py, tx, ty = px[pool], py[pool], px[test], py[test]
        pool = per_class(py, opt.train_per_class, g("train-subset"))
        kept, held = holdout(py[pool], opt.val_frac, g("val"))
        size, channels = self.size or opt.image_size, self.channels(spec)  # 3 with as_rgb

        def fit(x):  # the family's common size and channel count
            return to_channels(resize_uint8(x, size), channels)

        def split(x, y, idx):
            return Split(as_tensor(fit(x[idx])), as_tensor(np.asarray(y[idx], dtype=np.int64)))

        tests = {"test": split(tx, ty, per_class(ty, opt.test_per_class, g("test-subset")))}
        for name, (x, y) in targets.items():
            tests[f"ood_{name}"] = split(x, y, per_class(y, opt.test_per_class, g(name, "subset")))
        return TaskData(split(px, py, pool[kept]), split(px, py, pool[held]), tests,
                        info=dict(origin=origin, split_seed=opt.split_seed))

    def _load_cifar10c(self, data_root, opt: OODOptions, g) -> TaskData:
        from bench.tasks import _cifar_c
        from bench.tasks._imagefiles import holdout, per_class

        bad = sorted(set(opt.corruptions) - set(_cifar_c.CORRUPTIONS)) + [str(s) for s in opt.severities if s not in _cifar_c.SEVERITIES]
        if bad or not opt.corruptions or not opt.severities:
            raise UsageError(f"task {self.name}: unknown corruption/severity {', '.join(bad) or '(none chosen)'} "
                             f"(valid: {', '.join(_cifar_c.CORRUPTIONS)}; severities 1-5)")
        pools, _ = self._source(data_root, opt)
        pool = per_class(pools.train_y, opt.train_per_class, g("train-subset"))
        kept, held = holdout(pools.train_y[pool], opt.val_frac, g("val"))
        test_idx = per_class(pools.test_y, opt.test_per_class, g("test-subset"))
        test_x, test_y = pools.test_images(test_idx), pools.test_y[test_idx]
        tests = {"test": Split(as_tensor(test_x), as_tensor(test_y))}
        root = Path(data_root)
        generated = []
        for c in opt.corruptions:
            real = read_cifar10c(root, c, opt.severities, opt.test_per_class, g("cifar10c-subset"))
            for s in opt.severities:
                if real is not None:
                    x, y = real[s]
                else:
                    x, y = _cifar_c.corrupt(test_x, c, s, opt.corruption_seed), test_y
                    generated.append(f"{c}_s{s}")
                tests[f"ood_{c}_s{s}"] = Split(as_tensor(x), as_tensor(y))
        train = lambda i: Split(as_tensor(pools.train_images(i)), as_tensor(pools.train_y[i]))  # noqa: E731
        return TaskData(train(pool[kept]), train(pool[held]), tests,
                        info=dict(origin=pools.origin, split_seed=opt.split_seed, cifar10c="generated" if generated else "files"))

    def metrics(self, logits, y) -> dict[str, float]:
        from bench.tasks._imagefiles import accuracy_auc

        return accuracy_auc(self.scores(logits.float()).numpy(), y.numpy())


def _read_wilds(root: Path, name: str, opt: OODOptions, task: str) -> TaskData:
    """WILDS splits through the wilds package (user's machine; no data here)."""
    import numpy as np

    from bench.tasks._imagefiles import holdout, split_generator

    try:
        import wilds
    except ImportError:
        raise UsageError(f"task {task} needs the wilds package (pip install wilds)") from None
    try:
        ds = wilds.get_dataset(dataset=name, root_dir=str(root), download=False)
    except (FileNotFoundError, OSError, ValueError, RuntimeError) as e:
        raise UsageError(f"cannot open WILDS {name} under {root} ({type(e).__name__}: {e})") from None

    def read(split: str):
        sub = ds.get_subset(split)
        g = split_generator(opt.split_seed, task, split)
        import torch

        idx = torch.randperm(len(sub), generator=g)[: opt.max_per_split].sort().values.tolist()
        xs, ys = [], []
        for i in idx:
            img, y, _ = sub[i]
            img = img.convert("RGB").resize((opt.image_size, opt.image_size))
            xs.append(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
            ys.append(int(y))
        return np.stack(xs), np.array(ys, dtype=np.int64)

    split = lambda x, y: Split(as_tensor(x), as_tensor(y))  # noqa: E731
    tr, val, ood = read("train"), read("id_val"), read("test")
    if "id_test" in ds.split_dict:
        test = read("id_test")
    else:  # camelyon17: no in-distribution test split -> a seeded half of id_val
        kept, held = holdout(val[1], 0.5, split_generator(opt.split_seed, task, "id-test"))
        val, test = (val[0][kept], val[1][kept]), (val[0][held], val[1][held])
    return TaskData(split(*tr), split(*val), {"test": split(*test), "ood_test": split(*ood)}, info=dict(origin=f"wilds:{root}"))


for _pair in SPECS:
    register_task(f"ood/{_pair}", lambda _p=_pair: OODTask(_p))
