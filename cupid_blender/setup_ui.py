"""What the panel and the preferences show of the backend set-up: whether a local backend is there,
the record of the last set-up, and the set-up box (its button, or its progress bar, message, Cancel
and log). The operators themselves are in ``setup_ops.py``; this module imports no other bpy room,
so the preferences and the panel can both draw it."""
from __future__ import annotations

import os
from typing import Any

import bpy

from .backend_manager import BackendStartError, resolve_python
from .setup.state import BackendLayout, read_record
from .setup.system import Platform


def backend_folder(prefs: Any) -> str:
    """Where the set-up keeps the backend: the Backend folder preference, else the extension's user
    folder (``extension_path_user(__package__, path="backend")``), never inside Blender's installation."""
    if prefs is not None and prefs.backend_dir.strip():
        return os.path.abspath(bpy.path.abspath(prefs.backend_dir))
    return bpy.utils.extension_path_user(__package__, path="backend", create=False)


def layout_of(prefs: Any) -> BackendLayout:
    return BackendLayout(backend_folder(prefs), Platform.current())


def backend_ready(prefs: Any) -> bool:
    """Is a local backend environment configured, and is its Python still there?"""
    if prefs is None or not prefs.python_path.strip():
        return False
    try:
        resolve_python(bpy.path.abspath(prefs.python_path))
    except BackendStartError:
        return False
    return True


def status_line(prefs: Any) -> str:
    """What the preferences say about the set-up backend."""
    rec = read_record(layout_of(prefs))
    if rec is None:
        return "Backend not set up in this Blender yet"
    model = "tiny test model (offline)" if rec.get("weights") == "tiny" else rec.get("model", "")
    torch = (rec.get("torch") or {}).get("label", "")
    return f"Set up: {torch}; {model}; device {rec.get('device') or '?'}"


def draw_progress(layout: Any, wm: Any) -> None:
    """The running set-up: bar (step and percent), message, Cancel and the log."""
    text = f"{wm.cupid_setup_step} {100 * wm.cupid_setup_progress:.0f}%"
    if hasattr(layout, "progress"):
        layout.progress(factor=wm.cupid_setup_progress, type="BAR", text=text)
    else:
        layout.label(text=text)
    layout.label(text=wm.cupid_setup_message)
    row = layout.row(align=True)
    row.operator("cupid.cancel_setup", icon="CANCEL")
    row.operator("cupid.open_setup_log", icon="TEXT")


def draw_panel_box(layout: Any, context: Any, prefs: Any) -> bool:
    """The panel's set-up box while no local backend is configured or a set-up runs; True when drawn."""
    wm = context.window_manager
    if prefs is None or prefs.backend_kind != "LOCAL" or (backend_ready(prefs) and not wm.cupid_setup_running):
        return False
    box = layout.box()
    if wm.cupid_setup_running:
        box.label(text="Setting up the CUPID backend", icon="SETTINGS")
        draw_progress(box, wm)
        return True
    if prefs.python_path.strip():   # configured, but gone (removed, or Blender's Python moved)
        box.label(text=f"The CUPID backend is gone ({prefs.python_path})", icon="ERROR")
    else:
        box.label(text="No CUPID backend on this computer yet", icon="ERROR")
    box.operator("cupid.setup_backend", icon="IMPORT")
    if wm.cupid_setup_error:
        box.label(text=wm.cupid_setup_error, icon="CANCEL")
        box.operator("cupid.open_setup_log", icon="TEXT")
    return True


def draw_preferences_box(layout: Any, context: Any, prefs: Any) -> None:
    """The preferences' set-up box: the record, the PyTorch build and folder, Set Up / Repair / Remove."""
    wm = context.window_manager
    box = layout.box()
    box.label(text=status_line(prefs), icon="CHECKMARK" if backend_ready(prefs) else "INFO")
    rec = read_record(layout_of(prefs))
    if rec is not None and rec.get("base_python"):
        box.label(text=f"Environment made with {rec['base_python']}")
    col = box.column()
    col.prop(prefs, "torch_build")
    col.prop(prefs, "backend_dir")
    if getattr(wm, "cupid_setup_running", False):
        draw_progress(box, wm)
        return
    row = box.row(align=True)
    row.operator("cupid.setup_backend", icon="IMPORT")
    row.operator("cupid.setup_backend", text="Repair", icon="TOOL_SETTINGS").repair = True
    row.operator("cupid.remove_backend", icon="TRASH")
    if getattr(wm, "cupid_setup_error", ""):
        box.label(text=wm.cupid_setup_error, icon="CANCEL")
    box.operator("cupid.open_setup_log", icon="TEXT")
