"""`noisy(P,METHOD)`: METHOD, then symmetric label noise on a fraction P of the augmented batch.

It is the controlled experiment for SAFLEX's claim to down-weight bad augmentations: the flipped
samples are known (`corrupted`), so the weights SAFLEX gives them can be scored against the truth.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from baselines._lazy import torch

from baselines.base import Augmented, Upstream
from baselines.registry import NUM, PolicyError, parse_policy, register_method


@dataclass(frozen=True)
class LabelNoise:
    flip: torch.Tensor  # bool [B], CPU
    new_class: torch.Tensor  # int64 [B], CPU: the class a flipped sample gets (never its argmax)


@dataclass(frozen=True)
class Noisy(Upstream):
    p: float
    inner: Upstream
    has_batch_stage: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "p", float(self.p))
        if not 0.0 <= self.p <= 1.0:  # also rejects nan
            raise PolicyError(f"flip probability P={self.p} must be in [0, 1]")
        if isinstance(self.inner, Noisy):  # the corrupted flag of two noise layers is ill-defined
            raise PolicyError("noisy(...) cannot wrap another noisy(...)")

    def __str__(self) -> str:
        return f"noisy({self.p!r},{self.inner})"

    @property
    def modalities(self) -> frozenset[str]:
        return self.inner.modalities

    @property
    def has_sample_stage(self) -> bool:
        return self.inner.has_sample_stage

    @property
    def has_batched_sample_stage(self) -> bool:
        return self.inner.has_batched_sample_stage

    def sample_transform(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.inner.sample_transform(img, generator)

    def bind(self, x, y) -> "Noisy":
        """The inner method may need the training split (SCARF, SMOTE): bind it, keep the noise."""
        inner = self.inner.bind(x, y)
        return self if inner is self.inner else Noisy(self.p, inner)

    def batch_sample_transform(self, imgs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        return self.inner.batch_sample_transform(imgs, generators)

    def draw(self, labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> LabelNoise:
        """labels: int64 [B] on CPU, the argmax of each augmented label."""
        if num_classes < 2:
            raise ValueError(f"label noise needs at least 2 classes, got {num_classes}")
        n = labels.shape[0]
        flip = torch.rand(n, generator=generator) < self.p
        # Uniform over the K-1 other classes: draw from 0..K-2 and skip over the true class.
        other = torch.randint(num_classes - 1, (n,), generator=generator)
        return LabelNoise(flip, other + (other >= labels).long())

    def batch_transform(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> Augmented:
        x, y, _ = self.inner.batch_transform(x, y, generator)
        noise = self.draw(y.argmax(dim=1).cpu(), y.shape[1], generator)
        flip, new_class = noise.flip.to(y.device), noise.new_class.to(y.device)
        one_hot = torch.nn.functional.one_hot(new_class, y.shape[1]).to(y.dtype)
        y = torch.where(flip[:, None], one_hot, y)
        return Augmented(x, y, flip)


@register_method("noisy", grammar="noisy({P},{METHOD})", pattern=rf"noisy\(\s*(?P<p>{NUM})\s*,(?P<inner>.*)\)",
                 examples=["noisy(0.3,rand-m9-n2)"])
def _noisy(p: str, inner: str) -> Noisy:
    return Noisy(float(p), parse_policy(inner))
