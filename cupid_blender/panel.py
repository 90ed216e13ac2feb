"""The CUPID tab of the 3D Viewport sidebar (N panel)."""
from __future__ import annotations

from typing import Any

import bpy

from .io.settings import model_label, resolve_sampling
from .operators import active_model, backend_status, cpu_warning, results_folder
from .preferences import get_prefs


def _model_line(context: Any, prefs: Any) -> str:
    """The model and device line, as the backend will run them."""
    if prefs is None:
        return "Model: (add-on preferences unavailable)"
    device = context.window_manager.cupid_device or prefs.device
    if prefs.backend_kind == "REMOTE":
        return f"Model: set on the remote service · Device: {context.window_manager.cupid_device or 'not asked yet'}"
    return f"Model: {model_label(active_model(prefs))} · Device: {device}"


class CUPID_PT_reconstruct(bpy.types.Panel):
    bl_idname = "CUPID_PT_reconstruct"
    bl_label = "CUPID Reconstruction"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "CUPID"

    def draw(self, context: Any) -> None:
        layout = self.layout
        s = context.scene.cupid
        wm = context.window_manager
        prefs = get_prefs(context)

        col = layout.column(align=True)
        col.label(text="Photo")
        col.template_ID_preview(s, "image", open="image.open", rows=3, cols=6)
        if s.image is None:
            col.prop(s, "filepath", text="")
        col = layout.column(align=True)
        col.label(text="Mask (optional)")
        col.template_ID(s, "mask", open="image.open")
        if s.mask is None:
            col.prop(s, "mask_path", text="")
        layout.prop(s, "mode", expand=True)
        row = layout.row(align=True)
        row.prop(s, "seed")
        row.prop(s, "steps")

        layout.label(text=_model_line(context, prefs), icon="INFO")
        _, steps = resolve_sampling(s.seed, s.steps, 0, prefs.default_steps if prefs else 0)
        warning = cpu_warning(context, steps)
        if warning:
            layout.label(text=warning, icon="ERROR")

        if wm.cupid_running:
            text = f"{wm.cupid_stage or 'working'} {100 * wm.cupid_progress:.0f}%"
            if hasattr(layout, "progress"):
                layout.progress(factor=wm.cupid_progress, type="BAR", text=text)
            else:
                layout.label(text=text)
            layout.operator("cupid.cancel", icon="CANCEL")
        else:
            op = layout.operator("cupid.reconstruct", icon="PLAY")
            op.mode, op.seed, op.steps = s.mode, s.seed, s.steps
            if wm.cupid_last_message:
                layout.label(text=wm.cupid_last_message)
        layout.operator("cupid.set_active_camera", icon="CAMERA_DATA")
        layout.label(text=f"Results: {results_folder(context)}", icon="FILE_FOLDER")

        box = layout.box()
        if prefs is not None and prefs.backend_kind == "REMOTE":
            box.label(text=f"Backend: remote {prefs.remote_url}", icon="WORLD")
        else:
            status = backend_status()
            box.label(text=f"Backend: {status}", icon="CHECKMARK" if status.startswith("running") else "RADIOBUT_OFF")
            row = box.row(align=True)
            row.operator("cupid.start_backend", icon="PLAY")
            row.operator("cupid.stop_backend", icon="PAUSE")


classes = (CUPID_PT_reconstruct,)
