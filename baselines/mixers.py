"""Batch mixers: CutMix and MixUp (torchvision v2 semantics, randomness from our generator).

Each sample i is mixed with a partner perm[i] (a random permutation; torchvision pairs i with i-1 of
an already shuffled batch, which is the special case perm = roll). A sample paired with itself stays
as it is. Labels mix with the same weight as the pixels: lam for MixUp, the pasted-area-corrected lam
for CutMix, whose box is one box for the whole batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

from baselines._lazy import torch

from baselines.base import Augmented, Upstream
from baselines.registry import NUM, PolicyError, register_method

Box = tuple[int, int, int, int]  # x1, y1, x2, y2: pixels [y1:y2, x1:x2] come from the partner


@dataclass(frozen=True)
class MixParams:
    lam: float  # weight of the sample's own label (CutMix: 1 - pasted area fraction)
    perm: torch.Tensor  # int64 [B], CPU: partner of each sample
    box: Optional[Box] = None  # CutMix only


def sample_beta(alpha: float, generator: torch.Generator) -> float:
    # Beta(a, a) as Dirichlet(a, a)[0], exactly as torch.distributions.Beta (hence torchvision) draws it,
    # but from our generator. Unlike a ratio of two Gammas it stays finite for small alpha.
    return float(torch._sample_dirichlet(torch.tensor([[alpha, alpha]]), generator=generator)[0, 0])


def _check_batch(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.ndim != 4 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"expected x [B,C,H,W] and y [B,K], got {tuple(x.shape)} and {tuple(y.shape)}")
    if not (x.is_floating_point() and y.is_floating_point()):
        raise ValueError(f"expected float x and y, got {x.dtype} and {y.dtype}")


def _mix_labels(y: torch.Tensor, perm: torch.Tensor, lam: float) -> torch.Tensor:
    return y[perm].mul(1.0 - lam).add_(y.mul(lam))


class Mixer(Upstream):
    has_batch_stage: ClassVar[bool] = True
    alpha: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", float(self.alpha))  # so str() prints 'a1.0', never 'a1'
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise PolicyError(f"alpha={self.alpha} must be finite and > 0")

    def draw(self, batch_size: int, height: int, width: int, generator: torch.Generator) -> MixParams:
        raise NotImplementedError

    def apply(self, x: torch.Tensor, y: torch.Tensor, params: MixParams) -> Augmented:
        raise NotImplementedError

    def batch_transform(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> Augmented:
        _check_batch(x, y)
        return self.apply(x, y, self.draw(x.shape[0], x.shape[-2], x.shape[-1], generator))


@dataclass(frozen=True)
class MixUp(Mixer):
    alpha: float

    def __str__(self) -> str:
        return f"mixup-a{self.alpha!r}"

    def draw(self, batch_size: int, height: int, width: int, generator: torch.Generator) -> MixParams:
        lam = sample_beta(self.alpha, generator)
        return MixParams(lam, torch.randperm(batch_size, generator=generator))

    def apply(self, x: torch.Tensor, y: torch.Tensor, params: MixParams) -> Augmented:
        perm = params.perm.to(x.device)
        x_mix = x[perm].mul(1.0 - params.lam).add_(x.mul(params.lam))
        return Augmented(x_mix, _mix_labels(y, perm.to(y.device), params.lam), None)


@dataclass(frozen=True)
class CutMix(Mixer):
    alpha: float

    def __str__(self) -> str:
        return f"cutmix-a{self.alpha!r}"

    def draw(self, batch_size: int, height: int, width: int, generator: torch.Generator) -> MixParams:
        lam = sample_beta(self.alpha, generator)
        cx = int(torch.randint(width, (1,), generator=generator))
        cy = int(torch.randint(height, (1,), generator=generator))
        r = 0.5 * math.sqrt(1.0 - lam)  # box side = sqrt(1 - lam) of the image side, before clipping
        rw, rh = int(r * width), int(r * height)
        box = (max(cx - rw, 0), max(cy - rh, 0), min(cx + rw, width), min(cy + rh, height))
        area = (box[2] - box[0]) * (box[3] - box[1]) / (width * height)
        return MixParams(1.0 - area, torch.randperm(batch_size, generator=generator), box)

    def apply(self, x: torch.Tensor, y: torch.Tensor, params: MixParams) -> Augmented:
        x1, y1, x2, y2 = params.box
        perm = params.perm.to(x.device)
        x_mix = x.clone()
        x_mix[..., y1:y2, x1:x2] = x[perm, ..., y1:y2, x1:x2]
        return Augmented(x_mix, _mix_labels(y, perm.to(y.device), params.lam), None)


@register_method("cutmix", grammar="cutmix-a{ALPHA}", pattern=rf"cutmix-a(?P<alpha>{NUM})",
                 examples=["cutmix-a1.0"])
def _cutmix(alpha: str) -> CutMix:
    return CutMix(float(alpha))


@register_method("mixup", grammar="mixup-a{ALPHA}", pattern=rf"mixup-a(?P<alpha>{NUM})",
                 examples=["mixup-a0.2"])
def _mixup(alpha: str) -> MixUp:
    return MixUp(float(alpha))
