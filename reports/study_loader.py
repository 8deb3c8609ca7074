"""Studies live in the checkout, not in the wheel: `studies/<name>/` beside the packages, one folder
per study (its sweep files, its report code, a README, its results table). This module finds them
and imports one as a package, so a study's modules can import each other (`from . import report`).

A study package declares:
    QUESTION: str            what it asks (one line, for `saflex-bench study --list`)
    COMMANDS: tuple[str, ...] how to regenerate it (sweeps, table, report)
    build_table(roots, table_dir) -> list[Path]   its results table from results roots of run folders
    write_report(table_dir, out) -> list[Path]    its report from that table alone
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

_NAME = re.compile(r"[a-z][a-z0-9_]*")
REQUIRED = ("QUESTION", "COMMANDS", "build_table", "write_report")


def _usage_error(msg: str) -> Exception:
    from bench.errors import UsageError

    return UsageError(msg)


def default_studies_dir() -> Path:
    """./studies in the working directory when there is one, else the checkout's (beside reports/)."""
    here = Path("studies")
    return here if here.is_dir() else Path(__file__).resolve().parents[1] / "studies"


def studies_dir(path: str | Path | None = None) -> Path:
    d = Path(path) if path else default_studies_dir()
    if not d.is_dir():
        raise _usage_error(f"no studies folder at {d} (studies live in the repository checkout, not in the "
                           "installed package: run from the checkout or pass --studies-dir DIR)")
    return d


def study_names(path: str | Path | None = None) -> list[str]:
    d = studies_dir(path)
    return sorted(p.name for p in d.iterdir() if (p / "__init__.py").is_file() and _NAME.fullmatch(p.name))


def load_study(name: str, path: str | Path | None = None) -> ModuleType:
    """The study package `studies/<name>/`, imported under the module name `saflex_study_<name>`."""
    d = studies_dir(path)
    names = study_names(d)
    if name not in names:
        raise _usage_error(f"unknown study '{name}' (studies in {d}: {', '.join(names) or 'none'})")
    folder = (d / name).resolve()
    modname = f"saflex_study_{name}"
    mod = sys.modules.get(modname)
    if mod is not None and Path(mod.__file__).parent == folder:
        return mod
    spec = importlib.util.spec_from_file_location(modname, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(modname, None)
        raise
    missing = [a for a in REQUIRED if not hasattr(mod, a)]
    if missing:
        raise _usage_error(f"study '{name}' ({folder}) lacks {', '.join(missing)} in its __init__.py")
    mod.FOLDER = folder
    return mod


def study_module(name: str, module: str, path: str | Path | None = None) -> ModuleType:
    """A module of a study package (`study_module("saflex_medmnist", "report")`)."""
    return importlib.import_module(f"{load_study(name, path).__name__}.{module}")
