"""Stable Diffusion img2img variants of a task's training images, generated once into a cache.

    gspec = GenerationSpec(task="medmnist/breastmnist", model="runwayml/stable-diffusion-v1-5", variants=4)
    report = generate(gspec, data_root, shard=0, shards=1)   # resumable; skips what is done
    method = f"diffusion(p0.5,{gspec.cache_id})"             # the upstream that trains on it

The cache (layout in baselines/diffusion.py) is keyed by `GenerationSpec.cache_id`, a hash of every
parameter that changes the pixels (task, splits, model, variants, strength, guidance, prompt, steps,
seed, resolution, dtype). Batch size, attention slicing, device and sharding do not change the id.

Why npz chunks of `chunk` images (default 64) rather than one PNG per image: a CIFAR-size set with 4
variants would be 200k files (slow on cluster file systems, one sha256 each in the manifest); a chunk
is one atomic write, lossless uint8, checked by one sha256, and a job killed mid-shard loses at most
the chunk in progress (nothing is duplicated: a chunk is in the manifest only once written whole).

Determinism: variant m of an image comes from a generator seeded by (seed, image hash, m), so it
does not depend on batching, chunking or sharding. Each image is repeated M times in the pipeline
batch (not `num_images_per_prompt`, whose image/prompt order differs in diffusers' img2img).

DA-Fusion-style textual-inversion tokens (a learned token per class) are out of scope: the prompt
is a plain template such as "a photo of a {class}".

Also a tool: `python -m bench.generate make-tiny-pipeline DIR` writes a tiny randomly initialised
StableDiffusionImg2ImgPipeline (no download) for CPU tests and the CPU sweep.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from baselines.diffusion import (GENERATION, MANIFEST, cache_dir, cache_root, chunk_name, image_key, sha256_file)
from bench.errors import UsageError
from bench.store import read_json, write_bytes_atomic, write_json_atomic

DTYPES = ("float32", "float16", "bfloat16")
SPLITS = ("train", "val")  # never a test split: it is read only at the end of a run
DEFAULT_CHUNK = 64
TINY_NAME = "tiny-sd-img2img"  # make-tiny-pipeline's default folder under the cache root


@dataclass(frozen=True)
class GenerationSpec:
    """Everything that determines the generated pixels (hence the cache id)."""

    task: str
    model: str  # a hub id (runwayml/stable-diffusion-v1-5) or a local pipeline folder
    splits: tuple[str, ...] = ("train",)
    variants: int = 4
    strength: float = 0.5
    guidance: float = 7.5
    prompt: str = "a photo of a {class}"
    steps: int = 30
    seed: int = 0
    resolution: int = 512
    dtype: str = "float16"
    limit: int | None = None  # only the first N distinct images (pilots, tests); the others stay real

    def __post_init__(self) -> None:
        s = self.splits
        object.__setattr__(self, "splits", (s,) if isinstance(s, str) else tuple(s))
        for name in ("variants", "steps", "resolution", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "seed" else 1):
                raise UsageError(f"generation {name}: expected an integer >= {0 if name == 'seed' else 1}, got {v!r}")
        for name in ("strength", "guidance"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if not 0.0 < self.strength <= 1.0:
            raise UsageError(f"generation strength: expected a number in (0, 1], got {self.strength}")
        if not math.isfinite(self.guidance) or self.guidance < 0:
            raise UsageError(f"generation guidance: expected a number >= 0, got {self.guidance}")
        if self.dtype not in DTYPES:
            raise UsageError(f"generation dtype: expected one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not self.splits or any(x not in SPLITS for x in self.splits) or len(set(self.splits)) != len(self.splits):
            raise UsageError(f"generation splits: expected distinct names among {', '.join(SPLITS)}, got {list(self.splits)}")
        if self.resolution % 8:
            raise UsageError(f"generation resolution: expected a multiple of 8, got {self.resolution}")
        try:
            self.prompt.format_map({"class": "x", "label": 0})
        except (KeyError, IndexError, ValueError) as e:
            raise UsageError(f"generation prompt {self.prompt!r}: placeholders are {{class}} and {{label}} ({e})") from None
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1):
            raise UsageError(f"generation limit: expected an integer >= 1 (or nothing), got {self.limit!r}")
        if not isinstance(self.task, str) or "/" not in self.task:
            raise UsageError(f"generation task: expected FAMILY/DATASET, got {self.task!r}")

    FIELDS = ("task", "model", "splits", "variants", "strength", "guidance", "prompt", "steps", "seed", "resolution",
              "dtype", "limit")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["splits"] = list(self.splits)
        if d["limit"] is None:  # caches made before `limit` existed keep their id
            del d["limit"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GenerationSpec":
        unknown = sorted(set(d) - set(cls.FIELDS))
        if unknown:
            raise UsageError(f"unknown generation parameter '{unknown[0]}' (valid: {', '.join(cls.FIELDS)})")
        if "task" not in d or "model" not in d:
            raise UsageError("a generation needs at least task and model")
        return cls(**d)

    @property
    def cache_id(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(text.encode(), digest_size=5).hexdigest()

    def method(self, p: float = 0.5, inner: str | None = None) -> str:
        return f"diffusion(p{float(p)!r},{self.cache_id})" + (f"+{inner}" if inner else "")

    def command(self, data_root: Path | None = None, root: Path | None = None) -> str:
        """The `saflex-bench generate` line that makes (or resumes) this cache."""
        argv = ["saflex-bench", "generate", "--task", self.task, "--model", self.model, "--splits", ",".join(self.splits),
                "--variants", str(self.variants), "--strength", repr(self.strength), "--guidance", repr(self.guidance),
                "--prompt", self.prompt, "--steps", str(self.steps), "--seed", str(self.seed),
                "--resolution", str(self.resolution), "--dtype", self.dtype]
        if self.limit is not None:
            argv += ["--limit", str(self.limit)]
        if data_root:
            argv += ["--data-root", str(data_root)]
        if root:
            argv += ["--cache", str(root)]
        return shlex.join(argv)


@dataclass
class GenerateReport:
    cache_id: str
    directory: Path
    images: int  # unique images of the requested splits
    chunks: int
    shard_chunks: int  # chunks of this shard
    generated_chunks: int
    generated_images: int
    skipped_chunks: int
    regenerated_chunks: int  # present in the manifest but failed their sha256
    seconds: float  # pipeline time of this call (load excluded)
    load_seconds: float

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / self.generated_images if self.generated_images else float("nan")


# ---- the images -----------------------------------------------------------------------------------
def class_names(task) -> list[str]:
    """Readable class names for the prompt: the task's `class_names`, MedMNIST's INFO labels, else the index."""
    names = getattr(task, "class_names", None)
    if names:
        return [str(n) for n in names]
    if getattr(task, "family", "") == "medmnist":
        from bench.tasks.medmnist import _info

        labels = _info()[task.flag]["label"]
        return [str(labels[str(i)]) for i in range(task.num_classes)]
    return [str(i) for i in range(task.num_classes)]


def unique_images(gspec: GenerationSpec, data_root: Path | None):
    """(task, images uint8 [N,C,H,W], labels [N], keys) of the requested splits, first occurrence of
    each distinct image (identical images share their variants and take the first one's label)."""
    from bench.spec import make_spec
    from bench.tasks import get_task

    task = get_task(gspec.task)
    if task.modality != "image" or task.multi_label:
        raise UsageError(f"diffusion variants need a single-label image task, not {gspec.task} "
                         f"({task.modality}, {task.task_type})")
    data = task.load(data_root, make_spec(gspec.task, "none", 0))
    parts = [data.train if s == "train" else data.select for s in gspec.splits]
    seen: dict[str, int] = {}
    xs, ys = [], []
    for part in parts:
        for img, label in zip(part.x, part.y):
            if gspec.limit is not None and len(xs) == gspec.limit:
                break
            key = image_key(img)
            if key not in seen:
                seen[key] = len(xs)
                xs.append(img)
                ys.append(int(label))
    import torch

    return task, torch.stack(xs), torch.tensor(ys, dtype=torch.int64), list(seen)


def to_pil(img, resolution: int):
    """uint8 [C,H,W] -> RGB PIL image of resolution x resolution (bicubic)."""
    from PIL import Image

    arr = img.numpy()
    pil = Image.fromarray(arr[0], "L") if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0), "RGB")
    return pil.convert("RGB").resize((resolution, resolution), Image.BICUBIC)


