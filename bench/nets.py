"""torch modules shared by the model factories (imported only when a model is built)."""
from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """`features(x) -> h` plus a linear `head`: what SAFLEX's last-layer math needs."""

    def __init__(self, body: nn.Module, feat_dim: int, num_classes: int):
        super().__init__()
        self.body = body
        self.head = nn.Linear(feat_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
