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
import datetime as _dt
import fcntl
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import submitit

from sweeps.config import Launcher

EXECUTORS = ("local", "slurm", "debug")
LEDGER = "submissions.jsonl"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sweep_dir(results: Path, name: str) -> Path:
    return Path(results) / "sweeps" / name


def logs_folder(results: Path, name: str) -> Path:
    """submitit's folder pattern: %j becomes the job id (`<array id>_<index>` in an array)."""
    return sweep_dir(results, name) / "logs" / "%j"


# ---- the job ------------------------------------------------------------------------------
@contextlib.contextmanager
def _slot(slots_dir: str | None, n: int):
    """Hold one of `n` slot locks (local executor's array parallelism); no-op when slots_dir is None."""
    if not slots_dir:
        yield None
        return
    Path(slots_dir).mkdir(parents=True, exist_ok=True)
    rng = random.Random(os.getpid())
    while True:
        for i in rng.sample(range(n), n):
            fd = os.open(os.path.join(slots_dir, f"slot-{i}.lock"), os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            try:
                yield i
            finally:
                os.close(fd)  # releases the lock
            return
        time.sleep(0.5 + rng.random() * 0.5)


def _run_lock(run_dir: Path):  # kept for callers of the old name: bench.runner.run_spec takes the lock now
    from bench.store import run_lock

    return run_lock(run_dir)


class JobTerminated(BaseException):
    """SIGTERM reached the job: scancel, `scontrol requeue`, a time limit without the USR2 warning, a
    node going down. A BaseException (like KeyboardInterrupt) so the runner records the attempt as
    interrupted, closes the wandb run and re-raises; submitit does not mistake it for a job error."""


def _install_signal_handlers() -> None:
    """In a submitit job (slurm/local, main thread): turn SIGTERM into JobTerminated so the run stops
    cleanly within SLURM's KillWait instead of being SIGKILLed mid-epoch, with its last line saying
    why. submitit's own SIGTERM handler only logs ("bypass"). A SIGTERM that arrives while submitit's
    USR2 handler is already checkpointing and requeuing (its `scontrol requeue` sends one) is ignored."""
    if os.environ.get("SUBMITIT_EXECUTOR") not in ("slurm", "local"):
        return
    if threading.current_thread() is not threading.main_thread():
        return
    usr = submitit.JobEnvironment._usr_sig()
    prev_usr = signal.getsignal(usr)
    stopping: list[int] = []

    def on_usr(signum, frame):  # preemption / time limit: submitit checkpoints, requeues, exits
        stopping.append(signum)
        if callable(prev_usr):
            prev_usr(signum, frame)

    def on_term(signum, frame):
        if stopping:
            return
        stopping.append(signum)
        print("saflex-bench job: SIGTERM received, stopping (the run resumes from its last checkpoint)", flush=True)
        raise JobTerminated("stopped by SIGTERM (scancel, requeue or time limit); resumes from its last checkpoint")

    signal.signal(usr, on_usr)
    signal.signal(signal.SIGTERM, on_term)


class RunJob(submitit.helpers.Checkpointable):
    """One run of a sweep. Arguments are plain data (the spec as a dict), so the pickle stays small
    and readable by any later version that can rebuild the spec."""

    def __call__(self, spec_dict: dict, results: str, data_root: str | None = None, wandb_mode: str = "offline",
                 sweep: str | None = None, threads: int | None = None, slots_dir: str | None = None,
                 slots: int = 1, deterministic: bool = False) -> dict:
        from bench.spec import RunSpec  # stdlib-only imports: cheap while waiting for a slot
        from bench.store import ResultsStore

        _install_signal_handlers()
        store = ResultsStore(results)
        key = RunSpec.from_canonical(spec_dict).key  # the dict is a normalised spec (the planner made it)
        if store.is_done(key):  # e.g. finished by another sweep meanwhile: never train twice
            print(f"saflex-bench job: run {key} is already done", flush=True)
            return _summary(store.read_result(key))
        with _slot(slots_dir, slots):  # heavy imports (torch, data) only once a slot is ours
            spec = RunSpec.from_dict(spec_dict)
            if spec.key != key:
                raise RuntimeError(f"spec of run {key} normalises to a different key {spec.key} "
                                   "(the package changed since submission?)")
            return self._run(spec, store, results, data_root, wandb_mode, sweep, threads, deterministic)  # run_spec locks

    @staticmethod
    def _run(spec, store, results, data_root, wandb_mode, sweep, threads, deterministic=False) -> dict:
        from bench.runner import run_spec

        if deterministic:  # launcher.deterministic: recorded in result.json numerics.deterministic
            from bench.numerics import enable_deterministic

            enable_deterministic(int(threads) if threads else None)
        env = os.environ
        where = f"slurm job {env['SLURM_JOB_ID']}" if "SLURM_JOB_ID" in env else f"pid {os.getpid()}"
        restarts = env.get("SLURM_RESTART_COUNT")
        ckpt = store.run_dir(spec.key) / "checkpoint.pt"
        print(f"saflex-bench job: run {spec.key} ({spec.task} {spec.method} seed {spec.seed}) on {where}"
              + (f", restart {restarts}" if restarts else "")
              + (", resuming from its checkpoint" if ckpt.exists() else ", from scratch"), flush=True)

        def on_epoch_end(epoch: int, row: dict) -> None:
            print(f"saflex-bench job: {spec.key} epoch {epoch}/{spec.epochs} loss {row.get('train_loss', float('nan')):.4f} "
                  f"val_acc {row.get('val_acc', float('nan')):.4f}", flush=True)

        record = run_spec(spec, results, data_root, wandb_mode=wandb_mode, sweep=sweep, progress=False,
                          on_epoch_end=on_epoch_end, threads=int(threads) if threads else None)
        print(f"saflex-bench job: run {spec.key} done: test_acc {record['metrics'].get('test_acc')}", flush=True)
        return _summary(record)


def _summary(record: dict | None) -> dict:
    record = record or {}
    return {"key": record.get("key"), "status": record.get("status"), "metrics": record.get("metrics")}


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
    from sweeps.pack import PackJob, child_log_dir, chunk

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


# ---- ledger -------------------------------------------------------------------------------
def append_ledger(path: Path, entries: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_ledger(path: Path) -> dict[str, dict]:
    """key -> its latest submission (later lines win). Torn / foreign lines are ignored."""
    out: dict[str, dict] = {}
    try:
        text = Path(path).read_text()
    except OSError:
        return out
    for line in text.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict) and isinstance(e.get("key"), str) and e.get("job_id"):
            out[e["key"]] = e
    return out


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
