"""Upstream augmentations for tabular data: rows of the float feature matrix the model reads.

Policy strings (the magnitude is in the name; numbers as for the image policies):

    gauss-s{SIGMA}   Gaussian noise: x + SIGMA * N(0, 1) on every feature (numeric columns are
                     standardised, so SIGMA is in training-set standard deviations)
    scarf-p{P}       SCARF corruption (Bahri et al., ICLR 2022): in every row round(P * D) features,
                     chosen uniformly, are replaced by draws from that feature's empirical marginal in
                     the TRAINING split (needs bind)
    fmixup-a{ALPHA}  MixUp in feature space (Zhang et al. 2018): lam ~ Beta(ALPHA, ALPHA) per batch
    tcutmix-p{P}     tabular CutMix: in every row round(P * D) features, chosen uniformly, come from a
                     partner row; the label mixes with the partner's by exactly the fraction swapped
    smote-k{K}       SMOTE-style (Chawla et al. 2002): every row moves a uniform fraction of the way
                     toward one of its K nearest same-class rows of the TRAINING split (needs bind);
                     label unchanged

They act on the model input (after standardisation and one-hot encoding), so a feature is one column
of that matrix: SCARF and CutMix may set a one-hot block to a mix of categories' indicators. All draws
come from the generator passed in, so the same seed gives the same output.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from baselines._lazy import torch

from baselines.base import Augmented, Upstream
from baselines.mixers import _mix_labels, sample_beta
from baselines.registry import INT, NUM, PolicyError, register_method

TABULAR = frozenset({"tabular"})


def _check_batch(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"expected x [B,D] and y [B,K], got {tuple(x.shape)} and {tuple(y.shape)}")
    if not (x.is_floating_point() and y.is_floating_point()):
        raise ValueError(f"expected float x and y, got {x.dtype} and {y.dtype}")


def _feature_mask(batch: int, dim: int, frac: float, generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """bool [B, D] with exactly round(frac * D) True per row at uniformly random places, and that count."""
    k = int(round(frac * dim))
    ranks = torch.rand(batch, dim, generator=generator).argsort(dim=1).argsort(dim=1)
    return ranks < k, k


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:  # also rejects nan
        raise PolicyError(f"{name}={value} must be in [0, 1]")


class TabularPolicy(Upstream):
    modalities: ClassVar[frozenset[str]] = TABULAR
    has_batch_stage: ClassVar[bool] = True

    def augment(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> Augmented:
        raise NotImplementedError

    def batch_transform(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> Augmented:
        _check_batch(x, y)
        return self.augment(x, y, generator)


@dataclass(frozen=True)
class GaussianNoise(TabularPolicy):
    sigma: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", float(self.sigma))
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise PolicyError(f"sigma={self.sigma} must be finite and >= 0")

    def __str__(self) -> str:
        return f"gauss-s{self.sigma!r}"

    def augment(self, x, y, generator):
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        return Augmented(x + self.sigma * noise.to(x.device), y, None)


class BoundPolicy(TabularPolicy):
    """A policy that reads the training split: `bind(train_x, train_y)` returns a copy holding it."""

    train_x: Optional[torch.Tensor]
    train_y: Optional[torch.Tensor]

    def bind(self, x: torch.Tensor, y: torch.Tensor) -> "BoundPolicy":
        if x.ndim != 2 or len(x) != len(y):
            raise ValueError(f"{self} binds to a feature matrix [N, D] and labels [N], got {tuple(x.shape)}, {tuple(y.shape)}")
        return dataclasses.replace(self, train_x=x.float().cpu().clone(), train_y=y.long().cpu().clone())

    def _bound(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.train_x is None:
            raise RuntimeError(f"{self} reads the training split: call bind(train_x, train_y) first "
                               f"(a wrapping policy must forward bind to it)")
        return self.train_x, self.train_y


_DATA = dict(default=None, compare=False, repr=False)  # bound data: not part of the policy's identity


@dataclass(frozen=True)
class Scarf(BoundPolicy):
    p: float
    train_x: Optional[torch.Tensor] = field(**_DATA)
    train_y: Optional[torch.Tensor] = field(**_DATA)

    def __post_init__(self) -> None:
        object.__setattr__(self, "p", float(self.p))
        _check_fraction("corruption rate P", self.p)

    def __str__(self) -> str:
        return f"scarf-p{self.p!r}"

    def augment(self, x, y, generator):
        train_x, _ = self._bound()
        if train_x.shape[1] != x.shape[1]:
            raise ValueError(f"{self}: bound to {train_x.shape[1]} features, batch has {x.shape[1]}")
        batch, dim = x.shape
        mask, _ = _feature_mask(batch, dim, self.p, generator)
        rows = torch.randint(len(train_x), (batch, dim), generator=generator)  # a training row per entry
        draws = train_x.gather(0, rows).to(x.device, x.dtype)  # draws[i, j] = train_x[rows[i, j], j]
        return Augmented(torch.where(mask.to(x.device), draws, x), y, None)


@dataclass(frozen=True)
class FeatureMixUp(TabularPolicy):
    alpha: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", float(self.alpha))
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise PolicyError(f"alpha={self.alpha} must be finite and > 0")

    def __str__(self) -> str:
        return f"fmixup-a{self.alpha!r}"

    def augment(self, x, y, generator):
        lam = sample_beta(self.alpha, generator)  # weight of each row's own features and label
        perm = torch.randperm(x.shape[0], generator=generator)
        x_mix = x[perm.to(x.device)].mul(1.0 - lam).add_(x.mul(lam))
        return Augmented(x_mix, _mix_labels(y, perm.to(y.device), lam), None)


@dataclass(frozen=True)
class TabularCutMix(TabularPolicy):
    p: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "p", float(self.p))
        _check_fraction("swap fraction P", self.p)

    def __str__(self) -> str:
        return f"tcutmix-p{self.p!r}"

    def augment(self, x, y, generator):
        batch, dim = x.shape
        mask, k = _feature_mask(batch, dim, self.p, generator)
        perm = torch.randperm(batch, generator=generator)
        x_mix = torch.where(mask.to(x.device), x[perm.to(x.device)], x)
        lam = 1.0 - k / dim  # the label weight of the row itself: 1 - the fraction actually swapped
        return Augmented(x_mix, _mix_labels(y, perm.to(y.device), lam), None)


@dataclass(frozen=True)
class Smote(BoundPolicy):
    k: int
    train_x: Optional[torch.Tensor] = field(**_DATA)
    train_y: Optional[torch.Tensor] = field(**_DATA)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise PolicyError(f"neighbours K={self.k} must be >= 1")

    def __str__(self) -> str:
        return f"smote-k{self.k}"

    def augment(self, x, y, generator):
        train_x, train_y = self._bound()
        batch = x.shape[0]
        # draws first, a fixed number per row, so they do not depend on the batch's class mix
        pick, step = torch.rand(batch, generator=generator), torch.rand(batch, generator=generator)
        labels = y.argmax(dim=1).cpu()
        xc = x.detach().cpu().float()
        target = xc.clone()
        for c in labels.unique().tolist():
            rows = torch.nonzero(labels == c).flatten()
            pool = train_x[train_y == c]
            if len(pool) == 0:
                continue
            # exact differences (the matrix-product shortcut leaves a row ~1e-3 away from itself)
            dist = torch.cdist(xc[rows], pool, compute_mode="donot_use_mm_for_euclid_dist")
            dist[dist == 0] = math.inf  # the row itself (and exact copies, a no-op anyway)
            n_nb = min(self.k, len(pool))
            near_d, near = dist.topk(n_nb, dim=1, largest=False)
            valid = torch.isfinite(near_d).sum(dim=1)  # rows with fewer non-identical same-class rows
            choice = (pick[rows] * valid).long().clamp(max=n_nb - 1)
            has = valid > 0
            target[rows[has]] = pool[near[has, choice[has]]]
        x_new = xc + step[:, None] * (target - xc)
        return Augmented(x_new.to(x.device, x.dtype), y, None)


@register_method("gauss", grammar="gauss-s{SIGMA}", pattern=rf"gauss-s(?P<sigma>{NUM})", examples=["gauss-s0.1"])
def _gauss(sigma: str) -> GaussianNoise:
    return GaussianNoise(float(sigma))


@register_method("scarf", grammar="scarf-p{P}", pattern=rf"scarf-p(?P<p>{NUM})", examples=["scarf-p0.3"])
def _scarf(p: str) -> Scarf:
    return Scarf(float(p))


@register_method("fmixup", grammar="fmixup-a{ALPHA}", pattern=rf"fmixup-a(?P<alpha>{NUM})", examples=["fmixup-a0.2"])
def _fmixup(alpha: str) -> FeatureMixUp:
    return FeatureMixUp(float(alpha))


@register_method("tcutmix", grammar="tcutmix-p{P}", pattern=rf"tcutmix-p(?P<p>{NUM})", examples=["tcutmix-p0.3"])
def _tcutmix(p: str) -> TabularCutMix:
    return TabularCutMix(float(p))


@register_method("smote", grammar="smote-k{K}", pattern=rf"smote-k(?P<k>{INT})", examples=["smote-k5"])
def _smote(k: str) -> Smote:
    return Smote(int(k))
