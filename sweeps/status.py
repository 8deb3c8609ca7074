"""The state of every run of a sweep, from the results store, the ledger and the scheduler.

Precedence per run:
  done          result.json is a complete record of today's semantics (bench.results.record_problem;
                nothing else matters)
  running       its job is alive and has started the run (SLURM RUNNING; local controller alive and
                attempt.json says running)
  pending       its job is alive but has not started it (SLURM PENDING / REQUEUED ...; a local job
                waiting for a slot)
  failed        its job ended without a result (CANCELLED / FAILED / TIMEOUT / ... or a crash), or
                attempt.json says failed / interrupted: the detail is the error's last line; a
                result.json that is there but not done (truncated, no metrics, other semantics)
                gives its reason instead
  not submitted no submission in the ledger and no attempt, or its job was stopped (Ctrl-C on `sweep`)
                before the run started (ledger line with cancelled_at)
`sweep` re-submits failed and not-submitted runs, never done ones nor alive ones.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

DONE, RUNNING, PENDING, FAILED, NOT_SUBMITTED = "done", "running", "pending", "failed", "not submitted"
STATES = (DONE, RUNNING, PENDING, FAILED, NOT_SUBMITTED)
ALIVE = (RUNNING, PENDING)

SLURM_RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESIZING"}
SLURM_PENDING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "SUSPENDED", "PREEMPTED_PENDING", "RESV_DEL_HOLD"}
# PREEMPTED is terminal only when the job is not requeued (it then shows PENDING/REQUEUED instead)


@dataclass
class RunStatus:
    key: str
    state: str
    detail: str = ""
    job_id: str | None = None
    job_state: str | None = None  # the scheduler's word for it, when asked


# ---- scheduler queries ----------------------------------------------------------------------
_ARRAY_RE = re.compile(r"^(\d+)_\[(.+)\]$")


def _expand_job_ids(job_id: str) -> list[str]:
    """'45_[3-5,7%2]' -> ['45_3', '45_4', '45_5', '45_7']; other ids unchanged."""
    m = _ARRAY_RE.match(job_id)
    if not m:
        return [job_id]
    base, spec = m.group(1), m.group(2).split("%", 1)[0]
    out = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit() and (not hi or hi.isdigit()):
            out += [f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def slurm_states(job_ids: Iterable[str]) -> dict[str, str] | None:
    """job id -> SLURM state word (sacct, which needs accounting; squeue as a fallback, which only
    knows live jobs). None when neither answers."""
    ids = sorted({j for j in job_ids if j})
    if not ids:
        return {}
    bases = sorted({j.split("_", 1)[0] for j in ids})
    states: dict[str, str] = {}
    if shutil.which("sacct"):
        try:
            out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(bases)],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            out = None
        if out is not None and out.returncode == 0:
            for line in out.stdout.splitlines():
                jid, _, state = line.partition("|")
                word = state.split(" ", 1)[0].strip().rstrip("+")
                for j in _expand_job_ids(jid.strip()):
                    states[j] = word
            missing = [j for j in ids if j not in states]
            if not missing:
                return states
            # not (yet) in accounting: ask the queue; a job neither knows has ended
            queued = _squeue_states(bases) or {}
            for j in missing:
                states[j] = queued.get(j, "GONE")
            return states
    queued = _squeue_states(bases)
    if queued is None:
        return None
    for j in ids:
        queued.setdefault(j, "GONE")  # not in the queue any more: ended
    return queued


def _squeue_states(bases: list[str]) -> dict[str, str] | None:
    if shutil.which("squeue"):
        try:
            out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(bases)],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        # squeue exits non-zero when every listed job has left the queue ("Invalid job id")
        states: dict[str, str] = {}
        for line in out.stdout.splitlines():
            jid, _, state = line.partition("|")
            for j in _expand_job_ids(jid.strip()):
                states[j] = state.strip()
        return states
    return None


def _local_alive(job_id: str) -> bool:
    """A LocalExecutor job id is the pid of its controller (`python -m submitit.local._local ...`)."""
    try:
        cmd = Path(f"/proc/{int(job_id)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return b"submitit.local._local" in cmd


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


# ---- log reading ----------------------------------------------------------------------------
def job_paths(entry: Mapping[str, Any]):
    from submitit.core.utils import JobPaths

    return JobPaths(entry["folder"], job_id=entry["job_id"], task_id=0)


_NOISE = re.compile(r"^(submitit (INFO|WARNING|DEBUG)|\s*$|srun: )")


def last_error_line(path: Path, max_bytes: int = 65536) -> str:
    """The last meaningful line of a job's stderr (skipping submitit's own INFO lines)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if not _NOISE.match(line):
            return line.strip()
    return ""


def run_log_error(entry: Mapping[str, Any] | None) -> str:
    """A packed run's own error: the last line of its child process's logs (sweeps/pack.py)."""
    if not entry or not entry.get("run_logs"):
        return ""
    from sweeps.pack import run_log_paths

    out, err = run_log_paths(entry["run_logs"], entry["key"])
    return last_error_line(err) or last_error_line(out)


def _read_job_error(entry: Mapping[str, Any]) -> str:
    try:
        paths = job_paths(entry)
    except Exception:  # noqa: BLE001 - a foreign ledger line must not break status
        return ""
    line = run_log_error(entry)
    return line or last_error_line(paths.stderr) or last_error_line(paths.stdout)


