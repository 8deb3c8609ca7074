"""The import graph of the shipped packages, read with `ast` from the sources (imports inside
functions included): no cycle between modules, and no import that runs back up the layers.

    reports/  sweeps/                  (top: may import everything below)
    bench/                             (the engine)
    baselines/  saflex_core/           (import neither bench/ nor each other)
    lazy_registry                      (the registry mechanism: imports no package of ours)
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("lazy_registry", "saflex_core", "baselines", "bench", "sweeps", "reports")
# what each top-level package may import besides itself
ALLOWED = {
    "lazy_registry": set(),
    "saflex_core": {"lazy_registry"},
    "baselines": {"lazy_registry"},
    "bench": {"lazy_registry", "saflex_core", "baselines"},
    "sweeps": {"lazy_registry", "saflex_core", "baselines", "bench"},
    "reports": {"lazy_registry", "saflex_core", "baselines", "bench"},
}


def module_files(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for top in PACKAGES:
        single = root / f"{top}.py"
        if single.is_file():
            out[top] = single
        for path in sorted((root / top).rglob("*.py")) if (root / top).is_dir() else []:
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The modules of ours `name` imports anywhere in its source (TYPE_CHECKING blocks excepted:
    they never run). `from pkg import mod` counts as pkg.mod when that is a module."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
            for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join(pkg + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules}
        elif isinstance(node, ast.Call) and _is_import_module(node):
            found.add(node.args[0].value)
    ours = set()
    for imp in found:
        while imp and imp not in modules:  # `import bench.tasks.base` names bench.tasks.base; a.b.func -> a.b
            imp = imp.rpartition(".")[0]
        if imp and imp != name:
            ours.add(imp)
    return ours


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _is_import_module(node: ast.Call) -> bool:
    f = node.func
    named = (isinstance(f, ast.Attribute) and f.attr == "import_module") or (isinstance(f, ast.Name) and f.id == "import_module")
    return named and bool(node.args) and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = module_files(root)
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in sorted(graph.items()):
        top = mod.split(".")[0]
        for dep in sorted(deps):
            dtop = dep.split(".")[0]
            if dtop != top and dtop not in ALLOWED[top]:
                bad.append(f"{mod} -> {dep}")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), plus self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# a package imports its own modules (to re-export or discover them) and they import the package's
# names back: that is how a package works, not a cycle between two modules of one job. Only edges
# from a package __init__ to its own submodules are left out of the cycle check.
def without_package_reexports(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}


def test_the_graph_sees_the_known_imports():
    graph = import_graph()
    assert "bench.spec" in graph["bench.runner"] and "baselines.registry" in graph["baselines.noisy"]
    assert "lazy_registry" in graph["bench.registry"]
    assert "bench.runner" in graph["sweeps.job"]  # a function-level import counts
    assert len(graph) > 80


def test_no_import_runs_back_up_the_layers():
    assert upward_imports(import_graph()) == []


def test_no_cycle_between_modules():
    assert cycles(without_package_reexports(import_graph())) == []


@pytest.mark.parametrize("module,line", [
    ("baselines/noisy.py", "    from bench.errors import UsageError\n"),  # a function-level import, upward
    ("bench/spec.py", "import sweeps.config\n"),
])
def test_a_bad_import_fails_the_check(tmp_path, module, line):
    import shutil

    for top in PACKAGES:
        src = ROOT / (f"{top}.py" if (ROOT / f"{top}.py").is_file() else top)
        (shutil.copy if src.is_file() else shutil.copytree)(src, tmp_path / src.name)
    path = tmp_path / module
    text = path.read_text()
    if line.startswith("    "):  # inside the first function of the module
        head, sep, body = text.partition("\ndef ")
        name_end = body.index(":\n") + 2
        text = head + sep + body[:name_end] + line + body[name_end:]
    else:
        text += "\n" + line
    path.write_text(text)
    assert upward_imports(import_graph(tmp_path))


def test_a_cycle_fails_the_check(tmp_path):
    graph = {"bench.a": {"bench.b"}, "bench.b": {"bench.c"}, "bench.c": {"bench.a"}, "bench.d": {"bench.a"}}
    assert cycles(graph) == [["bench.a", "bench.b", "bench.c"]]
