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
from bench.spec import RunSpec
from bench.store import ResultsStore

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


def split_sizes(data) -> dict[str, int]:
    sizes = {"train": len(data.train), "val": len(data.select), **{k: len(v) for k, v in data.tests.items()}}
    if data.reference is not None:
        sizes["reference"] = len(data.reference)
    return sizes


def _slurm_ids() -> dict[str, str]:
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")
    return {k.lower(): os.environ[k] for k in keys if k in os.environ}


def run_spec(spec: RunSpec, results: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None, *,
             wandb_mode: str | None = None, sweep: str | None = None, progress: bool = True, device: str | None = None,
             workers: int = 0, on_epoch_end: Callable[[int, dict], None] | None = None) -> dict[str, Any]:
    """Train and evaluate `spec`; return its result record. A done run is returned as is; a run whose
    directory holds a checkpoint resumes from it."""
    from bench.data import with_reference
    from bench.numerics import numerics_info
    from bench.tasks import get_task
    from bench.trainer import Trainer

    store = ResultsStore(resolve_results_root(results))
    key = spec.key
    done = store.read_result(key)
    if done is not None:
        return done
    data_root = resolve_data_root(data_root)
    task = get_task(spec.task)
    data = task.load(data_root, spec)  # user errors surface before anything is written
    data = with_reference(data, spec.ref_frac, spec.ref_from, spec.seed)
    run_dir = store.run_dir(key)
    run_dir.mkdir(parents=True, exist_ok=True)
    store.write_spec(key, spec.to_dict())
    attempt = dict(state="running", host=socket.gethostname(), pid=os.getpid(), started_at=_now(), sweep=sweep, **_slurm_ids())
    store.write_attempt(key, attempt)
    tracker = None
    try:
        from bench.tracking import start_tracking

        tracker = start_tracking(spec.to_dict(), key, run_dir, wandb_mode, sweep)
        trainer = Trainer(spec, task, data, store, device=device, workers=workers,
                          progress=progress, tracker=tracker, on_epoch_end=on_epoch_end)
        out = trainer.fit()
        record = dict(key=key, status="done", sweep=sweep, spec=spec.to_dict(), metrics=out["metrics"], cost=out["cost"],
                      data=split_sizes(data), versions=versions(), host=socket.gethostname(), device=str(trainer.device), finished_at=_now())
        record["numerics"] = numerics_info(trainer.device)  # what decides the float order (not identity)
        store.write_result(key, record)  # LAST: from here on the run counts as done
        store.write_attempt(key, {**attempt, "state": "done", "ended_at": _now()})
        tracker.finish(record)
        return record
    except BaseException as e:
        state = "failed" if isinstance(e, Exception) else "interrupted"
        last = (str(e).strip().splitlines() or [""])[-1]
        store.write_attempt(key, {**attempt, "state": state, "error": f"{type(e).__name__}: {last}", "ended_at": _now()})
        if tracker is not None:
            try:
                tracker.finish(None, exit_code=1)
            except Exception:  # noqa: BLE001 - never mask the original error
                print("saflex-bench: warning: could not close the wandb run", file=sys.stderr)
        raise