def from_rgb(rgb, channels: int, height: int, width: int):
    """float [R,R,3] in [0,1] -> uint8 [C,H,W] in the task's stored form (luminance when C is 1)."""
    import numpy as np
    from PIL import Image

    pil = Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), "RGB").resize((width, height), Image.BICUBIC)
    if channels == 1:
        return np.asarray(pil.convert("L"))[None]
    return np.asarray(pil).transpose(2, 0, 1).copy()


# ---- the pipeline ---------------------------------------------------------------------------------
def resolve_model(model: str) -> str:
    """A local path may name environment variables (`$SAFLEX_CACHE/tiny-sd-img2img`): expanded here,
    at load time, so the cache id (a hash of the string as written) is the same on every machine."""
    return os.path.expanduser(os.path.expandvars(model))


def load_pipeline(model: str, dtype: str, device: str, attention_slicing: bool = False):
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    model = resolve_model(model)
    if model.startswith(("/", "./", "../", "~")) and not Path(model).is_dir():  # a path, not a hub id: say so at once
        raise UsageError(f"no Stable Diffusion pipeline folder at {model!r} (give a local pipeline folder or a hub id)")

    kwargs: dict[str, Any] = dict(torch_dtype=getattr(torch, dtype), safety_checker=None, requires_safety_checker=False)
    try:
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(model, **kwargs)
    except (OSError, ValueError) as e:  # not on disk and not downloadable (offline, typo)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"cannot load Stable Diffusion pipeline {model!r} ({first[:200]}); "
                         "give a hub id reachable from here, a local folder, or HF_HUB_OFFLINE=0") from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if attention_slicing:
        pipe.enable_attention_slicing()
    return pipe


