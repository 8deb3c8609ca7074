"""fewshot/<dataset>-k<K>: seeded K-shot draws, test sets, the two regimes, and the exactness of
SAFLEX's last-layer score when the backbone is frozen."""
import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_DATA

from bench.errors import UsageError
from bench.spec import make_spec
from bench.tasks import get_task

IMAGES = SHARED_DATA / "images"
LINEAR = {"task.regime": "linear", "model": "resnet18", "task.weights": "none"}


def _need(name):
    if not (IMAGES / name).is_file():
        pytest.skip(f"{IMAGES / name} not found")
    return SHARED_DATA


def _load(task, seed=0, **overrides):
    spec = make_spec(task, "none", seed, overrides)
    return get_task(task).load(SHARED_DATA, spec)


def _rows(split):
    return {bytes(im.numpy()) for im in split.x}


def test_cifar10_k4_draws():
    _need("cifar10_jpeg_subset.npz")
    data = _load("fewshot/cifar10-k4")
    assert torch.bincount(data.train.y, minlength=10).tolist() == [4] * 10
    assert torch.bincount(data.select.y, minlength=10).tolist() == [4] * 10
    assert len(data.tests["test"]) == 10_000 and int(data.tests["test"].y.max()) == 9  # the full test set
    assert not set(data.info["drawn"]["train"]) & set(data.info["drawn"]["val"])
    assert torch.equal(_load("fewshot/cifar10-k4", **{"task.test_per_class": 1}).train.x, data.train.x)  # same seed, same draw
    other = _load("fewshot/cifar10-k4", seed=1, **{"task.test_per_class": 1})
    assert not torch.equal(other.train.x, data.train.x)  # the run seed draws the shots ...
    pinned = _load("fewshot/cifar10-k4", seed=1, **{"task.draw_seed": 0, "task.test_per_class": 1})
    assert torch.equal(pinned.train.x, data.train.x) and pinned.info["draw_seed"] == 0  # ... unless pinned


def test_office31_test_is_the_images_not_drawn():
    _need("office31_amazon1000_webcam.npz")
    data = _load("fewshot/office31-k16", **{"task.image_size": 32})
    assert (len(data.train), len(data.select), len(data.tests["test"])) == (496, 496, 1000 - 992)
    assert tuple(data.train.x.shape[1:]) == (3, 32, 32) and int(data.train.y.max()) == 30
    # K train + K val of 32-33 images per class: disjoint by construction (compared by index: the amazon
    # subset holds pixel-identical product photos under different file names)
    drawn = data.info["drawn"]
    assert len(set(drawn["train"]) | set(drawn["val"])) == 992


def test_tinyimagenet_k2():
    _need("tiny_imagenet200_val.npz")
    data = _load("fewshot/tinyimagenet-k2", **{"task.test_per_class": 1})
    assert (len(data.train), len(data.select), len(data.tests["test"])) == (400, 400, 200)
    assert tuple(data.train.x.shape[1:]) == (3, 64, 64) and int(data.train.y.max()) == 199


def test_regime_and_model_must_agree():
    with pytest.raises(UsageError, match="regime scratch trains small_cnn, resnet18"):
        get_task("fewshot/cifar10-k2").load(SHARED_DATA, make_spec("fewshot/cifar10-k2", "none", 0, {"model": "resnet50"}))
    with pytest.raises(UsageError, match="regime linear needs a torchvision backbone"):
        get_task("fewshot/cifar10-k2").load(SHARED_DATA, make_spec("fewshot/cifar10-k2", "none", 0, {"task.regime": "linear"}))
    with pytest.raises(UsageError, match="unknown task 'fewshot/cifar10-k3'"):
        make_spec("fewshot/cifar10-k3", "none")


def test_uncached_weights_are_a_one_line_error_and_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    spec = make_spec("fewshot/cifar10-k2", "none", 0, {"task.regime": "linear", "model": "resnet18"})
    assert spec.options["weights"] == "IMAGENET1K_V1"
    with pytest.raises(UsageError, match=r"weights resnet18 IMAGENET1K_V1 are not cached at .*resnet18-f37072fd\.pth"):
        get_task("fewshot/cifar10-k2").build_model(spec)
    with pytest.raises(UsageError, match="unknown weights 'IMAGENET9K' for resnet18"):
        get_task("fewshot/cifar10-k2").build_model(spec.with_overrides({"task.weights": "IMAGENET9K"}))
    assert not any(tmp_path.rglob("*.pth"))


