"""A run record as one flat row: the per-run columns of the tidy frame (reports/load.py adds the
columns that depend on the whole set of loaded runs: learner_cfg, arm, saflex_cfg)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from bench.results.records import decode_record

NONE = "none"  # the plain-training learner
SECTIONS = ("metrics", "cost", "versions", "data", "numerics")


def scalar(v: Any) -> Any:
    """Make a spec value hashable/groupable (lists -> 'a,b', dicts -> canonical JSON)."""
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    if isinstance(v, Mapping):
        return json.dumps(v, sort_keys=True, separators=(",", ":"))
    return v


def split_method(method: str) -> tuple[str, str]:
    """`UPSTREAM[+LEARNER]` -> (upstream, learner); bench.learners is the single source of the grammar."""
    from bench.learners import split_method as _split

    return _split(method)


def learner_defaults(learner: str) -> dict[str, Any]:
    """The learner's default knobs as its class declares them ({} for a learner unknown here: its
    settings are then labelled by value only)."""
    try:
        from bench.learners import get_learner_class

        return dict(get_learner_class(learner).default_knobs() or {})
    except Exception:  # unknown learner (results from another install) or its package missing
        return {}


def record_to_row(rec: Mapping[str, Any], run_dir: Path | None = None) -> dict[str, Any]:
    rec = decode_record(dict(rec))
    spec = dict(rec.get("spec") or {})
    row: dict[str, Any] = {"key": rec.get("key") or (run_dir.name if run_dir else None),
                           "sweep": rec.get("sweep"), "status": rec.get("status")}
    method = str(spec.get("method", ""))
    upstream, learner = split_method(method)
    head, plus, tail = method.rpartition("+")
    if learner == NONE and plus and isinstance(spec.get(tail), Mapping):
        upstream, learner = head, tail  # a learner not registered here, recognised by its knobs
    # the learner's knobs: `saflex` (first release's field, null for other learners) or a key named
    # after the learner; flattened as `<learner>.<knob>` so they never enter the run identity
    knobs = spec.pop("saflex", None)
    if learner not in (NONE, "saflex"):
        own = spec.pop(learner, None)
        knobs = own if isinstance(own, Mapping) else None
    for k, v in spec.items():
        row[k] = scalar(v)
    if knobs is not None:  # knobs added after a record was written are stored only when set
        from bench.spec import stored_knobs  # absent = the value before the knob existed, not today's default

        knobs = {**learner_defaults(learner), **stored_knobs(learner, knobs)}
    for k, v in dict(knobs or {}).items():
        row[f"{learner}.{k}"] = scalar(v)
    row["upstream"], row["learner"] = upstream, learner
    row["saflex"] = learner == "saflex"  # the first release's column, kept for old callers
    task = str(spec.get("task", ""))
    family, sep, dataset = task.partition("/")
    row["family"], row["dataset"] = (family, dataset) if sep else ("", task)
    for section in SECTIONS:
        for k, v in dict(rec.get(section) or {}).items():
            row[f"{section}.{k}"] = v
    for k in ("host", "device", "finished_at"):
        row[k] = rec.get(k)
    row["run_dir"] = str(run_dir) if run_dir is not None else None
    return row
