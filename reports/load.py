"""Results -> one tidy DataFrame (one row per done run).

Two sources give the same columns:
- `load_results(root, sweep)`: the local store `<root>/runs/<key>/result.json` (docs/interfaces.md);
- `load_wandb(project, sweep, api=...)`: the wandb API, run.config = the spec, run.summary = metrics
  and cost.

Columns (``df.attrs`` also carries ``source``, ``sweep``, ``skipped``):
- ``key``, ``sweep``, ``status``;
- every spec field, flattened, bare name (``task``, ``method``, ``model``, ``seed``, ``epochs``, ...;
  lists become "a,b" strings so they can be grouped on); SAFLEX knobs as ``saflex.<knob>``;
- derived: ``family``, ``dataset`` (from task), ``upstream``, ``saflex`` (bool, from method) and
  ``saflex_cfg`` (label of the SAFLEX knob setting; "" for X runs, see `_saflex_cfg_labels`);
- ``metrics.<name>`` and ``cost.<name>`` (raw values, accuracies as fractions), ``versions.<name>``,
  ``numerics.<name>`` (thread count, device, library builds: bench/numerics.py; not identity),
  ``host``, ``device``, ``finished_at``, ``run_dir`` (local store only).
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

# Columns that are not part of the run identity (everything else in the frame that is not metrics.*,
# cost.*, versions.* or saflex.* came from the spec). Keeps `identity_columns` correct when RunSpec
# grows a field: no list of spec fields to keep in sync here.
NON_SPEC_COLUMNS = (
    "key", "sweep", "status", "family", "dataset", "upstream", "saflex", "saflex_cfg",
    "host", "device", "finished_at", "run_dir",
)
RESULT_PREFIXES = ("metrics.", "cost.", "versions.", "saflex.", "numerics.")
METRIC_NAMES = ("test_acc", "test_auc", "val_acc", "val_auc", "best_epoch", "epochs_run")
SINGLE_SAFLEX_CFG = "saflex"  # label when all loaded SAFLEX runs share one knob setting

# Run-level config keys a tracker may add next to the spec; never identity.
_WANDB_NON_SPEC = {"key", "sweep", "status", "upstream", "uses_saflex", "family", "dataset",
                   "data_root", "device", "wandb_mode"}


def _usage_error(msg: str) -> Exception:
    # Imported lazily so reports/ stays importable while bench/ is being built.
    from bench.errors import UsageError

    return UsageError(msg)


def default_results_root() -> Path:
    return Path(os.environ.get("SAFLEX_RESULTS") or "results")


# ---- local store ------------------------------------------------------------------------------
def load_results(root: str | os.PathLike, sweep: str | None = None) -> pd.DataFrame:
    """All done runs under `root` (optionally only those of `sweep`) as one frame.

    A run counts iff `result.json` parses and has status "done"; the others are counted in
    ``df.attrs["skipped"]`` (``no_result`` = run dir without result.json, i.e. running or died,
    ``unreadable``, ``not_done``). Raises UsageError for a missing/empty root or an unknown sweep.
    """
    root = Path(root)
    runs_dir = root / "runs"
    if not runs_dir.is_dir():
        raise _usage_error(f"no results store at {root} (expected {runs_dir}/<key>/result.json; "
                           "set --results or $SAFLEX_RESULTS)")
    skipped: Counter = Counter()
    sweeps: set[str] = set()
    records: list[tuple[dict, Path]] = []
    for d in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        f = d / "result.json"
        if not f.exists():
            skipped["no_result"] += 1  # cannot tell its sweep: spec.json carries no sweep
            continue
        try:
            rec = json.loads(f.read_text())
            if not isinstance(rec, dict) or not isinstance(rec.get("spec"), dict):
                raise ValueError("not a result record")
        except (OSError, ValueError):
            skipped["unreadable"] += 1
            continue
        if rec.get("sweep"):
            sweeps.add(str(rec["sweep"]))
        if sweep is not None and rec.get("sweep") != sweep:
            continue
        if rec.get("status") != "done":
            skipped["not_done"] += 1
            continue
        records.append((rec, d))
    if sweep is not None and sweep not in sweeps:
        raise _usage_error(f"unknown sweep '{sweep}' under {root} "
                           f"(sweeps there: {', '.join(sorted(sweeps)) or 'none'})")
    if not records:
        where = f"sweep '{sweep}' under {root}" if sweep else str(root)
        raise _usage_error(f"no done runs in {where} ({describe_skipped(dict(skipped)) or 'no run dirs'})")
    df = frame_from_records(records)
    df.attrs.update(source=str(root), sweep=sweep, skipped=dict(skipped))
    return df


def describe_skipped(skipped: Mapping[str, int]) -> str:
    """One line for report headers, e.g. '2 skipped: 1 not done, 1 without result.json'."""
    names = {"not_done": "status not done", "unreadable": "unreadable result.json",
             "no_result": "run dir without result.json (running or died)"}
    parts = [f"{n} {names.get(k, k)}" for k, n in sorted(skipped.items()) if n]
    total = sum(skipped.values())
    return f"{total} skipped: " + ", ".join(parts) if total else ""


# ---- shared record -> row mapping -------------------------------------------------------------
def _scalar(v: Any) -> Any:
    """Make a spec value hashable/groupable (lists -> 'a,b', dicts -> canonical JSON)."""
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    if isinstance(v, Mapping):
        return json.dumps(v, sort_keys=True, separators=(",", ":"))
    return v


def _split_method(method: str) -> tuple[str, bool]:
    try:
        from bench.spec import split_method  # single source of the `UPSTREAM[+saflex]` grammar
    except ImportError:  # pragma: no cover - bench/ not there yet
        suffix = "+saflex"
        return (method[: -len(suffix)], True) if method.endswith(suffix) else (method, False)
    return split_method(method)


def record_to_row(rec: Mapping[str, Any], run_dir: Path | None = None) -> dict[str, Any]:
    spec = dict(rec.get("spec") or {})
    row: dict[str, Any] = {"key": rec.get("key") or (run_dir.name if run_dir else None),
                           "sweep": rec.get("sweep"), "status": rec.get("status")}
    knobs = spec.pop("saflex", None) or {}
    for k, v in spec.items():
        row[k] = _scalar(v)
    for k, v in dict(knobs).items():
        row[f"saflex.{k}"] = _scalar(v)
    method = str(spec.get("method", ""))
    row["upstream"], row["saflex"] = _split_method(method)
    task = str(spec.get("task", ""))
    family, sep, dataset = task.partition("/")
    row["family"], row["dataset"] = (family, dataset) if sep else ("", task)
    for section in ("metrics", "cost", "versions", "numerics"):
        for k, v in dict(rec.get(section) or {}).items():
            row[f"{section}.{k}"] = v
    for k in ("host", "device", "finished_at"):
        row[k] = rec.get(k)
    row["run_dir"] = str(run_dir) if run_dir is not None else None
    return row


def _current_knob_defaults() -> dict[str, Any]:
    try:
        import saflex_core

        return saflex_core.SaflexConfig().to_dict()
    except ImportError:  # reports on a machine without the algorithm package: label by value only
        return {}


def _saflex_cfg_labels(df: pd.DataFrame) -> pd.Series:
    """A label per SAFLEX knob setting, built from the knobs that vary across the loaded SAFLEX runs
    and differ from the current SaflexConfig defaults (e.g. 'eps=0.05'; 'default' when none does),
    so different settings are never averaged together; SINGLE_SAFLEX_CFG when they all share one
    setting; "" for X runs."""
    knob_cols = sorted(c for c in df.columns if c.startswith("saflex."))
    sx = df["saflex"].astype(bool)
    varying = [c for c in knob_cols if df.loc[sx, c].nunique(dropna=False) > 1]

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "default" if math.isnan(v) else f"{v:g}"
        return str(v)

    defaults = _current_knob_defaults()

    def norm(v: Any) -> str | None:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else fmt(v)

    def differs(c: str, v: Any) -> bool:
        name = c[len("saflex."):]
        return name not in defaults or norm(v) != norm(defaults[name])

    def label(r: pd.Series) -> str:
        if not r["saflex"]:
            return ""
        if not varying:
            return SINGLE_SAFLEX_CFG
        # only what this run changed from today's defaults: a full knob list is unreadable in a legend
        return ",".join(f"{c[len('saflex.'):]}={fmt(r[c])}" for c in varying if differs(c, r[c])) or "default"

    return df.apply(label, axis=1) if len(df) else pd.Series([], dtype=str)


_FRONT = ["key", "sweep", "status", "task", "family", "dataset", "method", "upstream", "saflex",
          "saflex_cfg", "seed", "model", "epochs"]


def frame_from_records(records: Iterable[tuple[Mapping[str, Any], Path | None]]) -> pd.DataFrame:
    df = pd.DataFrame([record_to_row(rec, d) for rec, d in records])
    if df.empty:
        return df
    df["saflex"] = df["saflex"].astype(bool)
    df["saflex_cfg"] = _saflex_cfg_labels(df)
    spec_cols = [c for c in df.columns if c not in NON_SPEC_COLUMNS and not c.startswith(RESULT_PREFIXES)]
    rank = {p: i for i, p in enumerate(("saflex.", "metrics.", "cost.", "versions.", "numerics."))}
    tail = sorted((c for c in df.columns if c.startswith(RESULT_PREFIXES)),
                  key=lambda c: rank[c.split(".", 1)[0] + "."])
    order = ([c for c in _FRONT if c in df.columns]
             + [c for c in spec_cols if c not in _FRONT] + tail
             + [c for c in ("host", "device", "finished_at", "run_dir") if c in df.columns])
    return df[order].sort_values(["task", "upstream", "saflex", "saflex_cfg", "seed"],
                                 kind="stable").reset_index(drop=True)


def identity_columns(df: pd.DataFrame) -> list[str]:
    """Spec fields present in the frame (the run identity, minus SAFLEX knobs)."""
    return [c for c in df.columns if c not in NON_SPEC_COLUMNS and not c.startswith(RESULT_PREFIXES)]


def experiment_columns(df: pd.DataFrame) -> list[str]:
    """(task, upstream) plus every other identity column that varies across the loaded runs
    (model, epochs, lr, ...), so runs of different protocols are never averaged together.
    method/seed are the within-experiment axes and the SAFLEX knobs are `saflex_cfg` variants."""
    extra = [c for c in identity_columns(df)
             if c not in ("task", "method", "seed") and df[c].nunique(dropna=False) > 1]
    return ["task", "upstream"] + extra


# ---- wandb ------------------------------------------------------------------------------------
def wandb_is_offline(dry_run: bool = False) -> bool:
    """Offline = --dry-run, WANDB_MODE offline/disabled, or no API key configured (env or netrc).
    Only checks that a key exists; never reads it out."""
    if dry_run or os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return True
    if os.environ.get("WANDB_API_KEY"):
        return False
    try:
        import netrc
        from urllib.parse import urlparse

        host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
        return netrc.netrc().authenticators(host or "api.wandb.ai") is None
    except (OSError, netrc.NetrcParseError):  # no ~/.netrc
        return True


def _unwrap_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    # The API may hand config values back as {"value": v, "desc": ...}.
    out = {}
    for k, v in dict(cfg).items():
        if isinstance(v, Mapping) and "value" in v and set(v) <= {"value", "desc"}:
            v = v["value"]
        out[k] = v
    return out


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in dict(d).items():
        name = f"{prefix}{k}".replace("/", ".")
        if isinstance(v, Mapping) and not str(k).startswith("_"):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def wandb_run_to_record(run: Any) -> dict[str, Any]:
    """Map a wandb API run onto a result.json-shaped record. As bench/tracking.py logs: config = the
    spec (also accepted under 'spec'), run.id = key, run.group = sweep, summary = metrics under
    bare names + 'cost/<name>' + 'status'. Also accepted: 'metrics/x', {'metrics': {...}},
    'cost.x', {'cost': {...}}, and 'sweep'/'key'/'status' in config."""
    cfg = _unwrap_config(getattr(run, "config", {}) or {})
    summary_raw = getattr(run, "summary_metrics", None)
    if summary_raw is None:
        summary_raw = getattr(run, "summary", {}) or {}
    summary = _flatten({k: v for k, v in dict(summary_raw).items() if not str(k).startswith("_")})
    if isinstance(cfg.get("spec"), Mapping):
        spec = dict(cfg["spec"])
    else:
        spec = {k: v for k, v in cfg.items() if k not in _WANDB_NON_SPEC and not k.startswith("_")}
    metrics = {}
    for name in METRIC_NAMES:  # prefixed first: a bare per-epoch key in summary is the LAST epoch
        for k in (f"metrics.{name}", name):
            if k in summary:
                metrics[name] = summary[k]
                break
    cost = {k[len("cost."):]: v for k, v in summary.items() if k.startswith("cost.")}
    state = getattr(run, "state", None)
    status = cfg.get("status") or summary.get("status") or ("done" if state == "finished" else state)
    if state not in (None, "finished"):
        status = state
    return {"key": cfg.get("key") or getattr(run, "id", None), "status": status,
            "sweep": cfg.get("sweep") or getattr(run, "group", None) or None, "spec": spec, "metrics": metrics, "cost": cost,
            "host": getattr(run, "host", None)}


def load_wandb(project: str, sweep: str | None = None, api: Any = None) -> pd.DataFrame:
    """The same frame as `load_results`, from the wandb runs of `project` ('ENTITY/PROJECT').

    `api` is a `wandb.Api()`-like object (tests pass a fake); by default a real one, which needs
    wandb online. Runs whose state is not 'finished' (or status not 'done') are counted as skipped.
    """
    if "/" not in project:
        raise _usage_error(f"wandb project must be ENTITY/PROJECT (got '{project}')")
    if api is None:
        if wandb_is_offline():
            raise _usage_error("loading from wandb needs it online (WANDB_MODE is offline/disabled "
                               "or no API key); use the local store (--results) instead")
        import wandb

        api = wandb.Api(timeout=60)
    filters = {"group": sweep} if sweep else {}  # tracking: wandb group = sweep
    records: list[tuple[dict, None]] = []
    skipped: Counter = Counter()
    for run in api.runs(project, filters=filters):
        rec = wandb_run_to_record(run)
        if sweep is not None and rec.get("sweep") not in (None, sweep):
            continue  # the server filter should have done this; a fake/old API may not
        if rec["status"] != "done":
            skipped["not_done"] += 1
            continue
        records.append((rec, None))
    if not records:
        where = f"sweep '{sweep}' of wandb project {project}" if sweep else f"wandb project {project}"
        raise _usage_error(f"no done runs in {where} ({describe_skipped(dict(skipped)) or 'no runs'})")
    df = frame_from_records(records)
    df.attrs.update(source=f"wandb:{project}", sweep=sweep, skipped=dict(skipped))
    return df
