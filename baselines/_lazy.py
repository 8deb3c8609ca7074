"""Modules imported on first use, so that naming and parsing policies (`saflex-bench list methods`,
sweep planning) costs no torch/torchvision import. Not placed in sys.modules: nothing else sees it."""
from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


torch = LazyModule("torch")
F = LazyModule("torch.nn.functional")
v2 = LazyModule("torchvision.transforms.v2")
