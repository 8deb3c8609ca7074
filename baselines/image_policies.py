"""Per-sample image policies: RandAugment, AutoAugment, TrivialAugment (torchvision v2 semantics).

`rand-m{M}-n{N}` is torchvision's RandAugment, not timm's: M is one of 31 bins (m9 = 30 % of an op's
maximum; timm: m9 = 90 %), every drawn op applies (timm: each with p=0.5), fill black, nearest
interpolation; the README's "Upstreams" paragraph lists the differences.

torchvision's transforms draw from the global RNG, so we split each policy in two: `draw_ops` picks
the ops and signed magnitudes from the generator passed in (mirroring torchvision's draw order call
for call, so a generator seeded s gives exactly what torchvision gives after torch.manual_seed(s)),
and `apply_ops` applies them deterministically. No global RNG is read or written, and the drawn ops
can be inspected or logged.

torchvision keeps the op tables and the op semantics in private members; we reuse them rather than
copy them (one source of truth), and tests/unit/baselines/test_baselines.py checks the result stays bit-identical to
the public transforms, so a torchvision change that breaks this fails a test, not a run.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar, Optional

from baselines._lazy import torch, v2

from baselines.base import Upstream
from baselines.batched import batch_apply_ops
from baselines.registry import INT, PolicyError, register_method

Op = tuple[str, float]  # (torchvision op name, signed magnitude)

RAND_MAX_MAGNITUDE = 30  # torchvision's 31 magnitude bins (timm's M is on a 0-10 scale: README, "Upstreams")
_AUTO_POLICIES = ("imagenet", "cifar10", "svhn")



class _Tables:
    """torchvision's op tables, read on first use (importing torchvision costs a second)."""

    @functools.cached_property
    def spaces(self) -> dict:
        return {"rand": v2.RandAugment._AUGMENTATION_SPACE, "trivial": v2.TrivialAugmentWide._AUGMENTATION_SPACE,
                "auto": v2.AutoAugment._AUGMENTATION_SPACE}

    @functools.cached_property
    def subpolicies(self) -> dict:
        return {p: tuple(v2.AutoAugment(v2.AutoAugmentPolicy(p))._policies) for p in _AUTO_POLICIES}

    @functools.cached_property
    def applier(self):
        return v2.RandAugment()  # nearest interpolation, fill 0: torchvision's defaults for all three


_TABLES = _Tables()
SPACE_NAMES = ("rand", "trivial", "auto")


def op_space(space: str) -> dict:
    return _TABLES.spaces[space]


@functools.lru_cache(maxsize=None)
def _magnitudes(space: str, op: str, num_bins: int, height: int, width: int) -> tuple[Optional[tuple[float, ...]], bool]:
    fn, signed = _TABLES.spaces[space][op]
    mags = fn(num_bins, height, width)
    return (None if mags is None else tuple(float(v) for v in mags)), signed


def _signed(magnitude: float, signed: bool, g: torch.Generator) -> float:
    if signed and torch.rand((), generator=g) <= 0.5:
        return -magnitude
    return magnitude


def _pick(n: int, g: torch.Generator) -> int:
    return int(torch.randint(n, (), generator=g))


