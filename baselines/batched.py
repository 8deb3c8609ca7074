"""Batched application of per-image drawn ops: the same policy as the per-image path, many images per call.

Batched RandAugments elsewhere (torchvision v2 on a batch, kornia) draw one op pair per batch, which is
a different policy. Here every image still draws its own ops from its own generator (exactly the
per-image `draw_ops`, so the same seed gives the same ops); only the *application* is batched: at op
position k the images are grouped by op, and each group goes through one kernel call on whatever
device the batch lives on.

Kernels take per-image parameters where that is exact, so a group is "every image whose k-th op is
Brightness" whatever their magnitudes (TrivialAugment draws one of 31 bins per image; grouping by
magnitude would leave groups of one). Ops without a per-image kernel (AutoContrast, Equalize, Invert
need no parameter) are grouped by (name, magnitude) and run through torchvision's own kernel.

Agreement with the per-image path (tests/unit/baselines/test_batched_aug.py): colour and histogram ops are
bit-identical. Geometric ops gather pixels through a source map that torchvision's own kernel computed
(on the CPU, once per op, magnitude and size), so they are bit-identical too wherever the per-image path
runs on the CPU; the tests still only promise a mismatch fraction <= GEOMETRIC_TOLERANCE for them, the
slack for a grid computed on another device rounding a sample point on a pixel boundary the other way.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence

from baselines._lazy import torch

Op = tuple[str, float]

# Largest fraction of pixels a geometric op may change versus the per-image path (see module doc).
GEOMETRIC_TOLERANCE = 0.002

_AFFINE_OPS = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"})


# ---- geometric: one gather for every affine op at this position, one source-pixel map per image ------

# Nearest interpolation makes every geometric op a fixed pixel permutation (plus zero fill) for a given
# (op, magnitude, size), and magnitudes come from a few bins (a few hundred maps per size at most), so
# the map is computed once, by torchvision itself, and each image is then a uint8 gather: no float
# round trip, no grid per call.
_SOURCE_MAPS: dict[tuple, torch.Tensor] = {}


def _source_map(name: str, magnitude: float, height: int, width: int, device: torch.device,
                apply_one: Callable[[torch.Tensor, str, float], torch.Tensor]) -> torch.Tensor:
    """int64 [H*W]: 1 + the source pixel of each output pixel, 0 where torchvision fills with 0."""
    key = (name, magnitude, height, width, device)
    if key not in _SOURCE_MAPS:
        # The op on a float image holding 1 + each pixel's index: nearest sampling copies the values
        # (exact in float32 up to 2**24 pixels) and the zero fill marks pixels mapped from outside.
        probe = torch.arange(1, height * width + 1, dtype=torch.float32).view(1, 1, height, width)
        _SOURCE_MAPS[key] = apply_one(probe, name, magnitude).reshape(-1).long().to(device)
    return _SOURCE_MAPS[key]


def _affine(imgs: torch.Tensor, ops: Sequence[Op],
            apply_one: Callable[[torch.Tensor, str, float], torch.Tensor]) -> torch.Tensor:
    g, c, h, w = imgs.shape
    index = torch.stack([_source_map(n, m, h, w, imgs.device, apply_one) for n, m in ops])  # [G, H*W]
    padded = torch.cat([imgs.new_zeros(g, c, 1), imgs.reshape(g, c, h * w)], dim=2)  # slot 0: the fill
    return padded.gather(2, index[:, None, :].expand(g, c, h * w)).view(g, c, h, w)


# ---- colour: torchvision's uint8 arithmetic with a per-image factor in place of the scalar --------------

def _factors(ops: Sequence[Op], device: torch.device, fn: Callable[[float], float] = lambda m: m) -> torch.Tensor:
    # Each value is computed in double and rounded to float32 once, as a Python scalar is in torchvision.
    return torch.tensor([fn(m) for _, m in ops], dtype=torch.float32, device=device).view(-1, 1, 1, 1)


def _blend(img1: torch.Tensor, img2: torch.Tensor, ops: Sequence[Op]) -> torch.Tensor:
    ratio = _factors(ops, img1.device, lambda m: 1.0 + m)
    alpha = _factors(ops, img1.device, lambda m: 1.0 - (1.0 + m))
    # addcmul, not a separate multiply and add: torchvision's add_(alpha=...) is a fused multiply-add
    # on CPU, and the extra rounding of `img2 * alpha` flips a truncated uint8 now and then.
    return torch.addcmul(img1 * ratio, img2, alpha).clamp_(0, 255).to(torch.uint8)


def _grayscale(imgs: torch.Tensor) -> torch.Tensor:
    r, g, b = imgs.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3).floor_()


def _brightness(imgs: torch.Tensor, ops: Sequence[Op]) -> torch.Tensor:
    return (imgs * _factors(ops, imgs.device, lambda m: 1.0 + m)).clamp_(0, 255).to(torch.uint8)


def _color(imgs: torch.Tensor, ops: Sequence[Op]) -> torch.Tensor:
    if imgs.shape[-3] == 1:  # torchvision (like PIL) leaves grey images alone
        return imgs
    return _blend(imgs, _grayscale(imgs), ops)


def _contrast(imgs: torch.Tensor, ops: Sequence[Op]) -> torch.Tensor:
    gray = _grayscale(imgs) if imgs.shape[-3] == 3 else imgs.to(torch.float32)
    return _blend(imgs, gray.mean(dim=(-3, -2, -1), keepdim=True), ops)


def _sharpness(imgs: torch.Tensor, ops: Sequence[Op]) -> torch.Tensor:
    c, h, w = imgs.shape[-3:]
    if h <= 2 or w <= 2:
        return imgs
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = torch.tensor([[a, a, a], [a, b, a], [a, a, a]], device=imgs.device).expand(c, 1, 3, 3)
    out = imgs.to(torch.float32, copy=True)
    blurred = torch.nn.functional.conv2d(out, kernel, groups=c).round_()
    inner = out[..., 1:-1, 1:-1]  # a view: the border keeps the original pixels, as in torchvision
    inner.addcmul_(blurred.sub_(inner), _factors(ops, imgs.device, lambda m: 1.0 - (1.0 + m)))  # fused, see _blend
    return out.clamp_(0, 255).to(torch.uint8)


def _posterize(imgs: torch.Tensor, ops: Sequence[Op]) -> torch.Tensor:
    masks = [255 if int(m) >= 8 else ((1 << int(m)) - 1) << (8 - int(m)) for _, m in ops]
    return imgs & torch.tensor(masks, dtype=torch.uint8, device=imgs.device).view(-1, 1, 1, 1)


def _solarize(imgs: torch.Tensor, ops: Sequence[Op]) -> torch.Tensor:
    return torch.where(imgs >= _factors(ops, imgs.device, lambda m: 255.0 * m), imgs.bitwise_not(), imgs)


_PER_IMAGE_KERNELS: dict[str, Callable[[torch.Tensor, Sequence[Op]], torch.Tensor]] = {
    "Brightness": _brightness, "Color": _color, "Contrast": _contrast, "Sharpness": _sharpness,
    "Posterize": _posterize, "Solarize": _solarize,
}


def _group_key(name: str, magnitude: float):
    if name in _AFFINE_OPS:
        return "affine"
    if name in _PER_IMAGE_KERNELS:
        return name
    return name, magnitude  # parameterless ops: one torchvision call per (name, magnitude)


def batch_apply_ops(imgs: torch.Tensor, ops: Sequence[Sequence[Op]],
                    apply_one: Callable[[torch.Tensor, str, float], torch.Tensor]) -> torch.Tensor:
    """imgs uint8 [B,C,H,W]; ops[i] the ops drawn for image i; apply_one(group, name, magnitude) is the
    per-image path's kernel for the ops without a per-image-parameter kernel here."""
    out = imgs
    depth = max((len(o) for o in ops), default=0)
    for k in range(depth):  # op k of every image before op k+1 of any: each image keeps its own order
        groups: dict[object, tuple[list[int], list[Op]]] = defaultdict(lambda: ([], []))
        untouched = []
        for i, image_ops in enumerate(ops):
            if k < len(image_ops) and image_ops[k][0] != "Identity":
                idx, members = groups[_group_key(*image_ops[k])]
                idx.append(i)
                members.append(image_ops[k])
            else:
                untouched.append(i)
        # Results are concatenated and put back in batch order with one index_select: index_copy_ per
        # group was the largest single cost on CPU.
        parts, order = [], []
        if untouched:
            parts.append(out.index_select(0, torch.tensor(untouched, device=imgs.device)))
            order += untouched
        for key, (idx, members) in groups.items():
            group = out if len(idx) == len(ops) else out.index_select(0, torch.tensor(idx, device=imgs.device))
            if key == "affine":
                parts.append(_affine(group, members, apply_one))
            elif isinstance(key, str):
                parts.append(_PER_IMAGE_KERNELS[key](group, members))
            else:
                parts.append(apply_one(group, *key))
            order += idx
        if len(parts) == 1:  # one group holding the whole batch, already in order
            out = parts[0]
            continue
        position = [0] * len(order)
        for pos, i in enumerate(order):
            position[i] = pos
        out = torch.cat(parts).index_select(0, torch.tensor(position, device=imgs.device))
    return out if out is not imgs else imgs.clone()


