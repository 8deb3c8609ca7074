"""Experiment tracking (wandb) for one run.

    tracker = start_tracking(spec.to_dict(), spec.key, run_dir, mode, sweep)
    tracker.log_epoch(row, step=epoch)          # one metrics.jsonl row
    tracker.finish(result_record, exit_code=0)  # final metrics -> run summary

Identity: the wandb run id IS the run key and `resume="allow"`, so a run that is requeued / resumed
from its checkpoint continues the same wandb run (offline: every process start writes its own
`offline-run-<time>-<key>` directory under `<run_dir>/wandb/`, all with the same id, which
`wandb sync` merges into one run). group = sweep name, job_type = method, tags = [task, dataset],
config = the run spec plus the learner's full knobs (`learner_knobs`), project = `$WANDB_PROJECT` or `saflex-bench`.

Offline (the default), the run is written when it ends, from the rows the trainer logged (which are
metrics.jsonl's): wandb costs nothing during the epochs. A process killed after result.json but before
wandb closed the run leaves no `wandb/complete.json`; the next call for that run writes the record again
from metrics.jsonl and result.json (`ensure_record`). Online fails within seconds, with one line, when
the server cannot be reached.

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
from bench.results.records import METRICS, read_metrics  # the one metrics.jsonl reader

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
    """The wandb run of one benchmark run. Online, it opens at the start and logs each epoch live.
    Offline, the run's own metrics.jsonl is the log during training and the wandb run is written in
    one go when the run ends (`finish`): wandb's start-up and shutdown stay off the epochs, and a
    process that dies before `finish` leaves nothing half-written (the next call repairs it:
    `ensure_record`)."""

    def __init__(self, open_run: Any, mode: str, run_dir: Path, key: str, *, deferred: bool = False):
        self._open_run = open_run
        self.mode = mode
        self.run_id = key
        self._run_dir = Path(run_dir)
        self._metrics = self._run_dir / METRICS
        self._first = True
        self._finished = False
        self._pending: list[tuple[dict, int]] = []  # deferred: (row, step) logged by this process
        self._run = None if deferred else open_run()

    @property
    def dir(self) -> Path | None:  # <run_dir>/wandb/<offline|run>-<time>-<key>
        return Path(self._run.dir).parent if self._run is not None else None

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
        if self._run is None:
            self._pending.append((dict(row), int(step)))
        else:
            self._log(row, step)

    def _replay(self, step: int) -> None:
        """A resumed run: log the epochs before `step` again, from metrics.jsonl (which the trainer
        rewrites from the checkpoint on resume). A process that was killed may not have flushed its
        wandb segment; this makes the latest segment hold the whole curve. Syncing the segments of
        one id in order, wandb keeps the first value of a step and drops repeats."""
        for row in read_metrics(self._metrics):
            epoch = row.get("epoch")
            if isinstance(epoch, int) and 1 <= epoch < step:
                if self._run is None:
                    self._pending.append((row, epoch))
                else:
                    self._log(row, epoch)

    def finish(self, result: Mapping[str, Any] | None = None, exit_code: int = 0) -> None:
        if self._finished:
            return
        self._finished = True
        if self._run is None:
            self._run = self._open_run()
            for row, step in self._pending:
                self._log(row, step)
        if result:
            self._run.summary.update(_summary(result))
        from bench.store import fault_point

        fault_point("wandb-finish")  # tests/e2e/test_faults.py: killed while wandb closes the run
        self._run.finish(exit_code=exit_code)
        if result and exit_code == 0:
            mark_complete(self._run_dir, self.mode)


def _summary(result: Mapping[str, Any]) -> dict[str, Any]:
    summary = _scalars(result.get("metrics") or {})
    summary.update(_scalars({"cost": result.get("cost") or {}}))
    summary["status"] = result.get("status", "done")
    return summary



# The marker of a finished wandb record: written after wandb closed a run whose result was logged, so
# a run directory with result.json and no marker lost its record (killed in between) and gets it again.
COMPLETE = "complete.json"


def mark_complete(run_dir: Path | str, mode: str) -> None:
    from bench.store import write_json_atomic

    write_json_atomic(Path(run_dir) / "wandb" / COMPLETE, {"mode": mode})


def record_complete(run_dir: Path | str) -> bool:
    """Whether the run's wandb record holds its steps and summary: the marker, or (records written
    before the marker existed) an offline segment that closed cleanly with the result's summary."""
    run_dir = Path(run_dir)
    if (run_dir / "wandb" / COMPLETE).exists():
        return True
    for seg in offline_run_dirs(run_dir):
        try:
            r = read_offline_run(seg)
        except (ValueError, OSError):
            continue
        if r["exit_code"] == 0 and "status" in r["summary"]:
            mark_complete(run_dir, "offline")
            return True
    return False


