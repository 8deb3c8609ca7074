"""natural/*: CIFAR-10, CIFAR-100, Tiny-ImageNet loaders (shared files in ../shared/data; skipped where
absent), their splits, file errors, the GPU protocol and one training epoch."""
import shutil

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA

from bench.errors import UsageError
from bench.spec import make_spec
from bench.tasks import get_task, list_tasks, supports

CIFAR_NPZ = SHARED_DATA / "images" / "cifar10_jpeg_subset.npz"
TINY_NPZ = SHARED_DATA / "images" / "tiny_imagenet200_val.npz"


@pytest.fixture
def cifar_root():
    if not CIFAR_NPZ.is_file():
        pytest.skip(f"{CIFAR_NPZ} not found")
    return SHARED_DATA


def _load(task, root, **options):
    spec = make_spec(task, "none", 0, {f"task.{k}": v for k, v in options.items()})
    return get_task(task).load(root, spec), spec


def test_every_family_is_listed():
    names = set(list_tasks())
    assert {"natural/cifar10", "natural/cifar100", "natural/tinyimagenet"} <= names
    assert {f"fewshot/{d}-k{k}" for d in ("cifar10", "tinyimagenet", "office31") for k in (1, 2, 4, 8, 16)} <= names
    assert {"ood/mnist-to-usps", "ood/mnist-to-mnistm", "ood/amazon-to-webcam", "ood/cifar10-to-cifar10c"} <= names


def test_cifar10_splits_are_seeded_stratified_and_disjoint(cifar_root):
    data, spec = _load("natural/cifar10", cifar_root, train_per_class=20, val_frac=0.25, test_per_class=10)
    assert spec.options["val_frac"] == 0.25 and spec.options["split_seed"] == 0  # recorded in the spec (and key)
    assert (len(data.train), len(data.select), len(data.tests["test"])) == (150, 50, 100)
    assert data.train.x.dtype == torch.uint8 and tuple(data.train.x.shape[1:]) == (3, 32, 32)
    for split, per in ((data.train, 15), (data.select, 5), (data.tests["test"], 10)):
        assert torch.bincount(split.y, minlength=10).tolist() == [per] * 10
    flat = lambda s: {bytes(im.numpy()) for im in s.x}  # noqa: E731
    assert not flat(data.train) & flat(data.select)  # the hold-out is disjoint from train
    again, _ = _load("natural/cifar10", cifar_root, train_per_class=20, val_frac=0.25, test_per_class=10)
    assert torch.equal(again.select.x, data.select.x)
    other, _ = _load("natural/cifar10", cifar_root, train_per_class=20, val_frac=0.25, test_per_class=10, split_seed=1)
    assert not torch.equal(other.select.x, data.select.x)


