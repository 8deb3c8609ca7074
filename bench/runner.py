"""One run end to end: spec -> data -> trainer -> result.json (atomic, last)."""
from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
import socket
import sys
from pathlib import Path
from typing import Any, Callable

from bench import __version__
from bench.errors import UsageError
from bench.results.records import NEWER_SCHEMA
from bench.spec import RunSpec
from bench.store import ResultsStore, check_results_root, fault_point, run_lock

DATA_ENV = "SAFLEX_DATA"
RESULTS_ENV = "SAFLEX_RESULTS"


def _not_blank(value: str | os.PathLike | None, flag: str, env: str) -> None:
    """An explicitly empty path (`--results ''`, an unset shell variable expanded) is a mistake, not a
    request for the default: refuse it rather than write to ./results."""
    if value is not None and not str(os.fspath(value)).strip():
        raise UsageError(f"{flag} is empty; give a folder (or leave {flag} out to use ${env} or the default)")


def resolve_data_root(data_root: str | os.PathLike | None) -> Path | None:
    _not_blank(data_root, "--data-root", DATA_ENV)
    value = data_root or os.environ.get(DATA_ENV)
    return Path(value).expanduser() if value else None


def resolve_results_root(results: str | os.PathLike | None) -> Path:
    _not_blank(results, "--results", RESULTS_ENV)
    return Path(results or os.environ.get(RESULTS_ENV) or "results").expanduser()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def versions() -> dict[str, str]:
    """The code a record was made with: library versions, the package version and, in a git checkout,
    its commit (a `+dirty` suffix when tracked files differ from it)."""
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "saflex_bench": __version__}
    commit = git_commit()
    if commit:
        out["git"] = commit
    return out


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The checkout's commit, or None outside a git checkout (an installed wheel) or without git."""
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    if not (repo / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(repo), "diff", "--quiet", "HEAD", "--"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.returncode == 1 else "")


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


def _selection_info(data) -> dict:
    """The selection split's majority rate (its most frequent class's share): a selected epoch at or below
    it predicts one class there (reports/selection.py counts those). Absent for multi-label targets."""
    y = data.select.y
    if y.ndim != 1 or not len(y):
        return {}
    import torch

    return {"select_majority": float(torch.unique(y, return_counts=True)[1].max()) / len(y)}


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


def available_cpus() -> int:
    """The CPUs this process may run on (affinity: respects cgroups/taskset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def check_threads(threads: int | None, oversubscribe: bool = False, flag: str = "--threads") -> None:
    """More torch threads than CPUs only slows a run down (16 threads on 2 cores: 3.4x the wall time;
    1000: an epoch of digits did not end in 2 min), so it is refused unless asked for explicitly,
    and then it is only warned about."""
    if threads is None:
        return
    cpus = available_cpus()
    if threads <= cpus:
        return
    msg = f"{flag} {threads} is more than the {cpus} CPU(s) this process may use on {socket.gethostname()}"
    if not oversubscribe:
        raise UsageError(f"{msg}; use --threads {cpus} or less (or add --oversubscribe to run anyway, slower)")
    print(f"saflex-bench: warning: {msg}; oversubscribed threads slow the run down", file=sys.stderr)


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


_STARTUP_CHARGED = False  # the process's start-up is charged to the first run it trains, once


def process_age_s() -> float | None:
    """Seconds since this process started (Linux: /proc), None where that cannot be read."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, after the command name
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def _startup_s() -> float:
    """The interpreter start-up and imports before the first run_spec of this process (0 for later runs:
    a debug or packed sweep trains several runs in one process)."""
    global _STARTUP_CHARGED
    if _STARTUP_CHARGED:
        return 0.0
    _STARTUP_CHARGED = True
    return process_age_s() or 0.0


