"""`saflex-bench wandb-push`: a study's stored results as wandb runs, so a wandb report opens on them.

Each done record becomes one offline wandb run written the way bench/tracking.py writes a live one
(id = run key, group = the record's sweep, job_type = method, config = the spec, history = its
metrics.jsonl rows, summary = metrics + cost/<name> + status), under OUT/<key>/wandb/. Nothing is
written into the results store. Uploading them is `wandb sync` (with --sync, or by hand: the command
prints it), which needs a wandb server and an API key; the same ids make a second push update the
runs rather than duplicate them.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Iterator

import pandas as pd


def records_to_push(root: Path, df: pd.DataFrame) -> Iterator[tuple[dict[str, Any], list[dict]]]:
    """(record, metrics rows) of every run in `df` (the loaded, done runs), in the frame's order."""
    from bench.store import ResultsStore

    store = ResultsStore(root)
    for key in df["key"]:
        rec = store.read_result(str(key))
        if rec is not None:
            yield rec, store.read_metrics(str(key))


def push_offline(root: str | Path, df: pd.DataFrame, out_dir: str | Path, project: str) -> list[Path]:
    """Write one offline wandb run per record; returns the offline run directories (for `wandb sync`)."""
    from bench.tracking import start_tracking

    out, runs = Path(out_dir), []
    for rec, rows in records_to_push(Path(root), df):
        key = rec["key"]
        tracker = start_tracking(rec["spec"], key, out / key, "offline", rec.get("sweep"), project=project)
        for i, row in enumerate(rows, 1):
            tracker.log_epoch(row, step=int(row.get("epoch", i)))
        tracker.finish(rec)
        runs.append(Path(tracker.dir))
    return runs


def sync_command(runs: list[Path], entity: str | None, project: str) -> list[str]:
    cmd = ["wandb", "sync", "--project", project]
    if entity:
        cmd += ["--entity", entity]
    return cmd + [str(r) for r in runs]


def sync(runs: list[Path], entity: str | None, project: str) -> int:
    """Upload with `wandb sync` (needs the network and an API key; not testable offline)."""
    return subprocess.run(sync_command(runs, entity, project), check=False).returncode
