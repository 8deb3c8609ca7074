"""The results store: one directory per run under `<root>/runs/<key>/`.

A run is done iff its `result.json` passes `records.record_problem` (parses, complete, today's
semantics): it is written last, atomically (temp file in the same directory, fsync, rename), so a
crashed or preempted run never leaves a record that looks complete.

Files follow the process umask (as `open()` would), whatever the writer; a run is trained by one
process at a time (`run_lock`); `fault_point` lets the fault-injection tests kill a process at a
named point of a run's life (see tests/e2e/test_faults.py).
"""
from __future__ import annotations

import contextlib
import functools
import fcntl
import json
import os
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Mapping

from bench.errors import UsageError
from bench.results import records
from bench.results.records import METRICS, RESULT, SCHEMA_VERSION  # noqa: F401 - the file names live in records

ATTEMPT = "attempt.json"
SPEC = "spec.json"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"  # the selected epoch's weights, kept after a run is done (keep_checkpoints=best)
KEEP_CHECKPOINTS = ("best", "full", "none")
LOG = "run.log"
LOCK = ".job.lock"
SAFLEX_DIAG = "saflex_diag.npz"
SWEEP_PLAN = "plan.json"  # <results>/sweeps/<name>/: the keys a sweep file plans, written by `sweep`, read by `report`


