"""Every third-party import of the shipped packages is declared in pyproject.toml: module-level
imports as core dependencies (so `pip install .` without extras imports every module), imports inside
functions as a core dependency or an optional extra."""
from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SHIPPED_MODULES = tuple(PYPROJECT["tool"]["setuptools"].get("py-modules", []))  # top-level modules (lazy_registry)
SHIPPED = ("saflex_core", "baselines", "bench", "sweeps", "reports", *SHIPPED_MODULES)
# import name -> distribution name, where they differ
DIST = {"PIL": "pillow", "skimage": "scikit-image", "sklearn": "scikit-learn", "yaml": "pyyaml",
        "open_clip": "open_clip_torch", "wandb_workspaces": "wandb-workspaces"}


def _dist_name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def _declared() -> tuple[set[str], set[str]]:
    project = PYPROJECT["project"]
    core = {_dist_name(r) for r in project["dependencies"]}
    extras = {_dist_name(r) for reqs in project.get("optional-dependencies", {}).values() for r in reqs}
    return core, extras


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(top-level name, at module level, line) of every absolute import in a file."""
    tree = ast.parse(path.read_text())
    out = []

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = module_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name.split(".")[0], module_level, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                out.append((child.module.split(".")[0], module_level, child.lineno))
            visit(child, inner)

    visit(tree, True)
    return out


def _shipped_files() -> list[Path]:
    return sorted([f for p in SHIPPED if (REPO / p).is_dir() for f in (REPO / p).rglob("*.py")]
                  + [REPO / f"{m}.py" for m in SHIPPED_MODULES])


def test_every_third_party_import_is_declared():
    core, extras = _declared()
    problems = []
    for f in _shipped_files():
        for name, module_level, line in _imports(f):
            if name in sys.stdlib_module_names or name in SHIPPED or name == "__future__":
                continue
            dist = DIST.get(name, name).lower().replace("_", "-")
            where = f"{f.relative_to(REPO)}:{line} imports {name} ({dist})"
            if dist in core:
                continue
            if module_level:
                problems.append(where + ": at module level, so it must be a core dependency")
            elif dist not in extras:
                problems.append(where + ": declared neither as a dependency nor in an extra")
    assert not problems, "\n".join(problems)


def test_the_check_sees_an_undeclared_import(tmp_path):
    """The walker finds module-level and function-level imports (so the test above can fail)."""
    f = tmp_path / "m.py"
    f.write_text("import os\nimport numpy.linalg as la\nfrom PIL import Image\n"
                 "def f():\n    import wilds\n    from skimage.color import rgb2hsv\n")
    assert _imports(f) == [("os", True, 1), ("numpy", True, 2), ("PIL", True, 3), ("wilds", False, 5),
                           ("skimage", False, 6)]


def test_floors_are_real_versions():
    """Every core dependency carries a floor (>=X.Y), so a resolver cannot pick an API-less ancient one."""
    bare = [r for r in PYPROJECT["project"]["dependencies"] if ">=" not in r]
    assert not bare, bare
    wandb = next(r for r in PYPROJECT["project"]["dependencies"] if _dist_name(r) == "wandb")
    assert tuple(int(x) for x in wandb.split(">=")[1].split(".")) >= (0, 19, 9)  # reinit="finish_previous"


def test_every_shipped_module_imports():
    """With the core dependencies (those of this environment) every module imports: optional packages
    are only imported inside the functions that need them."""
    failed = []
    for f in _shipped_files():
        rel = f.relative_to(REPO).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        if name.endswith("__main__"):
            continue
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - report them all
            failed.append(f"{name}: {type(e).__name__}: {e}")
    assert not failed, "\n".join(failed)
