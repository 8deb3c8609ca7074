"""`saflex-bench generate`: make (or resume, or verify) a diffusion cache; and the hook that runs a
sweep's `generate:` stage before its training runs. Registered by sweeps.cli.register."""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

from bench.errors import UsageError


def register_generate(subparsers: Any) -> None:
    from bench.generate import DEFAULT_CHUNK, DTYPES, GenerationSpec

    d = GenerationSpec(task="x/x", model="x")
    g = subparsers.add_parser(
        "generate", help="Stable Diffusion img2img variants of a task's training images, into a resumable cache",
        description="Generate (or resume) the cache of M img2img variants per training image that the upstream "
                    "diffusion(pP,CACHE_ID) trains on. Give the parameters, or --id ID to find them in a sweep "
                    "file's generate: section (--from FILE, default: the shipped sweeps), or --from FILE alone "
                    "for all of that file's caches. Prints the cache id and the method string.")
    g.add_argument("--task", help="FAMILY/DATASET (a single-label image task)")
    g.add_argument("--model", help="diffusers model id (runwayml/stable-diffusion-v1-5) or a local pipeline folder")
    g.add_argument("--splits", default=",".join(d.splits), help="comma-separated: train[,val] (default train)")
    g.add_argument("--variants", type=int, default=d.variants, help="img2img variants per image (M)")
    g.add_argument("--strength", type=float, default=d.strength, help="img2img strength in (0, 1]")
    g.add_argument("--guidance", type=float, default=d.guidance, help="classifier-free guidance scale")
    g.add_argument("--prompt", default=d.prompt, help="template with {class} (class name) and {label} (index)")
    g.add_argument("--steps", type=int, default=d.steps, help="inference steps (strength x steps are run)")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--resolution", type=int, default=d.resolution, help="pipeline image size (512 for SD 1.5/2.1-base)")
    g.add_argument("--dtype", choices=DTYPES, default=d.dtype, help="pipeline weights dtype (part of the cache id)")
    g.add_argument("--limit", type=int, help="only the first N distinct images (a pilot); the others stay real")
    g.add_argument("--id", dest="cache_id", help="make the cache with this id, parameters from --from FILE or the shipped sweeps")
    g.add_argument("--from", dest="from_file", metavar="FILE", help="a sweep file with a generate: section")
    g.add_argument("--shard", type=int, default=0, help="this job's shard (chunk c goes to shard c %% shards)")
    g.add_argument("--shards", type=int, default=1)
    g.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="images per cache file (fixed when the cache is created)")
    g.add_argument("--batch-size", dest="batch_size", type=int, default=8, help="images per pipeline call")
    g.add_argument("--attention-slicing", action="store_true", help="less GPU memory, a little slower")
    g.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when present)")
    g.add_argument("--cache", help="cache root (default $SAFLEX_CACHE or ~/.cache/saflex-bench)")
    g.add_argument("--data-root", help="folder with the datasets (default $SAFLEX_DATA)")
    g.add_argument("--print-id", action="store_true", help="print the cache id and its state; generate nothing")
    g.set_defaults(func=cmd_generate)


def _specs(args: argparse.Namespace) -> list[tuple[Any, dict]]:
    """[(GenerationSpec, runtime settings)] the arguments ask for."""
    from bench.generate import GenerationSpec
    from sweeps.config import load_sweep
    from sweeps.generate_stage import find_cache

    runtime = dict(chunk=args.chunk, batch_size=args.batch_size, attention_slicing=args.attention_slicing)
    if args.cache_id:
        found = find_cache(args.cache_id, [args.from_file] if args.from_file else None)
        if found is None:
            raise UsageError(f"cache id {args.cache_id} is in no generate: section of "
                             f"{args.from_file or 'the shipped sweeps'} (give its parameters: --task, --model, ...)")
        gspec, stage, _ = found
        return [(gspec, dict(chunk=stage.chunk, batch_size=stage.batch_size, attention_slicing=stage.attention_slicing))]
    if args.from_file and not args.task:
        cfg = load_sweep(args.from_file)
        if cfg.generate is None:
            raise UsageError(f"{cfg.path} has no generate: section")
        st = cfg.generate
        return [(g, dict(chunk=st.chunk, batch_size=st.batch_size, attention_slicing=st.attention_slicing))
                for g in st.caches.values()]
    if not args.task or not args.model:
        raise UsageError("generate needs --task and --model (or --id ID, or --from SWEEP_FILE)")
    gspec = GenerationSpec(task=args.task, model=args.model, splits=tuple(s for s in args.splits.split(",") if s),
                           variants=args.variants, strength=args.strength, guidance=args.guidance, prompt=args.prompt,
                           steps=args.steps, seed=args.seed, resolution=args.resolution, dtype=args.dtype,
                           limit=args.limit)
    return [(gspec, runtime)]


def cmd_generate(args: argparse.Namespace) -> int:
    from baselines.diffusion import CACHE_ENV, cache_root, cache_state
    from bench.generate import generate
    from bench.runner import resolve_data_root

    root = cache_root(args.cache)
    os.environ[CACHE_ENV] = str(root)  # model paths may name $SAFLEX_CACHE (the tiny pipeline)
    data_root = resolve_data_root(args.data_root)
    for gspec, runtime in _specs(args):
        print(f"cache {gspec.cache_id}  {root / 'diffusion' / gspec.cache_id}")
        print(f"method {gspec.method(0.5)}   (p = probability of a synthetic image; add +rand-m9-n2, +saflex, ...)")
        if args.print_id:
            st = cache_state(gspec.cache_id, root)
            print(f"state {st['state']} ({st['done']}/{st['total'] or '?'} chunks)")
            continue
        r = generate(gspec, data_root, root, shard=args.shard, shards=args.shards, device=args.device, **runtime)
        size = sum(f.stat().st_size for f in r.directory.rglob("*") if f.is_file())
        print(f"generated {r.generated_images} images x {gspec.variants} variants in {r.seconds:.1f} s "
              f"({r.seconds_per_image:.3f} s/image, pipeline load {r.load_seconds:.1f} s); "
              f"{r.skipped_chunks} chunks were there, {r.regenerated_chunks} regenerated (bad sha256); "
              f"cache {size / 2**20:.2f} MiB")
    return 0


def before_training(cfg, kind: str, cache: str | None, data_root: Path | None, results: Path, dry_run: bool):
    """Run the sweep's generate stage; return the launcher the training array uses (on SLURM with a
    dependency on the generation jobs), or None when a cache could not be made (training not started).
    Sets $SAFLEX_CACHE so the training jobs (which inherit the environment) read the same root."""
    from baselines.diffusion import CACHE_ENV, cache_root
    from sweeps.generate_stage import run_stage

    root = cache_root(cache).resolve()
    os.environ[CACHE_ENV] = str(root)
    print(f"diffusion caches under {root}")
    result = run_stage(cfg, kind, root, data_root, results, dry_run=dry_run)
    if not result.ok:
        print("generation failed: training not submitted (rerun `sweep` to resume the caches)")
        return None
    launcher = cfg.launcher
    if result.dependency:
        extra = {**launcher.slurm_additional_parameters, "dependency": result.dependency}
        launcher = dataclasses.replace(launcher, slurm_additional_parameters=extra)
    return launcher
