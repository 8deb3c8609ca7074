#!/usr/bin/env python
"""Give the records of a results store the keys today's code gives what they computed.

    python scripts/migrate_store.py RESULTS_ROOT [--dry-run]

Run keys follow semantics versions (bench/spec.py: RunSpec.semantics). When a component's version is
bumped for runs that already have records made under the new rule, those records sit under the key
of the old rule; this script moves them (run folder renamed, `key`, `spec` and `semantics` rewritten
in spec.json / result.json, the keys in sweeps/*/plan.json replaced) and prints each change.
Records made under an older rule are kept as what they computed, never relabelled as the new rule:
where today's spec can say what they ran (a knob), they move to that spec's key; otherwise they stay
where they are (not done under today's code: they rerun) and the script says so. Idempotent: a second
run finds nothing to do. Nothing is deleted; a target folder that already exists is a conflict,
reported and left alone.

The bumps it knows (SEMANTICS_SINCE), oldest first:
- SAFLEX semantics 2 (commit 2c29764, 2026-11-30T10:16:03Z): refresh="auto" ramps up (ref_ramp).
  refresh="auto" records made since then are semantics 2; the ones made before ran the unramped rule,
  which today's spec spells `saflex.ref_ramp=false`.
A bump with no entry here (e.g. a learner whose records must be rerun) leaves its records in place.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from bench.errors import UsageError  # noqa: E402
from bench.results.store import read_json, write_json_atomic  # noqa: E402
from bench.spec import RunSpec  # noqa: E402

SPEC, RESULT, ATTEMPT, PLAN = "spec.json", "result.json", "attempt.json", "plan.json"
SAFLEX_RAMP_SINCE = "2026-11-30T10:16:03Z"  # UTC timestamps of records compare as strings
# (component, version) -> since when records were made under that version (records without a
# `semantics` field were made before versions existed: this is how their version is known)
SEMANTICS_SINCE = {("learner:saflex", 2): SAFLEX_RAMP_SINCE}


def made_at(result: dict | None, attempt: dict | None) -> str | None:
    """When the record's computation ran: the result's finish, else the attempt's start."""
    for rec, field in ((result, "finished_at"), (attempt, "started_at")):
        if isinstance(rec, dict) and isinstance(rec.get(field), str):
            return rec[field]
    return None


def made_under(record_semantics: Any, when: str | None, today: dict[str, int]) -> dict[str, int]:
    """The semantics a record ran under: its own field when it has one, else the known bumps of
    today's components that were in the code by the time it was made."""
    if isinstance(record_semantics, dict):
        return {k: int(v) for k, v in sorted(record_semantics.items()) if int(v) != 1}
    since = {comp: SEMANTICS_SINCE.get((comp, v)) for comp, v in today.items()}
    return {comp: today[comp] for comp, t in since.items() if t is not None and when is not None and when >= t}


def as_it_ran(spec: RunSpec, when: str) -> RunSpec:
    """The spec, in today's terms, of what a record made at `when` computed."""
    knobs = spec.knobs or {}
    if spec.learner == "saflex" and knobs.get("refresh") == "auto" and knobs.get("ref_ramp", True) and when < SAFLEX_RAMP_SINCE:
        return spec.with_overrides({"saflex.ref_ramp": False})  # the unramped rule of semantics 1
    return spec


