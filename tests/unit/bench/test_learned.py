"""The learned-augmentation competitors (augerino, augnet, adautomix, softaug) as learners: their
defining behaviour, end-to-end runs from the CLI, exact resume, and the pairs they refuse."""
import contextlib
import functools
import json
import math
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


# ---- semantics: the runs of the rebuilt learners get new keys ----------------------------------------
@pytest.mark.parametrize("name", LEARNED)
def test_rebuilt_learners_carry_semantics_2(name):
    assert get_learner_class(name).semantics == 2


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


def test_augerino_widths_are_softplus_and_start_at_ln2(tmp_path):
    learner, _ = make_learner("augerino", tmp_path)
    assert torch.allclose(learner.widths(), torch.full((6,), math.log(2.0)))
    with torch.no_grad():
        learner.width_param.fill_(-50.0)
    assert (learner.widths() > 0).all()  # a width never turns negative


def test_augerino_draws_half_widths_and_scales_translations(tmp_path):
    from bench.learners import augerino as mod

    learner, _ = make_learner("augerino", tmp_path, {"init_width": 0.8})
    seen = []
    real = mod.lie_affine
    mod.lie_affine = lambda eps: (seen.append(eps), real(eps))[1]
    try:
        learner.sample(torch.zeros(4000, 1, 8, 8), learner.widths().detach(), torch.Generator().manual_seed(0))
    finally:
        mod.lie_affine = real
    eps = seen[0]
    bound = torch.tensor([0.1 * 0.4] * 2 + [0.4] * 4)  # U[-w/2, w/2], translations x trans_scale 0.1
    assert (eps.abs() <= bound + 1e-6).all()
    assert torch.allclose(eps.abs().max(0).values, bound, rtol=0.01)
    assert torch.allclose(eps.mean(0), torch.zeros(6), atol=0.02)


def test_augerino_regulariser_widens_when_data_loss_is_flat(tmp_path):
    learner, ctx = make_learner("augerino", tmp_path, {"reg": 0.5}, model=ConstantModel())
    w0 = learner.widths().detach().clone()
    opt = torch.optim.SGD(learner.extra_parameters(), lr=0.1)
    for i in range(3):
        loss, _ = learner.loss(step_batch(i))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (learner.widths().detach() > w0).all()
    # without the regulariser nothing moves: the data loss alone is flat in the widths
    flat, _ = make_learner("augerino", tmp_path, {"reg": 0.0}, model=ConstantModel())
    loss, _ = flat.loss(step_batch(0))
    loss.backward()
    assert float(flat.width_param.grad.abs().max()) == 0.0


def test_augerino_regulariser_is_the_norm_and_switches_off_at_width_10(tmp_path):
    learner, _ = make_learner("augerino", tmp_path, {"reg": 0.01})
    assert float(learner.regulariser().detach()) == pytest.approx(0.01 * math.sqrt(6) * math.log(2.0))
    with torch.no_grad():
        learner.width_param[2] = 10.5  # softplus(10.5) > 10: the original's safe loss stops rewarding width
    assert float(learner.regulariser().detach()) == 0.0


def test_augerino_prediction_is_the_mean_log_softmax_over_copies(tmp_path):
    learner, ctx = make_learner("augerino", tmp_path, {"test_copies": 3, "init_width": 0.6})
    ctx.model.eval()
    x = digits_batch()[0][:8]
    with torch.no_grad():
        a, b = learner.predict(x), learner.predict(x)
        gen = ctx.generator("augerino", "predict")
        manual = torch.stack([torch.log_softmax(ctx.model(learner.sample(x, learner.widths(), gen)), 1)
                              for _ in range(3)]).mean(0)
    assert torch.equal(a, b)
    assert torch.allclose(a, manual, atol=1e-6)
    assert torch.softmax(a, 1).sum(1).allclose(torch.ones(8))


def test_best_epoch_weights_find_their_own_widths(tmp_path):
    learner, ctx = make_learner("augerino", tmp_path)
    learner.end_epoch(0, last=False)
    kept = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    width0 = learner.width_param.detach().clone()
    for _ in train_steps(learner, ctx, 2):
        pass
    learner.end_epoch(1, last=True)
    ctx.model.load_state_dict(kept)  # what finish() does with the best epoch
    assert torch.equal(learner.matched.lookup(ctx.model)["width"], width0)
    assert not torch.equal(learner.width_param.detach(), width0)


