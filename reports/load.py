"""Results -> one tidy DataFrame (one row per done run).

Two sources give the same columns:
- `load_results(root, sweep)`: the local store `<root>/runs/<key>/result.json` (docs/interfaces.md);
- `load_wandb(project, sweep, api=...)`: the wandb API, run.config = the spec, run.summary = metrics
  and cost.

Columns (``df.attrs`` also carries ``source``, ``sweep``, ``skipped``):
- ``key``, ``sweep``, ``status``;
- every spec field, flattened, bare name (``task``, ``method``, ``model``, ``seed``, ``epochs``, ...;
  lists become "a,b" strings and dicts canonical JSON, so they can be grouped on);
  the learners' knobs as ``<learner>.<knob>`` (``saflex.eps``, ``toy.width``; not identity);
- derived: ``family``, ``dataset`` (from task); ``upstream`` and ``learner`` (from the method
  `UPSTREAM[+LEARNER]`, bench.learners.split_method; ``none`` = plain training); ``learner_cfg``
  (label of the learner's knob setting: "" when all loaded runs of that learner share one setting,
  else the knobs changed from the learner's defaults, see `learner_cfg_labels`); ``arm`` (the
  compared arm: ``learner`` or ``learner[cfg]``); kept for the first release's callers: ``saflex``
  (bool) and ``saflex_cfg`` ("saflex" / the SAFLEX label / "" for other runs);
- ``metrics.<name>`` (``val_<m>``, ``test_<m>``, ``<testset>_<m>``, ``best_epoch``, ...; raw values,
  accuracies as fractions), ``cost.<name>`` (``cost.learner_s`` filled from ``cost.saflex_s`` for
  records before the learner redesign), ``data.<split>`` (split sizes), ``versions.<name>``,
- ``numerics.<name>`` (thread count, device, library builds: bench/numerics.py; not identity),
  ``host``, ``device``, ``finished_at``, ``run_dir`` (local store only).
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from bench.results.rows import learner_defaults, record_to_row, split_method  # noqa: F401 - the one row mapping
from bench.results.rows import scalar as _scalar  # noqa: F401

# Columns that are not part of the run identity (everything else in the frame that is not metrics.*,
# cost.*, versions.* or saflex.* came from the spec). Keeps `identity_columns` correct when RunSpec
# grows a field: no list of spec fields to keep in sync here.
NON_SPEC_COLUMNS = (
    "key", "sweep", "status", "family", "dataset", "upstream", "learner", "learner_cfg", "arm",
    "saflex", "saflex_cfg", "host", "device", "finished_at", "run_dir",
    "semantics",  # the record's semantics versions: served records all carry today's, so never an experiment axis
)
RESULT_PREFIXES = ("metrics.", "cost.", "versions.", "data.", "numerics.", "selection.")  # selection.*: reports/selection.py
METRIC_NAMES = ("test_acc", "test_auc", "val_acc", "val_auc", "best_epoch", "epochs_run")
SINGLE_SAFLEX_CFG = "saflex"  # saflex_cfg when all loaded SAFLEX runs share one knob setting

# Run-level config keys a tracker may add next to the spec; never identity.
_WANDB_NON_SPEC = {"key", "sweep", "status", "upstream", "learner", "uses_saflex", "family", "dataset",
                   "data_root", "device", "wandb_mode", "learner_knobs"}


def _usage_error(msg: str) -> Exception:
    # Imported lazily so reports/ stays importable while bench/ is being built.
    from bench.errors import UsageError

    return UsageError(msg)


def default_results_root() -> Path:
    return Path(os.environ.get("SAFLEX_RESULTS") or "results")


# ---- local store ------------------------------------------------------------------------------
def planned_keys(root: Path, sweep: str) -> set[str]:
    """Keys the sweep planned (bench.store.sweep_plan_path, written by `saflex-bench sweep`),
    including runs another sweep ran first; empty when the file is absent (older stores)."""
    from bench.results.store import planned_keys as _planned

    return _planned(root, sweep)


def load_results(root: str | os.PathLike, sweep: str | None = None) -> pd.DataFrame:
    """All done runs under `root` (optionally only those of `sweep`: its records, and the runs its
    plan shares with other sweeps) as one frame, read from the store's index (bench.results).

    A run counts iff it is done (bench.results.record_problem); the others are counted in
    ``df.attrs["skipped"]`` by reason (e.g. "no result.json (running, not started or died)",
    "result.json holds no metrics: rerun") and listed in ``df.attrs["not_done"]`` ({key: reason}).
    Raises UsageError for a missing/empty root or an unknown sweep.
    """
    from bench.results.index import load_index

    root = Path(root)
    runs_dir = root / "runs"
    if not runs_dir.is_dir():
        raise _usage_error(f"no results store at {root} (expected {runs_dir}/<key>/result.json; "
                           "set --results or $SAFLEX_RESULTS)")
    index = load_index(root, epochs=False)
    planned = planned_keys(root, sweep) if sweep is not None else set()
    sweeps = index.sweeps() | ({sweep} if planned else set())
    if sweep is not None and sweep not in sweeps:
        raise _usage_error(f"unknown sweep '{sweep}' under {root} "
                           f"(sweeps there: {', '.join(sorted(sweeps)) or 'none'})")
    rows, not_done = index.frame(sweep, planned)
    skipped = dict(Counter(not_done.values()))
    if not len(rows):
        where = f"sweep '{sweep}' under {root}" if sweep else str(root)
        raise _usage_error(f"no done runs in {where} ({describe_skipped(skipped) or 'no run dirs'})")
    df = frame_from_rows(rows)
    df.attrs.update(source=str(root), sweep=sweep, skipped=skipped, not_done=not_done)
    return df


def describe_skipped(skipped: Mapping[str, int]) -> str:
    """One line for report headers, e.g. '2 skipped: 1 result.json holds no metrics: rerun, ...'."""
    names = {"not_done": "status not done", "unreadable": "unreadable result.json",
             "no_result": "run dir without result.json (running or died)"}  # the wandb loader's reasons
    parts = [f"{n} {names.get(k, k)}" for k, n in sorted(skipped.items()) if n]
    total = sum(skipped.values())
    return f"{total} skipped: " + ", ".join(parts) if total else ""


# ---- shared record -> row mapping -------------------------------------------------------------
NONE = "none"          # the plain-training learner: the baseline arm of every comparison
REF = "ref"            # the label-budget control: the second baseline when present
SINGLE_CFG = ""        # learner_cfg when all loaded runs of a learner share one knob setting


def knob_columns(df: pd.DataFrame, learner: str | None = None) -> list[str]:
    """The `<learner>.<knob>` columns (of one learner, or of every learner in the frame)."""
    if learner:
        names = {learner}
    else:
        names = {"saflex"} | (set(df["learner"].unique()) if "learner" in df else set())
    names -= {NONE}
    return sorted(c for c in df.columns if "." in c and c.split(".", 1)[0] in names
                  and not c.startswith(RESULT_PREFIXES))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "default" if math.isnan(v) else f"{v:g}"
    return str(v)


def _norm(v: Any) -> str | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else _fmt(v)


def learner_cfg_labels(df: pd.DataFrame) -> pd.Series:
    """A label per learner knob setting, so different settings are never averaged together:
    "" (SINGLE_CFG) when all loaded runs of that learner share one setting (and for knob-less
    learners and `none`); otherwise the knobs that vary across the learner's runs AND differ from
    the learner's declared defaults (e.g. 'eps=0.05'; 'default' when none differs)."""
    if not len(df):
        return pd.Series([], dtype=str)
    labels = pd.Series("", index=df.index, dtype=object)
    for learner, g in df.groupby("learner", sort=False):
        if learner == NONE:
            continue
        cols = knob_columns(df, learner)
        varying = [c for c in cols if g[c].nunique(dropna=False) > 1]
        if not varying:
            continue
        defaults = learner_defaults(learner)
        pre = len(learner) + 1

        def differs(c: str, v: Any) -> bool:
            name = c[pre:]
            return name not in defaults or _norm(v) != _norm(defaults[name])

        # only what a run changed from the defaults: a full knob list is unreadable in a legend
        labels[g.index] = [",".join(f"{c[pre:]}={_fmt(r[c])}" for c in varying if differs(c, r[c])) or "default"
                           for _, r in g.iterrows()]
    return labels