# ---- the states -------------------------------------------------------------------------------
def run_states(store: Any, keys: list[str], ledger: Mapping[str, dict], done: set[str] | None = None,
               ask_scheduler: bool = True, specs: Mapping[str, Any] | None = None) -> dict[str, RunStatus]:
    problems = store.problems([k for k in keys if done is None or k not in done], specs)
    done = {k for k, why in problems.items() if why is None} if done is None else done
    # a result.json that is there but not a done record: its reason beats any log line
    bad_record = {k: why for k, why in problems.items() if why and k not in done and not why.startswith("no ")}
    out: dict[str, RunStatus] = {}
    pending_keys = [k for k in keys if k not in done]
    slurm_ids = [ledger[k]["job_id"] for k in pending_keys if k in ledger and ledger[k].get("executor") == "slurm"]
    sched = slurm_states(slurm_ids) if (ask_scheduler and slurm_ids) else {}
    host = socket.gethostname()
    for k in keys:
        if k in done:
            out[k] = RunStatus(k, DONE, job_id=(ledger.get(k) or {}).get("job_id"))
            continue
        entry = ledger.get(k)
        attempt = store.read_attempt(k) or {}
        a_state = attempt.get("state")
        a_error = attempt.get("error") or ""
        if entry is None:
            if k in bad_record and a_state != "running":
                out[k] = RunStatus(k, FAILED, bad_record[k])
            elif a_state == "running":
                if attempt.get("host") == host and not _pid_alive(attempt.get("pid")):
                    out[k] = RunStatus(k, FAILED, f"process {attempt.get('pid')} died without a result")
                else:
                    out[k] = RunStatus(k, RUNNING, f"outside this sweep (pid {attempt.get('pid')} on {attempt.get('host')})")
            elif a_state in ("failed", "interrupted"):
                out[k] = RunStatus(k, FAILED, a_error or a_state)
            else:
                out[k] = RunStatus(k, NOT_SUBMITTED)
            continue
        job_id, kind = str(entry["job_id"]), entry.get("executor")
        started_after = (attempt.get("started_at") or "") >= (entry.get("submitted_at") or "")
        job_state = None
        if kind == "slurm":
            if sched is None:  # the scheduler does not answer: assume alive rather than risk a duplicate
                alive, job_state = True, "UNKNOWN"
            else:
                job_state = sched.get(job_id, "GONE")
                alive = job_state in SLURM_RUNNING or job_state in SLURM_PENDING
            if alive:
                if job_state in SLURM_RUNNING or (job_state == "UNKNOWN" and started_after):
                    out[k] = RunStatus(k, RUNNING, "", job_id, job_state)
                else:
                    detail = "requeued" if (a_state in ("interrupted", "running") and started_after) else ""
                    if job_state == "UNKNOWN":
                        detail = "the scheduler did not answer (sacct/squeue)"
                    out[k] = RunStatus(k, PENDING, detail, job_id, job_state)
                continue
        elif kind == "local":
            if entry.get("host") not in (None, host) and a_state not in ("failed", "interrupted"):
                # a local job of another machine: its pid means nothing here; trust the attempt file
                state = RUNNING if a_state == "running" and started_after else PENDING
                out[k] = RunStatus(k, state, f"local job on {entry.get('host')} (cannot check it from here)",
                                   job_id, "UNKNOWN")
                continue
            if entry.get("host") in (None, host) and _local_alive(job_id):
                running = a_state == "running" and started_after and _pid_alive(attempt.get("pid"))
                out[k] = RunStatus(k, RUNNING if running else PENDING, "" if running else "waiting for a slot",
                                   job_id, "RUNNING")
                continue
            job_state = "ENDED"
        else:  # debug jobs ran in the process that submitted them, which has ended
            job_state = "ENDED"
        # the job is over and there is no result
        if entry.get("cancelled_at") and not started_after:
            out[k] = RunStatus(k, NOT_SUBMITTED, f"job {job_id} was stopped before the run started", job_id, job_state)
            continue
        if k in bad_record:
            detail = bad_record[k]
        elif a_state in ("failed", "interrupted") and started_after and a_error:
            detail = a_error
        else:
            detail = _read_job_error(entry) or a_error
        word = job_state if job_state not in (None, "COMPLETED", "ENDED", "GONE") else "ended"
        detail = f"job {job_id} {word}" + (f": {detail}" if detail else " without a result")
        out[k] = RunStatus(k, FAILED, detail, job_id, job_state)
    return out


def progress_line(store: Any, key: str) -> str:
    """The last epoch of a run in flight, from its metrics.jsonl: 'epoch 3/10 loss 0.41 val_acc 0.87'."""
    rows = store.read_metrics(key)
    if not rows:
        return ""
    row = rows[-1]
    spec = store.read_spec(key)
    total = f"/{spec['epochs']}" if isinstance(spec, dict) and spec.get("epochs") else ""
    shown = [f"loss {row['train_loss']:.4f}"] if isinstance(row.get("train_loss"), (int, float)) else []
    shown += [f"{k} {v:.4f}" for k, v in row.items() if k in ("val_acc", "val_auc") and isinstance(v, (int, float))]
    return " ".join([f"epoch {row.get('epoch', len(rows))}{total}", *shown])


def counts(states: Mapping[str, RunStatus]) -> dict[str, int]:
    c = {s: 0 for s in STATES}
    for st in states.values():
        c[st.state] += 1
    return c


def format_counts(c: Mapping[str, int]) -> str:
    return " / ".join(f"{s} {c.get(s, 0)}" for s in STATES)


def state_dump(states: Mapping[str, RunStatus]) -> str:  # for debugging / --json
    return json.dumps({k: vars(v) for k, v in states.items()}, indent=2)
