"""One run of a sweep as a job: `RunJob` (submitit's Checkpointable: USR2 checkpoints and requeues,
SIGTERM stops cleanly as JobTerminated), the slot locks that bound local parallelism, where a run's
logs go, and the ledger lines jobs and packs append. The launcher (submission) and packs (several runs
per task) both build on this module; it imports neither.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Iterable

import submitit


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_log_paths(job_folder: str | os.PathLike, key: str) -> tuple[Path, Path]:
    """Where a packed run's child process writes its stdout and stderr."""
    folder = Path(job_folder)
    return folder / f"run_{key}.out", folder / f"run_{key}.err"


# ---- the job ------------------------------------------------------------------------------
@contextlib.contextmanager
def run_slot(slots_dir: str | None, n: int):
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


def setup_job_process() -> None:
    """First thing in a submitit job: its own wandb service, and signals that stop a run cleanly."""
    own_wandb_service()
    install_signal_handlers()


def own_wandb_service() -> None:
    """A job must not use the wandb service of the process that submitted it. wandb exports
    WANDB_SERVICE (a socket on the submitting host) to children once a run opened there (a notebook, a
    debug sweep, a test session), and sbatch forwards the environment: the job's wandb would then
    attach to a service on another node, or to one that has since exited, and fail after the result is
    written. Without the variable, wandb starts the job's own service."""
    if os.environ.get("SUBMITIT_EXECUTOR") in ("slurm", "local"):
        os.environ.pop("WANDB_SERVICE", None)


def install_signal_handlers() -> None:
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

        setup_job_process()
        store = ResultsStore(results)
        key = RunSpec.from_canonical(spec_dict).key  # the dict is a normalised spec (the planner made it)
        if store.is_done(key):  # e.g. finished by another sweep meanwhile: never train twice
            print(f"saflex-bench job: run {key} is already done", flush=True)
            return summary(store.read_result(key))
        with run_slot(slots_dir, slots):  # heavy imports (torch, data) only once a slot is ours
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
        return summary(record)


def summary(record: dict | None) -> dict:
    record = record or {}
    return {"key": record.get("key"), "status": record.get("status"), "metrics": record.get("metrics")}


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