# ---- which path the data loader should use -----------------------------------------------------------

# The batched path is the default wherever a policy has one: on the CPU (where the data loader
# augments) it gives the per-image path's images bit for bit (tests/unit/baselines/test_batched_aug.py checks every
# policy, op and magnitude exactly), so the run's images, results and key do not depend on the path.
# It measured 2.6-6x the per-image path's images/s per CPU core (batch 256, 28 and 32 px:
#     OMP_NUM_THREADS=1 python -m benchmarks.bench_augment --threads 1 --batch 256 --reps 5
# rand-m9-n2 4.9-5.9x, autoaug-cifar10 2.6-3.7x, autoaug-imagenet 3.4-4.2x, trivialaug 3.0-6.0x).
# Policies without a batched kernel (has_batched_sample_stage False) keep the per-image path.


def batched_path_default(policy) -> bool:
    """Whether the data loader should use batch_sample_transform by default for `policy` (an Upstream or
    a policy string): wherever it has a batched implementation (bit-identical to the per-image path)."""
    if isinstance(policy, str):
        from baselines.registry import create_method  # late: the registry imports the policies, which import us
        policy = create_method(policy)
    inner = getattr(policy, "inner", None)  # noisy(P,METHOD) augments images exactly as METHOD does
    if inner is not None:
        policy = inner
    return bool(policy.has_batched_sample_stage)
