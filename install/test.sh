#!/usr/bin/env bash
# Run the whole test suite in the backend environment made by install/setup.sh.
# Installs the developer extras first (pytest, jsonschema, httpx and Blender as a Python module, bpy 4.5.4),
# then Blender 5.0 and 4.2 as Python modules, each in an environment of its own (.venv-blender-5.0 and
# .venv-blender-4.2, kept between runs): tests/test_blender_setup.py installs the artist's zip into them,
# with nothing of this checkout reachable, and sets its backend up from inside Blender.
# Environment knobs: PYTHON (interpreter for the Blender environments, default python3.11; bpy needs 3.11).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${CUPID_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
[ -x "$PY" ] || { echo "No backend environment at $VENV: run 'bash install/setup.sh' first." >&2; exit 1; }
"$PY" -m pip install -q -e "$ROOT/backend[dev,cluster]"

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
for pair in "5.0 5.0.1" "4.2 4.2.23"; do
  read -r short bpy_version <<< "$pair"
  BL_VENV="$ROOT/.venv-blender-$short"
  if ! "$BL_VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('bpy') != '$bpy_version')" 2>/dev/null; then
    echo "Blender $bpy_version as a Python module in $BL_VENV (once; kept for later runs)"
    rm -rf "$BL_VENV"
    "$PYTHON" -m venv "$BL_VENV"
    "$BL_VENV/bin/python" -m pip install -q "bpy==$bpy_version" \
      || { echo "could not install bpy $bpy_version (it needs Python 3.11)" >&2; exit 1; }
  fi
done
export CUPID_REQUIRE_BLENDERS=1   # tests/test_blender_setup.py fails (never skips) without them
exec "$PY" -m pytest "$@"
