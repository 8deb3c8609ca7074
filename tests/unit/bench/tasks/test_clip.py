"""clip/<image task>: open_clip models (a tiny random-init ViT here: no weights are downloaded),
zero-shot evaluation, FLYP fine-tuning, WiSE-FT, weights resolution, SAFLEX's contrastive variant."""
from __future__ import annotations

import hashlib
import math
import os

import pytest
import torch
import torch.nn.functional as F

from bench.errors import UsageError
from bench.spec import make_spec
from bench.tasks import get_task, list_tasks

TINY = {"task.arch": "tiny-vit", "task.pretrained": "none", "batch_size": 64, "lr": 1e-3}
D64 = torch.float64


def spec_for(task="clip/digits/sklearn", method="none", epochs=1, **extra):
    return make_spec(task, method, 0, {**TINY, "epochs": epochs, **extra})


@pytest.fixture(autouse=True)
def _no_checkpoint_env(monkeypatch):
    monkeypatch.delenv("SAFLEX_CLIP_CHECKPOINT", raising=False)


def trainer_for(spec, tmp_path, data_root=None):
    from bench.data import with_reference
    from bench.store import ResultsStore
    from bench.trainer import Trainer

    task = get_task(spec.task)
    data = with_reference(task.load(data_root, spec), spec.ref_frac, spec.ref_from, spec.seed)
    store = ResultsStore(tmp_path / "results")
    store.run_dir(spec.key).mkdir(parents=True, exist_ok=True)
    return Trainer(spec, task, data, store, device="cpu", progress=False)


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---- registry, options, rules -----------------------------------------------------------------------
def test_family_listed_and_wraps_registered_image_tasks():
    names = list_tasks()
    assert "clip/digits/sklearn" in names and "clip/medmnist/breastmnist" in names
    assert "clip/medmnist/chestmnist" not in names  # multi-label: no single class prompt
    t = get_task("clip/medmnist/breastmnist")
    assert t.num_classes == 2 and t.metric_names == get_task("medmnist/breastmnist").metric_names
    assert t.classnames == ["malignant tissue", "normal or benign tissue"]
    assert get_task("clip/medmnist/octmnist").classnames[0].startswith("choroidal")  # MedMNIST INFO labels
    with pytest.raises(UsageError, match="unknown task"):
        get_task("clip/nope/nothing")
    with pytest.raises(UsageError, match="single-label"):
        get_task("clip/medmnist/chestmnist")


def test_options_in_key_checkpoint_path_not(monkeypatch, tmp_path):
    a = spec_for()
    b = make_spec("clip/digits/sklearn", "none", 0, {**TINY, "epochs": 1, "task.wise_alpha": 0.5})
    assert a.key != b.key and a.option("arch") == "tiny-vit" and a.option("pretrained") is None
    monkeypatch.setenv("SAFLEX_CLIP_CHECKPOINT", str(tmp_path / "w.pt"))
    assert spec_for().key == a.key
    with pytest.raises(UsageError, match="unknown open_clip architecture 'ViT-Z-99'.*ViT-B-32"):
        make_spec("clip/digits/sklearn", "none", 0, {"task.arch": "ViT-Z-99"})
    d = get_task("clip/digits/sklearn").defaults()
    assert d["optimizer"] == "adamw" and d["model"] == "open_clip"


def test_learner_rules():
    with pytest.raises(UsageError, match="none\\+zeroshot"):
        spec_for(method="rand-m9-n2+zeroshot")
    with pytest.raises(UsageError, match="no zero-shot classifier"):
        make_spec("digits/sklearn", "none+zeroshot", 0, {})
    # the plain saflex learner takes the task's contrastive adapter (uses_task_adapter): allowed on clip
    assert spec_for(method="rand-m9-n2+saflex").learner == "saflex"
    with pytest.raises(UsageError, match="needs a clip"):
        make_spec("digits/sklearn", "rand-m9-n2+saflex-clip", 0, {})
    assert spec_for(method="rand-m9-n2+saflex-clip").learner == "saflex-clip"


