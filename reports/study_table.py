"""A study's results as a compact, versioned table instead of run folders.

A table folder holds `table.json` (schema version, where the runs came from, and per frame its file,
column order and dtypes) and one JSON-lines file per frame, one row a line, so that adding or
rerunning runs changes only their lines in a git diff. Frames a study usually keeps:

- `runs`: one row per done run, the tidy frame of `reports.load` (every spec field, derived
  columns, metrics.*, cost.*, data.*, versions.*, numerics.*), minus `run_dir` (a machine path);
- `epochs`: one row per run and logged epoch (`key`, `epoch` and the values metrics.jsonl logged);
- `saflex_diag`: per X+SAFLEX run with a per-sample diagnostics file, summary statistics of its
  last epoch's weights and label shifts (the per-sample arrays are not kept).

Values round-trip exactly: floats are written with repr (shortest exact form), NaN cells are left
out of their line (read back as NaN), None is written as null, and each column gets its dtype back.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

SCHEMA_VERSION = 1
META = "table.json"


def _usage_error(msg: str) -> Exception:
    from bench.errors import UsageError

    return UsageError(msg)


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"not JSON-serialisable: {type(v).__name__}")


def _missing(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _lines(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    out = []
    for row in df.itertuples(index=False, name=None):
        d = {c: v for c, v in zip(cols, row) if not _missing(v)}
        out.append(json.dumps(d, separators=(",", ":"), default=_plain, allow_nan=True) + "\n")
    return "".join(out)


def write_table(table_dir: str | Path, frames: Mapping[str, pd.DataFrame], meta: Mapping[str, Any] | None = None) -> list[Path]:
    """Write each frame to `<name>.jsonl` and `table.json` last (atomically each), so a reader never
    sees a new sidecar with an old frame. `meta`: anything else a study keeps (source names, ...)."""
    from bench.results.store import write_bytes_atomic, write_json_atomic

    d = Path(table_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths, spec = [], {}
    for name, df in frames.items():
        path = d / f"{name}.jsonl"
        write_bytes_atomic(path, _lines(df).encode())
        spec[name] = {"file": path.name, "rows": len(df), "columns": list(map(str, df.columns)),
                      "dtypes": {str(c): str(t) for c, t in df.dtypes.items()},
                      "attrs": {k: v for k, v in df.attrs.items() if isinstance(v, (str, int, float, dict, list, type(None)))}}
        paths.append(path)
    write_json_atomic(d / META, {"schema_version": SCHEMA_VERSION, "frames": spec, "meta": dict(meta or {})})
    return [*paths, d / META]


def read_table(table_dir: str | Path) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """The frames of a table folder (dtypes, column order and attrs restored) and its `meta`."""
    d = Path(table_dir)
    try:
        sidecar = json.loads((d / META).read_text())
    except OSError:
        raise _usage_error(f"no study table at {d} (expected {d / META}; build it with "
                           "`saflex-bench study NAME --build-table RESULTS_ROOT`)") from None
    except ValueError as e:
        raise _usage_error(f"study table {d / META} does not parse ({e})") from None
    version = sidecar.get("schema_version")
    if version != SCHEMA_VERSION:
        raise _usage_error(f"study table {d} has schema version {version}; this code reads {SCHEMA_VERSION} "
                           "(rebuild it with `saflex-bench study NAME --build-table RESULTS_ROOT`)")
    frames = {}
    for name, spec in sidecar["frames"].items():
        rows = [json.loads(line) for line in (d / spec["file"]).read_text().splitlines() if line]
        # built as object (no inference, so a null stays None), then each column gets its dtype back
        df = pd.DataFrame(rows or None, columns=spec["columns"], dtype=object)
        for c, t in spec["dtypes"].items():
            if t != "object":
                df[c] = df[c].astype(t)
        df.attrs.update(spec.get("attrs") or {})
        frames[name] = df
    return frames, dict(sidecar.get("meta") or {})


# ---- building the frames from a results root of run folders (through its index, bench.results) ------
def runs_frame(root: str | Path, sweep: str | None = None) -> pd.DataFrame:
    """The done runs of a results root (optionally one sweep's), as `reports.load.load_results` reads
    them from the store's index, without the machine path `run_dir`; attrs: source = the root's
    folder name, skipped (counts by reason), not_done ({key: why})."""
    from reports.load import load_results

    df = load_results(root, sweep).drop(columns="run_dir", errors="ignore")
    df.attrs["source"] = Path(root).resolve().name
    return df


def epochs_frame(root: str | Path, keys: Iterable[str]) -> pd.DataFrame:
    """One row per run and logged epoch, runs in key order: key, epoch, then the values metrics.jsonl
    logged (the store's index reads them, bench.results.read_metrics' torn-line rule)."""
    from bench.results.index import epochs_frame as index_epochs

    df = index_epochs(root, list(keys))
    if not len(df):
        return pd.DataFrame(columns=["key", "epoch"])
    front = [c for c in ("key", "epoch") if c in df]
    return df[front + sorted(c for c in df.columns if c not in front)].reset_index(drop=True)


DIAG_STATS = ("n", "n_corrupted", "w_mean", "w_std", "w_min", "w_max", "w_low_frac", "label_shift_mean")


def build_selection_table(roots, table_dir: str | Path, keys: Iterable[str], study: str) -> list[Path]:
    """A study's table from one results root: the runs of `keys` (what its sweep files plan, found by key
    whichever sweep first ran them: a store may also hold runs of an earlier design, e.g. the reported seeds
    under another selection rule), their epochs and each run's selection-split majority rate."""
    from reports.selection import selection_frame

    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    if len(roots) != 1:
        raise _usage_error(f"{study} builds its table from one results root (got {len(roots)})")
    runs = runs_frame(roots[0])
    attrs = dict(runs.attrs)
    runs = runs[runs["key"].isin(set(keys))].reset_index(drop=True)
    runs.attrs.update(attrs)
    return write_table(table_dir, {"runs": runs, "epochs": epochs_frame(roots[0], runs["key"]),
                                   "selection": selection_frame(runs)}, {"study": study})


