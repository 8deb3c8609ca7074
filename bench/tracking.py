"""Experiment tracking (wandb) for one run.

    tracker = start_tracking(spec.to_dict(), spec.key, run_dir, mode, sweep)
    tracker.log_epoch(row, step=epoch)          # one metrics.jsonl row
    tracker.finish(result_record, exit_code=0)  # final metrics -> run summary

Identity: the wandb run id IS the run key and `resume="allow"`, so a run that is requeued / resumed
from its checkpoint continues the same wandb run (offline: every process start writes its own
`offline-run-<time>-<key>` directory under `<run_dir>/wandb/`, all with the same id, which
`wandb sync` merges into one run). group = sweep name, job_type = method, tags = [task, dataset],
config = the run spec, project = `$WANDB_PROJECT` or `saflex-bench`.

Mode: explicit `mode` > `$WANDB_MODE` > "offline" (files inside the run directory, no network).
"disabled" gives a no-op tracker and never imports wandb. No credential is ever written: the config
is the spec dict only, and wandb reads its API key itself (env / netrc) when online.
"""
from __future__ import annotations

import math
import os
import re
import struct
from pathlib import Path
from typing import Any, Iterator, Mapping

from bench.errors import UsageError

VALID_MODES = ("online", "offline", "disabled")
_MODE_ALIASES = {"dryrun": "offline", "run": "online"}  # wandb's legacy spellings of WANDB_MODE
DEFAULT_PROJECT = "saflex-bench"


def resolve_mode(mode: str | None = None) -> str:
    """The effective mode: explicit > $WANDB_MODE > offline. Bad value -> UsageError naming valid ones."""
    source = "--wandb"
    if mode is None or mode == "":
        mode, source = os.environ.get("WANDB_MODE") or "offline", "WANDB_MODE"
    value = _MODE_ALIASES.get(str(mode).strip().lower(), str(mode).strip().lower())
    if value not in VALID_MODES:
        raise UsageError(f"unknown wandb mode '{mode}' from {source} (valid: {', '.join(VALID_MODES)})")
    return value


class Tracker:
    """The no-op tracker (mode 'disabled'); WandbTracker overrides the three methods."""

    mode = "disabled"
    run_id: str | None = None

    def log_epoch(self, row: Mapping[str, Any], step: int) -> None:
        pass

    def finish(self, result: Mapping[str, Any] | None = None, exit_code: int = 0) -> None:
        pass

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(None, exit_code=0 if exc_type is None else 1)