def plan_moves(root: Path) -> tuple[list[tuple[str, str, RunSpec]], list[str]]:
    """([(old key, new key, spec)] for every run whose folder or fields are not today's, [notes])."""
    moves, notes = [], []
    runs = root / "runs"
    for run in sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []:
        stored = read_json(run / SPEC)
        result = read_json(run / RESULT)
        if not isinstance(stored, dict):
            stored = result.get("spec") if isinstance(result, dict) else None
        if not isinstance(stored, dict):
            notes.append(f"left {run.name}: no readable spec")
            continue
        when = made_at(result, read_json(run / ATTEMPT))
        try:
            spec = RunSpec.from_dict(stored)
            spec = as_it_ran(spec, when) if when else spec
        except UsageError as e:
            notes.append(f"left {run.name}: {e}")
            continue
        record_semantics = (result or {}).get("semantics", stored.get("semantics"))
        ran = made_under(record_semantics, when, spec.semantics)
        if ran != spec.semantics:
            notes.append(f"left {run.name}: made under semantics {ran or '{}'}, today's code gives "
                         f"{spec.semantics or '{}'} ({spec.method}): it reruns, nothing to move")
            continue
        if spec.key != run.name or _stale_fields(run, spec):
            moves.append((run.name, spec.key, spec))
    return moves, notes


def _stale_fields(run: Path, spec: RunSpec) -> bool:
    """A record under the right folder whose files do not yet name its semantics (a run cut short)."""
    if not spec.semantics:  # the first semantics: nothing to add, files left untouched
        return False
    return any(isinstance(rec, dict) and (rec.get("key") != spec.key or rec.get("semantics") != spec.semantics)
               for rec in (read_json(run / SPEC), read_json(run / RESULT)))


def apply_move(root: Path, old: str, new: str, spec: RunSpec) -> str:
    src, dst = root / "runs" / old, root / "runs" / new
    if old != new:
        if dst.exists():
            return f"conflict {old} -> {new}: the target folder exists (left both as they are)"
        os.rename(src, dst)
    if read_json(dst / SPEC) is not None:
        write_json_atomic(dst / SPEC, {**spec.to_dict(), "key": new})
    result = read_json(dst / RESULT)
    if isinstance(result, dict):
        moved = {"migrated_from": result.get("migrated_from", old)} if old != new else {}
        write_json_atomic(dst / RESULT, {**result, "key": new, "spec": spec.to_dict(), "semantics": spec.semantics, **moved})
    return f"{'moved' if old != new else 'rewrote'} {old} -> {new} ({spec.method}, seed {spec.seed}, semantics {spec.semantics or '{}'})"


def rewrite_plans(root: Path, renames: dict[str, str], dry_run: bool) -> list[str]:
    out = []
    for plan in sorted((root / "sweeps").glob(f"*/{PLAN}")):
        data = read_json(plan)
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            continue
        keys = [renames.get(k, k) for k in data["keys"]]
        if keys != data["keys"]:
            n = sum(a != b for a, b in zip(keys, data["keys"]))
            out.append(f"plan {plan.parent.name}: {n} key(s) renamed")
            if not dry_run:
                write_json_atomic(plan, {**data, "keys": keys})
    return out


def migrate(root: str | os.PathLike, dry_run: bool = False) -> list[str]:
    """Apply (or with dry_run only list) the moves; returns the lines it prints."""
    root = Path(root)
    if not (root / "runs").is_dir():
        raise UsageError(f"{root} is not a results root (no runs/ folder in it)")
    moves, lines = plan_moves(root)
    renames = {}
    for old, new, spec in moves:
        if dry_run:
            lines.append(f"would move {old} -> {new} ({spec.method}, seed {spec.seed})" if old != new else f"would rewrite {old}")
            renames[old] = new
            continue
        line = apply_move(root, old, new, spec)
        lines.append(line)
        if not line.startswith("conflict"):
            renames[old] = new
    lines += rewrite_plans(root, {o: n for o, n in renames.items() if o != n}, dry_run)
    lines.append(f"{'dry run: ' if dry_run else ''}{sum(o != n for o, n in renames.items())} run(s) moved, "
                 f"{sum(o == n for o, n in renames.items())} rewritten in place")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results_root", help="a results root (holds runs/ and sweeps/)")
    p.add_argument("--dry-run", action="store_true", help="list what would change, change nothing")
    args = p.parse_args(argv)
    try:
        for line in migrate(args.results_root, args.dry_run):
            print(line)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
