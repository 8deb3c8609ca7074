"""The results index: one row per run folder of a store, in SQLite at `<root>/index.sqlite`.

Table `runs`: key (primary), sig (result.json's mtime:size when indexed), sweep, status, task, method,
seed, problem (why the record is not done, judged without semantics; NULL = complete), semantics
(JSON), spec (JSON), row (JSON: `rows.record_to_row`, every per-run column of the tidy frame).
Table `epochs`: key, sig (metrics.jsonl's mtime:size), rows (JSON list: `records.read_metrics`).
A build re-reads only the runs whose files changed since the last one and drops vanished runs.
Whether a record's semantics are today's is judged when the index is read (it depends on the code,
not on the files). A store that cannot be written is indexed in memory.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Iterable

from bench.results import records
from bench.results.rows import record_to_row
from bench.results.store import exclusive

INDEX_FILE = "index.sqlite"
INDEX_VERSION = "2"  # bump when the row mapping changes: the next build re-reads every run
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS runs(key TEXT PRIMARY KEY, sig TEXT, sweep TEXT, status TEXT, task TEXT,
    method TEXT, seed INTEGER, problem TEXT, semantics TEXT, spec TEXT, row TEXT);
-- spec: the record's spec without its seed (semantics never depend on the seed: one lookup per arm)
CREATE TABLE IF NOT EXISTS epochs(key TEXT PRIMARY KEY, sig TEXT, rows TEXT);
CREATE TABLE IF NOT EXISTS frames(name TEXT PRIMARY KEY, fingerprint TEXT, data BLOB);
"""


