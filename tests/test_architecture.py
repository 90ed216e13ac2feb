"""The import graph of the backend and the add-on: no circle, and no arrow from a lower floor up.

Every `import` counts, the ones inside functions too (an import moved into a function to dodge a
loop is still a loop). Floors of the backend, lowest first: a unit may import only units on floors
below its own, so inference (`pipeline`) and export never know each other.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

BACKEND_FLOORS: list[set[str]] = [
    {"cupid", "cupid.errors", "cupid.config"},
    {"cupid.hub", "cupid.geometry", "cupid.progress", "cupid.modules", "cupid.linear_images", "cupid.setup_record"},
    {"cupid.reconstruction", "cupid.sparse", "cupid.representations", "cupid.scene", "cupid.preprocess",
     "cupid.background"},
    {"cupid.sampler", "cupid.models"},
    {"cupid.tiny", "cupid.pipeline", "cupid.export"},
    {"cupid.run"},
    {"cupid.server"},
    {"cupid.cluster"},
    {"cupid.commands", "cupid.cli"},
    {"cupid.__main__"},
]


def _modules(root: Path, package: str) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names a module imports (`from x import y` yields both x and x.y)."""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                prefix = base[: len(base) - (node.level - 1)]
                module = ".".join(prefix + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def _graph(root: Path, package: str) -> dict[str, set[str]]:
    mods = _modules(root, package)
    return {m: {i for i in _imports(m, p) if i in mods and i != m} for m, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _parent_package_edge(a: str, b: str) -> bool:
    """A package's __init__ importing its own submodules (and they importing siblings through it) is how
    a package re-exports names, not a loop between subjects."""
    return b.startswith(a + ".") or a.startswith(b + ".")


@pytest.mark.parametrize("root,package", [(REPO / "backend" / "cupid", "cupid"),
                                          (REPO / "cupid_blender", "cupid_blender")])
def test_no_import_cycles(root: Path, package: str) -> None:
    graph = _graph(root, package)
    pruned = {m: {i for i in deps if not _parent_package_edge(m, i)} for m, deps in graph.items()}
    assert _cycles(pruned) == []


def _unit(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_backend_imports_only_downwards() -> None:
    floor = {u: k for k, units in enumerate(BACKEND_FLOORS) for u in units}
    graph = _graph(REPO / "backend" / "cupid", "cupid")
    units = {_unit(m) for m in graph}
    assert units <= set(floor), f"units with no floor: {sorted(units - set(floor))}"
    upward = sorted((m, i) for m, deps in graph.items() for i in deps
                    if _unit(i) != _unit(m) and floor[_unit(i)] >= floor[_unit(m)])
    assert upward == [], "imports that do not go down a floor"


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_one_version_string() -> None:
    """backend/cupid/__init__.py holds the version; the package metadata and the extension zip take it."""
    import importlib.metadata
    import sys

    import cupid
    sys.path.insert(0, str(REPO / "install"))
    try:
        import build_extension
    finally:
        sys.path.remove(str(REPO / "install"))
    import tomllib
    assert build_extension.backend_version() == cupid.__version__
    assert tomllib.loads(build_extension.stamped_manifest())["version"] == cupid.__version__
    assert importlib.metadata.version("cupid") == cupid.__version__
    pyproject = tomllib.loads((REPO / "backend" / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
