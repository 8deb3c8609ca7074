"""Helpers and the `tiny_tasks` fixture of the contract tests (not a conftest.py: tests/conftest.py is
the one `conftest` the flat test files import). Contract tests: every entry of list_tasks(),
list_learners() and list_methods() keeps the promises the trainer, the store and the reports rely on. Learners and upstreams run on tiny synthetic tasks,
one per data modality (registered for this tier only), so the tier needs no data and runs in seconds
per entry; entries that need real data or weights skip with the reason."""
from __future__ import annotations

import hashlib
from typing import Any

import pytest
import torch
from torch import nn

from bench.data import with_reference
from bench.errors import UsageError
from bench.spec import check_pair, make_spec
from bench.store import ResultsStore
from bench.tasks import get_task, register_task
from bench.tasks.base import ImageTask, Split, Task, TaskData
from bench.trainer import Trainer

# an upstream with random draws per modality: pairing is only tested where there is something to pair
UPSTREAM = {"image": "rand-m9-n2", "tabular": "gauss-s0.1"}


SHIPPED = ("saflex_core", "baselines", "bench", "sweeps", "reports")


def shipped_learners() -> list[str]:
    """list_learners() less entries a test module registered for itself (test_plugins' toy learner):
    the contract is over what the package ships."""
    from bench.learners import get_learner_class, list_learners

    return [n for n in list_learners() if get_learner_class(n).__module__.split(".")[0] in SHIPPED]


def shipped_tasks() -> list[str]:
    """list_tasks() less entries a test module registered for itself (test_plugins' toy task)."""
    from bench.tasks import get_task, list_tasks

    return [n for n in list_tasks() if type(get_task(n)).__module__.split(".")[0] in SHIPPED]


def _labels(n: int, k: int) -> torch.Tensor:
    return torch.arange(n) % k


class TinyImages(ImageTask):
    """3 classes of 16x16 grey images: a brighter quadrant per class, plus noise."""

    name = "contract/image"
    task_type = "multi-class"
    num_classes = 3
    in_channels = 1

    def defaults(self) -> dict[str, Any]:
        return dict(model="small_cnn", epochs=1, batch_size=16, lr=1e-2, optimizer="adam", schedule="constant",
                    select_metric="acc")

    def load(self, data_root=None, spec=None) -> TaskData:
        g = torch.Generator().manual_seed(0)
        channels = self.channels(spec)

        def split(n):
            y = _labels(n, 3)
            x = torch.randint(0, 96, (n, channels, 16, 16), generator=g, dtype=torch.uint8)
            for c in range(3):
                r, q = divmod(c, 2)
                x[y == c, :, r * 8:(r + 1) * 8, q * 8:(q + 1) * 8] += 128
            return Split(x, y)

        return TaskData(split(64), split(32), {"test": split(32)})


class TinyTable(Task):
    """Two Gaussian blobs in 6-D: a feature-vector task (like tests/unit/bench/test_plugins.py's Blobs)."""

    name = "contract/tabular"
    modality = "tabular"
    task_type = "binary-class"
    num_classes = 2

    def defaults(self) -> dict[str, Any]:
        return dict(model="tiny_mlp", epochs=1, batch_size=16, lr=1e-2, optimizer="adam", schedule="constant",
                    select_metric="acc")

    def models(self):
        return ["tiny_mlp"]

    def load(self, data_root=None, spec=None) -> TaskData:
        g = torch.Generator().manual_seed(0)

        def split(n):
            y = _labels(n, 2)
            return Split(torch.randn(n, 6, generator=g) + 1.5 * y[:, None].float(), y)

        return TaskData(split(64), split(32), {"test": split(32)})

    def build_model(self, spec):
        from bench.nets import Classifier

        return Classifier(nn.Sequential(nn.Linear(6, 16), nn.ReLU()), 16, 2)


TINY = {"image": TinyImages, "tabular": TinyTable}


@pytest.fixture(scope="module")
def tiny_tasks():
    """Register the tiny tasks while a contract module runs; other tiers list the real registry."""
    from bench.tasks import REGISTRY

    for cls in TINY.values():
        register_task(cls.name, cls)
    yield {m: cls.name for m, cls in TINY.items()}
    for cls in TINY.values():
        REGISTRY.unregister(cls.name)


def tiny_spec(tiny_tasks, modality: str, upstream: str, learner: str = "none", seed: int = 0):
    """The spec of `upstream[+learner]` on the tiny task of `modality`, or a skip naming why the pair
    cannot run (the learner or upstream does not claim that modality, or needs other data)."""
    task = tiny_tasks[modality]
    method = upstream if learner == "none" else f"{upstream}+{learner}"
    try:
        check_pair(get_task(task), method)
        return make_spec(task, method, seed, {"ref_frac": 0.5})  # every arm: the same labelled data
    except UsageError as e:
        pytest.skip(f"{method} on {modality}: {e}")


def trainer(spec, root) -> Trainer:
    task = get_task(spec.task)
    data = with_reference(task.load(None, spec), spec.ref_frac, spec.ref_from, spec.seed)
    store = ResultsStore(root)
    store.run_dir(spec.key).mkdir(parents=True, exist_ok=True)
    return Trainer(spec, task, data, store, device="cpu", progress=False)


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def batches_digest(tr: Trainer, epochs=(0, 1)) -> str:
    """Hash of every batch the trainer would feed (data order, augmented inputs, targets)."""
    h = hashlib.sha256()
    for epoch in epochs:
        for b in tr.batches(epoch):
            h.update(b.x.numpy().tobytes())
            h.update(b.y_soft.numpy().tobytes())
            h.update(b.y.numpy().tobytes())
    return h.hexdigest()


def one_step_changes_the_model(tr: Trainer) -> None:
    before = params(tr.model)
    loss, logits = tr.step(next(iter(tr.batches(0))))
    assert torch.isfinite(loss) and logits.shape[1] == tr.task.num_classes
    after = params(tr.model)
    assert any(not torch.equal(before[k], after[k]) for k in before), "one step left every parameter as it was"


def checkpoint_round_trip(spec, root) -> None:
    """An epoch, a checkpoint, the next step; then a fresh trainer resumed from that checkpoint takes
    the same next step: identical parameters and learner state (global RNG pinned in both, so only
    what the checkpoint holds can differ)."""
    first = trainer(spec, root)
    first.train_epoch(0)
    first.state.epoch = 1
    first.save_checkpoint()
    saved_learner = first.learner.state_dict()

    def next_step(tr):
        tr.learner.start_epoch(1)
        torch.manual_seed(1234)
        tr.step(next(iter(tr.batches(1))))
        return params(tr.model), tr.learner.state_dict()

    p1, l1 = next_step(first)
    second = trainer(spec, root)
    assert second.maybe_resume() == 1
    assert _same(second.learner.state_dict(), saved_learner), "learner state changed through the checkpoint"
    p2, l2 = next_step(second)
    assert p1.keys() == p2.keys() and all(torch.equal(p1[k], p2[k]) for k in p1), \
        [k for k in p1 if not torch.equal(p1[k], p2[k])]
    assert _same(l1, l2)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)