def process_cost(phases: dict[str, float], t_enter: float, startup_s: float) -> dict[str, Any]:
    """result.json's `cost.process_s` (what the run cost its job, start-up to the record) and
    `cost.phases` (its parts; `other_s` = lock waits, checks and what no phase names)."""
    import time

    total = startup_s + (time.perf_counter() - t_enter)
    named = {"startup_s": startup_s, **phases}
    return {"process_s": round(total, 3),
            "phases": {**{k: round(v, 3) for k, v in named.items()}, "other_s": round(max(0.0, total - sum(named.values())), 3)}}


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
    import time

    t_enter = time.perf_counter()
    startup_s = _startup_s()
    store = ResultsStore(resolve_results_root(results))
    key = spec.key
    done, why = store.load_result(key, spec)
    if why is None:
        return _with_tracking(spec, store, done, wandb_mode, sweep)
    if why.endswith(NEWER_SCHEMA):  # written by a newer saflex-bench: retraining would overwrite it
        raise UsageError(f"run {key}: {why}; it is left as it is")
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

    t_load = time.perf_counter()
    data = with_reference(task.load(data_root, spec), spec.ref_frac, spec.ref_from, spec.seed)
    timing = {"t_enter": t_enter, "startup_s": startup_s, "load_s": time.perf_counter() - t_load}
    if data_on_device == "on":  # fail before anything is written (the trainer decides again, on its own split)
        import baselines

        from bench.data import use_device_resident

        use_device_resident(baselines.create_method(spec.upstream), data.train.x, data.train.y, device, "on", aug_path)
    from bench.tracking import check_online, resolve_mode

    if resolve_mode(wandb_mode) == "online":  # before the run folder exists: a failed start writes nothing
        check_online()
    check_results_root(store.root)
    from bench.trainer import Trainer

    # built before the run folder exists: a model, learner or upstream that cannot start (a missing or
    # foreign diffusion cache, a bad knob) leaves no spec.json / attempt.json that looks like progress
    timing["t_setup"] = time.perf_counter()
    trainer = Trainer(spec, task, data, store, device=device, workers=workers, aug_path=aug_path, progress=progress,
                      echo=progress if echo is None else echo, on_epoch_end=on_epoch_end, data_on_device=data_on_device)
    with run_lock(store.run_dir(key)):
        done = store.read_result(key, spec)  # another process finished it while we waited
        if done is not None:
            return _with_tracking(spec, store, done, wandb_mode, sweep, locked=True)
        return _train(spec, store, trainer, data, threads, wandb_mode=wandb_mode, sweep=sweep, workers=workers,
                      keep_checkpoints=keep_checkpoints, timing=timing)


def _with_tracking(spec: RunSpec, store: ResultsStore, record: dict, wandb_mode, sweep, locked: bool = False) -> dict:
    """A done run: its wandb record too (written again when the process that trained it died before
    wandb closed it; a stat when it is complete). `locked`: the caller holds the run's lock."""
    import contextlib

    from bench.tracking import ensure_record

    run_dir = store.run_dir(spec.key)
    attempt = store.read_attempt(spec.key) or {}
    # only a run that was tracked: never a wandb record added to a store trained with wandb off
    # (runs from before attempt.json named the mode: those with a wandb/ folder)
    tracked = attempt.get("wandb", "offline" if (run_dir / "wandb").is_dir() else "disabled") != "disabled"
    if not tracked:
        return record
    try:
        with contextlib.nullcontext() if locked else run_lock(run_dir):
            ensure_record(spec.to_dict(), spec.key, run_dir, wandb_mode, record.get("sweep") or sweep, record,
                          knobs=spec.knobs)
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - the result stands whatever wandb does
        print(f"saflex-bench: warning: could not repair the wandb record of run {spec.key} ({type(e).__name__}: {e})",
              file=sys.stderr)
    return record


