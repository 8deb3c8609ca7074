"""The learned-augmentation competitors (augerino, augnet, adautomix, softaug) as learners: their
defining behaviour, end-to-end runs from the CLI, exact resume, and the pairs they refuse."""
import contextlib
import functools
import json
import subprocess
import sys

import pytest
import torch

from bench.errors import UsageError
from bench.learners.base import LearnerContext, StepBatch, get_learner_class
from bench.runner import run_spec
from bench.seeding import generator
from bench.spec import check_pair, make_spec
from bench.tasks import get_task
from bench.tasks.base import Task

from conftest import REPO
from bench.trainer import TIMING_KEYS

LEARNED = ["augerino", "augnet", "adautomix", "softaug"]


# ---- helpers ---------------------------------------------------------------------------------------
def make_learner(name, tmp_path, knobs=None, model=None, seed=0):
    task = get_task("digits/sklearn")
    spec = make_spec("digits/sklearn", f"none+{name}", seed, {"epochs": 1, **{f"{name}.{k}": v for k, v in (knobs or {}).items()}})
    torch.manual_seed(0)
    model = model if model is not None else task.build_model(spec)
    ctx = LearnerContext(spec=spec, task=task, model=model, device=torch.device("cpu"), reference=None,
                         run_dir=tmp_path, autocast=contextlib.nullcontext, generator=functools.partial(generator, seed))
    return get_learner_class(name)(ctx, spec.knobs), ctx


@functools.lru_cache(maxsize=2)
def digits_batch(n=64, size=8):
    """n digits as model input; size > 8 upsamples them (room for spatial masks in the feature map)."""
    task = get_task("digits/sklearn")
    train = task.load(None, None).train
    x = task.prepare(train.x[:n])
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x, train.y[:n], task.targets(train.y[:n])


def step_batch(index=0, size=8):
    x, y, t = digits_batch(size=size)
    return StepBatch(x=x, y_soft=t, clean=x, y=y, corrupted=None, epoch=0, index=index, step=index)


def train_steps(learner, ctx, steps, lr=1e-2, size=8):
    opt = torch.optim.Adam([*ctx.model.parameters(), *learner.extra_parameters()], lr=lr)
    ctx.model.train()
    for i in range(steps):
        loss, _ = learner.loss(step_batch(i, size))
        opt.zero_grad()
        loss.backward()
        yield
        opt.step()
        learner.after_step(step_batch(i, size))


class ConstantModel(torch.nn.Module):
    """Logits that do not depend on the input (gradient flows, but it is zero): a flat data loss."""

    def __init__(self, k=10):
        super().__init__()
        self.head = torch.nn.Linear(1, k)

    def features(self, x):
        return x.flatten(1).sum(1, keepdim=True) * 0.0

    def forward(self, x):
        return self.head(self.features(x))


