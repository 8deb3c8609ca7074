"""`diffusion(pP,CACHE)[+METHOD]`: with probability P a training step sees a cached Stable Diffusion
img2img variant of the image instead of the image itself (then METHOD's per-image policy, if any).

The variants are generated once, before training, by `saflex-bench generate` (bench/generate.py) and
read here from a cache directory named by its short id CACHE (a hash of the generation parameters):

    $SAFLEX_CACHE/diffusion/<CACHE>/        ($SAFLEX_CACHE defaults to ~/.cache/saflex-bench)
        generation.json   parameters, layout (images per chunk), the command that makes the cache
        manifest.json     chunk -> {file, sha256, images}; written atomically under a lock
        chunks/00000.npz  keys [n] (image hash), labels [n], variants uint8 [n, M, C, H, W]

A sample is found by the hash of its stored bytes (`image_key`), not by its index: the data loader
hands the upstream only the image, and a hash works whatever the split order, for a carved training
part (ref_from=train) and for the `ref` learner's train+reference concatenation. Images without
variants (e.g. reference images when only the train split was generated) stay real.

This module reads the cache only (numpy + stdlib); baselines/ never imports bench.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional

from baselines._lazy import torch
from baselines.base import Upstream
from baselines.identity import NoAugmentation
from baselines.registry import NUM, PolicyError, parse_policy, register_method

CACHE_ENV = "SAFLEX_CACHE"
CACHE_ID_RE = r"[0-9a-f]{10}"
GENERATION = "generation.json"
MANIFEST = "manifest.json"


def cache_root(root: str | os.PathLike | None = None) -> Path:
    """Where caches live: `root`, else $SAFLEX_CACHE, else ~/.cache/saflex-bench."""
    value = root or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "saflex-bench"
    return Path(value).expanduser()


def cache_dir(cache_id: str, root: str | os.PathLike | None = None) -> Path:
    return cache_root(root) / "diffusion" / cache_id


def image_key(img: Any) -> str:
    """Hash of a stored sample's bytes with its dtype and shape (a torch tensor or a numpy array)."""
    import numpy as np

    arr = np.ascontiguousarray(img.numpy() if hasattr(img, "numpy") else np.asarray(img))
    h = hashlib.blake2b(f"{arr.dtype.str}{arr.shape}".encode(), digest_size=12)
    h.update(arr.tobytes())
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


class CacheError(PolicyError):
    """The cache a policy names is absent, incomplete or corrupt: one line with the command to fix it."""


def cache_state(cache_id: str, root: str | os.PathLike | None = None) -> dict:
    """{'state': missing|incomplete|corrupt|complete, 'done', 'total', 'bad': [chunk], 'command'}.
    Checks every chunk file against its sha256 (reads them all)."""
    d = cache_dir(cache_id, root)
    gen = _read_json(d / GENERATION)
    if not isinstance(gen, dict):
        return dict(state="missing", done=0, total=None, bad=[], command=None)
    manifest = _read_json(d / MANIFEST) or {}
    chunks = manifest.get("chunks", {})
    total = int(gen["n_chunks"])
    bad, done = [], 0
    for c in range(total):
        entry = chunks.get(chunk_name(c))
        if entry is None:
            continue
        path = d / entry["file"]
        if not path.is_file() or sha256_file(path) != entry["sha256"]:
            bad.append(c)
        else:
            done += 1
    state = "corrupt" if bad else ("complete" if done == total else "incomplete")
    return dict(state=state, done=done, total=total, bad=bad, command=gen.get("command"))


def chunk_name(c: int) -> str:
    return f"{c:05d}"


def missing_message(cache_id: str, root: str | os.PathLike | None = None, state: dict | None = None) -> str:
    st = state or cache_state(cache_id, root)
    where = cache_dir(cache_id, root)
    if st["state"] == "missing":
        return (f"diffusion cache {cache_id} not found at {where} (set ${CACHE_ENV} to where it was generated, "
                f"or make it: saflex-bench generate --id {cache_id} --data-root DIR)")
    what = (f"corrupt (chunks {st['bad'][:5]} fail their sha256)" if st["state"] == "corrupt"
            else f"incomplete ({st['done']}/{st['total']} chunks)")
    return f"diffusion cache {cache_id} at {where} is {what}: make it with: {st['command']}"


