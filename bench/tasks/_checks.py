"""Checks on data files where they are read: a corrupt or malformed file is one UsageError naming the
file and the problem (never a pandas/numpy traceback, never a silent change of meaning), before any
run folder is created.

Tabular columns: a numeric column holding a few stray strings (a typo, 'n/a', a unit) would become
categorical as a whole and one-hot encode every distinct float. Up to STRAY_FRACTION of its non-missing
values may be non-numeric: they are read as missing (imputed like any gap) and a warning names the
column; above that the column really is text and stays categorical.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench.errors import UsageError

STRAY_FRACTION = 0.01  # at most this share of a column's non-missing values may be stray strings


def corrupt(path: Path, e: BaseException, hint: str = "copy the file again") -> UsageError:
    why = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    return UsageError(f"corrupt data file {path} ({type(e).__name__}: {why}); {hint}")


def read_table(path: Path, **kwargs: Any):
    """pandas.read_csv with the ways a copied file breaks turned into one line: empty, truncated gzip,
    not gzip, not text, ragged rows."""
    import gzip
    import zlib

    import pandas as pd

    try:
        frame = pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise UsageError(f"data file {path} is empty (0 bytes of table); copy the file again") from None
    except (EOFError, gzip.BadGzipFile, zlib.error, UnicodeDecodeError, pd.errors.ParserError, ValueError) as e:
        raise corrupt(path, e) from None
    except OSError as e:
        raise UsageError(f"cannot read data file {path} ({e.strerror or type(e).__name__})") from None
    if len(frame) == 0:
        what = "is empty" if kwargs.get("header", "infer") is None else "has a header but no rows"
        raise UsageError(f"data file {path} {what}; copy the file again")
    return frame


def check_target(path: Path, target):
    """(classes, y) from a label column: NaN labels are refused (np.unique would make NaN a class of its
    own), as are labels that are not numbers."""
    import numpy as np
    import pandas as pd

    missing = int(target.isna().sum())
    if missing:
        rows = (np.flatnonzero(target.isna().to_numpy())[:3] + 2).tolist()  # +2: header line, 1-based
        raise UsageError(f"{path}: {missing} row(s) have no label in '{target.name}' (e.g. lines {rows}); "
                         f"fill or drop them")
    values = pd.to_numeric(target, errors="coerce")
    if values.isna().any():
        bad = target[values.isna()].astype(str).unique()[:3].tolist()
        raise UsageError(f"{path}: label column '{target.name}' holds non-numeric values {bad} "
                         f"(PMLB labels are integer codes)")
    return np.unique(values.to_numpy(), return_inverse=True)


def repair_stray_strings(frame, path: Path, where: str = "") -> dict[str, int]:
    """Columns that are numeric but for a few stray strings: those cells become missing (in place), with
    one warning per column. Returns column -> cells turned missing."""
    import numpy as np
    import pandas as pd

    fixed: dict[str, int] = {}
    for col in frame.columns:
        if frame[col].dtype.kind != "O":
            continue
        present = frame[col].notna()
        n = int(present.sum())
        if n == 0:
            continue
        numeric = pd.to_numeric(frame[col], errors="coerce")
        stray = present & numeric.isna()
        k = int(stray.sum())
        if 0 < k <= STRAY_FRACTION * n:
            examples = frame.loc[stray, col].astype(str).unique()[:3].tolist()
            frame[col] = numeric
            fixed[str(col)] = k
            print(f"saflex-bench: warning: {path}: column '{col}' is numeric but for {k} of {n} value(s) "
                  f"{examples}; read them as missing{where}", file=sys.stderr)
    for col in frame.columns:  # inf would stop the scaler ("Input contains infinity") after the split
        if frame[col].dtype.kind == "f":
            inf = np.isinf(frame[col].to_numpy())
            if inf.any():
                frame.loc[inf, col] = np.nan
                fixed[str(col)] = fixed.get(str(col), 0) + int(inf.sum())
                print(f"saflex-bench: warning: {path}: column '{col}' holds {int(inf.sum())} infinite value(s); "
                      f"read them as missing{where}", file=sys.stderr)
    return fixed


def read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise corrupt(path, e, "fix it or delete it (the task then infers the column types)") from None
    except OSError as e:
        raise UsageError(f"cannot read {path} ({e.strerror or type(e).__name__})") from None
