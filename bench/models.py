"""Models, each `features(x) -> h` plus a linear `head` (what SAFLEX's last-layer math needs).

The registry itself imports no torch (listing names stays fast); each factory imports what it uses.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from bench.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

REGISTRY = Registry("model")  # the models below (and tasks' own, e.g. tabular's MLP) register themselves


def register_model(name: str, modality: str = "image"):
    """`create_model(name, *args)` calls the decorated factory; `modality` says which tasks may use it."""
    return REGISTRY.register(name, modality=modality)


def list_models(modality: str | None = None) -> list[str]:
    return REGISTRY.names() if modality is None else REGISTRY.names(modality=modality)


def get_model(name: str):
    """The factory registered under `name` (UsageError naming the valid models)."""
    return REGISTRY.factory(name)


def create_model(name: str, *args, **kwargs) -> "Classifier":
    return get_model(name)(*args, **kwargs)


def Classifier(body: "nn.Module", feat_dim: int, num_classes: int) -> "nn.Module":
    """`body` (x -> features h) + a linear head: the shape every model of the suite has."""
    from bench.nets import Classifier as _Classifier

    return _Classifier(body, feat_dim, num_classes)


@register_model("resnet18")
def resnet18(in_channels: int, num_classes: int) -> Classifier:
    """torchvision ResNet-18 with the CIFAR-style stem (3x3 conv, stride 1, no max-pool) used by the
    official MedMNIST 28-px baseline."""
    from torch import nn
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    feat_dim = net.fc.in_features
    net.fc = nn.Identity()
    return Classifier(net, feat_dim, num_classes)


@register_model("small_cnn")
def small_cnn(in_channels: int, num_classes: int) -> Classifier:
    """Three conv blocks and global pooling: quick CPU runs on 8-32 px images."""
    from torch import nn

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    body = nn.Sequential(
        *block(in_channels, 32), *block(32, 32), nn.MaxPool2d(2, ceil_mode=True),
        *block(32, 64), *block(64, 64), nn.MaxPool2d(2, ceil_mode=True),
        *block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return Classifier(body, 128, num_classes)