# ---- preprocessing --------------------------------------------------------------------------------
def test_prepare_matches_open_clip_image_transform():
    import numpy as np
    import open_clip
    from PIL import Image

    task = get_task("clip/digits/sklearn")
    task.configure(make_spec("clip/digits/sklearn", "none", 0, {"task.arch": "ViT-B-32"}))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8, generator=g)
    x = F.interpolate(x.float(), scale_factor=0.25)  # smooth images: bicubic kernels differ less
    x = F.interpolate(x, size=(28, 28), mode="bilinear").round().to(torch.uint8)
    ours = task.prepare(x)
    assert ours.shape == (2, 3, 224, 224) and ours.dtype == torch.float32
    ref_tf = open_clip.image_transform(224, is_train=False)  # ViT-B-32: OpenAI mean/std, bicubic, shortest
    ref = torch.stack([ref_tf(Image.fromarray(np.asarray(img[0]), mode="L")) for img in x])
    assert (ours - ref).abs().mean() < 0.02
    assert torch.allclose(ours.mean((2, 3)), ref.mean((2, 3)), atol=0.01)


# ---- the model -------------------------------------------------------------------------------------
def test_head_is_prompt_embeddings_and_text_cache_follows_weights():
    spec = spec_for()
    task = get_task(spec.task)
    torch.manual_seed(0)
    model = task.build_model(spec).eval()
    x = task.prepare(torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8))
    with torch.no_grad():
        h = model.features(x)
        assert torch.allclose(h.norm(dim=1), torch.ones(5), atol=1e-5)
        # open_clip's zero-shot classifier: templates averaged, renormalised
        import open_clip

        tok = open_clip.tokenizer.SimpleTokenizer(context_length=24)
        templates = [lambda c, t=t: t.format(c=c) for t in task.templates]
        zs = open_clip.build_zero_shot_classifier(model.clip, tok, task.classnames, templates)
        expected = model.clip.logit_scale.exp() * h @ zs
        assert torch.allclose(model(x), expected, atol=1e-5)
        first = model.class_embeddings()
        assert model.class_embeddings() is first  # cached while the text weights are unchanged
        model.clip.token_embedding.weight.add_(0.1)  # an optimiser step is in place: the cache notices
        assert not torch.allclose(model.class_embeddings(), first)


def test_wise_ft_interpolates_zero_shot_and_fine_tuned_weights():
    spec = spec_for(**{"task.wise_alpha": 0.25})
    task = get_task(spec.task)
    torch.manual_seed(0)
    model = task.build_model(spec)
    zs = state(model.clip)
    x = task.prepare(torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8))
    with torch.no_grad():
        for p in model.clip.parameters():
            p.add_(0.05 * torch.randn_like(p))
        ft = state(model.clip)
        model.eval()
        got = model(x)
        ref = task.build_model(spec_for())  # a plain model holding the interpolated weights
        ref.clip.load_state_dict({k: 0.75 * zs[k] + 0.25 * ft[k] for k in zs})
        assert torch.allclose(got, ref.eval()(x), atol=1e-5)
        model.train()
        assert torch.allclose(model(x), model.head(model.features(x)))  # training sees the fine-tuned weights
        assert not torch.allclose(model(x), got, atol=1e-4)
    assert "_zeroshot" not in "".join(model.state_dict())  # not checkpointed: rebuilt on resume


# ---- losses -----------------------------------------------------------------------------------------
def test_flyp_loss_is_weighted_clip_loss_for_distinct_labels_and_trains_the_text_tower():
    from bench.tasks.clip import flyp_loss
    from saflex_core.contrastive import weighted_clip_loss

    g = torch.Generator().manual_seed(1)
    C, d = 6, 8
    img = F.normalize(torch.randn(C, d, generator=g, dtype=D64), dim=1)
    txt = F.normalize(torch.randn(C, d, generator=g, dtype=D64), dim=1).requires_grad_(True)
    y = torch.randperm(C, generator=g)
    w = torch.rand(C, generator=g, dtype=D64)
    s = 5.0
    logits = s * img @ txt.t()
    ours = flyp_loss(logits, F.one_hot(y, C).to(D64), w)
    assert float(ours.detach()) == pytest.approx(float(weighted_clip_loss(img, txt[y], s, w).detach()), rel=1e-12)
    assert float(flyp_loss(logits, F.one_hot(y, C).to(D64)).detach()) == pytest.approx(float(weighted_clip_loss(img, txt[y], s).detach()))
    ours.backward()
    assert txt.grad is not None and txt.grad.abs().sum() > 0
    # repeated classes: same-class captions are positives, so a perfect classifier reaches the entropy
    # of the positives (log 2 here), and images of a class are not pushed apart in caption->image
    yy = torch.tensor([0, 0, 1, 1])
    perfect = (50.0 * F.one_hot(yy, 2).to(D64)).requires_grad_(True)
    loss = flyp_loss(perfect, F.one_hot(yy, 2).to(D64))
    assert float(loss) == pytest.approx(math.log(2), abs=1e-9)
    assert torch.autograd.grad(loss, perfect)[0].abs().max() < 1e-9


