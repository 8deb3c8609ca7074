"""One run end to end: spec -> data -> trainer -> result.json (atomic, last)."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import sys
from pathlib import Path
from typing import Any, Callable

from bench import __version__
from bench.errors import UsageError
from bench.spec import RunSpec
from bench.store import ResultsStore, check_results_root, fault_point, run_lock

DATA_ENV = "SAFLEX_DATA"
RESULTS_ENV = "SAFLEX_RESULTS"


def resolve_data_root(data_root: str | os.PathLike | None) -> Path | None:
    value = data_root or os.environ.get(DATA_ENV)
    return Path(value).expanduser() if value else None


def resolve_results_root(results: str | os.PathLike | None) -> Path:
    return Path(results or os.environ.get(RESULTS_ENV) or "results").expanduser()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def versions() -> dict[str, str]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "saflex_bench": __version__}


def _jsonable(info: dict) -> dict:
    """The task's load info (split seeds, drawn indices, weight hashes) that JSON can hold."""
    import json

    out = {}
    for k, v in (info or {}).items():
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        out[k] = v
    return out


def split_sizes(data) -> dict[str, int]:
    sizes = {"train": len(data.train), "val": len(data.select), **{k: len(v) for k, v in data.tests.items()}}
    if data.reference is not None:
        sizes["reference"] = len(data.reference)
    return sizes


def resolve_device(device: str | None) -> str:
    """The device to train on, checked before anything is written: UsageError for a name torch does
    not know or a GPU that is not there."""
    import torch

    if not device:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"unknown device '{device}' (valid: cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise UsageError(f"--device {device}: no CUDA GPU is visible on {socket.gethostname()}; use --device cpu")
        if dev.index is not None and dev.index >= n:
            raise UsageError(f"--device {device}: only {n} GPU(s) visible (cuda:0..cuda:{n - 1})")
    elif dev.type != "cpu":
        raise UsageError(f"device '{device}' is not supported (valid: cpu, cuda, cuda:N)")
    return str(dev)


def default_threads() -> int:
    """The CPUs this job was given: SLURM's --cpus-per-task, else $OMP_NUM_THREADS when the user set it,
    else the CPUs this process may run on (affinity, which respects cgroups/taskset, unlike cpu_count)."""
    for var in ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) >= 1:
            return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def resolve_threads(threads: int | None) -> int:
    if threads is None:
        return default_threads()
    if int(threads) < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    return int(threads)


def mixed_cost_settings(records) -> str | None:
    """For reports: one line when the records' costs were measured under different settings (threads,
    device), which makes epoch_s / samples_per_s not comparable; None when they agree."""
    seen: dict[str, set] = {"threads": set(), "device": set()}
    for r in records:
        for k in seen:
            seen[k].add(str(r.get(k, "?")))
    mixed = [f"{k} {', '.join(sorted(v))}" for k, v in seen.items() if len(v) > 1]
    return f"costs measured under different settings ({'; '.join(mixed)}): compare epoch_s with care" if mixed else None


def _slurm_ids() -> dict[str, str]:
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")
    return {k.lower(): os.environ[k] for k in keys if k in os.environ}


