"""Issue 11: tests that fail when SAFLEX is switched off, cheats or is paired unfairly — at the
trainer level, on the bundled digits task (CPU, seconds). Each test names the mutation it catches."""
from __future__ import annotations

import hashlib

import pytest
import torch

import baselines
import saflex_core
from bench.data import with_reference
from bench.learners.saflex import SaflexLearner
from bench.spec import make_spec
from bench.store import ResultsStore
from bench.tasks import get_task
from bench.trainer import Trainer


def trainer(tmp_path, method, seed=0, **over):
    spec = make_spec("digits/sklearn", method, seed, {"epochs": 2, "ref_frac": 0.5, **over})
    task = get_task(spec.task)
    data = with_reference(task.load(None, spec), spec.ref_frac, spec.ref_from, spec.seed)
    store = ResultsStore(tmp_path)
    store.run_dir(spec.key).mkdir(parents=True, exist_ok=True)
    return Trainer(spec, task, data, store, device="cpu", progress=False)


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def first_batch(tr):
    return next(iter(tr.batches(0)))


def fix_reweight(monkeypatch, fn):
    """Make SAFLEX's closed form return (w, q) = fn(y_soft) — to test what the trainer does with them."""

    def reweight(self, h, logits, y):
        w, q = fn(y)
        return w, q, saflex_core.reweight_stats(w, q, y)

    monkeypatch.setattr(saflex_core.Saflex, "reweight", reweight)


# ---- w and q reach the update (mutations: loss ignores w; loss uses y instead of q) ------------------
def test_w_one_q_y_reproduces_plain_training_bit_for_bit(tmp_path, monkeypatch):
    fix_reweight(monkeypatch, lambda y: (torch.ones(len(y)), y.clone()))
    x_tr, s_tr = trainer(tmp_path / "x", "rand-m9-n2"), trainer(tmp_path / "s", "rand-m9-n2+saflex")
    assert all(torch.equal(a, b) for a, b in zip(params(x_tr.model).values(), params(s_tr.model).values()))
    for _ in range(3):
        bx, bs = first_batch(x_tr), first_batch(s_tr)
        x_tr.step(bx), s_tr.step(bs)
    px, ps = params(x_tr.model), params(s_tr.model)
    assert all(torch.equal(px[k], ps[k]) for k in px), "w=1, q=y must train exactly like X"


def test_non_uniform_w_changes_the_update(tmp_path, monkeypatch):
    def half_weights(y):
        w = torch.ones(len(y))
        w[::2] = 0.0
        return w * 2, y.clone()

    results = {}
    for name, fn in (("uniform", lambda y: (torch.ones(len(y)), y.clone())), ("half", half_weights)):
        fix_reweight(monkeypatch, fn)
        tr = trainer(tmp_path / name, "none+saflex")
        tr.step(first_batch(tr))
        results[name] = params(tr.model)
    assert not torch.equal(results["uniform"]["body.0.weight"], results["half"]["body.0.weight"])


def test_loss_uses_q_and_w(tmp_path):
    logits = torch.randn(6, 3, requires_grad=True)
    y = torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2])]
    sfx = saflex_core.Saflex(saflex_core.SaflexConfig(eps=0.5, weights="sigmoid"))
    h_ref, y_ref = torch.randn(10, 4), torch.randint(0, 3, (10,))
    sfx.refresh(h_ref, torch.randn(10, 3), y_ref)
    h = torch.randn(6, 4)
    loss, w, q, _ = sfx.loss(logits, y, h)
    assert not torch.allclose(q, y) and w.std() > 0  # the case where q and w matter
    logp = torch.log_softmax(logits, 1)
    expected = (w * -(q * logp).sum(1)).mean()
    assert torch.allclose(loss, expected)
    assert not torch.allclose(loss, (w * -(y * logp).sum(1)).mean())  # y instead of q differs
    assert not torch.allclose(loss, (-(q * logp).sum(1)).mean())  # dropping w differs


