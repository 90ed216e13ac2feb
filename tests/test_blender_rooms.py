"""The add-on's house rules: the pure-Python rooms (``cupid_blender/io``, ``cupid_blender/setup``, the
client and the backend manager) import without Blender and never import a bpy room (no circles:
tests/test_architecture.py)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cupid_blender"
PURE = sorted(["client", "backend_manager"] + [f"{room}.{p.stem}" for room in ("io", "setup")
                                                for p in (PACKAGE / room).glob("*.py") if p.stem != "__init__"])
BPY_MODULES = {"bpy", "mathutils", "bpy_extras", "addon_utils", "bmesh", "gpu"}


def _module(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", ".")


def _is_module(name: str) -> bool:
    return bool(name) and (PACKAGE / name.replace(".", "/")).with_suffix(".py").is_file()


def _relative_imports(path: Path) -> tuple[set[str], set[str]]:
    """(add-on modules it imports, e.g. 'io.bundle'; top-level names of the other modules it imports)."""
    package = _module(path).split(".")[:-1]   # 'io.job' -> ['io'], 'operators' -> []
    inner, outer = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = ".".join(base + (node.module.split(".") if node.module else []))
            names = [target] + [f"{target}.{a.name}".lstrip(".") for a in node.names]
            inner.update(n for n in names if _is_module(n))
        elif isinstance(node, ast.ImportFrom):
            outer.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            outer.update(a.name.split(".")[0] for a in node.names)
    return inner, outer


def _graph() -> dict[str, set[str]]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        out[_module(path)] = _relative_imports(path)[0]
    return out


def test_pure_rooms_import_without_blender():
    code = ("import sys\n"
            "for name in %r: sys.modules[name] = None  # any import of them fails\n"
            "import importlib\n"
            "for m in %r: importlib.import_module('cupid_blender.' + m)\n"
            "print('ok')\n") % (sorted(BPY_MODULES), PURE)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=PACKAGE.parent, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_pure_rooms_never_reach_a_bpy_room():
    graph = _graph()
    pure = set(PURE)
    for mod in PURE:
        inner, outer = _relative_imports((PACKAGE / mod.replace(".", "/")).with_suffix(".py"))
        assert not (outer & BPY_MODULES), f"{mod} imports {outer & BPY_MODULES}"
        assert inner <= pure, f"pure room {mod} imports bpy rooms {inner - pure}"
    assert len(PURE) >= 6 and "io.job" in PURE and "io.bundle" in PURE and "io.camera" in PURE
    assert "setup.runner" in PURE and "setup.system" in PURE   # the set-up process runs without Blender
    assert graph  # the walk found the package