def _apply_one(img: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
    # torchvision's kernels take [..., C, H, W], so this serves one image and a group of images alike.
    applier = _TABLES.applier
    return applier._apply_image_or_video_transform(
        img, name, magnitude, interpolation=applier.interpolation, fill=applier._fill
    )


def apply_ops(img: torch.Tensor, ops: list[Op]) -> torch.Tensor:
    for name, magnitude in ops:
        img = _apply_one(img, name, magnitude)
    return img


class ImagePolicy(Upstream):
    has_sample_stage: ClassVar[bool] = True
    has_batched_sample_stage: ClassVar[bool] = True

    def draw_ops(self, height: int, width: int, generator: torch.Generator) -> list[Op]:
        raise NotImplementedError

    def sample_transform(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if img.dtype != torch.uint8 or img.ndim != 3 or img.shape[0] not in (1, 3):
            raise ValueError(f"{self} expects a uint8 image [C,H,W] with C in (1, 3), "
                             f"got {img.dtype} {tuple(img.shape)}")
        return apply_ops(img, self.draw_ops(img.shape[-2], img.shape[-1], generator))

    def batch_draw_ops(self, height: int, width: int, generators: list[torch.Generator]) -> list[list[Op]]:
        # One draw_ops per image from its own generator, exactly what sample_transform consumes.
        return [self.draw_ops(height, width, g) for g in generators]

    def batch_sample_transform(self, imgs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """The per-image policy on a batch [B,C,H,W] (any device): image i gets the ops that
        sample_transform(imgs[i], generators[i]) would draw, applied group by group (baselines/batched.py)."""
        if imgs.dtype != torch.uint8 or imgs.ndim != 4 or imgs.shape[1] not in (1, 3):
            raise ValueError(f"{self} expects a uint8 batch [B,C,H,W] with C in (1, 3), "
                             f"got {imgs.dtype} {tuple(imgs.shape)}")
        if len(generators) != imgs.shape[0]:
            raise ValueError(f"{self}: {imgs.shape[0]} images but {len(generators)} generators")
        return batch_apply_ops(imgs, self.batch_draw_ops(imgs.shape[-2], imgs.shape[-1], generators), _apply_one)


@dataclass(frozen=True)
class RandAugment(ImagePolicy):
    magnitude: int
    num_ops: int

    def __post_init__(self) -> None:
        if not all(type(v) is int for v in (self.magnitude, self.num_ops)):  # else str() would not parse
            raise PolicyError(f"magnitude and number of ops must be ints, got {self.magnitude!r}, {self.num_ops!r}")
        if not 0 <= self.magnitude <= RAND_MAX_MAGNITUDE:
            raise PolicyError(f"magnitude M={self.magnitude} must be in [0, {RAND_MAX_MAGNITUDE}]")
        if self.num_ops < 1:
            raise PolicyError(f"number of ops N={self.num_ops} must be >= 1")

    def __str__(self) -> str:
        return f"rand-m{self.magnitude}-n{self.num_ops}"

    def draw_ops(self, height: int, width: int, generator: torch.Generator) -> list[Op]:
        names = tuple(_TABLES.spaces["rand"])
        ops = []
        for _ in range(self.num_ops):
            name = names[_pick(len(names), generator)]
            mags, signed = _magnitudes("rand", name, RAND_MAX_MAGNITUDE + 1, height, width)
            ops.append((name, 0.0 if mags is None else _signed(mags[self.magnitude], signed, generator)))
        return ops


@dataclass(frozen=True)
class AutoAugment(ImagePolicy):
    policy: str  # one of imagenet, cifar10, svhn

    def __post_init__(self) -> None:
        if self.policy not in _AUTO_POLICIES:
            raise PolicyError(f"AutoAugment policy {self.policy!r} must be one of {', '.join(_AUTO_POLICIES)}")

    def __str__(self) -> str:
        return f"autoaug-{self.policy}"

    def draw_ops(self, height: int, width: int, generator: torch.Generator) -> list[Op]:
        subpolicies = _TABLES.subpolicies[self.policy]
        ops = []
        for name, prob, bin_index in subpolicies[_pick(len(subpolicies), generator)]:
            if not torch.rand((), generator=generator) <= prob:
                continue
            mags, signed = _magnitudes("auto", name, 10, height, width)
            ops.append((name, 0.0 if mags is None else _signed(mags[bin_index], signed, generator)))
        return ops


@dataclass(frozen=True)
class TrivialAugment(ImagePolicy):
    """TrivialAugmentWide: one op, uniformly random magnitude bin out of 31."""

    def __str__(self) -> str:
        return "trivialaug"

    def draw_ops(self, height: int, width: int, generator: torch.Generator) -> list[Op]:
        names = tuple(_TABLES.spaces["trivial"])
        name = names[_pick(len(names), generator)]
        mags, signed = _magnitudes("trivial", name, 31, height, width)
        if mags is None:
            return [(name, 0.0)]
        return [(name, _signed(mags[_pick(31, generator)], signed, generator))]


@register_method("rand", grammar="rand-m{M}-n{N}", pattern=rf"rand-m(?P<m>{INT})-n(?P<n>{INT})",
                 examples=["rand-m9-n2"])
def _rand(m: str, n: str) -> RandAugment:
    return RandAugment(magnitude=int(m), num_ops=int(n))


@register_method("autoaug", grammar="autoaug-{imagenet|cifar10|svhn}",
                 pattern=rf"autoaug-(?P<policy>{'|'.join(_AUTO_POLICIES)})",
                 examples=[f"autoaug-{p}" for p in _AUTO_POLICIES])
def _autoaug(policy: str) -> AutoAugment:
    return AutoAugment(policy)


@register_method("trivialaug", grammar="trivialaug", pattern="trivialaug", examples=["trivialaug"])
def _trivialaug() -> TrivialAugment:
    return TrivialAugment()