def _scalars(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a (nested) record into wandb-loggable scalars: numbers, bools and short strings."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_scalars(v, prefix=f"{name}/"))
        elif isinstance(v, bool) or isinstance(v, int):
            out[name] = v
        elif isinstance(v, float):
            if not math.isnan(v):
                out[name] = v
        elif isinstance(v, str) and len(v) <= 256:
            out[name] = v
    return out


class WandbTracker(Tracker):
    def __init__(self, run: Any, mode: str, run_dir: Path):
        self._run = run
        self.mode = mode
        self.run_id = run.id
        self.dir = Path(run.dir).parent  # <run_dir>/wandb/<offline|run>-<time>-<key>
        from bench.results.records import METRICS

        self._metrics = Path(run_dir) / METRICS
        self._first = True
        self._finished = False

    def _log(self, row: Mapping[str, Any], step: int) -> None:
        data = _scalars({k: v for k, v in row.items() if k != "epoch"})
        data["epoch"] = int(row.get("epoch", step))
        self._run.log(data, step=int(step))

    def log_epoch(self, row: Mapping[str, Any], step: int) -> None:
        if self._finished:
            return
        if self._first:
            self._first = False
            if step > 1:
                self._replay(step)
        self._log(row, step)

    def _replay(self, step: int) -> None:
        """A resumed run: log the epochs before `step` again, from metrics.jsonl (which the trainer
        rewrites from the checkpoint on resume). A process that was killed may not have flushed its
        wandb segment; this makes the latest segment hold the whole curve. Syncing the segments of
        one id in order, wandb keeps the first value of a step and drops repeats."""
        from bench.results import read_metrics

        for row in read_metrics(self._metrics):
            epoch = row.get("epoch")
            if isinstance(epoch, int) and 1 <= epoch < step:
                self._log(row, epoch)

    def finish(self, result: Mapping[str, Any] | None = None, exit_code: int = 0) -> None:
        if self._finished:
            return
        self._finished = True
        if result:
            summary = _scalars(result.get("metrics") or {})
            summary.update(_scalars({"cost": result.get("cost") or {}}))
            summary["status"] = result.get("status", "done")
            self._run.summary.update(summary)
        from bench.store import fault_point

        fault_point("wandb-finish")  # tests/test_faults.py: killed while wandb closes the run
        self._run.finish(exit_code=exit_code)


def start_tracking(
    spec_dict: Mapping[str, Any],
    key: str,
    run_dir: Path | str,
    mode: str | None,
    sweep: str | None,
    project: str | None = None,
) -> Tracker:
    """Open (or resume) the wandb run of one benchmark run; 'disabled' -> a no-op Tracker."""
    mode = resolve_mode(mode)
    if mode == "disabled":
        return Tracker()
    import wandb  # ~0.5 s; only when tracking is on

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    task = str(spec_dict.get("task", ""))
    tags = [t for t in dict.fromkeys([task, task.split("/", 1)[-1]]) if t][:2]
    # Cheap start: no system-metrics sampler thread, no git/code/pip-freeze capture, no console wrap.
    settings = wandb.Settings(
        console="off",
        silent=True,
        x_disable_stats=True,
        disable_git=True,
        disable_code=True,
        x_save_requirements=False,
    )
    try:
        run = wandb.init(
            project=project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            id=key,
            resume="allow",
            dir=str(run_dir),  # -> <run_dir>/wandb/
            mode=mode,
            group=sweep or None,
            job_type=str(spec_dict.get("method", "")) or None,
            tags=tags,
            config=dict(spec_dict),
            settings=settings,
            # one run at a time per process (debug executor, tests): a run left open by an interrupted
            # run in the same process is closed first, so its id (= run key) can be opened again
            reinit="finish_previous",
        )
    except Exception as e:  # wandb's own errors: no login for online, bad project name, ...
        if mode == "online":
            raise UsageError(
                f"wandb online mode failed ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                "log in with `wandb login` or use --wandb offline"
            ) from None
        raise
    return WandbTracker(run, mode, run_dir)


# ---- reading offline runs back (tests, diagnostics) -----------------------------------------
_SEGMENT_RE = re.compile(r"^offline-run-(\d{8}_\d{6})-(.+?)(?:-(\d+))?$")


def offline_run_dirs(run_dir: Path | str) -> list[Path]:
    """The `offline-run-<time>-<id>[-<n>]` directories of one run directory, oldest first (wandb adds
    `-<n>` when a run id starts twice within a second)."""

    def order(p: Path):
        m = _SEGMENT_RE.match(p.name)
        return (m.group(1), int(m.group(3) or 0)) if m else (p.name, 0)

    root = Path(run_dir) / "wandb"
    return sorted((p for p in root.glob("offline-run-*") if p.is_dir() and not p.is_symlink()), key=order)


def segment_run_id(segment: Path) -> str | None:
    """The run id in an offline segment's directory name."""
    m = _SEGMENT_RE.match(Path(segment).name)
    return m.group(2) if m else None


def _log_records(path: Path) -> Iterator[bytes]:
    """Records of a .wandb transaction log (LevelDB log format: 32 KiB blocks, 7-byte headers)."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a wandb transaction log")
    block, pos, buf = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # FULL
            yield chunk
        elif kind == 2:  # FIRST
            buf = chunk
        elif kind == 3:  # MIDDLE
            buf += chunk
        elif kind == 4:  # LAST
            yield buf + chunk
        elif kind == 0 and length == 0:  # zero padding up to the block end
            pos += left - 7


def read_offline_run(path: Path | str, wait_s: float = 0.0) -> dict[str, Any]:
    """Summarise one offline run directory (or its .wandb file): id, group, job_type, tags, project,
    config, logged steps, summary keys and exit code. wandb's service writes the file asynchronously
    (a run finished in this process may still be flushing): `wait_s` polls until its exit record is in."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        out = _read_offline_run(Path(path))
        if out["exit_code"] is not None or time.monotonic() >= deadline:
            return out
        time.sleep(0.1)


def _read_offline_run(path: Path) -> dict[str, Any]:
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    if path.is_dir():
        files = sorted(path.glob("*.wandb"))
        if not files:
            raise ValueError(f"{path}: no .wandb file")
        path = files[0]
    out: dict[str, Any] = {"run_id": None, "steps": [], "summary": {}, "exit_code": None, "config": {}}
    for data in _log_records(path):
        rec = pb.Record()
        rec.ParseFromString(data)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out.update(run_id=r.run_id, project=r.project, group=r.run_group, job_type=r.job_type,
                       tags=list(r.tags), resume=bool(r.resume))
            out["config"] = {
                i.key: json.loads(i.value_json) for i in r.config.update if i.key and i.key != "_wandb"
            }
        elif kind == "history":
            out["steps"].append(int(rec.history.step.num))
        elif kind == "summary":
            for item in rec.summary.update:
                name = item.key or "/".join(item.nested_key)
                if name and not name.startswith("_"):
                    out["summary"][name] = json.loads(item.value_json)
        elif kind == "exit":
            out["exit_code"] = int(rec.exit.exit_code)
    return out