def load_variants(cache_id: str, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """image key -> uint8 variants [M, C, H, W], from a complete, uncorrupted cache (else CacheError)."""
    import numpy as np

    st = cache_state(cache_id, root)
    if st["state"] != "complete":
        raise CacheError(missing_message(cache_id, root, st))
    d = cache_dir(cache_id, root)
    table: dict[str, Any] = {}
    for entry in (_read_json(d / MANIFEST) or {})["chunks"].values():
        with np.load(d / entry["file"]) as z:
            for key, v in zip(z["keys"].tolist(), z["variants"]):
                table[str(key)] = v
    return table


@dataclass(frozen=True)
class Diffusion(Upstream):
    p: float  # probability that a step sees a synthetic variant instead of the real image
    cache: str  # short id of the generation cache
    inner: Upstream = field(default_factory=NoAugmentation)
    # Filled by bind(): image key -> variants; not part of the method's identity.
    table: Optional[Mapping[str, Any]] = field(default=None, compare=False, repr=False)
    has_sample_stage: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "p", float(self.p))
        if not 0.0 <= self.p <= 1.0:  # also rejects nan
            raise PolicyError(f"synthetic probability P={self.p} must be in [0, 1]")
        if isinstance(self.inner, Diffusion):
            raise PolicyError("diffusion(...) cannot compose with another diffusion(...)")

    def __str__(self) -> str:
        head = f"diffusion(p{self.p!r},{self.cache})"
        return head if isinstance(self.inner, NoAugmentation) else f"{head}+{self.inner}"

    @property
    def modalities(self) -> frozenset[str]:
        return self.inner.modalities & {"image"}

    @property
    def has_batch_stage(self) -> bool:
        return self.inner.has_batch_stage

    def bind(self, x, y) -> "Diffusion":
        table = load_variants(self.cache)
        covered = sum(1 for img in x if image_key(img) in table)
        if covered == 0:
            raise CacheError(f"diffusion cache {self.cache} holds no variant of any of the {len(x)} training images "
                             f"(generated for another task, split or channel count? see {cache_dir(self.cache) / GENERATION})")
        return Diffusion(self.p, self.cache, self.inner.bind(x, y), table)

    def draw(self, generator: torch.Generator, num_variants: int) -> Optional[int]:
        """The variant index a step uses, or None for the real image. Always draws twice, so the
        inner policy's draws do not depend on the outcome."""
        u = float(torch.rand((), generator=generator))
        k = int(torch.randint(max(num_variants, 1), (), generator=generator))
        return k if u < self.p else None

    def synthetic(self, img: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, bool]:
        """(the image this step trains on, whether it is a cached variant)."""
        if self.table is None:
            raise RuntimeError(f"{self}: bind(train_x, train_y) loads the cache before training")
        variants = self.table.get(image_key(img))
        k = self.draw(generator, 0 if variants is None else len(variants))
        if variants is None or k is None:
            return img, False
        return torch.from_numpy(variants[k]).to(img.device), True

    def sample_transform(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        out, _ = self.synthetic(img, generator)
        return self.inner.sample_transform(out, generator) if self.inner.has_sample_stage else out

    def batch_transform(self, x, y, generator):
        return self.inner.batch_transform(x, y, generator)


@register_method("diffusion", grammar="diffusion(p{P},{CACHE_ID})[+{METHOD}]",
                 pattern=rf"diffusion\(\s*p(?P<p>{NUM})\s*,\s*(?P<cache>[^()+,\s]*)\s*\)(?:\+(?P<inner>.+))?",
                 examples=[])  # no example: every diffusion string needs a generated cache to run
def _diffusion(p: str, cache: str, inner: Optional[str] = None) -> Diffusion:
    import re

    if not re.fullmatch(CACHE_ID_RE, cache):
        raise PolicyError(f"cache id {cache!r} must be 10 hex digits (printed by `saflex-bench generate`)")
    return Diffusion(float(p), cache, parse_policy(inner) if inner else NoAugmentation())