def read_saflex_diag(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A SAFLEX run's per-sample diagnostics of its last epoch (saflex_diag.npz): w, label_shift, corrupted
    (numpy arrays; the last two absent in files older than them), or None where the run has none."""
    import numpy as np

    f = Path(run_dir) / SAFLEX_DIAG
    if not f.is_file():
        return None
    with np.load(f) as z:
        return {name: np.asarray(z[name]) for name in ("w", "label_shift", "corrupted") if name in z}


def sweep_plan_path(root: str | os.PathLike, sweep: str) -> Path:
    return Path(root) / "sweeps" / sweep / SWEEP_PLAN


def planned_keys(root: str | os.PathLike, sweep: str) -> set[str]:
    """Keys the sweep planned (written by `saflex-bench sweep`), including runs another sweep ran
    first; empty when the file is absent (stores older than the plan file)."""
    try:
        return set(json.loads(sweep_plan_path(root, sweep).read_text())["keys"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()

# ---- fault injection (tests only) -------------------------------------------------------------
FAULT_ENV = "SAFLEX_FAULT"  # "<point>:<n>": os._exit(FAULT_EXIT) the n-th time <point> is reached
FAULT_EXIT = 86
_fault_hits: Counter = Counter()


def fault_point(name: str) -> None:
    """A named point of a run's life where tests/e2e/test_faults.py can kill the process (os._exit: no
    finally blocks, no flushing, like SIGKILL). A no-op unless $SAFLEX_FAULT names this point."""
    want = os.environ.get(FAULT_ENV)
    if not want or not want.startswith(name + ":") and want != name:
        return
    _fault_hits[name] += 1
    if _fault_hits[name] == int(want.partition(":")[2] or 1):
        os._exit(FAULT_EXIT)


def _file_mode() -> int:
    """What open() would give a new file: 0o666 minus the umask (mkstemp always makes 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_bytes_atomic(path: Path, data: bytes, keep_previous: Path | None = None, durable: bool = True) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a torn one.
    keep_previous: first move the current file there (the last good copy until the new one is in).
    durable=False skips the fsync (a process crash still cannot tear it; a machine crash can)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            fault_point(f"write-{path.name}")  # killed mid-write: a torn temp file
            f.write(data[half:])
            f.flush()
            if durable:
                os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
            fault_point(f"between-{path.name}")  # the old copy moved aside, the new one not in yet
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_SHARED_FS = ("nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "beegfs", "ceph", "glusterfs", "panfs", "wekafs",
              "fuse.sshfs", "fuse.glusterfs", "9p")


@functools.lru_cache(maxsize=64)
def is_shared_fs(path: Path) -> bool:
    """Whether `path` lives on a network / cluster file system (per /proc/self/mountinfo; True where
    that cannot be read, so the safe choice, fsync, is kept)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return True
    target = os.path.realpath(path)
    best, fstype = "", ""
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount = fields[4].replace("\\040", " ")
        if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, fstype = mount, right.split()[0]
    return fstype in _SHARED_FS or fstype.startswith("fuse.") and fstype not in ("fuse.overlayfs",)


# ---- locks and the results root ---------------------------------------------------------------
LOCK_GIVE_UP_ENV = "SAFLEX_LOCK_GIVE_UP_S"
LOCK_GIVE_UP_S = 60.0  # how long a holder may stay dead or stopped before a waiter gives up
LOCK_POLL_S = 0.2


class LockHolderGone(UsageError):
    """The process holding a lock is dead (same host, pid gone) or stopped (SIGSTOP) for too long."""


def _holder(fd: int) -> dict:
    """What the lock's holder wrote into the lock file ({} when unknown: an older writer, mid-write)."""
    try:
        data = os.pread(fd, 4096, 0)
        info = json.loads(data.decode()) if data.strip() else {}
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def describe_holder(info: dict) -> str:
    if not info.get("pid"):
        return "another process"
    return f"pid {info['pid']} on {info.get('host', '?')} since {info.get('since', '?')}"


def holder_condition(info: dict) -> str | None:
    """'dead' (same host, no such pid), 'stopped' (state T/t in /proc/<pid>/stat) or None (alive, or
    on another host: nothing to check from here)."""
    pid = info.get("pid")
    if not isinstance(pid, int) or info.get("host") != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except OSError:  # EPERM: it exists
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state = stat.rpartition(")")[2].split()[:1]  # the command name may hold spaces and parentheses
    return "stopped" if state and state[0] in ("T", "t") else None


def _give_up_s() -> float:
    try:
        return float(os.environ.get(LOCK_GIVE_UP_ENV, LOCK_GIVE_UP_S))
    except ValueError:
        return LOCK_GIVE_UP_S


@contextlib.contextmanager
def exclusive(lock_path: Path, waiting_msg: str, give_up_s: float | None = None):
    """Hold an flock on lock_path and write who holds it (pid, host, since) into the file. A waiter
    says once on stderr whom it waits for; it gives up (LockHolderGone, one line) when the holder has
    been dead or stopped for `give_up_s` seconds (default $SAFLEX_LOCK_GIVE_UP_S, else 60). A holder
    on another host is waited for: its state cannot be seen from here."""
    give_up_s = _give_up_s() if give_up_s is None else give_up_s
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            _wait_for_lock(fd, lock_path, waiting_msg, give_up_s)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _wait_for_lock(fd: int, lock_path: Path, waiting_msg: str, give_up_s: float) -> None:
    info = _holder(fd)
    print(f"{waiting_msg.rstrip('.; ')}: held by {describe_holder(info)}; waiting "
          f"(giving up if it stays dead or stopped for {give_up_s:g} s)", file=sys.stderr, flush=True)
    bad_since = None
    while True:
        time.sleep(LOCK_POLL_S)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError:
            pass
        info = _holder(fd) or info
        cond = holder_condition(info)
        if cond is None:
            bad_since = None
            continue
        bad_since = bad_since or time.monotonic()
        if time.monotonic() - bad_since >= give_up_s:
            what = ("is stopped (SIGSTOP; resume it with kill -CONT or end it)" if cond == "stopped"
                    else "is gone, but a process it started still holds the lock (end that one)")
            raise LockHolderGone(f"gave up waiting for {lock_path}: its holder, {describe_holder(info)}, {what}; "
                                 f"waited {give_up_s:g} s")


def run_lock(run_dir: Path):
    """One process per run at a time, whatever started it (`run` twice, two sweeps sharing a run): the
    second waits here, then finds the run done (or resumes it). The lock dies with its process."""
    return exclusive(Path(run_dir) / LOCK, f"saflex-bench: run {Path(run_dir).name} is being trained by another process")


def check_results_root(root: Path, create: bool = True) -> Path:
    """UsageError unless `root` is (or can become) a writable directory. create=False (dry runs)
    checks without creating anything."""
    root = Path(root)
    hint = "choose another with --results DIR or $SAFLEX_RESULTS"
    if root.exists() and not root.is_dir():
        raise UsageError(f"results root {root} is a file, not a directory; {hint}")
    if not create:
        probe = root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            raise UsageError(f"results root {root}: {probe} is a file, not a directory; {hint}")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise UsageError(f"results root {root} is not writable ({probe}: permission denied); {hint}")
        return root
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"results root {root}: a part of the path is a file, not a directory; {hint}") from None
    except OSError as e:
        raise UsageError(f"results root {root} is not writable ({e.strerror or type(e).__name__}); {hint}") from None
    return root