def _generators(seed: int, keys: Sequence[str], variants: int, device: str):
    import torch

    from bench.seeding import derive_seed

    dev = device if device.startswith("cuda") else "cpu"
    return [torch.Generator(dev).manual_seed(derive_seed(seed, "diffusion", k, m)) for k in keys for m in range(variants)]


def generate_chunk(pipe, gspec: GenerationSpec, images, labels, keys: Sequence[str], names: Sequence[str],
                   batch_size: int, device: str):
    """uint8 variants [n, M, C, H, W] of `images` (uint8 [n,C,H,W]), batch_size images per pipeline call."""
    import numpy as np

    M = gspec.variants
    n, C, H, W = images.shape
    out = np.empty((n, M, C, H, W), dtype=np.uint8)
    for s in range(0, n, batch_size):
        idx = range(s, min(s + batch_size, n))
        pils = [to_pil(images[i], gspec.resolution) for i in idx for _ in range(M)]
        prompts = [gspec.prompt.format_map({"class": names[int(labels[i])], "label": int(labels[i])})
                   for i in idx for _ in range(M)]
        result = pipe(prompt=prompts, image=pils, strength=gspec.strength, guidance_scale=gspec.guidance,
                      num_inference_steps=gspec.steps, generator=_generators(gspec.seed, [keys[i] for i in idx], M, device),
                      output_type="np")
        rgb = np.asarray(result.images)
        for j, i in enumerate(idx):
            for m in range(M):
                out[i, m] = from_rgb(rgb[j * M + m], C, H, W)
    return out


# ---- the cache --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = open(path, "a+")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fd.close()


def record_chunk(directory: Path, c: int, entry: dict) -> None:
    """Add one written chunk to manifest.json: read-modify-write under a lock (shards share it)."""
    with _locked(directory / ".manifest.lock"):
        manifest = read_json(directory / MANIFEST) or {"chunks": {}}
        manifest["chunks"][chunk_name(c)] = entry
        write_json_atomic(directory / MANIFEST, manifest)


