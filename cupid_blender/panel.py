"""The CUPID tab of the 3D Viewport sidebar (N panel)."""
from __future__ import annotations

from typing import Any

import bpy

from .io.settings import model_label, model_line, resolve_sampling
from .operators import active_model, backend_status, cpu_warning, results_folder
from .preferences import get_prefs
from .results import FIT_PROP, JOB_PROP, PHOTO_FACTOR_PROP, parts, photo_mix_nodes, result_collection
from .setup_ui import draw_panel_box


def _model_line(context: Any, prefs: Any) -> str:
    """The model, device and precision line, as the backend will run them."""
    if prefs is None:
        return "Model: (add-on preferences unavailable)"
    wm = context.window_manager
    if prefs.backend_kind == "REMOTE":
        return model_line("set on the remote service", wm.cupid_device or "not asked yet", wm.cupid_dtype)
    return model_line(model_label(active_model(prefs)), wm.cupid_device or prefs.device,
                      wm.cupid_dtype or prefs.dtype)


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
        draw_panel_box(layout, context, prefs)   # Set Up Backend, while no local backend is there

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
        row = layout.row()
        sub = row.row()
        sub.active = s.mode == "OBJECT"
        sub.prop(s, "real_size")
        row.prop(s, "composite")
        _draw_picking(layout, s)
        row = layout.row(align=True)
        row.prop(s, "seed")
        row.prop(s, "steps")
        layout.prop(s, "photo_texture")

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
            op.real_size, op.composite = s.real_size, s.composite
            if wm.cupid_last_message:
                layout.label(text=wm.cupid_last_message)
        layout.operator("cupid.set_active_camera", icon="CAMERA_DATA")
        _draw_result(layout, context, wm.cupid_running)
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


def _draw_picking(layout: Any, s: Any) -> None:
    """Scene mode: pick the objects on the photo; object mode: see the cut-out first."""
    row = layout.row(align=True)
    if s.mode == "SCENE":
        row.operator("cupid.pick_objects", icon="RESTRICT_SELECT_OFF")
        sub = row.row(align=True)
        sub.enabled = len(s.picks) > 0
        sub.operator("cupid.clear_picks", icon="X", text="")
        n = len(s.picks)
        layout.label(text=f"{n} pick(s): Enter in the Image Editor shows their masks" if n else
                     "No picks: automatic masks (or the mask above)", icon="INFO")
    else:
        row.operator("cupid.show_cutout", icon="IMAGE_RGB_ALPHA")


def fit_lines(coll: Any) -> list[str]:
    """"NAME: fit IoU 0.87" for each reconstructed object of a result (how much of the photo's
    object its silhouette through the camera covers, and nothing more)."""
    out = []
    for obj in sorted(parts(coll), key=lambda o: o.name):
        if FIT_PROP in obj:
            out.append(f"{obj.name}: fit IoU {float(obj[FIT_PROP]):.2f}")
    return out


def _draw_result(layout: Any, context: Any, running: bool) -> None:
    """The active object's CUPID result: its fit scores and the refine button."""
    coll = result_collection(context.active_object)
    if coll is None:
        return
    box = layout.box()
    box.label(text=f"Result: {coll.name}", icon="OUTLINER_COLLECTION")
    for line in fit_lines(coll):
        box.label(text=line, icon="CHECKMARK")
    if photo_mix_nodes(coll):
        box.prop(coll, PHOTO_FACTOR_PROP, slider=True)
    if not running:
        row = box.row()
        row.enabled = JOB_PROP in coll
        op = row.operator("cupid.refine", icon="FILE_REFRESH")
        op.collection, op.steps = coll.name, context.scene.cupid.steps
        if JOB_PROP not in coll:
            box.label(text="Refine: object-mode results reconstructed here", icon="INFO")


classes = (CUPID_PT_reconstruct,)