def arm_label(learner: str, cfg: str) -> str:
    """The compared arm: 'none', 'saflex', 'saflex[eps=0.05]', 'ref', ..."""
    return learner if not cfg else f"{learner}[{cfg}]"


def arm_order(arms: Iterable[str]) -> list[str]:
    """none first, then ref (the two baselines), then the other arms alphabetically."""
    arms = set(arms)
    head = [a for a in (NONE, REF) if a in arms]
    return head + sorted(arms - set(head))


def method_label(arm: str) -> str:
    """How tables and legends name an arm: 'X' for none, 'X+saflex[eps=0.05]' otherwise."""
    return "X" if arm in (NONE, "") else f"X+{arm}"


def _saflex_cfg_labels(df: pd.DataFrame) -> pd.Series:
    """The first release's SAFLEX-only label (`saflex_cfg`): SINGLE_SAFLEX_CFG when all SAFLEX runs
    share one setting, else the learner_cfg label; "" for the other runs."""
    if "learner" not in df:  # a frame of the first release's shape (saflex bool + saflex.* columns)
        df = df.assign(learner=np.where(df["saflex"].astype(bool), "saflex", NONE))
    cfg = df["learner_cfg"] if "learner_cfg" in df else learner_cfg_labels(df)
    sx = df["learner"] == "saflex"
    return pd.Series(np.where(sx, np.where(cfg == "", SINGLE_SAFLEX_CFG, cfg), ""), index=df.index, dtype=object)


