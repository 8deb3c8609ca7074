"""The run record's format: schema versions, decoding of older records, the metrics.jsonl rule and
the one definition of a done run. Nothing outside bench/results/ parses these files.

result.json (schema_version 2) holds: key, status ("done"), sweep, spec (the canonical spec dict,
bench/spec.py), metrics (val_<m>, test_<m>, <testset>_<m>, best_epoch, epochs_run, ...), cost
(seconds and rates), data (split sizes), info, versions, numerics, host, device, threads, workers,
warnings, finished_at, semantics ({component: version}, entries equal to 1 left out) and
schema_version. Records written before schema_version existed are version 1: no semantics (= {}),
and records from before the learner redesign carry cost.saflex_s instead of cost.learner_s.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

SCHEMA_VERSION = 2
NEWER_SCHEMA = "(update saflex-bench)"  # ends the reason of a record newer than this code: never overwritten
RESULT = "result.json"
METRICS = "metrics.jsonl"


# ---- semantics ---------------------------------------------------------------------------------
def normalize_semantics(sem: Any) -> dict[str, int]:
    """{component: version} with the entries equal to 1 left out (1 = the meaning every component
    had before versions existed); None / missing = {}."""
    if not isinstance(sem, Mapping):
        return {}
    return {str(k): int(v) for k, v in sorted(sem.items()) if int(v) != 1}


def expected_semantics(spec: Any) -> dict[str, int]:
    """The semantics today's code gives `spec` (a RunSpec, or None = nothing to compare against)."""
    return normalize_semantics(getattr(spec, "semantics", {}) or {})


# ---- decoding ----------------------------------------------------------------------------------
def decode_record(rec: dict) -> dict:
    """A record of any schema version in today's shape (a new dict; the file is left as it is).
    Every upgrade of an older record format lives here, oldest first."""
    rec = dict(rec)
    version = rec.get("schema_version", 1)
    if version == 1:
        cost = rec.get("cost")
        if isinstance(cost, Mapping) and "learner_s" not in cost and "saflex_s" in cost:
            rec["cost"] = {**cost, "learner_s": cost["saflex_s"]}  # records before the learner redesign
        rec.setdefault("semantics", {})  # made before semantics versions: every component at 1
    rec["semantics"] = normalize_semantics(rec.get("semantics"))
    rec["schema_version"] = SCHEMA_VERSION if version == 1 else version
    return rec


def encode_record(rec: Mapping[str, Any], spec: Any = None) -> dict:
    """The record as written: today's schema version, and the spec's semantics unless the record
    states its own."""
    out = dict(rec)
    out["schema_version"] = SCHEMA_VERSION
    out["semantics"] = normalize_semantics(out["semantics"] if "semantics" in out else expected_semantics(spec))
    return out


def parse_result_text(text: str) -> tuple[dict | None, str | None]:
    """(decoded record, None), or (None, why the text is no record)."""
    try:
        rec = json.loads(text)
    except ValueError:
        if not text.strip():
            return None, "result.json is empty: rerun"
        if _is_cut_short(text):
            return None, "result.json truncated (the writer was killed mid-write?): rerun"
        return None, "result.json does not parse (not JSON): rerun"
    if not isinstance(rec, dict):
        return None, f"result.json holds a {type(rec).__name__}, not a record: rerun"
    version = rec.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        return None, (f"result.json has schema_version {version!r}; this code reads versions 1-{SCHEMA_VERSION} "
                      + NEWER_SCHEMA)
    return decode_record(rec), None


def _is_cut_short(text: str) -> bool:
    """Does `text` fail only because it ends too early (a prefix of a JSON document)? Closing an
    open string / list / object moves the first error to the end of the text (or away)."""
    end = len(text.rstrip())
    for tail in ("", '"', "]", "}", '"]', '"}'):
        try:
            json.loads(text + tail)
            return True
        except ValueError as e:
            if getattr(e, "pos", 0) >= end:
                return True
    return False


def load_record(path: str | os.PathLike) -> tuple[dict | None, str | None]:
    """Read one result.json: (decoded record, None) or (None, why there is none)."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return None, "no result.json (running, not started or died)"
    except OSError as e:
        return None, f"result.json unreadable ({e.strerror or type(e).__name__})"
    return parse_result_text(text)


# ---- the definition of done --------------------------------------------------------------------
REQUIRED_SPEC_FIELDS = ("task", "method", "seed")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def record_problem(record: Any, spec: Any = None) -> str | None:
    """None when `record` (a decoded result.json) is a done run of `spec`, else the reason, one line.

    Done = the run's key, metrics, status "done", its spec (task, method, seed), at least one test metric
    (metrics.test_<m>: what every report reads) and the semantics `spec` has today (record field
    `semantics`, missing = {}, against `getattr(spec, "semantics", {})`; spec=None expects {}: pass
    `spec_for(record)` to judge a record by the spec it holds). A record that fails any of these is never served, skipped or reported as done."""
    if not isinstance(record, Mapping):
        return "result.json holds no record: rerun"
    if not record.get("key"):
        return "result.json names no run key: rerun"
    metrics = record.get("metrics")
    if not isinstance(metrics, Mapping) or not metrics:
        return "result.json holds no metrics: rerun"
    status = record.get("status")
    if status != "done":
        return f"result.json says status {status!r}, not 'done': rerun" if status else "result.json holds no status: rerun"
    rspec = record.get("spec")
    if not isinstance(rspec, Mapping):
        return "result.json holds no spec: rerun"
    missing = [f for f in REQUIRED_SPEC_FIELDS if f not in rspec]
    if missing:
        return f"result.json's spec lacks {', '.join(missing)}: rerun"
    if not any(k.startswith("test_") and _is_number(v) for k, v in metrics.items()):
        return "result.json holds no test metric (metrics.test_*): rerun"
    have = normalize_semantics(record.get("semantics"))
    want = expected_semantics(spec)
    if have != want:
        return f"made under semantics {describe_semantics(have)}, today's is {describe_semantics(want)}: rerun"
    return None


def describe_semantics(sem: Mapping[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(sem.items())) or "v1"


# ---- metrics.jsonl -----------------------------------------------------------------------------
def parse_metrics_lines(lines: Iterable[str]) -> list[dict]:
    """THE torn-line rule: rows are the lines up to the first one that is not a JSON object; that line
    and everything after it are dropped (a writer killed mid-line leaves a torn tail; the trainer
    rewrites the file atomically, so nothing valid can follow a torn line). Blank lines are skipped."""
    rows = []
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            break
        if not isinstance(row, dict):
            break
        rows.append(row)
    return rows


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The per-epoch rows of one metrics.jsonl (a run folder or the file itself); [] when absent."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS
    try:
        with open(path, "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return parse_metrics_lines(text.splitlines())


def finite(v: Any) -> bool:
    return _is_number(v) and math.isfinite(v)


def spec_for(record: Mapping[str, Any]) -> Any:
    """Today's RunSpec for a record's stored spec (cheap, unvalidated), or None when it cannot be
    rebuilt (a field this code does not know): then only records with semantics {} are done."""
    rspec = record.get("spec")
    if not isinstance(rspec, Mapping):
        return None
    try:
        from bench.spec import RunSpec

        return RunSpec.from_canonical(rspec)
    except Exception:  # noqa: BLE001 - a foreign or newer spec: judged without it
        return None
