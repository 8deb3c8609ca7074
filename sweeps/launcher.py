"""Submit a sweep's runs as one submitit job array of checkpointable jobs, and keep a ledger.

- `RunJob` is a `submitit.helpers.Checkpointable`: on USR2 (preemption / time limit) submitit
  pickles the same call and requeues it; and whenever the job starts — after a USR2 requeue, after an
  `scontrol requeue` that sends no signal, after a node failure — `bench.runner.run_spec` resumes from
  the run's last per-epoch `checkpoint.pt`. A done run (valid result.json) is returned as is.
- Executors: `slurm` (sbatch job array, `array_parallelism` at a time), `local` (one subprocess per
  run through submitit's LocalExecutor; at most `array_parallelism` train at once: the others wait for
  a slot lock), `debug` (in this process, sequentially; pdb on failure when on a terminal).
- Packs (`launcher.runs_per_job` K > 1): each array task is a `sweeps.pack.PackJob` that trains K runs
  concurrently, one child process each (see sweeps/pack.py); the job asks for K x cpus_per_task CPUs
  and K x mem_gb memory.
- Ledger: `<results>/sweeps/<name>/submissions.jsonl`, one JSON line per submitted run (key, job id,
  array index, executor, log folder, time; packed runs also pack_index, pack_size, run_logs); `status` reads it
  to ask the scheduler about each run.
- Logs: `<results>/sweeps/<name>/logs/<job id>/` (submitit's stdout/stderr/pickles).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import submitit

from sweeps.config import Launcher
from sweeps.job import JobTerminated, RunJob, append_ledger, now_iso, read_ledger  # noqa: F401  (also the launcher's names)
from sweeps.pack import PackJob, child_log_dir, chunk

EXECUTORS = ("local", "slurm", "debug")
LEDGER = "submissions.jsonl"


def sweep_dir(results: Path, name: str) -> Path:
    return Path(results) / "sweeps" / name


def logs_folder(results: Path, name: str) -> Path:
    """submitit's folder pattern: %j becomes the job id (`<array id>_<index>` in an array)."""
    return sweep_dir(results, name) / "logs" / "%j"


# ---- executors ----------------------------------------------------------------------------
SINFO_TIMEOUT_S = 3.0  # a controller that answers does so in well under a second; a dead one retries ~9 s


def detect_executor(timeout: float = SINFO_TIMEOUT_S) -> tuple[str, str]:
    """('slurm', why) when sbatch is on PATH and sinfo answers within `timeout`, else ('local', why)."""
    if shutil.which("sbatch") is None:
        return "local", "no sbatch on PATH"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "local", f"sbatch found but sinfo did not answer within {timeout:g} s (no SLURM controller?)"
    except OSError as e:
        return "local", f"sbatch found but sinfo failed ({type(e).__name__})"
    if out.returncode != 0 or not out.stdout.strip():
        return "local", "sbatch found but sinfo lists no partition"
    return "slurm", "sbatch on PATH and sinfo answers"


