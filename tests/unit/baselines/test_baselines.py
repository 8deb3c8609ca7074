"""baselines/: registry and policy strings, per-sample and batch stages, determinism, label noise.

Most tests are parametrised over list_methods(), so a newly registered method is exercised as soon as
it is registered.
"""
from __future__ import annotations

import dataclasses
import math
import pickle

import pytest
import torch
from torchvision.transforms import v2

import baselines
from baselines import (Augmented, CutMix, MixUp, Noisy, PolicyError, create_method, list_methods,
                       method_grammars)
from baselines.mixers import MixParams, sample_beta

# image methods: the tabular family (baselines/tabular.py) has its own tests in tests/unit/bench/tasks/test_tabular.py
ALL_METHODS = list_methods()
METHODS = [m for m in ALL_METHODS if "image" in create_method(m).modalities]
SHAPES = [(3, 28, 28), (1, 28, 28), (1, 8, 8)]
B, K = 8, 5


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(shape, n=B, seed=0) -> torch.Tensor:
    # Smooth-ish random images: pure noise hides some ops (equalize/autocontrast barely act on it).
    g = gen(seed)
    base = torch.randint(0, 256, (n, shape[0], max(shape[1] // 4, 1), max(shape[2] // 4, 1)), generator=g)
    big = torch.nn.functional.interpolate(base.float(), size=shape[1:], mode="bilinear", align_corners=False)
    return big.round().clamp(0, 255).to(torch.uint8)


def batch(shape, soft=False, seed=0):
    g = gen(seed)
    x = torch.randn(B, *shape, generator=g)
    if soft:
        y = torch.rand(B, K, generator=g).softmax(dim=1)
    else:
        y = torch.nn.functional.one_hot(torch.randint(K, (B,), generator=g), K).float()
    return x, y


def assert_simplex(y: torch.Tensor) -> None:
    assert (y >= 0).all()
    torch.testing.assert_close(y.sum(dim=1), torch.ones(y.shape[0]), atol=1e-5, rtol=0)


# ---- every registered method ------------------------------------------------------------------

def test_list_methods_cover_the_families():
    assert METHODS == ["none", "rand-m9-n2", "autoaug-imagenet", "autoaug-cifar10", "autoaug-svhn",
                       "trivialaug", "cutmix-a1.0", "mixup-a0.2", "noisy(0.3,rand-m9-n2)"]
    assert set(ALL_METHODS) - set(METHODS) == {"gauss-s0.1", "scarf-p0.3", "fmixup-a0.2", "tcutmix-p0.3", "smote-k5"}
    assert "rand-m{M}-n{N}" in method_grammars() and "noisy({P},{METHOD})" in method_grammars()


@pytest.mark.parametrize("policy", METHODS)
def test_round_trip_and_config(policy):
    up = create_method(policy)
    assert str(up) == policy
    assert create_method(str(up)) == up  # frozen dataclass equality: same config
    assert hash(up) == hash(create_method(policy))
    assert isinstance(up, baselines.Upstream)
    assert isinstance(up.modalities, frozenset) and "image" in up.modalities
    assert pickle.loads(pickle.dumps(up)) == up  # DataLoader workers may receive it pickled
    with pytest.raises(dataclasses.FrozenInstanceError):
        up.some_field = 1


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("policy", METHODS)
def test_sample_stage(policy, shape):
    up = create_method(policy)
    imgs = images(shape)
    state = torch.get_rng_state()
    torch.manual_seed(0)
    out = [up.sample_transform(img, gen(100 + i)) for i, img in enumerate(imgs)]
    torch.manual_seed(1)  # a different global state must not change anything
    again = [up.sample_transform(img, gen(100 + i)) for i, img in enumerate(imgs)]
    for o, a, img in zip(out, again, imgs):
        assert o.dtype == torch.uint8 and o.shape == img.shape
        assert torch.equal(o, a)
    torch.set_rng_state(state)
    before = torch.get_rng_state()
    up.sample_transform(imgs[0], gen(7))
    assert torch.equal(torch.get_rng_state(), before), "global RNG touched"
    if not up.has_sample_stage:
        assert all(torch.equal(o, img) for o, img in zip(out, imgs))


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("policy", METHODS)
def test_batch_stage(policy, shape, soft):
    up = create_method(policy)
    x, y = batch(shape, soft)
    x0, y0 = x.clone(), y.clone()
    before = torch.get_rng_state()
    out = up.batch_transform(x, y, gen(5))
    assert torch.equal(torch.get_rng_state(), before), "global RNG touched"
    assert torch.equal(x, x0) and torch.equal(y, y0), "inputs modified in place"
    assert isinstance(out, Augmented)
    assert out.x.shape == x.shape and out.x.dtype == x.dtype
    assert out.y.shape == y.shape and out.y.dtype == y.dtype
    assert_simplex(out.y)
    if isinstance(up, Noisy):
        assert out.corrupted.dtype == torch.bool and out.corrupted.shape == (B,)
    else:
        assert out.corrupted is None
    if not up.has_batch_stage:
        assert torch.equal(out.x, x) and torch.equal(out.y, y)
    torch.manual_seed(123)
    again = up.batch_transform(x, y, gen(5))
    for a, b in zip(out, again):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("policy", [m for m in METHODS if create_method(m).has_sample_stage])
def test_random_policies_change_images(policy):
    up = create_method(policy)
    img = images((3, 28, 28), n=1)[0]
    outs = [up.sample_transform(img, gen(s)) for s in range(20)]
    assert any(not torch.equal(o, img) for o in outs)
    assert len({o.numpy().tobytes() for o in outs}) > 5, "different seeds should give different images"


# ---- per-sample policies reproduce torchvision exactly ----------------------------------------

TORCHVISION = {
    "rand-m9-n2": lambda: v2.RandAugment(num_ops=2, magnitude=9),
    "rand-m30-n3": lambda: v2.RandAugment(num_ops=3, magnitude=30),
    "autoaug-imagenet": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET),
    "autoaug-cifar10": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10),
    "autoaug-svhn": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.SVHN),
    "trivialaug": lambda: v2.TrivialAugmentWide(),
}


