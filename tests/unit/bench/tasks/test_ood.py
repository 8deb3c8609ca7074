"""ood/<source>-to-<target>: source splits, target test sets at the family's size and channel count,
CIFAR-10-C (generated and real files), WILDS' missing-data error, file errors, one epoch per task."""
import gzip

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA

from bench.errors import UsageError
from bench.spec import make_spec
from bench.tasks import get_task

SMALL = {"task.train_per_class": 10, "task.test_per_class": 5, "task.val_frac": 0.2}


def _need(*parts):
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found")


def _load(task, root=SHARED_DATA, **overrides):
    return get_task(task).load(root, make_spec(task, "none", 0, overrides))


def test_mnist_to_usps_sizes_and_labels():
    _need("digits", "usps", "usps.npz")
    data = _load("ood/mnist-to-usps", **{"task.test_per_class": 20})
    # shared MNIST is the 10k test set only: 20% seeded/stratified source test, 10% of the rest for selection
    assert len(data.train) + len(data.select) == 8000 and abs(len(data.select) - 800) <= 5  # 10% per class, rounded
    assert len(data.tests["test"]) == 200
    assert set(data.tests) == {"test", "ood_usps"} and len(data.tests["ood_usps"]) == 200
    for split in (data.train, data.select, *data.tests.values()):
        assert split.x.dtype == torch.uint8 and tuple(split.x.shape[1:]) == (1, 28, 28)
        assert int(split.y.min()) == 0 and int(split.y.max()) == 9
    usps = data.tests["ood_usps"].x.float()
    # USPS digits fill the frame (resized 16 -> 28); MNIST's have a 4-px empty border
    assert usps[:, :, :2].mean() > 5 * data.train.x[:, :, :2].float().mean()
    full = _load("ood/mnist-to-usps")
    assert len(full.tests["ood_usps"]) == 2007
    rgb = _load("ood/mnist-to-usps", **{**SMALL, "as_rgb": True})  # as_rgb: every split 3 channels, as the model
    assert all(tuple(s.x.shape[1:]) == (3, 28, 28) for s in (rgb.train, *rgb.tests.values()))


def test_mnist_to_mnistm_is_32px_rgb():
    _need("digits", "mnist_m_subset", "mnist_m_subset.npz")
    data = _load("ood/mnist-to-mnistm", **SMALL)
    assert set(data.tests) == {"test", "ood_mnistm"}
    for split in (data.train, *data.tests.values()):
        assert tuple(split.x.shape[1:]) == (3, 32, 32)
    x = data.train.x
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # grey replicated
    m = data.tests["ood_mnistm"].x
    assert not torch.equal(m[:, 0], m[:, 1])  # MNIST-M is colour


def test_amazon_to_webcam():
    _need("images", "office31_amazon1000_webcam.npz")
    data = _load("ood/amazon-to-webcam", **{"task.image_size": 32})
    assert len(data.train) + len(data.select) + len(data.tests["test"]) == 1000
    assert len(data.tests["ood_webcam"]) == 795 and tuple(data.tests["ood_webcam"].x.shape[1:]) == (3, 32, 32)
    assert int(data.tests["ood_webcam"].y.max()) == 30


def test_cifar10c_generated_targets():
    _need("images", "cifar10_jpeg_subset.npz")
    opts = {**SMALL, "task.corruptions": "gaussian_noise,contrast", "task.severities": "1,5"}
    data = _load("ood/cifar10-to-cifar10c", **opts)
    assert set(data.tests) == {"test", "ood_gaussian_noise_s1", "ood_gaussian_noise_s5", "ood_contrast_s1", "ood_contrast_s5"}
    clean = data.tests["test"].x.float()
    for c in ("gaussian_noise", "contrast"):
        d1, d5 = ((data.tests[f"ood_{c}_s{s}"].x.float() - clean).abs().mean() for s in (1, 5))
        assert 0 < d1 < d5  # severity 5 moves pixels further than severity 1
        assert torch.equal(data.tests[f"ood_{c}_s1"].y, data.tests["test"].y)
    again = _load("ood/cifar10-to-cifar10c", **opts)
    assert torch.equal(again.tests["ood_gaussian_noise_s5"].x, data.tests["ood_gaussian_noise_s5"].x)  # deterministic


def test_every_corruption_runs_and_changes_the_image():
    from bench.tasks._cifar_c import CORRUPTIONS, corrupt

    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).numpy()
    x = np.clip(x.astype(int) // 2 + 64, 0, 255).astype(np.uint8)  # mid-range: every corruption shows
    assert len(CORRUPTIONS) == 15
    for c in CORRUPTIONS:
        out = corrupt(x, c, 3, 0)
        assert out.shape == x.shape and out.dtype == np.uint8 and not np.array_equal(out, x), c


def test_real_cifar10c_files_are_read(tmp_path):
    _need("images", "cifar10_jpeg_subset.npz")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "cifar10_jpeg_subset.npz").symlink_to(SHARED_DATA / "images" / "cifar10_jpeg_subset.npz")
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    labels = np.tile(np.arange(10, dtype=np.uint8), 5000)
    np.save(folder / "labels.npy", labels)
    fog = np.zeros((50000, 32, 32, 3), np.uint8)
    fog[20000:30000] = 77  # severity 3 block
    np.save(folder / "fog.npy", fog)
    data = _load("ood/cifar10-to-cifar10c", tmp_path, **{**SMALL, "task.corruptions": "fog", "task.severities": "3"})
    t = data.tests["ood_fog_s3"]
    assert data.info["cifar10c"] == "files" and len(t) == 50 and bool((t.x == 77).all())
    assert torch.bincount(t.y, minlength=10).tolist() == [5] * 10
    np.save(folder / "fog.npy", fog[:100])
    with pytest.raises(UsageError, match=r"wrong layout in .*fog\.npy"):
        _load("ood/cifar10-to-cifar10c", tmp_path, **{**SMALL, "task.corruptions": "fog", "task.severities": "3"})