# ---- Augerino / AugNet: learned magnitudes -------------------------------------------------------------
@pytest.mark.parametrize("name", ["augerino", "augnet"])
def test_augmentation_parameters_get_gradients_and_change(name, tmp_path):
    learner, ctx = make_learner(name, tmp_path, {"reg": 0.0})  # gradients through the reparameterised draws alone
    before = [p.detach().clone() for p in learner.extra_parameters()]
    assert before, "the magnitudes must be trained by the main optimiser"
    for _ in train_steps(learner, ctx, 3):
        grads = [p.grad for p in learner.extra_parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
    after = learner.extra_parameters()
    assert all(not torch.equal(a.detach(), b) for a, b in zip(after, before))


def test_augerino_regulariser_widens_when_data_loss_is_flat(tmp_path):
    learner, ctx = make_learner("augerino", tmp_path, {"reg": 0.5}, model=ConstantModel())
    w0 = learner.width.detach().clone()
    opt = torch.optim.SGD(learner.extra_parameters(), lr=0.1)
    for i in range(3):
        loss, _ = learner.loss(step_batch(i))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (learner.width.detach().abs() > w0.abs()).all()
    # without the regulariser nothing moves: the data loss alone is flat in the widths
    flat, _ = make_learner("augerino", tmp_path, {"reg": 0.0}, model=ConstantModel())
    loss, _ = flat.loss(step_batch(0))
    loss.backward()
    assert float(flat.width.grad.abs().max()) == 0.0


def test_augerino_prediction_averages_copies_and_is_reproducible(tmp_path):
    learner, ctx = make_learner("augerino", tmp_path, {"test_copies": 3, "init_width": 0.3})
    ctx.model.eval()
    x = digits_batch()[0][:8]
    with torch.no_grad():
        a, b = learner.predict(x), learner.predict(x)
        plain = ctx.model(x)
    assert torch.equal(a, b)
    assert torch.allclose(torch.softmax(a, 1).sum(1), torch.ones(8), atol=1e-5)
    assert not torch.allclose(a.softmax(1), plain.softmax(1), atol=1e-4)


def test_best_epoch_weights_find_their_own_widths(tmp_path):
    learner, ctx = make_learner("augerino", tmp_path)
    learner.end_epoch(0, last=False)
    kept = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    width0 = learner.width.detach().clone()
    for _ in train_steps(learner, ctx, 2):
        pass
    learner.end_epoch(1, last=True)
    ctx.model.load_state_dict(kept)  # what finish() does with the best epoch
    assert torch.equal(learner.matched.lookup(ctx.model)["width"], width0)
    assert not torch.equal(learner.width.detach(), width0)


# ---- AdAutoMix: adversarial generator, bounded by the cosine term -----------------------------------------
def adversarial_run(tmp_path, cos_weight, steps=15):
    # 24 px digits: a 6x6 feature map leaves the masks room; ema 0: the teacher is the classifier
    learner, ctx = make_learner("adautomix", tmp_path, {"gen_lr": 0.05, "ema": 0.0})
    for _ in train_steps(learner, ctx, 20, size=24):  # a classifier that has learned something
        pass
    learner.knobs = learner.knobs.model_copy(update={"cos_weight": cos_weight})  # same start for both runs
    x, _, t = digits_batch(size=24)
    perms, lam = learner.draw(len(x), torch.Generator().manual_seed(1))
    with torch.no_grad():
        maps, feats = learner.teacher_features(x)
    ctx.model.train()
    weights = [p.detach().clone() for p in ctx.model.parameters()]
    grads = [p.grad.clone() for p in ctx.model.parameters()]
    buffers = [b.clone() for b in ctx.model.buffers()]
    stats = [learner.generator_step(x, t, maps, feats, perms, lam) for _ in range(steps)]
    # the generator step never touches the classifier (weights, gradients, BN statistics)
    assert all(torch.equal(p, w) for p, w in zip(ctx.model.parameters(), weights))
    assert all(torch.equal(p.grad, g) for p, g in zip(ctx.model.parameters(), grads))
    assert all(torch.equal(a, b) for a, b in zip(ctx.model.buffers(), buffers))
    return stats


@pytest.mark.slow  # three short adversarial runs on 24 px digits: about 30 s alone, more on a busy machine
def test_adautomix_generator_raises_classifier_loss_and_cosine_bounds_drift(tmp_path):
    free = adversarial_run(tmp_path, cos_weight=0.0)
    bounded = adversarial_run(tmp_path, cos_weight=10.0)
    strong = adversarial_run(tmp_path, cos_weight=50.0)
    assert free[0]["adv_loss"] == pytest.approx(bounded[0]["adv_loss"])  # same start
    assert free[-1]["adv_loss"] > free[0]["adv_loss"] + 0.1  # the adversary makes harder mixes ...
    assert free[-1]["drift"] > free[0]["drift"]  # ... drifting from what their labels say
    assert bounded[-1]["adv_loss"] > bounded[0]["adv_loss"] + 0.05  # still adversarial with the term on,
    assert bounded[-1]["drift"] < free[-1]["drift"]  # but it drifts less
    assert strong[-1]["drift"] < strong[0]["drift"] / 2  # a strong term pulls the mixes back to their meaning


def test_adautomix_masks_partition_pixels_and_labels_follow_areas(tmp_path):
    learner, _ = make_learner("adautomix", tmp_path, {"mix_num": 3})
    x, _, t = digits_batch()
    perms, lam = learner.draw(len(x), torch.Generator().manual_seed(0))
    with torch.no_grad():
        maps, _ = learner.teacher_features(x)
        masks = learner.generator([maps[p] for p in perms], lam, x.shape[-2:])
        x_mix, y_mix, area = learner.mix(x, t, maps, perms, lam)
    assert masks.shape == (len(x), 3, 8, 8) and torch.allclose(masks.sum(1), torch.ones(len(x), 8, 8), atol=1e-5)
    assert torch.allclose(y_mix.sum(1), torch.ones(len(x)), atol=1e-5)
    assert torch.allclose(y_mix, sum(area[:, i:i + 1] * t[p] for i, p in enumerate(perms)))


def test_adautomix_state_round_trip(tmp_path):
    learner, ctx = make_learner("adautomix", tmp_path)
    for _ in train_steps(learner, ctx, 2):
        pass
    state = learner.state_dict()
    fresh, _ = make_learner("adautomix", tmp_path)
    fresh.load_state_dict(state)
    for a, b in [(learner.generator, fresh.generator), (learner.teacher, fresh.teacher)]:
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert fresh.gen_opt.state_dict()["state"][0]["step"] == learner.gen_opt.state_dict()["state"][0]["step"] == 2


# ---- Soft Augmentation: target confidence by visibility ------------------------------------------------
def test_softaug_confidence_follows_the_formula():
    from bench.learners.softaug import soften, target_confidence

    v = torch.linspace(0, 1, 11)
    for p_min, k in [(0.1, 2.0), (0.0, 1.0), (0.5, 4.0)]:
        p = target_confidence(v, p_min, k)
        assert torch.allclose(p, 1 - (1 - p_min) * (1 - v) ** k)
        assert p[0] == pytest.approx(p_min) and p[-1] == pytest.approx(1.0)
        assert (p[1:] >= p[:-1]).all()  # more severe crop (lower v) -> lower confidence
    y = torch.eye(5)[[0, 3]]
    s = soften(y, torch.tensor([0.6, 1.0]))
    assert torch.allclose(s[0], torch.tensor([0.6, 0.1, 0.1, 0.1, 0.1])) and torch.allclose(s[1], y[1])


def test_softaug_learner_crops_and_softens_by_visibility(tmp_path):
    learner, ctx = make_learner("softaug", tmp_path, {"sigma": 0.4, "p_min": 0.2, "k": 2})
    x, y, t = digits_batch()
    xs, ys, vis, p = learner.crop_and_soften(x, t, ctx.generator("softaug", 0, 0))
    again = learner.crop_and_soften(x, t, ctx.generator("softaug", 0, 0))
    assert torch.equal(xs, again[0]) and torch.equal(ys, again[1])  # seeded by (epoch, batch index)
    assert vis.min() < 0.7 and vis.max() == 1.0  # a range of severities in one batch
    conf = ys[torch.arange(len(y)), y]
    assert torch.allclose(conf, 1 - 0.8 * (1 - vis) ** 2, atol=1e-6)
    others = ys.clone()
    others[torch.arange(len(y)), y] = float("nan")
    assert torch.allclose(others.nansum(1), 1 - conf, atol=1e-6)
    order = torch.argsort(vis)
    assert (conf[order][1:] >= conf[order][:-1] - 1e-7).all()


def test_softaug_crop_keeps_the_visible_fraction():
    from bench.learners.softaug import shift_crop

    x = torch.arange(2 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8) + 1
    out, vis = shift_crop(x, torch.tensor([[2, -3], [0, 0]]), torch.zeros(1, 1, 1))
    assert vis.tolist() == pytest.approx([(8 - 2) * (8 - 3) / 64, 1.0])
    assert int((out[0] != 0).sum()) == 6 * 5 and torch.equal(out[1], x[1])
    assert torch.equal(out[0, 0, 2:, :5], x[0, 0, :6, 3:])  # moved down 2, left 3


def test_softaug_default_p_min_is_chance(tmp_path):
    learner, _ = make_learner("softaug", tmp_path)
    assert learner.p_min == pytest.approx(0.1)


# ---- refusals --------------------------------------------------------------------------------------------
class TabularTask(Task):
    name = "tabular/example"
    modality = "tabular"
    num_classes = 2


@pytest.mark.parametrize("name,reason", [
    ("adautomix", "AdAutoMix needs image feature maps; task tabular/example is tabular"),
    ("augerino", "Augerino needs an image grid to warp; task tabular/example is tabular"),
    ("augnet", "task tabular/example is tabular"),
    ("softaug", "Soft Augmentation needs images to crop; task tabular/example is tabular"),
])
def test_image_only_learners_refuse_other_modalities(name, reason):
    import baselines

    with pytest.raises(UsageError, match=reason):
        get_learner_class(name).check(TabularTask(), baselines.create_method("none"))


@pytest.mark.parametrize("method,reason", [
    ("cutmix-a1.0+adautomix", "AdAutoMix replaces mixing; upstream 'cutmix-a1.0' already mixes"),
    ("mixup-a0.2+adautomix", "AdAutoMix replaces mixing"),
    ("noisy(0.3,cutmix-a1.0)+adautomix", "AdAutoMix replaces mixing"),
    ("mixup-a0.2+softaug", "already mixes labels"),
])
def test_invalid_pairs_are_refused_with_the_reason(method, reason):
    with pytest.raises(UsageError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        check_pair(get_task("digits/sklearn"), method)


@pytest.mark.parametrize("method", ["noisy(0.3,rand-m9-n2)+adautomix", "cutmix-a1.0+augerino", "mixup-a0.2+augnet",
                                    "rand-m9-n2+softaug"])
def test_valid_pairs_are_accepted(method):
    check_pair(get_task("digits/sklearn"), method)


def test_cli_refuses_a_pair_in_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--task", "digits/sklearn", "--method",
                        "cutmix-a1.0+adautomix", "--epochs", "1", "--results", str(tmp_path), "--quiet"],
                       cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 2 and "AdAutoMix replaces mixing" in p.stderr and "Traceback" not in p.stderr


# ---- end to end ------------------------------------------------------------------------------------------
@pytest.mark.slow  # a subprocess per learner: ~15 s each
@pytest.mark.parametrize("name", LEARNED)
def test_one_epoch_from_the_cli_on_digits(name, tmp_path):
    p = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--task", "digits/sklearn", "--method",
                        f"rand-m9-n2+{name}", "--epochs", "1", "--results", str(tmp_path), "--quiet"],
                       cwd=REPO, capture_output=True, text=True, env={**__import__("os").environ, "WANDB_MODE": "disabled"})
    assert p.returncode == 0, p.stderr
    (rec_file,) = tmp_path.glob("runs/*/result.json")
    rec = json.loads(rec_file.read_text())
    assert rec["status"] == "done" and rec["spec"]["method"] == f"rand-m9-n2+{name}"
    assert 0 < rec["metrics"]["test_acc"] <= 1 and rec["cost"]["learner_s"] > 0
    (row,) = [json.loads(line) for line in (rec_file.parent / "metrics.jsonl").read_text().splitlines()]
    assert any(k.startswith(f"{name}_") for k in row)  # the learner's diagnostics reach metrics.jsonl