def test_task_loss_is_flyp_in_training_and_ce_in_evaluation():
    from bench.tasks.clip import flyp_loss

    task = get_task("clip/digits/sklearn")
    task.configure(spec_for())
    logits = torch.randn(8, 10, requires_grad=True)
    t = task.targets(torch.arange(8))
    assert float(task.loss(logits, t)) == pytest.approx(float(flyp_loss(logits, t)))
    assert float(task.loss(logits.detach(), t)) == pytest.approx(float(F.cross_entropy(logits.detach(), t)))
    task.configure(spec_for(**{"task.objective": "ce"}))
    assert float(task.loss(logits, t)) == pytest.approx(float(F.cross_entropy(logits, t)))


# ---- SAFLEX, contrastive variant: scores are gradient inner products ---------------------------------
def test_contrastive_saflex_scores_equal_autograd_inner_product_on_tiny_clip():
    """On the tiny CLIP model (float64), the adapter the saflex-clip learner uses: its reference summary
    is the gradient of the reference CE w.r.t. the prompt head W = s T (and g = 0, no bias), equal to
    saflex_core.contrastive's summary; sample i's alignment sum_c (p_ic - q_ic) u_ic equals
    <grad_W L_ref, grad_W CE_soft(z_i, q_i)>; hard weights are 1 exactly where it is positive."""
    import saflex_core
    from saflex_core.contrastive import contrastive_summary

    spec = spec_for()
    task = get_task(spec.task)
    torch.manual_seed(0)
    model = task.build_model(spec).double().eval()
    g = torch.Generator().manual_seed(2)
    xr = task.prepare(torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8, generator=g)).double()
    yr = torch.randint(0, 10, (20,), generator=g)
    xa = task.prepare(torch.randint(0, 256, (7, 1, 8, 8), dtype=torch.uint8, generator=g)).double()
    ya = torch.randint(0, 10, (7,), generator=g)
    # the head's effective weight, as a leaf
    with torch.no_grad():
        T, s = model.class_embeddings(), model.logit_scale()
    W = (s * T).clone().requires_grad_(True)
    with torch.no_grad():
        hr, ha = model.features(xr), model.features(xa)
        assert torch.allclose(model.head(hr), hr @ W.t(), atol=1e-12)
    gW_ref = torch.autograd.grad(F.cross_entropy(hr @ W.t(), yr), W)[0]

    sfx = task.saflex_adapter(saflex_core.SaflexConfig(eps=0.3, weights="hard"))
    with torch.no_grad():  # what the learner does: features, head, refresh
        summary = sfx.refresh(hr, model.head(hr), yr)
    assert torch.allclose(summary.G, gW_ref, atol=1e-12) and torch.all(summary.g == 0)
    cs = contrastive_summary(hr, T, s, yr)
    assert torch.allclose(summary.G, cs.G, atol=1e-12)
    # the plain adapter (bias=True) would add a bias gradient the prompt head does not have
    assert saflex_core.Saflex().refresh(hr, model.head(hr), yr).g.abs().max() > 1e-3

    with torch.no_grad():
        za = model.head(ha)
        w, q, _ = sfx.reweight(ha, za, ya)
        u = sfx.scores(ha)
        p = torch.softmax(za, 1)
    aligned = 0
    for i in range(len(ya)):
        gi = torch.autograd.grad(-(q[i] * torch.log_softmax(ha[i] @ W.t(), 0)).sum(), W)[0]
        a_i = float(((p[i] - q[i]) * u[i]).sum())
        assert float((gW_ref * gi).sum()) == pytest.approx(a_i, rel=1e-9, abs=1e-13)
        assert float(w[i]) == float(a_i > 0)
        aligned += a_i > 0
    assert 0 < aligned or float(w.sum()) == 0