def ensure_record(spec_dict: Mapping[str, Any], key: str, run_dir: Path | str, mode: str | None, sweep: str | None,
                  record: Mapping[str, Any], knobs: Mapping[str, Any] | None = None) -> bool:
    """A done run whose wandb record is incomplete (the process died between result.json and the
    end of wandb's finish): write the record again from metrics.jsonl and result.json. Returns
    whether it wrote one. Cheap when nothing is missing (one stat)."""
    mode = resolve_mode(mode)
    if mode == "disabled" or record_complete(run_dir):
        return False
    tracker = start_tracking(spec_dict, key, run_dir, mode, sweep, knobs=knobs, deferred=True)
    for row in read_metrics(run_dir):
        if isinstance(row.get("epoch"), int):
            tracker.log_epoch(row, step=row["epoch"])
    tracker.finish(record)
    return True


def tracking_config(spec_dict: Mapping[str, Any], knobs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The wandb config: the run spec, plus every knob of the run's learner as it ran (the spec dict
    leaves out knobs at their defaults, so without this a `+saflex` run would not show ref_budget...)."""
    config = dict(spec_dict)
    if knobs:
        config["learner_knobs"] = dict(knobs)
    return config


ONLINE_PROBE_S = 3.0  # how long online mode waits for the wandb server before giving up
ONLINE_OK_FOR_S = 60.0  # a server that answered this recently is not probed again (runner + tracker, packed runs)
_online_ok: dict[tuple[str, int], float] = {}


def check_online(timeout: float = ONLINE_PROBE_S) -> None:
    """Online mode: fail in seconds, with one line, when the wandb server cannot be reached (wandb's
    own init retries for ~100 s first). The name lookup runs in a thread too: getaddrinfo ignores
    socket timeouts and can hang on a node without DNS."""
    import socket
    import threading
    from urllib.parse import urlparse

    import time

    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    host, port = url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)
    if time.monotonic() - _online_ok.get((host, port), -ONLINE_OK_FOR_S) < ONLINE_OK_FOR_S:
        return
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(e)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if not outcome:
        why = f"no answer within {timeout:g} s"
    elif outcome[0] is not None:
        why = outcome[0].strerror or type(outcome[0]).__name__
    else:
        _online_ok[(host, port)] = time.monotonic()
        return
    raise UsageError(f"wandb online mode: cannot reach {host}:{port} ({why}); "
                     "use --wandb offline (and `wandb sync` later) or check the network")


def start_tracking(
    spec_dict: Mapping[str, Any],
    key: str,
    run_dir: Path | str,
    mode: str | None,
    sweep: str | None,
    project: str | None = None,
    *,
    knobs: Mapping[str, Any] | None = None,
    deferred: bool | None = None,
) -> Tracker:
    """Open (or resume) the wandb run of one benchmark run; 'disabled' -> a no-op Tracker.
    `deferred` (default: offline mode) writes the wandb run at `finish`, from the logged rows."""
    mode = resolve_mode(mode)
    if mode == "disabled":
        return Tracker()
    if mode == "online":
        check_online()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    task = str(spec_dict.get("task", ""))
    tags = [t for t in dict.fromkeys([task, task.split("/", 1)[-1]]) if t][:2]
    config = tracking_config(spec_dict, knobs)

    def open_run():
        import wandb  # ~0.5 s; only when tracking is on

        # Cheap start: no system-metrics sampler thread, no git/code/pip-freeze capture, no console wrap.
        settings = wandb.Settings(
            console="off",
            silent=True,
            x_disable_stats=True,
            disable_git=True,
            disable_code=True,
            x_save_requirements=False,
            init_timeout=30,
        )
        try:
            return wandb.init(
                project=project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
                id=key,
                resume="allow",
                dir=str(run_dir),  # -> <run_dir>/wandb/
                mode=mode,
                group=sweep or None,
                job_type=str(spec_dict.get("method", "")) or None,
                tags=tags,
                config=config,
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

    return WandbTracker(open_run, mode, run_dir, key, deferred=(mode == "offline") if deferred is None else deferred)


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
