"""What every upstream method is: a typed frozen config that also knows how to augment.

Two stages, because they run in different places: `sample_transform` in the data loader (one uint8
image, its own generator) and `batch_transform` on the normalised float batch (mixers, label noise).
A method that has nothing to do in a stage returns its input unchanged.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple, Optional

from baselines._lazy import torch

IMAGE = frozenset({"image"})
# Every data kind the suite knows; methods that never look at the data (none) support all of them.
MODALITIES = frozenset({"image", "tabular"})


class Augmented(NamedTuple):
    x: torch.Tensor  # float [B, C, H, W]
    y: torch.Tensor  # float [B, K], rows on the simplex when the input rows were
    corrupted: Optional[torch.Tensor]  # bool [B] for noisy(...), else None


class Upstream:
    """Base of every registered method. Subclasses are frozen dataclasses and define `__str__`
    as the canonical policy string, so `create_method(str(m)) == m`."""

    modalities: ClassVar[frozenset[str]] = IMAGE
    # Lets the data loader skip building one generator per sample when the stage is the identity.
    has_sample_stage: ClassVar[bool] = False
    has_batch_stage: ClassVar[bool] = False
    # True where batch_sample_transform is a real batched implementation, not the loop below.
    has_batched_sample_stage: ClassVar[bool] = False
    # bump when a change alters what the method computes: the keys of the runs using it follow
    semantics: ClassVar[int] = 1

    def semantics_versions(self) -> dict[str, int]:
        """{"upstream:<Class>": version} of this method and the methods it nests, versions other than 1."""
        out = {f"upstream:{type(self).__name__}": self.semantics} if self.semantics != 1 else {}
        for f in dataclasses.fields(self) if dataclasses.is_dataclass(self) else ():
            inner = getattr(self, f.name)
            if isinstance(inner, Upstream):
                out.update(inner.semantics_versions())
        return out

    def bind(self, x: torch.Tensor, y: torch.Tensor) -> "Upstream":
        """A copy that may use the training split (x, y) it will augment — e.g. SCARF's empirical
        marginals, SMOTE's same-class neighbours. Called once per run, before training; methods
        that need no data return self."""
        return self

    def sample_transform(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return img

    def batch_sample_transform(self, imgs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """sample_transform on each image of a uint8 batch [B,C,H,W], image i with generators[i]."""
        if len(generators) != imgs.shape[0]:
            raise ValueError(f"{self}: {imgs.shape[0]} images but {len(generators)} generators")
        if not self.has_sample_stage:
            return imgs
        return torch.stack([self.sample_transform(img, g) for img, g in zip(imgs, generators)]) if len(imgs) else imgs

    def batch_transform(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> Augmented:
        return Augmented(x, y, None)

    def __str__(self) -> str:  # pragma: no cover - every subclass overrides
        raise NotImplementedError