def test_augnet_loss_subtracts_the_original_regulariser(tmp_path):
    """loss = data loss - 0.5 ||concat(w * clamp(mu))||, not squared; at init (2 layers, uniform weights over 8
    transforms, magnitudes 0.5) the term is 0.5 * sqrt(16) * 0.5 / 8."""
    learner, ctx = make_learner("augnet", tmp_path)
    assert float(learner.regulariser().detach()) == pytest.approx(0.5 * 4 * 0.5 / 8)
    batch = step_batch(0)
    loss, logits = learner.loss(batch)
    data = ctx.task.loss(logits, batch.y_soft)
    assert float(data - loss) == pytest.approx(0.5 * 4 * 0.5 / 8, abs=1e-6)


def test_augnet_regulariser_raises_magnitudes_and_rewards_the_strongest_transform_on_a_flat_loss(tmp_path):
    learner, ctx = make_learner("augnet", tmp_path, model=ConstantModel())
    with torch.no_grad():  # break the symmetry: one transform starts stronger in each layer
        for layer in learner.module:
            layer.magnitude_raw[2] = 0.6
    opt = torch.optim.Adam(learner.extra_parameters(), lr=5e-3)
    for i in range(30):
        loss, _ = learner.loss(step_batch(i))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for layer in learner.module:
        assert float(layer.weights()[2]) > 0.5  # from 1/8: the norm rewards the strongest transform
        assert float(layer.magnitudes().min()) > 0.52 and float(layer.magnitudes()[2]) > 0.7  # from 0.5 and 0.6


def test_augnet_inference_applies_one_drawn_transform_per_layer(tmp_path):
    from bench.learners.augnet import TRANSFORMS, apply_transform

    learner, ctx = make_learner("augnet", tmp_path, {"layers": 1})
    layer = learner.module[0]
    x = digits_batch()[0][:16]
    for seed in range(4):
        out = layer.sample_forward(x, torch.Generator().manual_seed(seed))
        gen = torch.Generator().manual_seed(seed)
        k = int(torch.multinomial(layer.weights().detach(), 1, generator=gen))
        amounts = layer.amounts(len(x), layer.magnitudes(), gen, x.device)
        assert torch.equal(out, apply_transform(TRANSFORMS[k], x, amounts[:, k]))
    with torch.no_grad():
        layer.weight_logits[TRANSFORMS.index("brightness")] += 1.0  # / temperature 0.01: a certain draw
    out = layer.sample_forward(x, torch.Generator().manual_seed(0))
    shift = (out - x).flatten(1)
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-6)  # brightness alone: a constant per image


def test_augnet_prediction_averages_log_softmax_and_is_reproducible(tmp_path):
    learner, ctx = make_learner("augnet", tmp_path, {"test_copies": 3})
    ctx.model.eval()
    x = digits_batch()[0][:8]
    a, b = learner.predict(x), learner.predict(x)
    assert torch.equal(a, b) and a.shape == (8, 10)
    assert (a <= 0).all()  # a mean of log-probabilities
    with torch.no_grad():
        plain = torch.log_softmax(ctx.model(x), 1)
    assert not torch.allclose(a, plain, atol=1e-4)


# ---- AdAutoMix: generator on the EMA teacher, classifier on its own mix -------------------------------------
def test_adautomix_draws_one_beta_ratio_set_per_batch(tmp_path):
    learner, _ = make_learner("adautomix", tmp_path)
    counts = set()
    for seed in range(40):
        (gp, gl), (cp, cl) = learner.draw(16, torch.Generator().manual_seed(seed))
        counts.add(len(gp))
        assert len(gp) == len(gl) == len(cp) == len(cl) and sum(gl) == pytest.approx(1) and sum(cl) == pytest.approx(1)
        if len(gp) == 2:  # the pair: the batch with a permutation, a ratio drawn for each of the two mixes
            assert torch.equal(gp[0], torch.arange(16)) and torch.equal(cp[0], torch.arange(16))
            assert gl[0] != cl[0]
        else:
            assert gl == cl
    assert counts == {2, 3}  # random count up to mix_num 3


