"""`none`: no augmentation; the baseline every method is compared against."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from baselines.base import MODALITIES, Upstream
from baselines.registry import register_method


@dataclass(frozen=True)
class NoAugmentation(Upstream):
    modalities: ClassVar[frozenset[str]] = MODALITIES

    def __str__(self) -> str:
        return "none"


@register_method("none", grammar="none", pattern="none", examples=["none"])
def _none() -> NoAugmentation:
    return NoAugmentation()