def test_frozen_backbone_trains_only_the_head_and_keeps_bn_statistics():
    task = get_task("fewshot/cifar10-k2")
    net = task.build_model(make_spec("fewshot/cifar10-k2", "none", 0, LINEAR))
    assert [n for n, p in net.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    before = net.body.bn1.running_mean.clone()
    net.train()
    net(torch.randn(8, 3, 32, 32)).sum().backward()
    assert not net.body.training and torch.equal(net.body.bn1.running_mean, before)


def _grad_inner_vs_score(net, task, gen):
    """(autograd <dl_i/dtheta, dL_ref/dtheta> over every trainable parameter, SAFLEX (p_i - q_i).u_i)."""
    from saflex_core import sample_scores, validation_summary

    x = task.prepare(torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=gen))
    xr = task.prepare(torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=gen))
    yr = torch.randint(0, 10, (5,), generator=gen)
    q = torch.softmax(torch.randn(6, 10, generator=gen), 1)  # soft targets (mixed / noisy rows)
    params = [p for p in net.parameters() if p.requires_grad]
    net.eval()  # one BatchNorm behaviour for every forward (scratch model)
    g_ref = torch.autograd.grad(F.cross_entropy(net(xr), yr), params)
    with torch.no_grad():
        hr = net.features(xr)
        summary = validation_summary(hr, net.head(hr), yr)
        h = net.features(x)
        u = sample_scores(summary, h)
        p = torch.softmax(net.head(h), 1)
    inner, score = [], []
    for i in range(len(x)):
        loss_i = -(q[i] * torch.log_softmax(net(x[i:i + 1])[0], 0)).sum()
        g_i = torch.autograd.grad(loss_i, params)
        inner.append(sum((a * b).sum() for a, b in zip(g_i, g_ref)))
        score.append(((p[i] - q[i]) * u[i]).sum())
    return torch.stack(inner), torch.stack(score)


def test_saflex_score_is_exact_with_a_frozen_backbone():
    """With the backbone frozen the trainable set is (W, b) and sum_c (p_ic - q_ic) u_ic equals the inner
    product of the sample's loss gradient with the reference loss gradient, computed by autograd through
    the whole model (not a hand-written head gradient)."""
    task = get_task("fewshot/cifar10-k2")
    torch.manual_seed(0)
    net = task.build_model(make_spec("fewshot/cifar10-k2", "none", 0, LINEAR))
    inner, score = _grad_inner_vs_score(net, task, torch.Generator().manual_seed(1))
    assert inner.abs().max() > 1e-4  # not trivially zero
    torch.testing.assert_close(score, inner, rtol=1e-4, atol=1e-7)


def test_saflex_score_is_only_approximate_when_the_backbone_trains():
    task = get_task("fewshot/cifar10-k2")
    torch.manual_seed(0)
    net = task.build_model(make_spec("fewshot/cifar10-k2", "none", 0, {}))  # small_cnn from scratch
    inner, score = _grad_inner_vs_score(net, task, torch.Generator().manual_seed(1))
    assert not torch.allclose(score, inner, rtol=1e-2, atol=1e-6)  # lower layers add terms the score ignores


@pytest.mark.parametrize("task, method, extra", [
    ("fewshot/cifar10-k2", "rand-m9-n2+saflex", {}),
    pytest.param("fewshot/cifar10-k4", "cutmix-a1.0+saflex", {**LINEAR, "ref_frac": 0.5}, marks=pytest.mark.slow),
])
def test_one_epoch(results, task, method, extra):
    from bench.runner import run_spec

    _need("cifar10_jpeg_subset.npz")
    spec = make_spec(task, method, 0, {"epochs": 1, "task.test_per_class": 3, **extra})
    rec = run_spec(spec, results, SHARED_DATA, progress=False, wandb_mode="disabled")
    k = int(task[-1])
    assert rec["data"]["train"] == 10 * k and rec["data"]["test"] == 30
    assert 0 <= rec["metrics"]["test_acc"] <= 1 and 0 <= rec["metrics"]["test_auc"] <= 1


def test_k1_cannot_carve_a_reference_part():
    _need("cifar10_jpeg_subset.npz")
    from bench.data import with_reference

    data = _load("fewshot/cifar10-k1", **{"task.test_per_class": 1})
    with pytest.raises(UsageError, match="leaves an empty reference part"):
        with_reference(data, 0.5, "val", 0)
