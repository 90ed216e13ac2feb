"""Build the installable CUPID extension zip with Blender's own extension tool.

Stages blender_manifest.toml + cupid_blender/**/*.py and the backend itself, the `cupid` package as a
wheel of the add-on's own version (``bundled/cupid-VERSION-py3-none-any.whl``: *Set Up Backend*
installs it into the environment it makes, so the zip alone is enough), into a temporary source
directory, optionally with a defaults.json naming this checkout's backend python, weights directory
and model (a developer's zip; ``--no-defaults`` builds the artist's zip, which records nothing of this
machine), then runs ``blender_ext.py build`` and ``blender_ext.py validate`` on the result. The wheel is
pure Python, so one zip serves every platform (no ``--split-platforms``).

    python install/build_extension.py [--output-dir dist] [--no-defaults] [--blender-ext PATH] [--model ID|DIR]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "cupid_blender"
MANIFEST = REPO / "blender_manifest.toml"
BACKEND = REPO / "backend"
BUNDLED = "bundled"          # the zip's folder holding the backend wheel (not Blender's own `wheels`)


class BuildError(Exception):
    pass


def find_blender_ext() -> Path:
    """blender_ext.py from an installed bpy module (or $CUPID_BLENDER_EXT)."""
    env = os.environ.get("CUPID_BLENDER_EXT")
    if env:
        return Path(env)
    import importlib.util

    spec = importlib.util.find_spec("bpy")  # located, not imported (importing bpy is slow)
    candidates: list[str] = []
    for base in (spec.submodule_search_locations or []) if spec is not None else []:
        candidates += sorted(glob.glob(os.path.join(base, "*", "scripts", "addons_core", "bl_pkg", "cli",
                                                    "blender_ext.py")))
    if not candidates:
        raise BuildError("blender_ext.py not found: install the `bpy` module or set CUPID_BLENDER_EXT")
    return Path(candidates[-1])


def checkout_defaults(model: str | None = None) -> dict:
    """Backend python and weights dir of this checkout (and the model set up), when they exist."""
    out = {}
    for cand in (REPO / ".venv" / "bin" / "python", REPO / ".venv" / "Scripts" / "python.exe"):
        if cand.exists():
            out["python"] = str(cand.absolute())
            break
    if os.environ.get("CUPID_WEIGHTS_DIR"):  # a weights cache other than huggingface_hub's default
        out["weights_dir"] = str(Path(os.environ["CUPID_WEIGHTS_DIR"]).expanduser().absolute())
    if model:
        out["model"] = str(Path(model).absolute()) if Path(model).is_dir() else model
    return out


def backend_version() -> str:
    """The one version string, backend/cupid/__init__.py's `__version__` (read as text: no import)."""
    text = (REPO / "backend" / "cupid" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if not match:
        raise BuildError("backend/cupid/__init__.py has no __version__")
    return match.group(1)


def stamped_manifest() -> str:
    """blender_manifest.toml with its version set to the backend's."""
    text = MANIFEST.read_text(encoding="utf-8")
    return re.sub(r'^version = "[^"]*"', f'version = "{backend_version()}"', text, count=1, flags=re.M)


SETUPTOOLS_NEEDED = (77,)   # backend/pyproject.toml's build-system requires (license as an SPDX string)


def local_setuptools_will_do() -> bool:
    """Is the setuptools at hand new enough to build the backend without fetching one?"""
    from importlib import metadata

    try:
        version = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        return False
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:len(SETUPTOOLS_NEEDED)])
    return parts >= SETUPTOOLS_NEEDED


def build_wheel(dest: Path) -> Path:
    """The backend (backend/: pyproject.toml + cupid/) as a pure-Python wheel in `dest`, built from a
    copy so the checkout gets no build/ or egg-info; without build isolation where a new enough
    setuptools is at hand (no network needed), else pip fetches one."""
    with tempfile.TemporaryDirectory(prefix="cupid-wheel-") as tmp:
        src = Path(tmp) / "backend"
        shutil.copytree(BACKEND, src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info"))
        isolation = ["--no-build-isolation"] if local_setuptools_will_do() else []
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(dest),
                               str(src)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"could not build the backend wheel:\n{proc.stdout}{proc.stderr}")
    wheels = sorted(dest.glob(f"cupid-{backend_version()}-py3-none-any.whl"))
    if not wheels:
        raise BuildError(f"pip built no pure-Python cupid {backend_version()} wheel in {dest}: "
                         f"{sorted(p.name for p in dest.iterdir())}")
    return wheels[0]


def stage(dest: Path, defaults: dict | None) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "blender_manifest.toml").write_text(stamped_manifest(), encoding="utf-8")
    for path in sorted(PACKAGE.rglob("*.py")):  # the package and its subpackages (io/, setup/)
        target = dest / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    build_wheel(dest / BUNDLED)
    if defaults:
        (dest / "defaults.json").write_text(json.dumps(defaults, indent=2) + "\n", encoding="utf-8")


def run_tool(tool: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(tool), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"blender_ext.py {args[0]} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def build(output_dir: Path, with_defaults: bool = True, tool: Path | None = None,
          model: str | None = None) -> Path:
    tool = tool or find_blender_ext()
    manifest = tomllib.loads(stamped_manifest())
    output_dir.mkdir(parents=True, exist_ok=True)
    out = output_dir / f"{manifest['id']}-{manifest['version']}.zip"
    if out.exists():
        out.unlink()
    with tempfile.TemporaryDirectory(prefix="cupid-ext-") as tmp:
        src = Path(tmp) / "cupid"
        stage(src, checkout_defaults(model) if with_defaults else None)
        run_tool(tool, "build", "--source-dir", str(src), "--output-filepath", str(out))
    run_tool(tool, "validate", str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output-dir", type=Path, default=REPO / "dist")
    ap.add_argument("--no-defaults", action="store_true", help="do not record this checkout's paths")
    ap.add_argument("--blender-ext", type=Path, default=None, help="path of blender_ext.py")
    ap.add_argument("--model", default=None, help="model id or directory the add-on uses by default")
    args = ap.parse_args(argv)
    try:
        out = build(args.output_dir, not args.no_defaults, args.blender_ext, args.model)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