def test_unknown_corruption_is_refused():
    _need("images", "cifar10_jpeg_subset.npz")
    with pytest.raises(UsageError, match="unknown corruption/severity blur9 .*valid: gaussian_noise"):
        _load("ood/cifar10-to-cifar10c", **{**SMALL, "task.corruptions": "blur9"})


def test_wilds_missing_data(tmp_path):
    for task, folder in (("ood/wilds-camelyon17", "camelyon17_v1.0"), ("ood/wilds-iwildcam", "iwildcam_v2.0")):
        with pytest.raises(UsageError, match=f"missing data for task {task}: no .*{folder}"):
            _load(task, tmp_path)
        assert folder in get_task(task).check_data(tmp_path)


def test_missing_and_damaged_digit_files(tmp_path):
    _need("digits", "mnist")
    with pytest.raises(UsageError, match="no MNIST t10k-images-idx3-ubyte"):
        _load("ood/mnist-to-usps", tmp_path)
    mnist = tmp_path / "digits" / "mnist"
    mnist.mkdir(parents=True)
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (mnist / f).write_bytes((SHARED_DATA / "digits" / "mnist" / f).read_bytes())
    assert "usps" in get_task("ood/mnist-to-usps").check_data(tmp_path)
    with pytest.raises(UsageError, match="usps.npz"):
        _load("ood/mnist-to-usps", tmp_path)
    raw = gzip.decompress((mnist / "t10k-images-idx3-ubyte.gz").read_bytes())
    (mnist / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-784 * 3], compresslevel=1))  # three images short
    with pytest.raises(UsageError, match=r"corrupt data file .*t10k-images"):
        _load("ood/mnist-to-usps", tmp_path)
    (mnist / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not gzip")
    with pytest.raises(UsageError, match=r"corrupt data file .*t10k-images"):
        _load("ood/mnist-to-usps", tmp_path)


def test_wrong_layout_usps(tmp_path):
    _need("digits", "mnist")
    (tmp_path / "digits" / "usps").mkdir(parents=True)
    (tmp_path / "digits" / "mnist").symlink_to(SHARED_DATA / "digits" / "mnist")
    np.savez(tmp_path / "digits" / "usps" / "usps.npz", test_images=np.zeros((5, 28, 28), np.float32),
             test_labels=np.zeros(5, np.uint8))
    with pytest.raises(UsageError, match=r"wrong layout in .*usps\.npz: test_images must be \[N,16,16\]"):
        _load("ood/mnist-to-usps", tmp_path)


@pytest.mark.parametrize("task, parts, extra", [
    ("ood/mnist-to-usps", ("digits", "usps"), {}),
    ("ood/mnist-to-mnistm", ("digits", "mnist_m_subset"), {}),
    pytest.param("ood/amazon-to-webcam", ("images", "office31_amazon1000_webcam.npz"), {"task.image_size": 32},
                 marks=pytest.mark.slow),
    ("ood/cifar10-to-cifar10c", ("images", "cifar10_jpeg_subset.npz"), {"task.corruptions": "fog", "task.severities": "2"}),
])
def test_one_epoch_reports_source_and_target(results, task, parts, extra):
    from bench.runner import run_spec

    _need(*parts)
    spec = make_spec(task, "rand-m9-n2+saflex", 0, {"epochs": 1, "ref_frac": 0.5, **SMALL, **extra})
    rec = run_spec(spec, results, SHARED_DATA, progress=False, wandb_mode="disabled")
    m = rec["metrics"]
    targets = [k for k in m if k.startswith("ood_") and k.endswith("_acc")]
    assert len(targets) == 1 and "test_acc" in m and "val_acc" in m
    for k in ("test_acc", "test_auc", targets[0], targets[0].replace("_acc", "_auc")):
        assert 0 <= m[k] <= 1


@pytest.mark.parametrize("task, shape", [("ood/mnist-to-usps", (1, 28, 28)), ("ood/mnist-to-mnistm", (3, 32, 32)),
                                         ("fewshot/tinyimagenet-k1", (3, 64, 64)), ("ood/amazon-to-webcam", (3, 300, 300))])
def test_every_image_upstream_takes_each_family_shape(task, shape):
    """Stored images of 28-300 px, 1 or 3 channels, through the same policies (no resizing in the trainer)."""
    import baselines

    t = get_task(task)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, *shape), dtype=torch.uint8, generator=g)
    y = torch.arange(4) % t.num_classes
    for method in ("rand-m9-n2", "autoaug-cifar10", "trivialaug", "cutmix-a1.0", "mixup-a0.2", "noisy(0.3,rand-m9-n2)"):
        up = baselines.create_method(method).bind(x, y)
        aug = torch.stack([up.sample_transform(im, torch.Generator().manual_seed(i)) for i, im in enumerate(x)])
        assert aug.shape == x.shape and aug.dtype == torch.uint8, method
        out = up.batch_transform(t.prepare(aug), t.targets(y), g)
        assert out.x.shape == x.shape and out.y.shape == (4, t.num_classes), method
