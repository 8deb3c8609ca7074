"""One RNG stream per concern, all derived from the run seed (never the global RNG).

Streams are keyed by names and integers, e.g. ("sample", epoch, index): the same seed gives every
method the same data order and the same upstream draws, so comparisons between methods are paired.
"""
from __future__ import annotations

import contextlib
import hashlib

import torch


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed that depends only on (seed, *keys)."""
    text = "/".join(str(k) for k in (seed, *keys)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def generator(seed: int, *keys: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


@contextlib.contextmanager
def seeded_global(seed: int, *keys: object):
    """For code that only draws from the global RNG (nn.Module init): fork it, seed it, restore it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, *keys))
        yield
