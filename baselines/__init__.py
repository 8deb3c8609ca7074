"""Upstream augmentation methods behind one registry of policy strings.

    from baselines import create_method
    up = create_method("noisy(0.3,rand-m9-n2)")
    img = up.sample_transform(img_uint8, generator)        # per sample, in the data loader
    x, y, corrupted = up.batch_transform(x, y, generator)  # per batch, on normalised floats

Add a method with one module + `@register_method`: the registry finds it (lazy_registry).
"""
from baselines.base import IMAGE, MODALITIES, Augmented, Upstream
from baselines.registry import PolicyError, create_method, get_method, list_methods, method_grammars, register_method
from baselines.identity import NoAugmentation
from baselines.image_policies import AutoAugment, RandAugment, TrivialAugment
from baselines.mixers import CutMix, MixUp
from baselines.noisy import Noisy
from baselines.batched import batched_path_default

__all__ = [
    "Augmented", "Upstream", "PolicyError", "IMAGE", "MODALITIES",
    "create_method", "get_method", "list_methods", "method_grammars", "register_method",
    "batched_path_default", "NoAugmentation", "RandAugment", "AutoAugment", "TrivialAugment", "CutMix", "MixUp", "Noisy",
]
