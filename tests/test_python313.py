"""Nothing in the add-on that Python 3.13 (Blender 5.1) refuses: no module 3.13 removed (PEP 594's dead
batteries, distutils, ...), every file compiles under a real 3.13 with warnings as errors (invalid
escapes and the like, which later versions turn into errors), and the pure rooms the set-up process
runs (it runs on Blender's own Python) import and decide under 3.13.

A 3.13 interpreter is CUPID_PYTHON313, else python3.13 on PATH, else pyenv's; where none is found the
first test still runs and the others skip, saying so."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cupid_blender"
# Modules Python 3.12 and 3.13 removed (PEP 594, PEP 632, and the 3.12 removals).
REMOVED = {"aifc", "audioop", "cgi", "cgitb", "chunk", "crypt", "imghdr", "mailcap", "msilib", "nis", "nntplib",
           "ossaudiodev", "pipes", "sndhdr", "spwd", "sunau", "telnetlib", "uu", "xdrlib", "lib2to3", "distutils",
           "imp", "asynchat", "asyncore", "smtpd"}


def python313() -> str | None:
    candidates = [os.environ.get("CUPID_PYTHON313", ""), shutil.which("python3.13") or "",
                  os.path.expanduser("~/.pyenv/versions/3.13.0/bin/python3.13")]
    for cand in candidates:
        if not cand or not os.path.isfile(cand):
            continue
        out = subprocess.run([cand, "-c", "import sys; print(sys.version_info[:2] == (3, 13))"],
                             capture_output=True, text=True, env={**os.environ, "PYENV_VERSION": "3.13.0"})
        if out.returncode == 0 and out.stdout.strip() == "True":
            return cand
    return None


def test_the_add_on_imports_no_module_python_3_13_removed():
    found = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for name in names:
                if name.split(".")[0] in REMOVED:
                    found.setdefault(str(path.relative_to(PACKAGE)), []).append(name)
    assert not found, found


@pytest.fixture(scope="module")
def py313() -> str:
    found = python313()
    if found is None:
        pytest.skip("no Python 3.13 here (set CUPID_PYTHON313)")
    return found


def test_every_add_on_file_compiles_under_3_13_with_warnings_as_errors(py313, tmp_path):
    code = ("import pathlib, sys\n"
            "for p in sorted(pathlib.Path(sys.argv[1]).rglob('*.py')):\n"
            "    compile(p.read_text(encoding='utf-8'), str(p), 'exec')\n"
            "print('ok')\n")
    out = subprocess.run([py313, "-W", "error", "-c", code, str(PACKAGE)], capture_output=True, text=True,
                         env={**os.environ, "PYENV_VERSION": "3.13.0", "PYTHONPATH": ""})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_the_set_up_rooms_run_under_3_13(py313):
    code = ("import sys\n"
            "sys.path.insert(0, sys.argv[1])\n"
            "from cupid_blender.setup import process, runner, plan, state, system, torch_build\n"
            "from cupid_blender import backend_manager, client\n"
            "b = torch_build.choose_torch('AUTO', system.Platform('win32', 'AMD64'), torch_build.Nvidia((12, 9)), {})\n"
            "print(b.index_url)\n")
    out = subprocess.run([py313, "-W", "error", "-c", code, str(PACKAGE.parent)], capture_output=True, text=True,
                         env={**os.environ, "PYENV_VERSION": "3.13.0", "PYTHONPATH": ""})
    assert out.returncode == 0 and out.stdout.strip() == "https://download.pytorch.org/whl/cu128", out.stderr[-3000:]
