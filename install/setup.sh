#!/usr/bin/env bash
# One command to set CUPID up and run it once:
#   1. the backend environment (.venv: PyTorch + the `cupid` package),
#   2. the weights (official CUPID + TRELLIS parts; offline, a tiny random-weight model instead),
#   3. the Blender extension zip (dist/cupid-*.zip, set up to use that environment and model),
#   4. the main job: reconstruct examples/monkey.png into out/monkey (scene.json, GLB, PLY, overlay).
# Environment knobs: PYTHON (interpreter, default python3.11), CUPID_VENV (default ./.venv),
# CUPID_TORCH (pip spec for torch, default torch==2.13.0; e.g. a CUDA build on a GPU box),
# CUPID_MODEL (model id or local dir), CUPID_WEIGHTS (weights cache, default: the Hugging Face cache,
# which `cupid download`, the CLI, the service and the add-on all read), CUPID_STEPS.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
VENV="${CUPID_VENV:-$ROOT/.venv}"
TORCH_SPEC="${CUPID_TORCH:-torch==2.13.0}"
if [ -n "${CUPID_WEIGHTS:-}" ]; then export CUPID_WEIGHTS_DIR="$CUPID_WEIGHTS"; fi

say() { printf '\n==> %s\n' "$*"; }
die() { printf '\nCUPID set-up failed: %s\n' "$*" >&2; exit 1; }

say "Checking Python ($PYTHON)"
"$PYTHON" - <<'PY' || die "CUPID needs Python 3.10 or newer (3.11 to also run the Blender-side tests): set PYTHON=/path/to/python3.11"
import sys
assert sys.version_info >= (3, 10), sys.version
print("Python", sys.version.split()[0])
PY

say "Backend environment in $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV" || die "could not create a virtual environment (on Debian/Ubuntu: apt install python3-venv)"
PY="$VENV/bin/python"
rm -f "$VENV/cupid-setup.json"   # the record of a finished set-up comes back once its model is in place
"$PY" -m pip install -q --upgrade pip || die "pip could not upgrade itself (no network?)"
"$PY" -m pip install -q "$TORCH_SPEC" || die "could not install $TORCH_SPEC"
"$PY" -m pip install -q -e "$ROOT/backend" || die "could not install the cupid backend package"
"$PY" -m cupid --version

say "Weights"
MODEL="${CUPID_MODEL:-}"
if [ -z "$MODEL" ]; then
  if HF_HUB_ETAG_TIMEOUT=10 HF_HUB_DOWNLOAD_TIMEOUT=20 "$PY" -m cupid download; then
    MODEL="hbb1/Cupid"
  else
    echo "The official weights could not be downloaded (see the message above)."
    echo "Using a tiny random-weight model instead: it runs the whole pipeline, but its shapes are noise."
    echo "Run 'cupid download' again when you are online."
    "$PY" -m cupid make-tiny-model "$ROOT/weights/tiny"
    MODEL="$ROOT/weights/tiny"
  fi
fi
# The model this environment runs: `cupid reconstruct`, `cupid serve` and `cupid batch` take it when
# --model names none (the same record the add-on's Set Up Backend writes into its own environment).
case "$MODEL" in
  "$ROOT/weights/tiny") WEIGHTS=tiny ;;
  hbb1/Cupid) WEIGHTS=official ;;
  *) WEIGHTS=given ;;
esac
"$PY" -m cupid.setup_record "$MODEL" "$WEIGHTS" || die "could not record the set-up's model in $VENV"

say "Blender extension zip"
# The zip is built with Blender's own extension tool (blender_ext.py): from a Blender on PATH when
# there is one, else from Blender-as-a-Python-module (bpy 4.5.4, which the tests use too).
if [ -z "${CUPID_BLENDER_EXT:-}" ] && command -v blender >/dev/null 2>&1; then
  BL_DIR="$(cd "$(dirname "$(readlink -f "$(command -v blender)")")/.." && pwd)"
  EXT_TOOL="$(find "$BL_DIR" -path '*addons_core/bl_pkg/cli/blender_ext.py' 2>/dev/null | head -1 || true)"
  [ -n "$EXT_TOOL" ] && export CUPID_BLENDER_EXT="$EXT_TOOL"
fi
if [ -z "${CUPID_BLENDER_EXT:-}" ] && ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('bpy') is None)"; then
  echo "No Blender found on PATH: installing Blender as a Python module (bpy 4.5.4) for its extension tool."
  "$PY" -m pip install -q "bpy==4.5.4" || die "could not install bpy 4.5.4 (it needs Python 3.11); put Blender on PATH or set CUPID_BLENDER_EXT=/path/to/blender_ext.py"
fi
"$PY" "$ROOT/install/build_extension.py" --output-dir "$ROOT/dist" --model "$MODEL" || die "could not build the extension zip"

say "Main job: reconstructing examples/monkey.png"
"$PY" -m cupid reconstruct "$ROOT/examples/monkey.png" -o "$ROOT/out/monkey" --overwrite --steps "${CUPID_STEPS:-0}"

say "Done"
echo "Result bundle:   $ROOT/out/monkey (scene.json, object_0.glb, object_0.ply, overlay.png)"
echo "Blender add-on:  $(ls "$ROOT"/dist/*.zip | head -1)"
echo "  In Blender: Edit > Preferences > Get Extensions > Install from Disk..., pick the zip,"
echo "  then open the 3D viewport's N-panel, tab CUPID."