_FRONT = ["key", "sweep", "status", "task", "family", "dataset", "method", "upstream", "learner",
          "learner_cfg", "arm", "saflex", "saflex_cfg", "seed", "model", "epochs"]


def frame_from_records(records: Iterable[tuple[Mapping[str, Any], Path | None]]) -> pd.DataFrame:
    return frame_from_rows([record_to_row(rec, d) for rec, d in records])


def frame_from_rows(rows: list[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """The tidy frame from per-run rows (bench.results.rows / the index, as dicts or a frame): adds
    the columns that depend on the whole set (learner_cfg, arm, saflex_cfg), orders columns and rows."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    if df.empty:
        return df
    df["saflex"] = df["saflex"].astype(bool)
    df["learner_cfg"] = learner_cfg_labels(df)
    df["arm"] = [arm_label(lr, c) for lr, c in zip(df["learner"], df["learner_cfg"])]
    df["saflex_cfg"] = _saflex_cfg_labels(df)
    knobs = set(knob_columns(df))
    spec_cols = [c for c in identity_columns(df)]
    rank = {p: i for i, p in enumerate(("metrics.", "cost.", "data.", "versions.", "numerics.", "selection."))}
    tail = sorted((c for c in df.columns if c.startswith(RESULT_PREFIXES)), key=lambda c: rank[c.split(".", 1)[0] + "."])
    order = ([c for c in _FRONT if c in df.columns]
             + [c for c in spec_cols if c not in _FRONT] + sorted(knobs) + tail
             + [c for c in ("host", "device", "finished_at", "run_dir") if c in df.columns])
    df = df[order]
    df = df.assign(_rank=df["arm"].map({a: i for i, a in enumerate(arm_order(df["arm"]))}))
    return (df.sort_values(["task", "upstream", "_rank", "seed"], kind="stable")
            .drop(columns="_rank").reset_index(drop=True))


def identity_columns(df: pd.DataFrame) -> list[str]:
    """Spec fields present in the frame (the run identity, minus the learners' knobs)."""
    knobs = set(knob_columns(df)) if "learner" in df else set()
    return [c for c in df.columns if c not in NON_SPEC_COLUMNS and not c.startswith(RESULT_PREFIXES)
            and c not in knobs and not c.startswith("saflex.")]


def experiment_columns(df: pd.DataFrame) -> list[str]:
    """(task, upstream) plus every other identity column that varies across the loaded runs
    (model, epochs, lr, ref_frac, ...), so runs of different protocols are never averaged together.
    method/seed are the within-experiment axes and the learners' knob settings are `arm` variants."""
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
    # further test sets (`<set>_<metric>`, e.g. ood_usps_acc) are logged once, at the end
    extra = [k for k in summary if re.fullmatch(r"[a-z0-9_]+_(acc|auc)", k) and not k.startswith(("train_", "val_", "last_"))]
    for name in (*METRIC_NAMES, *extra):  # prefixed first: a bare per-epoch key in summary is the LAST epoch
        for k in (f"metrics.{name}", name):
            if k in summary:
                metrics[name] = summary[k]
                break
    metrics.update({k[len("metrics."):]: v for k, v in summary.items() if k.startswith("metrics.")})
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