def prepare_cache(gspec: GenerationSpec, directory: Path, n_images: int, chunk: int, command: str, meta: dict) -> int:
    """Write generation.json once; check a present one describes the same data. Returns the chunk size."""
    path = directory / GENERATION
    with _locked(directory / ".manifest.lock"):
        gen = read_json(path)
        if gen is None:
            gen = dict(id=gspec.cache_id, params=gspec.to_dict(), n_images=n_images, chunk=chunk,
                       n_chunks=-(-n_images // chunk), command=command, **meta)
            write_json_atomic(path, gen)
    if gen.get("params") != gspec.to_dict():
        raise UsageError(f"{path} describes other parameters than cache id {gspec.cache_id}: remove the folder")
    if gen["n_images"] != n_images:
        raise UsageError(f"{path} was made for {gen['n_images']} images, the task now has {n_images} "
                         "(the data changed): remove the folder to regenerate")
    return int(gen["chunk"])


def chunk_ok(directory: Path, entry: dict | None) -> bool:
    return entry is not None and (directory / entry["file"]).is_file() and sha256_file(directory / entry["file"]) == entry["sha256"]


def generate(gspec: GenerationSpec, data_root: Path | None = None, root: Path | None = None, *, shard: int = 0,
             shards: int = 1, chunk: int = DEFAULT_CHUNK, batch_size: int = 8, attention_slicing: bool = False,
             device: str | None = None, pipeline: Any = None, log: Callable[[str], None] | None = None) -> GenerateReport:
    """Generate the chunks of shard `shard` of `shards` (chunk c belongs to shard c % shards) that are
    not in the cache or fail their sha256. `pipeline` overrides loading (tests)."""
    import numpy as np
    import torch

    if not 0 <= shard < shards:
        raise UsageError(f"shard {shard} must be in [0, {shards})")
    log = log or (lambda msg: print(msg, flush=True))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    root = cache_root(root)
    directory = cache_dir(gspec.cache_id, root)
    task, images, labels, keys = unique_images(gspec, data_root)
    names = class_names(task)
    pipe, load_seconds = pipeline, 0.0
    if pipe is None and not (directory / GENERATION).is_file():  # a model that cannot load leaves no cache folder
        t0 = time.perf_counter()
        pipe = load_pipeline(gspec.model, gspec.dtype, device, attention_slicing)
        load_seconds = time.perf_counter() - t0
    chunk = prepare_cache(gspec, directory, len(keys), chunk, gspec.command(data_root, root),
                          dict(class_names=names, image_shape=list(images.shape[1:])))
    n_chunks = -(-len(keys) // chunk)
    mine = [c for c in range(n_chunks) if c % shards == shard]
    manifest = read_json(directory / MANIFEST) or {"chunks": {}}
    todo, regenerated = [], 0
    for c in mine:
        entry = manifest["chunks"].get(chunk_name(c))
        if not chunk_ok(directory, entry):
            todo.append(c)
            regenerated += entry is not None
    report = GenerateReport(gspec.cache_id, directory, len(keys), n_chunks, len(mine), 0, 0, len(mine) - len(todo),
                            regenerated, 0.0, 0.0)
    if not todo:
        log(f"cache {gspec.cache_id}: shard {shard}/{shards} complete ({len(mine)} chunks), nothing to generate")
        return report
    t0 = time.perf_counter()
    pipe = pipe if pipe is not None else load_pipeline(gspec.model, gspec.dtype, device, attention_slicing)
    report.load_seconds = load_seconds + time.perf_counter() - t0
    for c in todo:
        if c > todo[0] and chunk_ok(directory, (read_json(directory / MANIFEST) or {"chunks": {}})["chunks"].get(chunk_name(c))):
            report.skipped_chunks += 1  # another job of the same cache (a second sweep, a requeue) wrote it meanwhile
            continue
        lo, hi = c * chunk, min((c + 1) * chunk, len(keys))
        t1 = time.perf_counter()
        variants = generate_chunk(pipe, gspec, images[lo:hi], labels[lo:hi], keys[lo:hi], names, batch_size, device)
        seconds = time.perf_counter() - t1
        buf = io.BytesIO()
        np.savez_compressed(buf, keys=np.array(keys[lo:hi]), labels=labels[lo:hi].numpy(), variants=variants)
        rel = f"chunks/{chunk_name(c)}.npz"
        write_bytes_atomic(directory / rel, buf.getvalue())  # whole chunk or nothing
        record_chunk(directory, c, dict(file=rel, sha256=sha256_file(directory / rel), images=hi - lo,
                                        seconds=round(seconds, 3), device=device))
        report.generated_chunks += 1
        report.generated_images += hi - lo
        report.seconds += seconds
        log(f"cache {gspec.cache_id}: chunk {c + 1}/{n_chunks} ({hi - lo} images x {gspec.variants}) in {seconds:.1f} s")
    return report


# ---- a tiny random pipeline (tests, CPU sweep) ------------------------------------------------------------
def make_tiny_pipeline(directory: str | Path, seed: int = 0) -> Path:
    """A randomly initialised StableDiffusionImg2ImgPipeline small enough for a CPU (VAE factor 2,
    32 px images, 2-layer CLIP text encoder, character-level tokenizer): no download. Save -> DIR."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    directory = Path(directory)
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,-_'")
    vocab: dict[str, int] = {}
    for tok in ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]:
        vocab.setdefault(tok, len(vocab))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=77)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(16, 32), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=16, attention_head_dim=2, norm_num_groups=8)
        vae = AutoencoderKL(block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                            norm_num_groups=8, sample_size=32)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
            num_hidden_layers=2, vocab_size=len(vocab), max_position_embeddings=77, projection_dim=16))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1,
                              set_alpha_to_one=False)
    pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.save_pretrained(directory)
    return directory


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.generate")
    sub = p.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("make-tiny-pipeline", help="write a tiny random img2img pipeline to DIR (no download)")
    tiny.add_argument("dir", nargs="?", help="where (default $SAFLEX_CACHE/tiny-sd-img2img, the CPU sweep's model)")
    tiny.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = make_tiny_pipeline(args.dir or cache_root() / TINY_NAME, args.seed)
    print(f"tiny pipeline written to {out} (use it as the generation model; resolution 32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
