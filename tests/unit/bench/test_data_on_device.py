"""The device-resident data path (data_on_device): the training split stays on the trainer's device and
the upstream's batched per-sample stage runs there. It must give the loader path's batches (same order,
same draws, same images within the batched path's tolerance), keep X and X+learner paired, record which
path ran, and never change a run's key. Device "cpu" exercises the whole path here; on CUDA the same code
keeps the images on the GPU."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

import baselines
from baselines.base import Upstream
from baselines.batched import GEOMETRIC_TOLERANCE
from bench.cli import main
from bench.data import AugmentedTrainSet, device_resident_blocker, train_loader, use_device_resident, with_reference
from bench.errors import UsageError
from bench.runner import run_spec
from bench.spec import make_spec
from bench.store import ResultsStore
from bench.tasks import get_task
from bench.trainer import Trainer

IMAGE_METHODS = [m for m in baselines.list_methods() if "image" in baselines.create_method(m).modalities]
BATCHED = [m for m in IMAGE_METHODS if baselines.create_method(m).has_batched_sample_stage]


def spec(method="rand-m9-n2", seed=0, **over):
    return make_spec("digits/sklearn", method, seed, {"epochs": 1, **over})


def trainer(tmp_path, method, seed=0, **kw):
    s = spec(method, seed)
    task = get_task(s.task)
    data = with_reference(task.load(None, s), s.ref_frac, s.ref_from, s.seed)
    store = ResultsStore(tmp_path / f"{method}-{sorted(kw.items())}")
    store.run_dir(s.key).mkdir(parents=True, exist_ok=True)
    return Trainer(s, task, data, store, device="cpu", progress=False, **kw)


def smooth_images(n: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)  # smooth, so histogram ops and geometry have something to act on
    base = torch.randint(0, 256, (n, c, size // 4, size // 4), generator=g).float()
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear").round().clamp(0, 255).to(torch.uint8)


def assert_close_images(ref: torch.Tensor, out: torch.Tensor) -> None:
    """Per image, at most GEOMETRIC_TOLERANCE of the pixels differ (the batched path's promise)."""
    assert out.shape == ref.shape and out.dtype == ref.dtype
    differ = (ref != out).flatten(1).float().mean(1)
    assert float(differ.max()) <= GEOMETRIC_TOLERANCE, differ.max()


# ---- (a) same batches as the loader path with aug_path=batched ------------------------------------------
@pytest.mark.parametrize("c,size", [(1, 28), (3, 32)])
@pytest.mark.parametrize("method", BATCHED)
def test_device_resident_set_gives_the_loader_batches(method, c, size):
    up = baselines.create_method(method)
    x, y = smooth_images(150, c, size), torch.arange(150) % 7
    loader = AugmentedTrainSet(x, y, up, seed=3, batched=True)
    resident = AugmentedTrainSet(x, y, up, seed=3, device="cpu")
    assert resident.on_device and resident.batched
    for epoch in (0, 2):
        a = list(train_loader(loader, 32, epoch))
        b = list(train_loader(resident, 32, epoch, workers=2))  # workers: ignored on the device path
        assert len(a) == len(b)
        for (aug_a, clean_a, y_a), (aug_b, clean_b, y_b) in zip(a, b):
            assert torch.equal(clean_a, clean_b) and torch.equal(y_a, y_b)  # order exactly
            assert_close_images(aug_a, aug_b)
            assert not torch.equal(aug_b, clean_b)  # the upstream ran on the device path


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_trainer_batches_match_the_loader_path(tmp_path, method):
    loader = trainer(tmp_path, method, aug_path="batched")
    resident = trainer(tmp_path, method, data_on_device="on")
    assert resident.data_path == "device" and loader.data_path == "loader"
    assert resident.trainset.x.device == resident.device
    for epoch in (0, 1):
        batches = list(zip(loader.batches(epoch), resident.batches(epoch), strict=True))
        assert batches
        for a, b in batches:
            assert torch.equal(a.y, b.y) and torch.equal(a.clean, b.clean) and torch.equal(a.y_soft, b.y_soft)
            assert (a.corrupted is None) == (b.corrupted is None)
            if a.corrupted is not None:
                assert torch.equal(a.corrupted, b.corrupted)
            differ = (a.x != b.x).flatten(1).float().mean(1)
            assert float(differ.max()) <= GEOMETRIC_TOLERANCE


def test_breastmnist_device_path_matches(tmp_path, medmnist_root):
    s = make_spec("medmnist/breastmnist", "trivialaug", 1, {"epochs": 1, "model": "small_cnn"})
    task = get_task(s.task)
    train = task.load(medmnist_root, s).train
    up = baselines.create_method(s.upstream)
    a = list(train_loader(AugmentedTrainSet(train.x, train.y, up, s.seed, batched=True), 64, 1))
    b = list(train_loader(AugmentedTrainSet(train.x, train.y, up, s.seed, device="cpu"), 64, 1))
    for (aug_a, clean_a, y_a), (aug_b, clean_b, y_b) in zip(a, b, strict=True):
        assert torch.equal(clean_a, clean_b) and torch.equal(y_a, y_b)
        assert_close_images(aug_a, aug_b)


# ---- (b) pairing on the device path ---------------------------------------------------------------------
@pytest.mark.parametrize("upstream", ["rand-m9-n2", "trivialaug", "noisy(0.3,cutmix-a1.0)"])
def test_x_and_x_saflex_see_identical_batches_on_the_device(tmp_path, upstream):
    def digest(method):
        tr = trainer(tmp_path, method, data_on_device="on")
        assert tr.data_path == "device"
        h = hashlib.sha256()
        for epoch in (0, 1):
            for b in tr.batches(epoch):
                h.update(b.x.cpu().numpy().tobytes())
                h.update(b.y_soft.cpu().numpy().tobytes())
        return h.hexdigest()

    assert digest(upstream) == digest(f"{upstream}+saflex")


# ---- (c) end to end, (e) the key ----------------------------------------------------------------------
def test_cli_run_on_the_device_path_records_it_and_keeps_the_key(tmp_path, capsys):
    args = ["run", "--task", "digits/sklearn", "--method", "rand-m9-n2+saflex", "--epochs", "1", "--device", "cpu",
            "--threads", "1", "--results", str(tmp_path), "--quiet"]
    assert main([*args, "--data-on-device", "on"]) == 0
    key = spec("rand-m9-n2+saflex").key
    assert f"key {key}" in capsys.readouterr().out
    rec = json.loads((tmp_path / "runs" / key / "result.json").read_text())
    assert rec["cost"]["data_path"] == "device" and rec["cost"]["aug_path"] == "batched"
    assert rec["key"] == key and "data_on_device" not in rec["spec"]
    # the same run without the setting is the same run: it finds the stored result
    assert main([*args, "--data-on-device", "off"]) == 0
    assert f"key {key}" in capsys.readouterr().out
    assert len(list((tmp_path / "runs").iterdir())) == 1


def test_auto_on_cpu_takes_the_loader_path_and_says_why(tmp_path):
    rec = run_spec(spec("trivialaug"), tmp_path, progress=False, wandb_mode="disabled", threads=1, device="cpu",
                   data_on_device="auto", aug_path="batched")
    assert rec["cost"]["data_path"] == "loader" and rec["cost"]["aug_path"] == "batched"
    log = (ResultsStore(tmp_path).run_dir(rec["key"]) / "run.log").read_text()
    assert "data_on_device auto: loader path (the device is the CPU)" in log
    off = run_spec(spec("none"), tmp_path, progress=False, wandb_mode="disabled", threads=1, device="cpu")
    assert off["cost"]["data_path"] == "loader" and off["cost"]["aug_path"] == "none"


# ---- (d) where it cannot run -----------------------------------------------------------------------------
class _PerImageOnly(Upstream):
    has_sample_stage = True

    def __str__(self) -> str:
        return "per-image-only"


def test_on_without_a_batched_path_is_one_line(tmp_path, monkeypatch, capsys):
    x, y = smooth_images(4, 1, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(UsageError) as e:
        use_device_resident(_PerImageOnly(), x, y, "cpu", "on")
    msg = str(e.value)
    assert "\n" not in msg and "upstream 'per-image-only' has no batched per-sample path" in msg
    assert "(valid: auto, on, off" in msg
    assert use_device_resident(_PerImageOnly(), x, y, "cpu", "auto") == (False, "upstream 'per-image-only' has no batched per-sample path")
    with pytest.raises(UsageError, match="per-image"):
        run_spec(spec("trivialaug"), tmp_path, progress=False, wandb_mode="disabled", device="cpu",
                 aug_path="per-image", data_on_device="on")  # asked for the per-image path: a contradiction
    # end to end: a policy whose batched path is switched off fails before anything is written
    monkeypatch.setattr(baselines.image_policies.ImagePolicy, "has_batched_sample_stage", False)
    code = main(["run", "--task", "digits/sklearn", "--method", "rand-m9-n2", "--epochs", "1", "--device", "cpu",
                 "--results", str(tmp_path), "--quiet", "--data-on-device", "on"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "no batched per-sample path" in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    with pytest.raises(UsageError, match=r"unknown data_on_device 'yes' \(valid: auto, on, off\)"):
        run_spec(spec(), tmp_path, progress=False, wandb_mode="disabled", data_on_device="yes")


def test_data_that_would_not_fit_the_gpu_is_refused(monkeypatch):
    x, y = torch.zeros(1000, 3, 32, 32, dtype=torch.uint8), torch.zeros(1000, dtype=torch.long)  # ~3 MiB
    up = baselines.create_method("rand-m9-n2")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 * 2**20, 80 * 2**30))
    why = device_resident_blocker(up, x, y, torch.device("cuda"))
    assert why is not None and "training split (3 MiB) is over 50% of the 4 MiB free on cuda" in why
    assert use_device_resident(up, x, y, "cuda", "auto") == (False, why)
    with pytest.raises(UsageError, match="does not fit|is over 50%"):
        use_device_resident(up, x, y, "cuda", "on")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * 2**30, 80 * 2**30))
    assert use_device_resident(up, x, y, "cuda", "auto") == (True, None)


def test_the_split_is_moved_to_the_device_once(monkeypatch):
    """On CPU a move is a no-op, so check the call itself: on CUDA this is what keeps the images there."""
    x, y = smooth_images(40, 1, 8), torch.arange(40)
    moved, to = [], torch.Tensor.to

    def spy(self, *args, **kwargs):
        if self.shape in (x.shape, y.shape):
            moved.append((tuple(self.shape), str(args[0] if args else kwargs.get("device"))))
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    ds = AugmentedTrainSet(x, y, baselines.create_method("rand-m9-n2"), seed=0, device="cpu")
    assert sorted(moved) == sorted([(tuple(x.shape), "cpu"), (tuple(y.shape), "cpu")])
    moved.clear()
    list(train_loader(ds, 16, 0))
    assert moved == []  # batches are gathered where the split lives: nothing is moved per batch
