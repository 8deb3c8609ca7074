"""The results store: one directory per run under `<root>/runs/<key>/`.

A run is done iff its `result.json` exists and parses: it is written last, atomically (temp file in
the same directory, fsync, rename), so a crashed or preempted run never leaves a record that looks
complete.

Files follow the process umask (as `open()` would), whatever the writer; a run is trained by one
process at a time (`run_lock`); `fault_point` lets the fault-injection tests kill a process at a
named point of a run's life (see tests/test_faults.py).
"""
from __future__ import annotations

import contextlib
import functools
import fcntl
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from bench.errors import UsageError

RESULT = "result.json"
ATTEMPT = "attempt.json"
SPEC = "spec.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"  # the selected epoch's weights, kept after a run is done (keep_checkpoints=best)
KEEP_CHECKPOINTS = ("best", "full", "none")
LOG = "run.log"
LOCK = ".job.lock"
SAFLEX_DIAG = "saflex_diag.npz"
SWEEP_PLAN = "plan.json"  # <results>/sweeps/<name>/: the keys a sweep file plans, written by `sweep`, read by `report`


def sweep_plan_path(root: str | os.PathLike, sweep: str) -> Path:
    return Path(root) / "sweeps" / sweep / SWEEP_PLAN

# ---- fault injection (tests only) -------------------------------------------------------------
FAULT_ENV = "SAFLEX_FAULT"  # "<point>:<n>": os._exit(FAULT_EXIT) the n-th time <point> is reached
FAULT_EXIT = 86
_fault_hits: Counter = Counter()


def fault_point(name: str) -> None:
    """A named point of a run's life where tests/test_faults.py can kill the process (os._exit: no
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
@contextlib.contextmanager
def exclusive(lock_path: Path, waiting_msg: str):
    """Hold an flock on lock_path; say once on stderr why we wait when another process holds it."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print(waiting_msg, file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def run_lock(run_dir: Path):
    """One process per run at a time, whatever started it (`run` twice, two sweeps sharing a run): the
    second waits here, then finds the run done (or resumes it). The lock dies with its process."""
    return exclusive(Path(run_dir) / LOCK,
                     f"saflex-bench: run {Path(run_dir).name} is being trained by another process; waiting for it")


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
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, key: str) -> Path:
        return self.runs_dir / key

    # ---- done-ness -------------------------------------------------------------------------
    def read_result(self, key: str) -> dict | None:
        rec = read_json(self.run_dir(key) / RESULT)
        return rec if isinstance(rec, dict) and rec.get("key") == key else None

    def is_done(self, key: str) -> bool:
        return self.read_result(key) is not None

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
    def write_result(self, key: str, record: dict) -> Path:
        path = self.run_dir(key) / RESULT
        write_json_atomic(path, record)
        return path

    def write_spec(self, key: str, spec_dict: dict) -> None:
        path = self.run_dir(key) / SPEC
        if read_json(path) != {**spec_dict, "key": key}:
            write_json_atomic(path, {**spec_dict, "key": key})

    def read_attempt(self, key: str) -> dict | None:
        rec = read_json(self.run_dir(key) / ATTEMPT)
        return rec if isinstance(rec, dict) else None

    def write_attempt(self, key: str, record: dict) -> None:
        write_json_atomic(self.run_dir(key) / ATTEMPT, record)

    def read_metrics(self, key: str) -> list[dict]:
        path = self.run_dir(key) / METRICS
        rows = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    break  # a torn last line from a crash: ignore the rest
        return rows

    def write_metrics(self, key: str, rows: list[dict]) -> None:
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        write_bytes_atomic(self.run_dir(key) / METRICS, data.encode())