def test_sigmoid_weights_value_by_value():
    p = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5], [0.9, 0.1]])
    y = torch.eye(2)[torch.tensor([0, 0, 1, 1])]
    u = torch.tensor([[0.4, -0.2], [-0.1, 0.3], [0.2, 0.2], [-0.5, 0.6]])
    a = ((p - y) * u).sum(1)  # alignment: (p - q) . u with q = y at eps = 0
    for tau in (0.5, 2.0):
        for normalize in (False, True):
            cfg = saflex_core.SaflexConfig(weights="sigmoid", tau=tau, normalize=normalize, eps=0.0)
            w, q = saflex_core.solve_weights_labels(p, y, u, cfg)
            expected = torch.sigmoid(a / (tau * a.abs().mean()))
            if normalize:
                expected = expected / expected.mean()
            assert torch.allclose(w, expected, atol=1e-6), (tau, normalize)
            assert torch.equal(q, y)


# ---- SAFLEX reads only the reference part (mutation: reference drawn from test / selection) ----------
def test_saflex_reference_forward_sees_only_the_reference_part(tmp_path, monkeypatch):
    tr = trainer(tmp_path, "rand-m9-n2+saflex", **{"saflex.val_batch": 32})
    seen: list[torch.Tensor] = []
    original = SaflexLearner.reference_batch

    def spy(self, batch):
        xr, yr = original(self, batch)
        seen.append(xr)
        return xr, yr

    monkeypatch.setattr(SaflexLearner, "reference_batch", spy)
    for i, batch in enumerate(tr.batches(0)):
        tr.step(batch)
        if i == 4:
            break
    task, data = tr.task, tr.data

    def rows(x):
        return {hashlib.sha1(r.numpy().tobytes()).hexdigest() for r in task.prepare(x)}

    ref, select, test = rows(data.reference.x), rows(data.select.x), rows(data.tests["test"].x)
    used = set().union(*(rows_of(t) for t in seen))
    assert used and used <= ref
    assert not used & (select - ref) and not used & (test - ref)
    assert tr.ctx.reference is data.reference and len(data.reference) + len(data.select) == 359


def rows_of(prepared):
    return {hashlib.sha1(r.numpy().tobytes()).hexdigest() for r in prepared}


def test_learners_get_no_test_split_and_ref_trains_on_the_reference(tmp_path):
    tr = trainer(tmp_path, "none+ref")
    assert not hasattr(tr.ctx, "tests") and "test" not in vars(tr.ctx)
    assert len(tr.trainset) == len(tr.data.train) + len(tr.data.reference)
    plain = trainer(tmp_path / "x", "none")
    assert len(plain.trainset) == len(plain.data.train) and plain.ctx.reference is None


def test_every_arm_gets_the_same_carve(tmp_path):
    a, b, c = (trainer(tmp_path / m, m) for m in ("none", "none+ref", "none+saflex"))
    for t in (b, c):
        assert torch.equal(a.data.select.x, t.data.select.x) and torch.equal(a.data.reference.x, t.data.reference.x)
    assert not torch.equal(a.data.select.x, trainer(tmp_path / "s1", "none", seed=1).data.select.x)


# ---- the reference forward changes nothing (mutation: BatchNorm guard removed) --------------------------
def test_reference_forward_leaves_bn_statistics_and_parameters_alone(tmp_path):
    tr = trainer(tmp_path, "rand-m9-n2+saflex")
    batch = first_batch(tr)
    tr.model.train()
    before = params(tr.model)
    tr.learner.refresh_if_due(batch)
    after = params(tr.model)
    assert tr.learner.sfx.summary is not None
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k], after[k])]
    assert tr.model.training


# ---- pairing (mutation: a learner sees different batches or augmentations) ------------------------------
@pytest.mark.parametrize("upstream", baselines.list_methods())
def test_x_and_x_saflex_see_identical_batches(tmp_path, upstream):
    task = get_task("digits/sklearn")
    try:
        task.check_method(baselines.create_method(upstream))
    except Exception:
        pytest.skip(f"{upstream} does not apply to digits")

    def digest(method):
        tr = trainer(tmp_path / method, method)
        h = hashlib.sha256()
        for epoch in (0, 1):
            for b in tr.batches(epoch):
                h.update(b.x.numpy().tobytes())
                h.update(b.y_soft.numpy().tobytes())
        return h.hexdigest()

    assert digest(upstream) == digest(f"{upstream}+saflex")