@pytest.mark.parametrize("policy", TORCHVISION)
def test_sample_stage_matches_torchvision(policy):
    """Our generator-driven draws mirror torchvision's global-RNG draws call for call."""
    ours, theirs = create_method(policy), TORCHVISION[policy]()
    for shape in SHAPES:
        for seed, img in enumerate(images(shape, n=8, seed=3)):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                expected = theirs(img)
            assert torch.equal(ours.sample_transform(img, gen(seed)), expected), (policy, shape, seed)


def test_sample_stage_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        create_method("rand-m9-n2").sample_transform(torch.rand(3, 8, 8), gen(0))


# ---- mixers -----------------------------------------------------------------------------------

def class_images(n=8, c=1, h=16, w=12):
    """Sample i is the constant image i and has the one-hot label i: mixing is readable."""
    values = torch.arange(n, dtype=torch.float32)
    return values.view(n, 1, 1, 1).expand(n, c, h, w).clone(), torch.eye(n), values


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_cutmix_label_mass_is_pasted_area(alpha):
    up = CutMix(alpha)
    x, y, values = class_images()
    for seed in range(30):
        out = up.batch_transform(x, y, gen(seed))
        pasted = out.x != x  # [B, C, H, W]
        moved = pasted.flatten(1).any(dim=1)
        # One box for the whole batch: every sample that got a patch got it in the same place.
        if moved.any():
            first = pasted[moved][0]
            assert all(torch.equal(p, first) for p in pasted[moved])
        for i in range(len(x)):
            frac = pasted[i].float().mean().item()
            assert out.y[i, i].item() == pytest.approx(1 - frac, abs=1e-6)
            if frac > 0:
                partner = int(out.x[i][pasted[i]][0])
                assert out.y[i, partner].item() == pytest.approx(frac, abs=1e-6)
        # The mean pixel is the label-weighted mean of the class values.
        torch.testing.assert_close(out.x.mean(dim=(1, 2, 3)), out.y @ values)


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixup_lambda_matches_mixed_image(alpha):
    up = MixUp(alpha)
    x, y, values = class_images()
    for seed in range(30):
        out = up.batch_transform(x, y, gen(seed))
        # Pixelwise: image = label-weighted mix of the class images, so image and label share lambda.
        torch.testing.assert_close(out.x, (out.y @ values).view(-1, 1, 1, 1).expand_as(x))
        # One lambda for the whole batch, the drawn one: each sample keeps weight lam on its own class.
        params = up.draw(len(x), x.shape[-2], x.shape[-1], gen(seed))
        own = out.y.diagonal()
        paired = params.perm != torch.arange(len(x))
        torch.testing.assert_close(own[paired], torch.full((int(paired.sum()),), params.lam))
        assert (own[~paired] == 1).all()