def test_adautomix_masks_partition_pixels_and_labels_follow_ratios(tmp_path):
    learner, ctx = make_learner("adautomix", tmp_path, {"mix_num": 3, "random_count": False})
    x, _, t = digits_batch()
    (perms, lam), _ = learner.draw(len(x), torch.Generator().manual_seed(0))
    with torch.no_grad():
        maps = learner.teacher_maps(x)
        masks = learner.masks(maps, perms, lam, x.shape[-2:])
    assert masks.shape == (len(x), 3, 8, 8) and torch.allclose(masks.sum(1), torch.ones(len(x), 8, 8), atol=1e-5)
    ctx.model.train()
    learner.loss(step_batch(0))
    last = learner.last
    assert torch.allclose(last["y_mix"], sum(l * t[p] for p, l in zip(last["perms"], last["lam"])), atol=1e-6)


def test_adautomix_classifier_loss_is_batch_loss_plus_mix_loss(tmp_path):
    """Two images per mix: loss = CE(model(x), y) + CE(model(x_mix), y_mix), and the mix term is not negligible."""
    learner, ctx = make_learner("adautomix", tmp_path, {"mix_num": 2, "random_count": False, "lam_margin": 0.0})
    ctx.model.train()
    batch = step_batch(0)
    loss, _ = learner.loss(batch)
    with torch.no_grad():
        one = ctx.task.loss(ctx.model(batch.x), batch.y_soft)
        mix = ctx.task.loss(ctx.model(learner.last["x_mix"]), learner.last["y_mix"])
    assert float(loss) == pytest.approx(float(one + mix), rel=1e-5)
    assert float(mix) > 0.1


def test_adautomix_three_image_batch_loss_shares_with_the_linear_mix(tmp_path):
    learner, ctx = make_learner("adautomix", tmp_path, {"mix_num": 3, "random_count": False})
    ctx.model.train()
    batch = step_batch(0)
    loss, _ = learner.loss(batch)
    last = learner.last
    x_lin = sum(l * batch.x[p] for p, l in zip(last["perms"], last["lam"]))
    with torch.no_grad():
        f = lambda z, y: ctx.task.loss(ctx.model(z), y)  # noqa: E731
        expected = 0.5 * f(batch.x, batch.y_soft) + 0.5 * f(x_lin, last["y_mix"]) + f(last["x_mix"], last["y_mix"])
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_adautomix_alternates_adversarial_and_cooperative_steps(tmp_path):
    learner, ctx = make_learner("adautomix", tmp_path)
    ctx.model.train()
    flags = []
    for i in range(4):
        b = step_batch(i)
        learner.loss(b)
        flags.append(learner.last["adv_steps"])
    assert flags == [1.0, 0.0, 1.0, 0.0]  # every second step (the step counter) is adversarial


def generator_run(tmp_path, adversarial, steps=15):
    # 24 px digits: a 6x6 feature map leaves the masks room; ema 0: the teacher is the trained classifier
    learner, ctx = make_learner("adautomix", tmp_path, {"gen_lr": 0.005, "ema": 0.0, "mix_num": 2, "random_count": False})
    for _ in train_steps(learner, ctx, 20, size=24):  # a classifier that has learned something
        pass
    x, _, t = digits_batch(size=24)
    (perms, lam), _ = learner.draw(len(x), torch.Generator().manual_seed(1))
    with torch.no_grad():
        maps = learner.teacher_maps(x)
    weights = [p.detach().clone() for p in ctx.model.parameters()]
    teacher = [p.detach().clone() for p in learner.teacher.parameters()]
    stats = [learner.generator_step(x, t, maps, perms, lam, adversarial) for _ in range(steps)]
    # the generator step touches neither the classifier nor the teacher
    assert all(torch.equal(p, w) for p, w in zip(ctx.model.parameters(), weights))
    assert all(torch.equal(p, w) for p, w in zip(learner.teacher.parameters(), teacher))
    return stats


