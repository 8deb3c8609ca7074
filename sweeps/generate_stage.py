"""A sweep's `generate:` stage: diffusion caches made as a submitit job array over shards of the
training images, before the training runs that read them.

    generate:
      shards: 4                 # jobs per cache (chunk c goes to shard c % shards)
      chunk: 64                 # images per cache file
      batch_size: 8             # images per pipeline call (x variants)
      attention_slicing: false
      launcher: {gpus_per_node: 1, mem_gb: 24}   # overrides of the sweep's launcher for these jobs
      caches:
        sd15:                   # a name; method strings say `diffusion(p0.5,@sd15)`
          {task: medmnist/breastmnist, model: runwayml/stable-diffusion-v1-5, variants: 4, ...}

Local and debug executors: the stage waits for its jobs, and training starts only if every cache is
complete. SLURM: the training array is submitted with `--dependency=afterok:<generation jobs>`.
A cache already complete (every chunk present and matching its sha256) submits nothing; a job that
is killed or requeued resumes from the chunks already written.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import submitit

from sweeps.config import GenerateStage, Launcher
from sweeps.job import setup_job_process
from sweeps.launcher import make_executor, sweep_dir


class GenerateJob(submitit.helpers.Checkpointable):
    """One shard of one cache. Requeue-safe: a restarted job skips the chunks already written."""

    def __call__(self, gspec: dict, shard: int, shards: int, root: str, data_root: str | None, chunk: int,
                 batch_size: int, attention_slicing: bool, threads: int | None = None) -> dict:
        import torch

        from bench.generate import GenerationSpec, generate

        setup_job_process()
        if threads:
            torch.set_num_threads(int(threads))
        spec = GenerationSpec.from_dict(gspec)
        r = generate(spec, Path(data_root) if data_root else None, Path(root), shard=shard, shards=shards, chunk=chunk,
                     batch_size=batch_size, attention_slicing=attention_slicing)
        print(f"saflex-bench generate: cache {r.cache_id} shard {shard}/{shards}: {r.generated_images} images generated "
              f"({r.seconds_per_image:.3f} s/image), {r.skipped_chunks} chunks already there", flush=True)
        return dict(cache=r.cache_id, shard=shard, generated=r.generated_images, seconds=r.seconds)


@dataclass
class StageResult:
    ok: bool  # every cache complete (local/debug) or submitted (slurm)
    dependency: str | None = None  # `afterok:...` for the training array on SLURM


def stage_launcher(base: Launcher, stage: GenerateStage) -> Launcher:
    return dataclasses.replace(base, **dict(stage.launcher))


def run_stage(cfg, kind: str, root: Path, data_root: Path | None, results: Path, *, dry_run: bool = False) -> StageResult:
    """Make the sweep's caches that are not complete; print one line per cache."""
    from baselines.diffusion import cache_state

    stage: GenerateStage = cfg.generate
    todo = []
    for name, gspec in stage.caches.items():
        st = cache_state(gspec.cache_id, root)
        done = f"{st['done']}/{st['total']}" if st["total"] else "0"
        print(f"generate {name} -> cache {gspec.cache_id} ({gspec.task}, {gspec.model}): {st['state']}, {done} chunks"
              + ("" if st["state"] == "complete" else f"; {'would submit' if dry_run else 'submitting'} {stage.shards} shard jobs"))
        if st["state"] != "complete":
            todo.append((name, gspec))
    if not todo or dry_run:
        return StageResult(True)
    launcher = stage_launcher(cfg.launcher, stage)
    folder = sweep_dir(results, cfg.name) / "generate-logs" / "%j"
    n = len(todo) * stage.shards
    ex = make_executor(kind, folder, launcher, f"saflex-gen-{cfg.name}", n if kind != "local" else 1)
    fn = GenerateJob()
    jobs = []
    with ex.batch():
        for _, gspec in todo:
            for shard in range(stage.shards):
                jobs.append(ex.submit(fn, gspec.to_dict(), shard, stage.shards, str(root),
                                      str(data_root) if data_root else None, stage.chunk, stage.batch_size,
                                      stage.attention_slicing, launcher.cpus_per_task))
    print(f"generation: {len(jobs)} jobs ({', '.join(str(j.job_id) for j in jobs[:4])}{' ...' if len(jobs) > 4 else ''}), "
          f"logs {folder}", flush=True)
    if kind == "slurm":
        ids = sorted({str(j.job_id).split("_", 1)[0] for j in jobs})
        return StageResult(True, "afterok:" + ":".join(ids))
    t0 = time.time()
    failed = []
    for job in jobs:
        try:
            job.result()
        except Exception as e:  # noqa: BLE001 - reported as one line, training is not started
            failed.append((job, (str(e).strip().splitlines() or [type(e).__name__])[-1]))
    for job, line in failed:
        print(f"generation job {job.job_id} failed: {line[:300]}")
    print(f"generation: {len(jobs) - len(failed)}/{len(jobs)} jobs done in {time.time() - t0:.0f} s", flush=True)
    return StageResult(not failed)


def find_cache(cache_id: str, files: list[str] | None = None) -> tuple[Any, GenerateStage | None, str] | None:
    """(GenerationSpec, its stage, the file) of `cache_id` among `files` or the shipped sweeps."""
    from sweeps.config import SWEEPS_DIR, load_sweep

    candidates = files or sorted(str(p) for p in SWEEPS_DIR.glob("*.yaml"))
    for f in candidates:
        try:
            cfg = load_sweep(f)
        except Exception:  # noqa: BLE001 - a broken shipped file must not hide the others
            if files:
                raise
            continue
        for gspec in (cfg.generate.caches.values() if cfg.generate else ()):
            if gspec.cache_id == cache_id:
                return gspec, cfg.generate, str(cfg.path)
    return None


def stage_summary(stage: GenerateStage) -> Mapping[str, str]:
    return {name: g.cache_id for name, g in stage.caches.items()}
