"""Packs: several runs of a sweep in one array task (`launcher.runs_per_job: K`), trained concurrently
(`launcher.pack_mode: processes`, the default) or one after another in one interpreter (`serial`: the
fixed cost of a process, its imports and wandb's service paid once per job; for CPU sweeps of tiny runs).

Why: a small run (a 28-px ResNet-18) uses a fraction of a large GPU; K runs per job share it.

- `PackJob` is a `submitit.helpers.Checkpointable` like `RunJob`. It starts one child process per
  unfinished run of its group (`python -m sweeps.pack ARGS`), each running the very `RunJob` call a
  one-run task makes: each run keeps its own result.json, checkpoint, metrics.jsonl, wandb run and log
  files (`<job log folder>/run_<key>.out|err`,
  `logs/debug/` on the debug executor), and uses `threads` torch threads (launcher.cpus_per_task),
  not the whole job's CPUs.
- Failure isolation: a child that fails does not stop the others; once all have ended the task raises
  `PackFailed`, one line naming the failed runs. `<job log folder>/pack.jsonl` gets one line per run and
  attempt (key, state, exit code, start and end time of its process).
- Skip-done: runs with a valid result.json are not started again, so a requeued / resumed / resubmitted
  pack trains only the unfinished runs of its group; each resumes from its own last checkpoint.
- Signals: USR2 (preemption / time limit) and SIGTERM reach the pack; it forwards SIGTERM to its
  children (each stops cleanly, keeping its last per-epoch checkpoint), waits for them, then does what a
  one-run task does: USR2 -> submitit checkpoints (the same call) and requeues; SIGTERM -> JobTerminated.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import submitit

from sweeps.job import (JobTerminated, RunJob, append_ledger, now_iso, run_log_paths, run_slot, setup_job_process,
                        summary)
from sweeps.status import last_error_line

STOPPED = 128 + signal.SIGTERM  # a child's exit code when it stopped on a signal (resumable, not failed)
CHILD_GRACE_S = 60.0  # how long stopped children get to record their attempt before SIGKILL
PACK_LOG = "pack.jsonl"


class PackFailed(RuntimeError):
    """Some runs of a pack ended without a result (the others completed)."""


def chunk(items: Sequence[Any], k: int) -> list[list[Any]]:
    """Plan order, groups of k (the last may be smaller)."""
    return [list(items[i:i + k]) for i in range(0, len(items), k)]


def child_log_dir(logs_template: str | os.PathLike, job_id: str | None) -> Path:
    """The folder of a pack's child logs: the task's own log folder (`logs/%j`) in a slurm/local job;
    `logs/debug` for the debug executor, whose job id is not known inside the job."""
    return Path(str(logs_template).replace("%j", str(job_id) if job_id else "debug"))


def _job_id() -> str | None:
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not in a submitit job: the debug executor, or a direct call
        return None
    return None if env.name() == "debug" else env.job_id


def _last_line(path: Path) -> str:
    return last_error_line(path)


class PackJob(submitit.helpers.Checkpointable):
    """The runs of one group, concurrently, one child process each (see the module doc)."""

    def __call__(self, spec_dicts: list[dict], results: str, data_root: str | None = None, wandb_mode: str = "offline",
                 sweep: str | None = None, threads: int | None = None, slots_dir: str | None = None,
                 slots: int = 1, deterministic: bool = False, logs_template: str | None = None,
                 pack_mode: str = "processes") -> list[dict]:
        from bench.spec import RunSpec
        from bench.store import ResultsStore

        if pack_mode == "serial":
            return self._serial(spec_dicts, results, data_root, wandb_mode, sweep, threads, slots_dir, slots,
                                deterministic, logs_template)

        store = ResultsStore(results)
        folder = child_log_dir(logs_template or "logs/%j", _job_id())
        folder.mkdir(parents=True, exist_ok=True)
        keys = [RunSpec.from_canonical(d).key for d in spec_dicts]
        todo = [(k, d) for k, d in zip(keys, spec_dicts) if not store.is_done(k)]
        for k in keys:
            if all(k != t for t, _ in todo):
                print(f"saflex-bench pack: run {k} is already done", flush=True)
        children: dict[str, subprocess.Popen] = {}
        times: dict[str, list[float]] = {}
        stop = _PackSignals(children)
        with run_slot(slots_dir, slots):
            for key, d in todo:
                if stop.signum is not None:
                    break
                args = dict(spec_dict=d, results=results, data_root=data_root, wandb_mode=wandb_mode, sweep=sweep,
                            threads=threads, deterministic=deterministic)
                times[key] = [time.time()]
                children[key] = _start_child(args, threads, *run_log_paths(folder, key))
            print(f"saflex-bench pack: {len(children)} runs started ({len(keys) - len(todo)} already done): "
                  + ", ".join(f"{k} (pid {p.pid})" for k, p in children.items()), flush=True)
            if stop.signum is not None:
                stop.forward()
            # poll, never block in Popen.wait: a signal handler must not wait on the same Popen objects
            while True:
                live = [p for p in children.values() if p.poll() is None]  # poll each: exit times recorded
                for k, p in children.items():
                    if p.returncode is not None and len(times[k]) == 1:
                        times[k].append(time.time())
                if not live:
                    break
                stop.enforce_grace()
                time.sleep(0.2)
        report = self._report(store, folder, children, times)
        if stop.signum is not None:
            stop.finish()  # requeue (USR2) or JobTerminated (SIGTERM), as a one-run task would
        failed = [r for r in report if r["state"] == "failed"]
        if failed:
            raise PackFailed(f"{len(failed)} of {len(keys)} runs of this pack failed: "
                             + "; ".join(f"{r['key']} ({r['error']})" for r in failed))
        return [summary(store.read_result(k)) for k in keys]

    def _serial(self, spec_dicts, results, data_root, wandb_mode, sweep, threads, slots_dir, slots, deterministic,
                logs_template) -> list[dict]:
        """`pack_mode: serial`: the group's runs one after another in this process, so the interpreter,
        torch's and sklearn's imports, torch._dynamo (the first optimiser step) and wandb's service are
        paid once per job, not once per run: for CPU sweeps of many tiny runs. Each run keeps its own
        record, checkpoint and wandb run; one that fails is reported and the next starts. A signal
        stops the run in progress as in a one-run task (it resumes from its checkpoint; the requeued or
        resubmitted job skips the runs already done)."""
        from bench.spec import RunSpec
        from bench.store import ResultsStore
        setup_job_process()
        store = ResultsStore(results)
        folder = child_log_dir(logs_template or "logs/%j", _job_id())
        folder.mkdir(parents=True, exist_ok=True)
        keys = [RunSpec.from_canonical(d).key for d in spec_dicts]
        report = []
        with run_slot(slots_dir, slots):
            for key, d in zip(keys, spec_dicts):
                if store.is_done(key):
                    print(f"saflex-bench pack: run {key} is already done", flush=True)
                    continue
                t0 = time.time()
                state, error = "done", ""
                try:
                    RunJob._run(RunSpec.from_dict(d), store, results, data_root, wandb_mode, sweep, threads, deterministic)
                except Exception as e:  # noqa: BLE001 - isolation: the next run still trains
                    if isinstance(e, JobTerminated):
                        raise
                    state, error = "failed", f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[-1]}"[:200]
                    print(f"saflex-bench pack: run {key} failed: {error}", file=sys.stderr, flush=True)
                report.append(dict(key=key, state=state, exit_code=0 if state == "done" else 1, error=error,
                                   pid=os.getpid(), started=t0, ended=time.time(), at=now_iso()))
                print(f"saflex-bench pack: run {key} {state}", flush=True)
        if report:
            append_ledger(folder / PACK_LOG, report)
        failed = [r for r in report if r["state"] == "failed"]
        if failed:
            raise PackFailed(f"{len(failed)} of {len(keys)} runs of this pack failed: "
                             + "; ".join(f"{r['key']} ({r['error']})" for r in failed))
        return [summary(store.read_result(k)) for k in keys]

    @staticmethod
    def _report(store, folder: Path, children: dict, times: dict) -> list[dict]:
        """Per-run state of this attempt: printed, appended to pack.jsonl and returned."""
        report = []
        for key, p in children.items():
            code = p.returncode
            if store.is_done(key):
                state, error = "done", ""
            elif code == STOPPED:
                state, error = "stopped", "stopped by a signal; resumes from its last checkpoint"
            else:
                state, err = "failed", run_log_paths(folder, key)[1]
                why = f"killed by signal {-code}" if code < 0 else (_last_line(err) or f"exit code {code} without a result")
                error = why[:200]
            report.append(dict(key=key, state=state, exit_code=code, error=error, pid=p.pid,
                               started=times[key][0], ended=times[key][-1], at=now_iso()))
            print(f"saflex-bench pack: run {key} {state}" + (f": {error}" if error and state == "failed" else ""),
                  flush=True)
        append_ledger(folder / PACK_LOG, report)  # an fsync'd, locked append (the ledger's writer)
        return report


def _start_child(args: dict, threads: int | None, out: Path, err: Path) -> subprocess.Popen:
    env = dict(os.environ)
    # the child is a plain process, not a submitit job: the pack owns requeueing, the child only stops
    env.pop("SUBMITIT_EXECUTOR", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # its share of the job's CPUs, not all of them
    root = str(Path(__file__).resolve().parents[1])  # the same code as this process, whatever the cwd
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    with open(out, "ab") as fo, open(err, "ab") as fe:  # append: a requeued pack adds to the same logs
        # same process group: a local Ctrl-C / SIGKILL of the job's group reaches the children too
        return subprocess.Popen([sys.executable, "-u", "-m", "sweeps.pack", json.dumps(args)],
                                stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, env=env)


class _PackSignals:
    """USR2 / SIGTERM in a packed task: forward SIGTERM to the children, and once they have ended do
    what the one-run task does (submitit's USR2 handler: checkpoint + requeue; SIGTERM: JobTerminated).
    Installed only in submitit jobs (slurm/local), in the main thread, like job.install_signal_handlers."""

    def __init__(self, children: dict[str, subprocess.Popen]) -> None:
        self.children = children
        self.signum: int | None = None
        self.frame = None
        self.deadline = float("inf")
        self.prev_usr: Any = None
        if os.environ.get("SUBMITIT_EXECUTOR") not in ("slurm", "local"):
            return
        if threading.current_thread() is not threading.main_thread():
            return
        self.usr = submitit.JobEnvironment._usr_sig()
        self.prev_usr = signal.getsignal(self.usr)
        signal.signal(self.usr, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self.signum is not None:  # e.g. the SIGTERM of submitit's own `scontrol requeue`
            return
        self.signum, self.frame = signum, frame
        name = signal.Signals(signum).name
        live = [p for p in self.children.values() if p.returncode is None]
        print(f"saflex-bench pack: {name} received, stopping {len(live)} runs (each resumes from its last checkpoint)",
              flush=True)
        if not live:
            self.finish()  # nothing to wait for (e.g. still waiting for a local slot)
        self.forward()

    def forward(self) -> None:
        self.deadline = time.time() + CHILD_GRACE_S
        for p in self.children.values():
            if p.returncode is None:
                with contextlib.suppress(OSError):
                    os.kill(p.pid, signal.SIGTERM)  # os.kill, not p.send_signal: no Popen state in a handler

    def enforce_grace(self) -> None:
        if time.time() > self.deadline:
            for p in self.children.values():
                if p.poll() is None:
                    with contextlib.suppress(OSError):
                        p.kill()

    def finish(self) -> None:
        if self.signum == signal.SIGTERM:
            raise JobTerminated("stopped by SIGTERM (scancel, requeue or time limit); its runs resume from their last checkpoints")
        if callable(self.prev_usr):
            self.prev_usr(self.signum, self.frame)  # submitit: checkpoint (same call), requeue, exit


def _child_main(argv: list[str]) -> int:
    """One run of a pack, in its own process: the one-run task's call, stopping cleanly on a signal.
    Its last stdout line gives the process's own start and end time (what the concurrency test reads)."""
    t0 = time.time()
    args = json.loads(argv[0])
    stopping: list[int] = []

    def on_stop(signum, frame):  # SIGTERM from the pack, or USR2/SIGTERM from SLURM to every process of the job
        if stopping:
            return
        stopping.append(signum)
        raise JobTerminated(f"stopped by {signal.Signals(signum).name}; resumes from its last checkpoint")

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGUSR2, on_stop)
    try:
        RunJob()(args["spec_dict"], args["results"], args["data_root"], args["wandb_mode"], args["sweep"],
                 args["threads"], None, 1, args["deterministic"])  # no slot: the pack holds one for all
    except JobTerminated as e:
        print(f"saflex-bench job: {e}", file=sys.stderr, flush=True)
        return STOPPED
    finally:
        print(f"saflex-bench pack: child pid {os.getpid()} ran from {t0:.3f} to {time.time():.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
