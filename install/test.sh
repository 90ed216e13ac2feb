#!/usr/bin/env bash
# Run the whole test suite in the backend environment made by install/setup.sh.
# Installs the developer extras first (pytest, jsonschema, httpx and Blender as a Python module, bpy 4.5.4).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${CUPID_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
[ -x "$PY" ] || { echo "No backend environment at $VENV: run 'bash install/setup.sh' first." >&2; exit 1; }
"$PY" -m pip install -q -e "$ROOT/backend[dev,cluster]"
exec "$PY" -m pytest "$@"