def write_npz_atomic(path: Path, **arrays) -> None:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any | None:
    """The parsed file, or None if it is absent or does not parse."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


class ResultsStore:
    """Run folders under `<root>/runs/<key>/`. `spec` arguments (a RunSpec) add the semantics check
    of `records.record_problem`; without one, a record is checked against the spec it holds."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, key: str) -> Path:
        return self.runs_dir / key

    # ---- done-ness -------------------------------------------------------------------------
    def load_result(self, key: str, spec: Any = None) -> tuple[dict | None, str | None]:
        """(the decoded record, None) if the run is done, else (the record or None, why it is not).
        Semantics are judged against `spec` (a RunSpec), else against the spec the record holds."""
        rec, why = records.load_record(self.run_dir(key) / RESULT)
        if rec is None:
            return None, why
        if rec.get("key") not in (None, key):
            return rec, f"result.json names run {rec.get('key')}, not {key}: rerun"
        return rec, records.record_problem(rec, spec if spec is not None else records.spec_for(rec))

    def result_problem(self, key: str, spec: Any = None) -> str | None:
        """None when run `key` is done (for `spec`, when given), else why not, one line."""
        return self.load_result(key, spec)[1]

    def read_result(self, key: str, spec: Any = None) -> dict | None:
        """The decoded record of a done run, else None."""
        rec, why = self.load_result(key, spec)
        return rec if why is None else None

    def is_done(self, key: str, spec: Any = None) -> bool:
        return self.read_result(key, spec) is not None

    def problems(self, keys: list[str], specs: Mapping[str, Any] | None = None) -> dict[str, str | None]:
        """{key: None (done) or why not} for `keys` (one directory scan, then a parse per existing
        run); `specs` ({key: RunSpec}) judge semantics against the specs asked about."""
        try:
            present = {e.name for e in os.scandir(self.runs_dir) if e.is_dir()}
        except FileNotFoundError:
            present = set()
        specs = specs or {}
        return {k: self.result_problem(k, specs.get(k)) if k in present else "no run folder (not started)"
                for k in keys}

    def done_keys(self) -> set[str]:
        if not self.runs_dir.is_dir():
            return set()
        return {e.name for e in os.scandir(self.runs_dir) if self.is_done(e.name)}

    def iter_results(self) -> Iterator[dict]:
        if not self.runs_dir.is_dir():
            return
        for entry in sorted(os.scandir(self.runs_dir), key=lambda e: e.name):
            rec = self.read_result(entry.name)
            if rec is not None:
                yield rec

    # ---- writing ---------------------------------------------------------------------------
    def write_result(self, key: str, record: dict, spec: Any = None) -> Path:
        """Write the record in today's schema (schema_version; the spec's semantics unless given)."""
        path = self.run_dir(key) / RESULT
        write_json_atomic(path, records.encode_record(record, spec))
        return path

    def write_spec(self, key: str, spec_dict: dict) -> None:
        path = self.run_dir(key) / SPEC
        if read_json(path) != {**spec_dict, "key": key}:
            write_json_atomic(path, {**spec_dict, "key": key})

    def read_spec(self, key: str) -> dict | None:
        rec = read_json(self.run_dir(key) / SPEC)
        return rec if isinstance(rec, dict) else None

    def read_attempt(self, key: str) -> dict | None:
        rec = read_json(self.run_dir(key) / ATTEMPT)
        return rec if isinstance(rec, dict) else None

    def write_attempt(self, key: str, record: dict) -> None:
        write_json_atomic(self.run_dir(key) / ATTEMPT, record)

    def read_metrics(self, key: str) -> list[dict]:
        """The run's per-epoch rows (records.read_metrics: the one torn-line rule)."""
        return records.read_metrics(self.run_dir(key) / METRICS)

    def write_metrics(self, key: str, rows: list[dict]) -> None:
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        write_bytes_atomic(self.run_dir(key) / METRICS, data.encode())