@pytest.mark.parametrize("cls,policy", [(CutMix, v2.CutMix), (MixUp, v2.MixUp)])
def test_mixers_match_torchvision_with_roll_pairing(cls, policy):
    """With torchvision's pairing (perm = roll by one) our lambda, box and mix are torchvision's."""
    x, y = batch((3, 20, 24), soft=True)
    for seed in range(10):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            ex, ey = policy(alpha=0.7)(x, y)
        up = cls(0.7)
        params = up.draw(B, x.shape[-2], x.shape[-1], gen(seed))
        roll = (torch.arange(B) - 1) % B
        out = up.apply(x, y, MixParams(params.lam, roll, params.box))
        assert torch.equal(out.x, ex) and torch.equal(out.y, ey), seed


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_beta_draws_have_beta_moments(alpha):
    g = gen(0)
    lam = torch.tensor([sample_beta(alpha, g) for _ in range(2000)])
    assert ((lam >= 0) & (lam <= 1)).all() and torch.isfinite(lam).all()
    assert lam.mean().item() == pytest.approx(0.5, abs=0.03)
    assert lam.var().item() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.1)


def test_mixer_permutation_is_random_per_batch():
    up = MixUp(1.0)
    perms = {tuple(up.draw(16, 8, 8, gen(s)).perm.tolist()) for s in range(10)}
    assert len(perms) == 10


# ---- noisy ------------------------------------------------------------------------------------

@pytest.mark.parametrize("inner", ["none", "mixup-a0.2", "cutmix-a1.0", "rand-m9-n2"])
def test_noisy_flips_p_of_labels_exactly_where_flagged(inner):
    p, n, k = 0.3, 20000, 10
    up = create_method(f"noisy({p},{inner})")
    assert up.inner == create_method(inner)
    g = gen(1)
    x = torch.randn(n, 1, 4, 4, generator=g)
    y = torch.nn.functional.one_hot(torch.randint(k, (n,), generator=g), k).float()
    out = up.batch_transform(x, y, gen(2))
    clean = up.inner.batch_transform(x, y, gen(2))  # the inner stage draws first, from the same stream
    assert torch.equal(out.x, clean.x)
    flipped = (out.y != clean.y).any(dim=1)
    assert torch.equal(out.corrupted, flipped)
    assert out.corrupted.float().mean().item() == pytest.approx(p, abs=0.015)
    new = out.y[out.corrupted]
    assert torch.equal(new, torch.nn.functional.one_hot(new.argmax(1), k).float())
    old_class = clean.y[out.corrupted].argmax(1)
    assert (new.argmax(1) != old_class).all()
    # Uniform over the other classes: each of the K-1 is hit about equally often.
    shift = (new.argmax(1) - old_class) % k
    counts = torch.bincount(shift, minlength=k)[1:].float()
    assert counts.min() > 0.8 * counts.mean()


@pytest.mark.parametrize("p,expected", [(0.0, 0.0), (1.0, 1.0)])
def test_noisy_extremes(p, expected):
    x, y = batch((1, 8, 8))
    out = Noisy(p, create_method("none")).batch_transform(x, y, gen(0))
    assert out.corrupted.float().mean().item() == expected