def _sig(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return f"{st.st_mtime_ns}:{st.st_size}"


def _index_row(root: Path, key: str, sig: str) -> tuple:
    rec, why = records.load_record(root / "runs" / key / records.RESULT)
    if rec is not None and rec.get("key") not in (None, key):
        why = f"result.json names run {rec.get('key')}, not {key}: rerun"
    if why is None:  # structure only: semantics are judged against today's code when read
        why = records.record_problem({**rec, "semantics": {}}, None)
    rec = rec or {}
    spec = rec.get("spec") if isinstance(rec.get("spec"), dict) else {}
    try:
        row = record_to_row({**rec, "key": key}) if spec else {"key": key, "sweep": rec.get("sweep"),
                                                                  "status": rec.get("status")}
    except Exception as e:  # noqa: BLE001 - one odd record must not stop the index
        why = why or f"result.json cannot be read as a row ({type(e).__name__}: {e})"
        row = {"key": key}
    row.pop("run_dir", None)  # derived from the root when read: the store may move
    seed = spec.get("seed")
    return (key, sig, rec.get("sweep"), rec.get("status"), spec.get("task"), spec.get("method"),
            seed if isinstance(seed, int) else None, why, json.dumps(rec.get("semantics") or {}),
            json.dumps({k: v for k, v in spec.items() if k != "seed"}, sort_keys=True), json.dumps(row))


class ResultsIndex:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.path = self.root / INDEX_FILE
        self.db: sqlite3.Connection | None = None
        self.last_build: dict[str, int] = {}

    # ---- building ------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self.db is None:
            try:
                self.db = sqlite3.connect(self.path, timeout=60)
                self.db.executescript(_SCHEMA)
            except sqlite3.Error:  # a read-only store: index it in memory
                self.db = sqlite3.connect(":memory:")
                self.db.executescript(_SCHEMA)
            self.db.execute("PRAGMA synchronous=OFF")  # the index is a cache: rebuilt from the run folders
        return self.db

    def build(self, epochs: bool = True) -> "ResultsIndex":
        """Bring the index up to date with the run folders; `last_build` says what was re-read."""
        db = self._connect()
        if not (self.root / "runs").is_dir():
            self.last_build = {"runs": 0, "read": 0, "dropped": 0}
            return self
        writable = os.access(self.root, os.W_OK)
        lock = exclusive(self.root / ".index.lock", "saflex-bench: another process is updating the results index") \
            if writable else contextlib.nullcontext()
        with lock:
            if (db.execute("SELECT value FROM meta WHERE name='version'").fetchone() or [None])[0] != INDEX_VERSION:
                db.executescript("DELETE FROM runs; DELETE FROM epochs; DELETE FROM frames;")
                db.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (INDEX_VERSION,))
                db.execute("INSERT OR REPLACE INTO meta VALUES ('generation', 0)")
            runs_dir = str(self.root / "runs")
            keys = sorted(e.name for e in os.scandir(runs_dir) if e.is_dir())
            known = dict(db.execute("SELECT key, sig FROM runs"))
            changed = []
            for k in keys:
                sig = _sig(os.path.join(runs_dir, k, records.RESULT))
                if known.get(k) != sig:
                    changed.append((k, sig))
            gone = set(known) - set(keys)
            if changed or gone:  # cached frames of the old state are stale
                db.execute("UPDATE meta SET value = value + 1 WHERE name='generation'")
            db.executemany("REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                           [_index_row(self.root, k, sig) for k, sig in changed])
            db.executemany("DELETE FROM runs WHERE key=?", [(k,) for k in gone])
            n_epochs = self._build_epochs(db, keys, runs_dir) if epochs else 0
            db.commit()
        self.last_build = {"runs": len(keys), "read": len(changed), "dropped": len(gone), "epochs_read": n_epochs}
        return self

    def _build_epochs(self, db: sqlite3.Connection, keys: list[str], runs_dir: str) -> int:
        known = dict(db.execute("SELECT key, sig FROM epochs"))
        changed = []
        for k in keys:
            path = os.path.join(runs_dir, k, records.METRICS)
            sig = _sig(path)
            if known.get(k) != sig:
                changed.append((k, sig, json.dumps(records.read_metrics(path))))
        db.executemany("REPLACE INTO epochs VALUES (?,?,?)", changed)
        db.executemany("DELETE FROM epochs WHERE key=?", [(k,) for k in set(known) - set(keys)])
        return len(changed)

    # ---- reading -------------------------------------------------------------------------------
    def problems(self, keys: Iterable[str] | None = None, specs: dict[str, Any] | None = None) -> dict[str, str | None]:
        """{key: None (done) or why not}. `specs` ({key: RunSpec}) judge semantics against the spec
        asked about; without one, against the spec the record holds, as today's code reads it."""
        db = self._connect()
        rows = db.execute("SELECT key, problem, semantics, spec FROM runs").fetchall()
        want = None if keys is None else set(keys)
        out: dict[str, str | None] = {}
        for key, problem, sem, spec in rows:
            if want is not None and key not in want:
                continue
            out[key] = problem or self._semantics_problem(key, sem, spec, (specs or {}).get(key))
        if want is not None:
            for k in want - set(out):
                out[k] = "no run folder (not started)"
        return out

    @staticmethod
    def _semantics_problem(key: str, sem: str, spec_json: str, spec: Any) -> str | None:
        want = records.expected_semantics(spec) if spec is not None else _expected_for(spec_json)
        if sem == "{}" and not want:  # the common case, without parsing
            return None
        have = records.normalize_semantics(json.loads(sem))
        if have == want:
            return None
        return (f"made under semantics {records.describe_semantics(have)}, "
                f"today's is {records.describe_semantics(want)}: rerun")

    def frame_rows(self, sweep: str | None = None, planned: set[str] | None = None) -> tuple[list[dict], dict[str, str]]:
        """(rows of the done runs, {key: why} of the others) of the whole store or of one sweep
        (its records and the keys its plan names). Run folders without result.json are reported too."""
        db = self._connect()
        planned = planned or set()
        done, not_done = [], {}
        runs_dir = self.root / "runs"
        for key, problem, sem, spec, rec_sweep, row in db.execute(
                "SELECT key, problem, semantics, spec, sweep, row FROM runs ORDER BY key"):
            why = problem or self._semantics_problem(key, sem, spec, None)
            if sweep is not None and rec_sweep != sweep and key not in planned and (why is None or rec_sweep):
                continue  # another sweep's (a record that names no sweep and is not done may be this one's)
            if why is not None:
                not_done[key] = why
                continue
            r = json.loads(row)
            r["run_dir"] = str(runs_dir / key)
            done.append(r)
        return done, not_done

    def frame(self, sweep: str | None = None, planned: set[str] | None = None):
        """`frame_rows` as a DataFrame (one row per done run) and the not-done {key: why}. The frame is
        cached in the index (pickled) until a build changes a run, the sweep's plan changes or
        today's code gives some stored spec another semantics."""
        import pickle

        import pandas as pd

        db = self._connect()
        gen = (db.execute("SELECT value FROM meta WHERE name='generation'").fetchone() or ["0"])[0]
        sem = [(spec, _expected_for(spec)) for (spec,) in db.execute("SELECT DISTINCT spec FROM runs ORDER BY spec")]
        fingerprint = hashlib.sha1(json.dumps([gen, sweep, sorted(planned or ()), sem]).encode()).hexdigest()
        name = sweep if sweep is not None else ""
        hit = db.execute("SELECT data FROM frames WHERE name=? AND fingerprint=?", (name, fingerprint)).fetchone()
        if hit is not None:
            return pickle.loads(hit[0])
        rows, not_done = self.frame_rows(sweep, planned)
        out = (pd.DataFrame(rows), not_done)
        with contextlib.suppress(sqlite3.Error):  # a cache: a store we cannot write just goes without
            db.execute("REPLACE INTO frames VALUES (?,?,?)", (name, fingerprint, pickle.dumps(out, protocol=5)))
            db.commit()
        return out

    def sweeps(self) -> set[str]:
        return {s for (s,) in self._connect().execute("SELECT DISTINCT sweep FROM runs WHERE sweep IS NOT NULL")}

    def epochs(self, keys: Iterable[str] | None = None) -> list[tuple[str, dict]]:
        """(key, metrics.jsonl row) pairs, epoch order within a run."""
        out = []
        want = None if keys is None else set(keys)
        for key, rows in self._connect().execute("SELECT key, rows FROM epochs ORDER BY key"):
            if want is None or key in want:
                out += [(key, r) for r in json.loads(rows)]
        return out

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


@functools.lru_cache(maxsize=65536)
def _expected_for(spec_json: str) -> dict[str, int]:
    return records.expected_semantics(records.spec_for({"spec": {**json.loads(spec_json), "seed": 0}}))


def load_index(root: str | os.PathLike, epochs: bool = True) -> ResultsIndex:
    """The store's index, brought up to date."""
    return ResultsIndex(root).build(epochs=epochs)


def epochs_frame(root: str | os.PathLike, keys: Iterable[str] | None = None):
    """One row per (run, epoch) from the runs' metrics.jsonl: columns key + the logged fields."""
    import pandas as pd

    pairs = load_index(root).epochs(keys)
    return pd.DataFrame([{"key": k, **r} for k, r in pairs])