@pytest.mark.slow
@pytest.mark.parametrize("name", LEARNED)
def test_one_epoch_on_medmnist_breast(name, medmnist_root, tmp_path):
    spec = make_spec("medmnist/breastmnist", f"rand-m9-n2+{name}", 0, {"epochs": 1, "model": "small_cnn"})
    rec = run_spec(spec, tmp_path, medmnist_root, progress=False, wandb_mode="disabled")
    assert rec["metrics"]["epochs_run"] == 1 and 0 <= rec["metrics"]["test_auc"] <= 1


class Stop(Exception):
    pass


@pytest.mark.parametrize("name", LEARNED)
def test_resume_after_interruption_is_bit_identical(name, tmp_path):
    spec = make_spec("digits/sklearn", f"rand-m9-n2+{name}", 0, {"epochs": 2})
    straight = run_spec(spec, tmp_path / "a", progress=False, wandb_mode="disabled")

    def crash_after_1(epoch, row):
        if epoch == 1:
            raise Stop("simulated preemption")

    with pytest.raises(Stop):
        run_spec(spec, tmp_path / "b", progress=False, wandb_mode="disabled", on_epoch_end=crash_after_1)
    resumed = run_spec(spec, tmp_path / "b", progress=False, wandb_mode="disabled")
    assert resumed["metrics"] == straight["metrics"]
    from bench.store import ResultsStore

    rows = [ResultsStore(tmp_path / d).read_metrics(spec.key) for d in "ab"]
    timing = TIMING_KEYS  # wall-clock fields: never reproduced exactly
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows[0]] == \
           [{k: v for k, v in r.items() if k not in timing} for r in rows[1]]
