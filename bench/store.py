"""The results store: one directory per run under `<root>/runs/<key>/`.

A run is done iff its `result.json` exists and parses: it is written last, atomically (temp file in
the same directory, fsync, rename), so a crashed or preempted run never leaves a record that looks
complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

RESULT = "result.json"
ATTEMPT = "attempt.json"
SPEC = "spec.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
LOG = "run.log"
SAFLEX_DIAG = "saflex_diag.npz"


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