def test_cifar10_pixels_and_normalisation(cifar_root):
    data, _ = _load("natural/cifar10", cifar_root, train_per_class=50, test_per_class=1)
    mean = data.train.x.float().mean((0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor([0.49, 0.48, 0.45]), atol=0.04)  # CIFAR-10's channel means
    x = get_task("natural/cifar10").prepare(data.train.x)
    assert abs(float(x.mean())) < 0.2 and 0.8 < float(x.std()) < 1.2  # per-channel dataset statistics


def test_tinyimagenet_shared_file_split(cifar_root):
    if not TINY_NPZ.is_file():
        pytest.skip(f"{TINY_NPZ} not found")
    data, _ = _load("natural/tinyimagenet", cifar_root, train_per_class=5, val_frac=0.2, test_per_class=2)
    assert tuple(data.train.x.shape[1:]) == (3, 64, 64)
    assert (len(data.train), len(data.select), len(data.tests["test"])) == (800, 200, 400)
    assert int(data.train.y.min()) == 0 and int(data.train.y.max()) == 199
    full, _ = _load("natural/tinyimagenet", cifar_root, train_per_class=None, test_per_class=None)
    assert len(full.tests["test"]) == 2000 and len(full.train) + len(full.select) == 8000  # 10 + 40 of 50 per class


def test_missing_data_names_both_layouts(tmp_path):
    with pytest.raises(UsageError, match=r"cifar-10-batches-py/ or .*images/cifar10_jpeg_subset\.npz"):
        get_task("natural/cifar10").load(tmp_path, make_spec("natural/cifar10", "none"))
    with pytest.raises(UsageError, match="cifar-100-python"):
        get_task("natural/cifar100").load(tmp_path, make_spec("natural/cifar100", "none"))
    with pytest.raises(UsageError, match="needs a data root"):
        get_task("natural/cifar10").load(None, make_spec("natural/cifar10", "none"))
    assert "cifar10_jpeg_subset.npz" in get_task("natural/cifar10").check_data(tmp_path)


def test_check_data(cifar_root):
    assert get_task("natural/cifar10").check_data(cifar_root) is None


def test_torchvision_layout_comes_first(tmp_path, cifar_root):
    (tmp_path / "images").mkdir()
    shutil.copy(CIFAR_NPZ, tmp_path / "images" / CIFAR_NPZ.name)
    (tmp_path / "cifar-10-batches-py").mkdir()  # present but incomplete: it is the one read, and it fails
    with pytest.raises(UsageError, match="corrupt or incomplete .*cifar-10-batches-py"):
        get_task("natural/cifar10").load(tmp_path, make_spec("natural/cifar10", "none"))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_keys", "bad_jpeg"])
def test_damaged_npz_is_one_line_error(tmp_path, cifar_root, damage):
    (tmp_path / "images").mkdir()
    dst = tmp_path / "images" / CIFAR_NPZ.name
    if damage == "garbage":
        dst.write_bytes(b"PK\x03\x04 not a zip at all")
    elif damage == "truncated":
        dst.write_bytes(CIFAR_NPZ.read_bytes()[: 5_000_000])
    else:
        d = dict(np.load(CIFAR_NPZ))
        if damage == "wrong_keys":
            d.pop("test_offsets")
        else:
            d["train_jpeg"] = np.zeros_like(d["train_jpeg"])  # offsets fine, bytes are not JPEG
        np.savez(dst, **d)
    pattern = {"garbage": "corrupt data file", "truncated": "corrupt data file", "wrong_keys": "wrong layout .*test_offsets",
               "bad_jpeg": "corrupt image in"}[damage]
    with pytest.raises(UsageError, match=pattern) as e:
        _load("natural/cifar10", tmp_path, train_per_class=2, test_per_class=1)
    assert "\n" not in str(e.value)


def test_gpu_protocol_is_a_valid_run():
    from bench.tasks.natural import GPU_PROTOCOL

    spec = make_spec("natural/cifar100", "autoaug-cifar10", 0, GPU_PROTOCOL)
    assert (spec.model, spec.optimizer, spec.lr, spec.weight_decay, spec.schedule, spec.epochs) == \
        ("resnet18", "sgd", 0.1, 5e-4, "cosine", 200)
    net = get_task("natural/cifar100").build_model(spec)
    assert net.body.conv1.stride == (1, 1) and net.head.out_features == 100  # CIFAR stem


def test_every_image_upstream_applies_and_a_foreign_modality_is_refused():
    for method in ("rand-m9-n2", "autoaug-cifar10", "trivialaug", "cutmix-a1.0", "mixup-a0.2", "noisy(0.3,rand-m9-n2)"):
        assert supports("natural/cifar10", f"{method}+saflex") is None

    class TabularOnly:
        modalities = frozenset({"tabular"})

        def __str__(self):
            return "scarf-0.6"

    with pytest.raises(UsageError, match="does not support image data"):
        get_task("natural/cifar10").check_method(TabularOnly())


def test_one_epoch_on_cifar10(cifar_root, results):
    from bench.runner import run_spec

    spec = make_spec("natural/cifar10", "autoaug-cifar10+saflex", 0,
                     {"epochs": 1, "ref_frac": 0.5, "task.train_per_class": 12, "task.val_frac": 0.34, "task.test_per_class": 5})
    rec = run_spec(spec, results, cifar_root, progress=False, wandb_mode="disabled")
    assert rec["data"] == {"train": 80, "val": 20, "test": 50, "reference": 20}
    m = rec["metrics"]
    assert 0 <= m["test_acc"] <= 1 and 0 <= m["test_auc"] <= 1 and 0 <= m["val_acc"] <= 1 and m["epochs_run"] == 1


@pytest.mark.parametrize("name, runs, skipped, reason", [
    ("natural", 36, 1, "AutoAugment's CIFAR-10 policy"),
    ("fewshot", 72, 18, "K=1: one selection image per class"),
    ("ood", 72, 9, "natural-image policy"),
])
def test_sweep_files_plan_with_skip_reasons(name, runs, skipped, reason):
    from conftest import REPO

    from sweeps.config import load_sweep
    from sweeps.plan import plan_sweep

    plan = plan_sweep(load_sweep(REPO / "sweeps" / f"{name}.yaml"))
    assert (len(plan.runs), len(plan.skipped)) == (runs, skipped)
    assert all(reason in s.reason for s in plan.skipped)
    assert {r.spec.ref_frac for r in plan.runs} == {0.5} and {r.spec.seed for r in plan.runs} == {0, 1, 2}
    assert {r.spec.learner for r in plan.runs} == {"none", "ref", "saflex"}