@pytest.mark.slow  # two short generator runs on 24 px digits: ~20 s on a busy machine
def test_adautomix_adversarial_steps_descend_their_objective_cooperative_steps_lower_the_loss(tmp_path):
    adv = generator_run(tmp_path, adversarial=True)
    coop = generator_run(tmp_path, adversarial=False)
    assert adv[0]["gen_loss"] == pytest.approx(coop[0]["gen_loss"])  # same start
    objective = [-0.3 * s["gen_loss"] + 0.7 * s["gen_cos"] for s in adv]
    assert objective[-1] < objective[0] - 0.1  # adversarial: -0.3 L + 0.7 cos goes down:
    assert adv[-1]["gen_loss"] > adv[0]["gen_loss"] + 0.3  # harder mixes for the teacher,
    assert adv[-1]["gen_cos"] < adv[0]["gen_cos"]  # whose predictions move away from the images'
    assert coop[-1]["gen_loss"] < coop[0]["gen_loss"] - 0.2  # cooperative: AutoMix's objective, easier mixes


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


def test_softaug_loss_is_the_confidence_weighted_soft_loss_on_the_crop(tmp_path):
    learner, ctx = make_learner("softaug", tmp_path)
    ctx.model.train()
    batch = step_batch(0)
    loss, _ = learner.loss(batch)
    xs, ys, vis, p = learner.crop_and_soften(batch.x, batch.y_soft, ctx.generator("softaug", 0, 0))
    with torch.no_grad():
        per = -(ys * torch.log_softmax(ctx.model(xs), 1)).sum(1)
        plain = ctx.task.loss(ctx.model(batch.x), batch.y_soft)
    assert vis.min() < 0.9  # crops happened
    assert float(loss) == pytest.approx(float((p * per).mean()), rel=1e-5)
    assert abs(float(loss) - float(plain)) > 0.01


def test_softaug_offsets_are_rejection_sampled_not_clipped():
    from bench.learners.softaug import draw_offsets

    off = draw_offsets(20000, 8, 8, 1.0, torch.Generator().manual_seed(0))  # std 8 px: a third of draws fall outside
    assert off.abs().max() <= 8
    # redrawn, not clipped: no pile-up at the border (a clip would put ~1/3 of the draws at |8|)
    assert float((off.abs() == 8).float().mean()) < 0.05
    assert float((off == 0).float().mean()) > 0.1  # truncation toward zero: (-1, 1) -> 0


def test_softaug_fill_is_a_random_colour_per_image_and_channel(tmp_path):
    learner, ctx = make_learner("softaug", tmp_path, {"sigma": 0.6, "bg_std": 1.0})
    x = torch.full((64, 1, 8, 8), 100.0)
    xs, _, vis, _ = learner.crop_and_soften(x, torch.eye(10)[torch.zeros(64).long()], ctx.generator("softaug", 0, 1))
    cropped = vis < 1
    fills = [xs[i][xs[i] != 100.0] for i in range(64) if cropped[i]]
    assert all(torch.allclose(f, f[:1].expand_as(f)) for f in fills)  # one colour inside an image
    colours = torch.stack([f[0] for f in fills])
    assert 0.5 < float(colours.std()) < 1.5  # N(0, bg_std^2) across images


def test_softaug_crop_keeps_the_visible_fraction():
    from bench.learners.softaug import shift_crop

    x = torch.arange(2 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8) + 1
    out, vis = shift_crop(x, torch.tensor([[2, -3], [0, 0]]), torch.zeros(1, 1, 1))
    assert vis.tolist() == pytest.approx([(8 - 2) * (8 - 3) / 64, 1.0])
    assert int((out[0] != 0).sum()) == 6 * 5 and torch.equal(out[1], x[1])
    assert torch.equal(out[0, 0, 2:, :5], x[0, 0, :6, 3:])  # moved down 2, left 3
    out, vis = shift_crop(x, torch.tensor([[8, 0], [0, -8]]), torch.zeros(1, 1, 1))  # nothing left: v = 0
    assert vis.tolist() == [0.0, 0.0] and int((out != 0).sum()) == 0


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
