"""batch_sample_transform: the per-image policy, applied to a whole batch (baselines/batched.py).

The per-image path (sample_transform) is the reference: same generators -> same ops drawn, same
generator consumption, and the same images (bit-identical for colour/histogram ops; geometric ops
within GEOMETRIC_TOLERANCE, which on CPU is also exact today).
"""
from __future__ import annotations

import pytest
import torch

import baselines
from baselines import batched_path_default, create_method, list_methods
from baselines.batched import GEOMETRIC_TOLERANCE, batch_apply_ops
from baselines.image_policies import SPACE_NAMES, _apply_one, _magnitudes, op_space

SAMPLE_POLICIES = [m for m in list_methods() if create_method(m).has_sample_stage]
SHAPES = [(1, 28), (3, 28), (1, 32), (3, 32), (1, 64), (3, 64)]
GEOMETRIC = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"}
B = 48


def gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed * 10_007 + i) for i in range(n)]


def images(n: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    # Smooth random images: pure noise hides some ops (equalize/autocontrast barely act on it).
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 256, (n, c, max(size // 4, 1), max(size // 4, 1)), generator=g).float()
    big = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    return big.round().clamp(0, 255).to(torch.uint8)


def image_policy(up):
    return getattr(up, "inner", up)  # noisy(P,METHOD) draws exactly as METHOD


def per_image(up, x, generators):
    return torch.stack([up.sample_transform(img, g) for img, g in zip(x, generators)])


def assert_agree(ref: torch.Tensor, out: torch.Tensor, ops) -> None:
    """Exact where an image had no geometric op; at most GEOMETRIC_TOLERANCE of its pixels off elsewhere."""
    assert out.dtype == torch.uint8 and out.shape == ref.shape
    for i, image_ops in enumerate(ops):
        differ = (ref[i] != out[i]).float().mean().item()
        if any(name in GEOMETRIC for name, _ in image_ops):
            assert differ <= GEOMETRIC_TOLERANCE, (i, image_ops, differ)
        else:
            assert differ == 0, (i, image_ops, differ)


def test_every_method_has_a_batched_sample_stage():
    for policy in list_methods():
        up = create_method(policy)
        x = images(4, 3, 8)
        out = up.batch_sample_transform(x, gens(4))
        assert out.shape == x.shape and out.dtype == torch.uint8
        if not up.has_sample_stage:
            assert torch.equal(out, x)
        assert up.has_batched_sample_stage == isinstance(image_policy(up), baselines.image_policies.ImagePolicy)


@pytest.mark.parametrize("policy", SAMPLE_POLICIES)
def test_same_seed_draws_the_same_ops_and_consumes_the_same(policy):
    up = create_method(policy)
    a, b = gens(B, 1), gens(B, 1)
    assert image_policy(up).batch_draw_ops(32, 32, a) == [image_policy(up).draw_ops(32, 32, g) for g in b]
    x = images(B, 3, 32)
    a, b = gens(B, 2), gens(B, 2)
    up.batch_sample_transform(x, a)
    per_image(up, x, b)
    # Each generator is left where the per-image path leaves it: nothing drawn per batch, nothing skipped.
    assert all(torch.equal(ga.get_state(), gb.get_state()) for ga, gb in zip(a, b))


@pytest.mark.parametrize("c,size", SHAPES)
@pytest.mark.parametrize("policy", SAMPLE_POLICIES)
def test_batched_images_agree_with_per_image(policy, c, size):
    up = create_method(policy)
    x = images(B, c, size, seed=size + c)
    x0 = x.clone()
    before = torch.get_rng_state()
    out = up.batch_sample_transform(x, gens(B, 3))
    assert torch.equal(torch.get_rng_state(), before), "global RNG touched"
    assert torch.equal(x, x0), "input modified in place"
    ops = image_policy(up).batch_draw_ops(size, size, gens(B, 3))
    names = {name for image_ops in ops for name, _ in image_ops}
    assert names & GEOMETRIC and names - GEOMETRIC, "the batch should mix geometric and colour ops"
    assert_agree(per_image(up, x, gens(B, 3)), out, ops)


@pytest.mark.parametrize("space", sorted(SPACE_NAMES))
def test_every_op_and_magnitude_in_one_group(space):
    """One group per op holding every magnitude bin with both signs: per-image parameters, not one per group."""
    x = images(62, 3, 28, seed=5)
    for name in op_space(space):
        mags, signed = _magnitudes(space, name, 31, 28, 28)
        values = [0.0] * 62 if mags is None else [m * (-1 if signed and i >= 31 else 1) for i, m in enumerate(mags + mags)]
        ops = [[(name, v)] for v in values]
        ref = torch.stack([_apply_one(img, name, v) for img, v in zip(x, values)])
        assert_agree(ref, batch_apply_ops(x, ops, _apply_one), ops)
        # also in a mixed batch where the group is a strict subset (index_select / index_copy_ path)
        mixed = [o if i % 2 else [("Invert", 0.0)] for i, o in enumerate(ops)]
        ref_mixed = torch.stack([_apply_one(img, *o[0]) for img, o in zip(x, mixed)])
        assert_agree(ref_mixed, batch_apply_ops(x, mixed, _apply_one), mixed)


def test_ops_are_applied_in_each_images_own_order():
    x = images(2, 3, 28)
    ops = [[("Posterize", 2.0), ("Brightness", 0.5)], [("Brightness", 0.5), ("Posterize", 2.0)]]
    ref = torch.stack([_apply_one(_apply_one(img, *o[0]), *o[1]) for img, o in zip(x, ops)])
    assert torch.equal(batch_apply_ops(x, ops, _apply_one), ref)
    assert not torch.equal(ref[0], _apply_one(_apply_one(x[0], *ops[1][0]), *ops[1][1]))  # order matters here


@pytest.mark.parametrize("policy", SAMPLE_POLICIES)
def test_different_seeds_give_different_images(policy):
    up = create_method(policy)
    x = images(B, 3, 28)
    a, b = up.batch_sample_transform(x, gens(B, 4)), up.batch_sample_transform(x, gens(B, 5))
    assert (a != b).flatten(1).any(dim=1).float().mean() > 0.5
    assert torch.equal(a, up.batch_sample_transform(x, gens(B, 4)))


def test_bad_batches_are_rejected():
    up = create_method("rand-m9-n2")
    with pytest.raises(ValueError, match="uint8"):
        up.batch_sample_transform(torch.rand(2, 3, 8, 8), gens(2))
    with pytest.raises(ValueError, match="uint8"):
        up.batch_sample_transform(images(2, 3, 8)[0], gens(3))
    with pytest.raises(ValueError, match="generators"):
        up.batch_sample_transform(images(2, 3, 8), gens(3))


def test_batched_path_default_wherever_a_batched_kernel_exists():
    for policy in list_methods():
        up = create_method(policy)
        expected = bool(image_policy(up).has_batched_sample_stage)
        assert batched_path_default(policy) is expected is batched_path_default(up)
    for policy in ("rand-m9-n2", "autoaug-cifar10", "autoaug-imagenet", "trivialaug"):
        assert batched_path_default(policy) is True
    assert batched_path_default("none") is False and batched_path_default("mixup-a0.2") is False


@pytest.mark.parametrize("c,size", [(1, 28), (3, 28), (3, 32)])
@pytest.mark.parametrize("policy", [m for m in SAMPLE_POLICIES if batched_path_default(m)])
def test_default_batched_path_is_bit_identical_on_cpu(policy, c, size):
    """Where auto picks the batched path, it must give the per-image images exactly (CPU, where the
    loader augments): so a run's images, results and key do not depend on the path."""
    up = create_method(policy)
    for seed in (4, 5):
        x = images(B, c, size, seed=seed)
        assert torch.equal(up.batch_sample_transform(x, gens(B, seed)), per_image(up, x, gens(B, seed)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("c,size", [(1, 28), (3, 32)])
@pytest.mark.parametrize("policy", SAMPLE_POLICIES)
def test_batched_on_cuda_agrees_with_per_image(policy, c, size):
    up = create_method(policy)
    x = images(B, c, size)
    out = up.batch_sample_transform(x.cuda(), gens(B, 6))
    assert out.is_cuda
    ops = image_policy(up).batch_draw_ops(size, size, gens(B, 6))
    assert_agree(per_image(up, x, gens(B, 6)), out.cpu(), ops)