def make_executor(kind: str, folder: Path, launcher: Launcher, job_name: str, n_jobs: int) -> submitit.AutoExecutor:
    params: dict[str, Any] = dict(
        name=job_name,
        timeout_min=launcher.timeout_min,
        mem_gb=launcher.mem_gb,
        cpus_per_task=launcher.cpus_per_task,
        gpus_per_node=launcher.gpus_per_node,
        nodes=1,
        tasks_per_node=1,
    )
    if kind == "slurm":
        if shutil.which("srun") is None:
            from bench.errors import UsageError

            raise UsageError("--executor slurm: no `srun` on PATH, so this is not a SLURM node "
                             "(use --executor local, or run `sweep` on the cluster's login node)")
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=launcher.max_num_timeout)
        params.update(slurm_array_parallelism=launcher.array_parallelism, slurm_signal_delay_s=launcher.signal_delay_s)
        for name in ("partition", "account", "qos", "constraint"):
            value = getattr(launcher, name)
            if value:
                params[f"slurm_{name}"] = value
        if launcher.setup:
            params["slurm_setup"] = list(launcher.setup)
        if launcher.slurm_additional_parameters:
            params["slurm_additional_parameters"] = dict(launcher.slurm_additional_parameters)
    elif kind == "local":
        import submitit.local.local as _local

        _local.subprocess = _DetachedPopen()  # type: ignore[assignment]
        ex = submitit.AutoExecutor(folder=folder, cluster="local", local_max_num_timeout=launcher.max_num_timeout)
        # every local job starts at once and waits for a slot: its time limit covers the queue ahead of it
        waves = -(-n_jobs // max(1, launcher.array_parallelism))
        params["timeout_min"] = launcher.timeout_min * max(1, waves)
    elif kind == "debug":
        ex = submitit.AutoExecutor(folder=folder, cluster="debug")
    else:  # pragma: no cover - the CLI restricts choices
        raise ValueError(kind)
    ex.update_parameters(**params)
    return ex


# Never hand credentials to sbatch: SLURM stores a job's whole environment on disk (StateSaveLocation
# .../job.N/environment) for as long as the job lives. Jobs that need wandb online read the login
# file the cluster already has (`wandb login` -> ~/.netrc), not an environment variable.
_SECRET_ENV = re.compile(r"(API_?KEY|ACCESS_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.IGNORECASE)


def secret_env_names(env: Mapping[str, str] | None = None) -> list[str]:
    return sorted(k for k in (os.environ if env is None else env) if _SECRET_ENV.search(k))


@contextlib.contextmanager
def _without_secrets():
    saved = {k: os.environ.pop(k) for k in secret_env_names()}
    try:
        yield sorted(saved)
    finally:
        os.environ.update(saved)


def pack_resources(launcher: Launcher) -> Launcher:
    """What one job asks for: cpus_per_task and mem_gb are per run, so a pack of K runs asks K times
    both; gpus_per_node is the sweep's (the K runs share the job's GPU)."""
    k = launcher.runs_per_job
    if k == 1 or launcher.pack_mode == "serial":  # serial: one run at a time, one run's resources
        return launcher
    return dataclasses.replace(launcher, cpus_per_task=launcher.cpus_per_task * k, mem_gb=launcher.mem_gb * k)


def submit_runs(kind: str, results: Path, sweep_name: str, launcher: Launcher, runs: Sequence[Any],
                data_root: Path | None, wandb_mode: str, threads: int | None = None) -> list[tuple[Any, Any]]:
    """Submit `runs` (PlannedRun) as one job array; append them to the ledger; return (run, job) pairs.
    With launcher.runs_per_job K > 1 each array task is a PackJob training K runs concurrently (plan
    order, groups of K): the pairs then share jobs, and every run still has its own ledger line."""

    results = Path(results).resolve()
    folder = logs_folder(results, sweep_name)
    k = launcher.runs_per_job
    groups = chunk(runs, k)
    ex = make_executor(kind, folder, pack_resources(launcher), f"saflex-{sweep_name}", len(groups))
    slots_dir = str(sweep_dir(results, sweep_name) / "slots") if kind == "local" else None
    # threads per RUN (each child of a pack too): the sweep's cpus_per_task, not the pack's total
    common = (str(results), str(data_root) if data_root else None, wandb_mode, sweep_name,
              threads or launcher.cpus_per_task, slots_dir, launcher.array_parallelism, launcher.deterministic)
    jobs = []
    with (_without_secrets() if kind == "slurm" else contextlib.nullcontext()):
        with ex.batch():
            for group in groups:
                if k == 1:
                    jobs.append(ex.submit(RunJob(), group[0].spec.to_dict(), *common))
                else:
                    jobs.append(ex.submit(PackJob(), [r.spec.to_dict() for r in group], *common, str(folder),
                                          launcher.pack_mode))
    entries, pairs = [], []
    t = now_iso()
    for i, (group, job) in enumerate(zip(groups, jobs)):
        job_id = str(job.job_id)
        array_id, _, index = job_id.partition("_")
        for j, run in enumerate(group):
            entry = dict(key=run.key, job_id=job_id, array_job_id=array_id if index else None,
                         array_index=int(index) if index.isdigit() else (i if kind != "slurm" else None),
                         executor=kind, folder=str(folder), submitted_at=t, host=os.uname().nodename,
                         task=run.spec.task, method=run.spec.method, seed=run.spec.seed)
            if k > 1:  # where its child process logs (sweeps/pack.py)
                entry.update(pack_index=j, pack_size=len(group),
                             run_logs=str(child_log_dir(folder, job_id if kind != "debug" else None)))
            entries.append(entry)
            pairs.append((run, job))
    append_ledger(sweep_dir(results, sweep_name) / LEDGER, entries)
    return pairs


def sweep_lock(results: Path, name: str):
    """Serialise `sweep` invocations of one sweep (plan -> submit -> ledger)."""
    from bench.store import exclusive

    return exclusive(sweep_dir(results, name) / ".lock",
                     f"waiting for another `saflex-bench sweep` of '{name}' to finish submitting...")


def mark_cancelled(results: Path, sweep_name: str, pairs: Sequence[tuple[Any, Any]], store: Any) -> list[str]:
    """Ledger lines for the runs of stopped jobs that never started (no attempt since submission):
    `status` then calls them 'not submitted' (cancelled), not 'failed'. Returns their keys."""
    ledger = read_ledger(sweep_dir(results, sweep_name) / LEDGER)
    entries = []
    for run, job in pairs:
        entry = ledger.get(run.key)
        attempt = store.read_attempt(run.key) or {}
        if entry and (attempt.get("started_at") or "") < (entry.get("submitted_at") or ""):
            entries.append({**entry, "cancelled_at": now_iso()})
    append_ledger(sweep_dir(results, sweep_name) / LEDGER, entries)
    return [e["key"] for e in entries]


def stop_local_jobs(pairs: Sequence[tuple[Any, Any]], grace_s: float = 30.0) -> None:
    """Stop local jobs the way SLURM would (SIGTERM to the controller, which forwards it to the job:
    JobTerminated, the attempt is recorded, the checkpoint stays); SIGKILL what is left after grace_s."""
    procs = [p for _, job in pairs if (p := getattr(job, "_process", None)) is not None and p.poll() is None]
    procs = list({id(p): p for p in procs}.values())  # the runs of a pack share one job
    for p in procs:
        with contextlib.suppress(OSError):
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


class _DetachedPopen:
    """submitit's local controllers in their own session: a Ctrl-C at the terminal reaches `sweep` only
    (which stops the jobs cleanly) instead of printing a traceback from every controller and job."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args: Any, **kwargs: Any) -> subprocess.Popen:  # noqa: N802 - mirrors subprocess.Popen
        kwargs.setdefault("start_new_session", True)
        return subprocess.Popen(*args, **kwargs)


# ---- how long a job will take (sweep --dry-run) ---------------------------------------------
@dataclasses.dataclass
class TimeEstimate:
    seconds: float
    n: int  # stored runs it is based on
    loop_only: bool  # some were recorded before cost.process_s: start-up, loading, evaluation missing

    def describe(self) -> str:
        m, s = divmod(int(round(self.seconds)), 60)
        return f"~{m} min {s:02d} s" + (" (loop only)" if self.loop_only else "") + f" from {self.n} run{'s' if self.n != 1 else ''}"


def stored_run_times(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], list[tuple[float, float, bool]]]:
    """(task, model) -> [(fixed seconds, seconds per epoch, loop only)] of finished runs: what a run cost
    besides its epochs (start-up, data, evaluation) and per epoch (cost.wall_s / epochs run)."""
    out: dict[tuple[str, str], list[tuple[float, float, bool]]] = {}
    for rec in records:
        spec, cost, metrics = rec.get("spec") or {}, rec.get("cost") or {}, rec.get("metrics") or {}
        epochs = metrics.get("epochs_run") or spec.get("epochs")
        loop = cost.get("wall_s")
        if not spec.get("task") or not isinstance(loop, (int, float)) or not epochs:
            continue
        total = cost.get("process_s")
        exact = isinstance(total, (int, float))
        fixed = max(0.0, float(total) - float(loop)) if exact else 0.0
        out.setdefault((spec["task"], str(spec.get("model"))), []).append((fixed, float(loop) / int(epochs), not exact))
    return out


def estimate_run_s(times: Mapping[tuple[str, str], list[tuple[float, float, bool]]], spec: Any) -> TimeEstimate | None:
    """A run's expected process time: the median fixed part plus the median epoch time x its epochs,
    over the stored runs of its task and model (None when there are none)."""
    import statistics

    rows = times.get((spec.task, str(spec.model)))
    if not rows:
        return None
    fixed = statistics.median(r[0] for r in rows)
    per_epoch = statistics.median(r[1] for r in rows)
    return TimeEstimate(fixed + per_epoch * spec.epochs, len(rows), any(r[2] for r in rows))
