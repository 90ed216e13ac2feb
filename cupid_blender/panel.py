"""The CUPID tab of the 3D Viewport sidebar (N panel)."""
from __future__ import annotations

from typing import Any

import bpy

from .backend_manager import MANAGER
from .preferences import get_prefs


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

        if wm.cupid_running:
            text = f"{wm.cupid_stage or 'working'} {100 * wm.cupid_progress:.0f}%"
            if hasattr(layout, "progress"):
                layout.progress(factor=wm.cupid_progress, type="BAR", text=text)
            else:
                layout.label(text=text)
            layout.operator("cupid.cancel", icon="CANCEL")
        else:
            op = layout.operator("cupid.reconstruct", icon="PLAY")
            op.mode = s.mode
            prefs = get_prefs(context)
            op.seed = s.seed if s.seed >= 0 else (prefs.default_seed if prefs else 0)
            op.steps = s.steps
            if wm.cupid_last_message:
                layout.label(text=wm.cupid_last_message)
        layout.operator("cupid.set_active_camera", icon="CAMERA_DATA")

        box = layout.box()
        prefs = get_prefs(context)
        if prefs is not None and prefs.backend_kind == "REMOTE":
            box.label(text=f"Backend: remote {prefs.remote_url}", icon="WORLD")
        else:
            box.label(text=f"Backend: {MANAGER.status_text()}",
                      icon="CHECKMARK" if MANAGER.running() else "RADIOBUT_OFF")
            row = box.row(align=True)
            row.operator("cupid.start_backend", icon="PLAY")
            row.operator("cupid.stop_backend", icon="PAUSE")


classes = (CUPID_PT_reconstruct,)
