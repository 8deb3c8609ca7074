"""MedMNIST through the official npz files in ../shared/data (skipped where they are absent)."""
from types import SimpleNamespace

import numpy as np
import torch
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from bench.errors import UsageError
from bench.tasks import get_task, list_tasks

OFFICIAL = {"breastmnist": (546, 78, 156, 1, 2), "pneumoniamnist": (4708, 524, 624, 1, 2), "retinamnist": (1080, 120, 400, 3, 5)}


def test_every_2d_flag_is_registered():
    import medmnist

    flags = [f for f, i in medmnist.INFO.items() if not i["python_class"].endswith("3D")]
    assert {f"medmnist/{f}" for f in flags} <= set(list_tasks()) and len(flags) == 12
    assert get_task("medmnist/chestmnist").multi_label and get_task("medmnist/retinamnist").num_classes == 5


@pytest.mark.parametrize("flag", sorted(OFFICIAL))
def test_loads_official_splits(flag, medmnist_root):
    if not (medmnist_root / f"{flag}.npz").exists():
        pytest.skip(f"{flag}.npz absent")
    s = get_task(f"medmnist/{flag}").load(medmnist_root)
    n_tr, n_va, n_te, c, k = OFFICIAL[flag]
    assert s.train.x.shape == (n_tr, c, 28, 28) and len(s.select) == n_va and len(s.tests["test"]) == n_te
    assert s.train.x.dtype.is_floating_point is False and int(s.train.y.max()) == k - 1
    rgb = get_task(f"medmnist/{flag}").load(medmnist_root, SimpleNamespace(as_rgb=True))
    assert rgb.train.x.shape[1] == 3


@pytest.mark.parametrize("flag", ["breastmnist", "retinamnist"])
def test_metrics_equal_medmnist_evaluator(flag, medmnist_root):
    import medmnist

    task = get_task(f"medmnist/{flag}")
    y_t = task.load(medmnist_root).tests["test"].y
    y = y_t.numpy()
    rng = np.random.default_rng(0)
    scores = rng.dirichlet(np.ones(task.num_classes), size=len(y))
    scores[: len(y) // 2, :] = np.eye(task.num_classes)[y[: len(y) // 2]] * 0.9 + 0.1 / task.num_classes  # partly right
    ours = task.metrics(torch.log(torch.from_numpy(scores)), y_t)  # softmax(log p) = p
    auc, acc = medmnist.Evaluator(flag, "test", root=str(medmnist_root)).evaluate(scores)
    assert ours["acc"] == pytest.approx(acc, abs=1e-12) and ours["auc"] == pytest.approx(auc, abs=1e-12)
    # and independently of medmnist's code
    if task.num_classes == 2:
        assert ours["acc"] == pytest.approx(accuracy_score(y, scores[:, 1] > 0.5))
        assert ours["auc"] == pytest.approx(roc_auc_score(y, scores[:, 1]))
    else:
        assert ours["acc"] == pytest.approx(accuracy_score(y, scores.argmax(1)))
        assert ours["auc"] == pytest.approx(np.mean([roc_auc_score(y == c, scores[:, c]) for c in range(task.num_classes)]))


def test_one_data_root_serves_every_family(medmnist_root):
    """--data-root may be the folder holding medmnist/ (as for the other families) or medmnist's own."""
    a = get_task("medmnist/breastmnist").load(medmnist_root)
    b = get_task("medmnist/breastmnist").load(medmnist_root.parent)
    assert torch.equal(a.train.x, b.train.x) and get_task("medmnist/breastmnist").check_data(medmnist_root.parent) is None


def test_missing_file_names_it(tmp_path):
    with pytest.raises(UsageError, match=r"missing data file .*breastmnist\.npz"):
        get_task("medmnist/breastmnist").load(tmp_path)
    with pytest.raises(UsageError, match="needs a data root"):
        get_task("medmnist/breastmnist").load(None)


def test_corrupt_npz_names_it(tmp_path, medmnist_root):
    (tmp_path / "breastmnist.npz").write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(UsageError, match=r"corrupt data file .*breastmnist\.npz"):
        get_task("medmnist/breastmnist").load(tmp_path)
    # right format, wrong split sizes
    d = dict(np.load(medmnist_root / "breastmnist.npz"))
    d["train_images"], d["train_labels"] = d["train_images"][:10], d["train_labels"][:10]
    np.savez(tmp_path / "breastmnist.npz", **d)
    with pytest.raises(UsageError, match="official size is 546"):
        get_task("medmnist/breastmnist").load(tmp_path)


def test_short_run_on_breastmnist(medmnist_root, results):
    from bench.runner import run_spec
    from bench.spec import make_spec

    rec = run_spec(make_spec("medmnist/breastmnist", "cutmix-a1.0", 0, {"epochs": 2, "model": "small_cnn"}), results,
                   medmnist_root, progress=False, wandb_mode="disabled")
    assert 0 <= rec["metrics"]["test_acc"] <= 1 and rec["metrics"]["epochs_run"] == 2


def test_digits_metrics_match_sklearn():
    task = get_task("digits/sklearn")
    y_t = task.load().tests["test"].y
    y = y_t.numpy()
    scores = np.random.default_rng(1).dirichlet(np.ones(10), size=len(y))
    m = task.metrics(torch.log(torch.from_numpy(scores)), y_t)
    assert m["acc"] == pytest.approx(accuracy_score(y, scores.argmax(1)))
    assert m["auc"] == pytest.approx(np.mean([roc_auc_score(y == c, scores[:, c]) for c in range(10)]))