def test_noisy_wraps_its_inner_method():
    up = create_method("noisy(0.3,cutmix-a1.0)")
    assert isinstance(up.inner, CutMix) and str(up) == "noisy(0.3,cutmix-a1.0)"
    assert up.modalities == up.inner.modalities
    assert create_method("noisy(0.3,none)").modalities == create_method("none").modalities
    rand = create_method("noisy(0.1,rand-m9-n2)")
    img = images((3, 28, 28), n=1)[0]
    assert torch.equal(rand.sample_transform(img, gen(4)), rand.inner.sample_transform(img, gen(4)))
    assert rand.has_sample_stage and not create_method("noisy(0.1,mixup-a0.2)").has_sample_stage


# ---- policy strings ---------------------------------------------------------------------------

@pytest.mark.parametrize("given,canonical", [
    ("rand-m09-n2", "rand-m9-n2"), ("cutmix-a1", "cutmix-a1.0"), ("mixup-a.2", "mixup-a0.2"),
    (" noisy(0.30, rand-m9-n2) ", "noisy(0.3,rand-m9-n2)"), ("rand-m0-n1", "rand-m0-n1"),
    ("rand-m30-n3", "rand-m30-n3"), ("noisy(0,none)", "noisy(0.0,none)"),
    ("noisy(1,mixup-a1e-3)", "noisy(1.0,mixup-a0.001)"),
])
def test_lenient_spellings_print_canonically(given, canonical):
    assert str(create_method(given)) == canonical
    assert str(create_method(canonical)) == canonical


@pytest.mark.parametrize("bad", [
    "randaug", "rand-m99-n2", "rand-m-1-n2", "rand-m9-n0", "rand-m9", "cutmix-a-1", "cutmix-a0",
    "mixup-a", "mixup-a1e999", "autoaug-foo", "noisy(1.5,none)", "noisy(-0.1,none)", "noisy(0.3,bogus)",
    "noisy(0.3,rand-m99-n2)", "noisy(0.3,noisy(0.1,none))", "noisy(0.3)", "", "NONE", "rand-m9-n2\nx",
])
def test_bad_policies_raise_one_line_policy_error(bad):
    with pytest.raises(PolicyError) as info:
        create_method(bad)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert repr(bad) in msg and "\n" not in msg
    assert all(grammar in msg for grammar in method_grammars())


def test_non_string_policy_is_a_policy_error():
    with pytest.raises(PolicyError):
        create_method(None)


def test_direct_construction_is_validated():
    with pytest.raises(PolicyError):
        baselines.RandAugment(magnitude=31, num_ops=2)
    with pytest.raises(PolicyError):
        baselines.RandAugment(magnitude=9.5, num_ops=2)
    with pytest.raises(PolicyError):
        MixUp(math.nan)
    assert str(CutMix(2)) == "cutmix-a2.0"


def test_register_method_extends_the_registry():
    from baselines import registry

    @registry.register_method("flipx", grammar="flipx", pattern="flipx", examples=["flipx"])
    def _flip():
        return baselines.NoAugmentation()

    try:
        assert "flipx" in list_methods() and "flipx" in method_grammars()
        assert isinstance(create_method("flipx"), baselines.NoAugmentation)
        with pytest.raises(ValueError, match="twice"):
            registry.register_method("flipx", grammar="flipx", pattern="flipx", examples=[])(_flip)
    finally:
        registry.unregister_method("flipx")


# ---- accelerators: data on the GPU, generator on the CPU ---------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("policy", [m for m in METHODS if create_method(m).has_batch_stage])
def test_batch_stage_on_cuda_matches_cpu(policy):
    up = create_method(policy)
    x, y = batch((3, 16, 16), soft=True)
    cpu = up.batch_transform(x, y, gen(3))
    gpu = up.batch_transform(x.cuda(), y.cuda(), gen(3))
    for a, b in zip(cpu, gpu):
        assert (a is None and b is None) or (b.is_cuda and torch.allclose(a, b.cpu()))