def _train(spec: RunSpec, store: ResultsStore, trainer, data, threads: int, *, wandb_mode, sweep, workers,
           keep_checkpoints="best", timing: dict | None = None) -> dict[str, Any]:
    import time

    import torch

    key = spec.key
    run_dir = store.run_dir(key)
    run_dir.mkdir(parents=True, exist_ok=True)
    store.write_spec(key, spec.to_dict())
    from bench.tracking import resolve_mode

    attempt = dict(state="running", host=socket.gethostname(), pid=os.getpid(), started_at=_now(), sweep=sweep, threads=threads,
                   wandb=resolve_mode(wandb_mode), **_slurm_ids())
    store.write_attempt(key, attempt)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    tracker = None
    try:
        from bench.tracking import start_tracking

        tracker = trainer.tracker = start_tracking(spec.to_dict(), key, run_dir, wandb_mode, sweep, knobs=spec.knobs)
        t_fit = time.perf_counter()
        out = trainer.fit()
        fit_s = time.perf_counter() - t_fit
        if timing is not None:  # the training loop (wall_s: epochs, validation, checkpoints) and around it
            # a resumed run's wall_s also holds the loops of earlier processes; the phases are this process's
            loop_s = min(float(out["cost"].get("wall_s", 0.0)), fit_s)
            out["cost"].update(process_cost({"load_s": timing["load_s"], "setup_s": t_fit - timing["t_setup"], "loop_s": loop_s,
                                             "final_eval_s": max(0.0, fit_s - loop_s)},
                                            timing["t_enter"], timing["startup_s"]))
        record = dict(key=key, status="done", sweep=sweep, spec=spec.to_dict(), semantics=spec.semantics, metrics=out["metrics"], cost=out["cost"],
                      data=split_sizes(data), info=_jsonable({**data.info, **_selection_info(data)}), versions=versions(), host=socket.gethostname(), device=str(trainer.device),
                      threads=threads, workers=workers, warnings=out.get("warnings", []), finished_at=_now())
        from bench.numerics import numerics_info

        record["numerics"] = numerics_info(trainer.device)  # what decides the float order (not identity)
        from bench.results.records import encode_record

        record = encode_record(record, spec)  # schema_version and the spec's semantics: as stored
        fault_point("before-result")
        store.write_result(key, record)  # LAST: from here on the run counts as done
        fault_point("after-result")
        store.write_attempt(key, {**attempt, "state": "done", "ended_at": _now()})
        t_close = time.perf_counter()
        try:
            tracker.finish(record)  # offline: the wandb run is written here, from the logged rows
        except Exception as e:  # noqa: BLE001 - the run is done; its wandb record is repaired by the next call
            print(f"saflex-bench: warning: run {key} is done but its wandb record was not written "
                  f"({type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}); "
                  "`saflex-bench run` of the same spec writes it again", file=sys.stderr)
        trainer.prune_checkpoints(keep_checkpoints)
        if timing is not None:  # closing costs seconds (wandb): in the record too, since jobs are sized from process_s
            close_s = time.perf_counter() - t_close
            cost = dict(record["cost"])
            cost["process_s"] = round(cost["process_s"] + close_s, 3)
            cost["phases"] = {**cost["phases"], "close_s": round(close_s, 3)}
            record = {**record, "cost": cost}
            store.write_result(key, record)  # the same done record, its cost complete
        return record
    except BaseException as e:
        state = "failed" if isinstance(e, Exception) else "interrupted"
        last = (str(e).strip().splitlines() or [""])[-1]
        try:  # on a full disk this write fails too: the original error is the one to report
            store.write_attempt(key, {**attempt, "state": state, "error": f"{type(e).__name__}: {last}",
                                      "ended_at": _now(), "epochs_saved": trainer.saved_epoch or len(store.read_metrics(key))})
        except OSError:
            pass
        if tracker is not None:
            try:
                tracker.finish(None, exit_code=1)
            except Exception:  # noqa: BLE001 - never mask the original error
                print("saflex-bench: warning: could not close the wandb run", file=sys.stderr)
        raise
    finally:
        torch.set_num_threads(threads_before)  # in-process callers (debug sweeps, tests) keep their setting