def run_spec(spec: RunSpec, results: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None, *,
             wandb_mode: str | None = None, sweep: str | None = None, progress: bool = True, device: str | None = None,
             workers: int | None = None, on_epoch_end: Callable[[int, dict], None] | None = None,
             threads: int | None = None, echo: bool | None = None, keep_checkpoints: str = "best",
             aug_path: str = "auto", data_on_device: str = "off") -> dict[str, Any]:
    """Train and evaluate `spec`; return its result record. A done run is returned as is; a run whose
    directory holds a checkpoint resumes from it. One process trains a run at a time (run_lock): a
    second waits, then returns the record the first wrote. `threads`: torch's intra-op threads
    (default: the CPUs the job was given). `echo`: print the per-epoch lines (default: `progress`).
    `workers`: DataLoader workers for the per-sample stage (None: bench.data.default_workers).
    `keep_checkpoints`: what stays once result.json is written (best: best.pt; full; none).
    `aug_path`: per-image, batched or auto (per-sample augmentation; the same images either way).
    `data_on_device`: off, on or auto: keep the training split on the device and augment it there
    (batched path; the same batches); auto uses it on a GPU where it fits, else the loader path.
    Which path ran is recorded as cost.data_path (an execution setting: not in the key)."""
    store = ResultsStore(resolve_results_root(results))
    key = spec.key
    done = store.read_result(key, spec)
    if done is not None:
        return done
    # user errors surface before anything is written
    device = resolve_device(device)
    threads = resolve_threads(threads)
    from bench.data import AUG_PATHS, DATA_ON_DEVICE, default_workers
    from bench.store import KEEP_CHECKPOINTS

    if keep_checkpoints not in KEEP_CHECKPOINTS:
        raise UsageError(f"unknown keep_checkpoints '{keep_checkpoints}' (valid: {', '.join(KEEP_CHECKPOINTS)})")
    if aug_path not in AUG_PATHS:
        raise UsageError(f"unknown aug_path '{aug_path}' (valid: {', '.join(AUG_PATHS)})")
    if data_on_device not in DATA_ON_DEVICE:
        raise UsageError(f"unknown data_on_device '{data_on_device}' (valid: {', '.join(DATA_ON_DEVICE)})")
    if workers is None:
        workers = default_workers(threads, "cuda" if str(device).startswith("cuda") else "cpu")
    elif workers < 0:
        raise UsageError(f"--workers must be >= 0 (got {workers})")
    data_root = resolve_data_root(data_root)
    from bench.tasks import get_task

    task = get_task(spec.task)
    from bench.data import with_reference

    data = with_reference(task.load(data_root, spec), spec.ref_frac, spec.ref_from, spec.seed)
    if data_on_device == "on":  # fail before anything is written (the trainer decides again, on its own split)
        import baselines

        from bench.data import use_device_resident

        use_device_resident(baselines.create_method(spec.upstream), data.train.x, data.train.y, device, "on", aug_path)
    check_results_root(store.root)
    with run_lock(store.run_dir(key)):
        done = store.read_result(key, spec)  # another process finished it while we waited
        if done is not None:
            return done
        return _train(spec, store, task, data, device, threads, wandb_mode=wandb_mode, sweep=sweep, progress=progress,
                      echo=progress if echo is None else echo, workers=workers, on_epoch_end=on_epoch_end,
                      keep_checkpoints=keep_checkpoints, aug_path=aug_path, data_on_device=data_on_device)


def _train(spec: RunSpec, store: ResultsStore, task, data, device: str, threads: int, *, wandb_mode, sweep, progress,
           echo, workers, on_epoch_end, keep_checkpoints="best", aug_path="auto", data_on_device="off") -> dict[str, Any]:
    import torch

    from bench.trainer import Trainer

    key = spec.key
    run_dir = store.run_dir(key)
    run_dir.mkdir(parents=True, exist_ok=True)
    store.write_spec(key, spec.to_dict())
    attempt = dict(state="running", host=socket.gethostname(), pid=os.getpid(), started_at=_now(), sweep=sweep, threads=threads,
                   **_slurm_ids())
    store.write_attempt(key, attempt)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    tracker = trainer = None
    try:
        from bench.tracking import start_tracking

        tracker = start_tracking(spec.to_dict(), key, run_dir, wandb_mode, sweep)
        trainer = Trainer(spec, task, data, store, device=device, workers=workers, aug_path=aug_path, progress=progress, echo=echo,
                          tracker=tracker, on_epoch_end=on_epoch_end, data_on_device=data_on_device)
        out = trainer.fit()
        record = dict(key=key, status="done", sweep=sweep, spec=spec.to_dict(), metrics=out["metrics"], cost=out["cost"],
                      data=split_sizes(data), info=_jsonable(data.info), versions=versions(), host=socket.gethostname(), device=str(trainer.device),
                      threads=threads, workers=workers, warnings=out.get("warnings", []), finished_at=_now())
        from bench.numerics import numerics_info

        record["numerics"] = numerics_info(trainer.device)  # what decides the float order (not identity)
        from bench.results.records import encode_record

        record = encode_record(record, spec)  # schema_version and the spec's semantics: as stored
        fault_point("before-result")
        store.write_result(key, record)  # LAST: from here on the run counts as done
        fault_point("after-result")
        store.write_attempt(key, {**attempt, "state": "done", "ended_at": _now()})
        tracker.finish(record)
        trainer.prune_checkpoints(keep_checkpoints)
        return record
    except BaseException as e:
        state = "failed" if isinstance(e, Exception) else "interrupted"
        last = (str(e).strip().splitlines() or [""])[-1]
        saved = trainer.saved_epoch if trainer is not None else len(store.read_metrics(key))
        store.write_attempt(key, {**attempt, "state": state, "error": f"{type(e).__name__}: {last}", "ended_at": _now(),
                                  "epochs_saved": saved})
        if tracker is not None:
            try:
                tracker.finish(None, exit_code=1)
            except Exception:  # noqa: BLE001 - never mask the original error
                print("saflex-bench: warning: could not close the wandb run", file=sys.stderr)
        raise
    finally:
        torch.set_num_threads(threads_before)  # in-process callers (debug sweeps, tests) keep their setting