# ---- weights resolution ---------------------------------------------------------------------------
def test_uncached_pretrained_tag_is_one_usage_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from bench.cli import main

    monkeypatch.setenv("SAFLEX_CLIP_CACHE", str(tmp_path / "empty-cache"))
    results = tmp_path / "results"
    rc = main(["run", "--task", "clip/digits/sklearn", "--method", "none", "--epochs", "1", "--quiet",
               "--set", "task.arch=ViT-B-32", "--set", "task.pretrained=laion2b_s34b_b79k", "--results", str(results)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "not cached" in err and "Hugging Face cache" in err and "SAFLEX_CLIP_CHECKPOINT" in err
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in err
    assert not (results / "runs").exists() or not any((results / "runs").iterdir())
    with pytest.raises(UsageError, match="unknown pretrained tag 'nope'.*laion2b_s34b_b79k"):
        get_task("clip/digits/sklearn").load(None, make_spec("clip/digits/sklearn", "none", 0,
                                                              {"task.arch": "ViT-B-32", "task.pretrained": "nope"}))


def test_local_checkpoint_loads_and_its_sha256_is_recorded(tmp_path, monkeypatch):
    spec = spec_for(**{"task.pretrained": "mytag"})
    task = get_task(spec.task)
    torch.manual_seed(123)
    saved = task.build_model(spec_for()).clip.state_dict()
    folder = tmp_path / "weights"
    (folder / "tiny-vit").mkdir(parents=True)
    path = folder / "tiny-vit" / "mytag.pt"
    torch.save(saved, path)
    with pytest.raises(UsageError, match="no pretrained tags"):
        task.load(None, spec)  # a tag on a tiny arch needs a checkpoint
    monkeypatch.setenv("SAFLEX_CLIP_CHECKPOINT", str(folder))
    data = task.load(None, spec)
    info = data.info["clip_weights"]
    assert info["source"] == "checkpoint" and info["path"] == str(path)
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    torch.manual_seed(999)  # a different init: the weights must come from the file
    model = task.build_model(spec)
    assert all(torch.equal(model.clip.state_dict()[k], v) for k, v in saved.items())
    monkeypatch.setenv("SAFLEX_CLIP_CHECKPOINT", str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="neither a file nor a folder"):
        task.load(None, spec)


# ---- training end to end ---------------------------------------------------------------------------------
def test_zeroshot_trains_nothing_and_reports_the_zero_shot_model(tmp_path):
    spec = spec_for(method="none+zeroshot")
    tr = trainer_for(spec, tmp_path)
    before = state(tr.model)
    out = tr.fit()
    after = state(tr.model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # AdamW weight decay 0.1 did not move them
    with torch.no_grad():
        direct = tr.task.metrics(tr.logits(tr.data.tests["test"].x), tr.data.tests["test"].y)
    assert out["metrics"]["test_acc"] == pytest.approx(direct["acc"])
    assert 0.0 <= tr.state.history[0]["train_acc"] <= 1.0


def _fine_tune_changes_both_towers(spec, tmp_path, data_root=None):
    tr = trainer_for(spec, tmp_path, data_root)
    before = state(tr.model)
    out = tr.fit()
    after = tr.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("clip.visual.") for k in changed)
    assert any(k.startswith("clip.transformer.") or k.startswith("clip.token_embedding") for k in changed)
    assert "clip.logit_scale" in changed
    m = out["metrics"]
    assert 0.0 <= m["test_acc"] <= 1.0 and 0.0 <= m["test_auc"] <= 1.0 and m["epochs_run"] == 1
    assert torch.isfinite(torch.tensor(tr.state.history[0]["train_loss"]))
    return tr, out


def test_flyp_epoch_on_digits(tmp_path):
    _fine_tune_changes_both_towers(spec_for(method="rand-m9-n2"), tmp_path)


@pytest.mark.slow
def test_flyp_and_saflex_clip_epoch_on_breastmnist(tmp_path, medmnist_root):
    _fine_tune_changes_both_towers(spec_for("clip/medmnist/breastmnist", "rand-m9-n2"), tmp_path, medmnist_root)
    tr, out = _fine_tune_changes_both_towers(
        spec_for("clip/medmnist/breastmnist", "rand-m9-n2+saflex-clip", ref_frac=0.5), tmp_path / "b", medmnist_root)
    row = tr.state.history[0]
    assert row["saflex_w_mean"] == pytest.approx(1.0) and row["saflex_s"] > 0  # sigmoid weights, mean 1
    assert tr.learner.sfx.bias is False and torch.all(tr.learner.sfx.summary.g == 0)


def test_saflex_clip_step_uses_weighted_flyp_loss(tmp_path):
    """One learner step on digits: the loss it returns is the w-weighted FLYP loss against q."""
    from bench.tasks.clip import flyp_loss

    spec = spec_for(method="rand-m9-n2+saflex-clip", ref_frac=0.5, **{"saflex-clip.weights": "hard"})
    tr = trainer_for(spec, tmp_path)
    batch = next(tr.batches(0))
    tr.model.train()
    loss, logits = tr.learner.loss(batch)
    w, q = tr.learner.last_w, tr.learner.last_q
    assert float(loss) == pytest.approx(float(flyp_loss(logits, q, w)), rel=1e-5)
    assert set(w.tolist()) <= {0.0, 1.0} and 0 < float(w.sum()) < len(w)  # some samples dropped, not all


# ---- composition with other image families: inner options and OOD test sets pass through -------------
@pytest.fixture
def ood_inner_task():
    """A registered image task with its own Options and an extra OOD test set (as ood/* tasks have)."""
    from bench.config import Knobs
    from bench.tasks import REGISTRY
    from bench.tasks.base import TaskData
    from bench.tasks.digits import SklearnDigits

    class Opts(Knobs):
        n_train: int = 300

    class DigitsWithOOD(SklearnDigits):
        Options = Opts
        name = "testonly/digits-ood"

        def load(self, data_root=None, spec=None):
            d = super().load(data_root, spec)
            n = spec.option("n_train")
            assert set(spec.options) == {"n_train"} and spec.task == self.name  # only its own options
            flipped = type(d.train)(d.tests["test"].x.flip(-1), d.tests["test"].y)
            return TaskData(d.train.subset(slice(0, n)), d.select, {**d.tests, "ood_flip": flipped})

    REGISTRY.register("testonly/digits-ood")(DigitsWithOOD)
    yield "testonly/digits-ood"
    for name in ("testonly/digits-ood", "clip/testonly/digits-ood"):
        REGISTRY._entries.pop(name, None)
        REGISTRY._cache.pop(name, None)


def test_inner_options_and_ood_test_sets_pass_through(ood_inner_task, tmp_path):
    from bench.runner import run_spec

    assert f"clip/{ood_inner_task}" in list_tasks()
    spec = make_spec(f"clip/{ood_inner_task}", "none+zeroshot", 0, {**TINY, "epochs": 1, "task.n_train": 100})
    assert spec.option("n_train") == 100 and spec.option("arch") == "tiny-vit"
    with pytest.raises(UsageError, match="n_train"):
        make_spec(f"clip/{ood_inner_task}", "none", 0, {**TINY, "task.n_train": "many"})
    record = run_spec(spec, tmp_path / "results", progress=False, device="cpu")
    assert record["data"]["train"] == 100 and record["data"]["ood_flip"] == record["data"]["test"]
    assert {"test_acc", "ood_flip_acc", "ood_flip_auc"} <= set(record["metrics"])


def test_grad_checkpointing_switch_reaches_open_clip():
    task = get_task("clip/digits/sklearn")
    on = task.build_model(spec_for(**{"task.grad_checkpointing": True}))
    off = task.build_model(spec_for())
    assert on.clip.visual.transformer.grad_checkpointing and on.clip.transformer.grad_checkpointing
    assert not off.clip.visual.transformer.grad_checkpointing
    x = task.prepare(torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8))
    on.train()
    on.load_state_dict(off.state_dict())
    loss = on(x).logsumexp(1).sum()
    loss.backward()  # the checkpointed graph runs backward
    assert on.clip.visual.conv1.weight.grad is not None


def test_plain_saflex_learner_uses_the_contrastive_adapter_on_clip(tmp_path):
    """`X+saflex` on a clip task computes exactly what `X+saflex-clip` does (the task's adapter)."""
    from bench.runner import run_spec

    recs = [run_spec(spec_for(method=m, batch_size=64), tmp_path,
                     progress=False, wandb_mode="disabled", threads=1)
            for m in ("rand-m9-n2+saflex", "rand-m9-n2+saflex-clip")]
    assert recs[0]["key"] != recs[1]["key"]
    assert recs[0]["metrics"] == recs[1]["metrics"]