def read_selection_table(table_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(runs annotated with their selection-split majority rate and degenerate flag, epochs) of a table
    that build_selection_table wrote."""
    from reports.selection import annotate_selection

    frames, _ = read_table(table_dir)
    runs = frames["runs"]
    maj = frames["selection"].set_index("key")["selection.majority"]
    out = annotate_selection(runs, majority=runs["key"].map(maj))
    out.attrs.update(runs.attrs)
    return out, frames.get("epochs")


def write_selection_report(table_dir: str | Path, out: str | Path, name: str, markdown) -> list[Path]:
    """`saflex-bench report`'s tables over the reported seeds (the tuning seeds left out; degenerate
    selections flagged) and `name`, written by `markdown(runs, epochs)` from every run of the table."""
    from reports.selection import TUNING_SEEDS
    from reports.tables import write_tables

    runs, epochs = read_selection_table(table_dir)
    out = Path(out)
    paths, _ = write_tables(runs[~runs["seed"].isin(TUNING_SEEDS)], out)
    (out / name).write_text(markdown(runs, epochs))
    return [*paths, out / name]


def saflex_diag_frame(root: str | Path, keys: Iterable[str]) -> pd.DataFrame:
    """Per run with SAFLEX's per-sample diagnostics (last epoch): sample count, corrupted count, the
    weights' mean, std, min, max and share below 0.5, the mean label shift."""
    from bench.results import ResultsStore, read_saflex_diag

    store = ResultsStore(root)
    rows = []
    for k in keys:
        z = read_saflex_diag(store.run_dir(k))
        if z is None:
            continue
        w, ls, cor = z["w"], z.get("label_shift"), z.get("corrupted")
        rows.append({"key": k, "n": int(w.size), "n_corrupted": int(cor.sum()) if cor is not None else None,
                     "w_mean": float(w.mean()), "w_std": float(w.std()), "w_min": float(w.min()),
                     "w_max": float(w.max()), "w_low_frac": float((w < 0.5).mean()),
                     "label_shift_mean": float(ls.mean()) if ls is not None else None})
    return pd.DataFrame(rows, columns=["key", *DIAG_STATS])
