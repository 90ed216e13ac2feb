"""Panel inputs (per scene) and job progress (per window manager, never saved in .blend files)."""
from __future__ import annotations

import bpy
from bpy.props import (BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty,
                       StringProperty)

MODES = [("OBJECT", "Object", "Reconstruct the single main object of the photo"),
         ("SCENE", "Scene", "Reconstruct every object of the photo under one camera")]


class CUPID_SceneSettings(bpy.types.PropertyGroup):
    image: PointerProperty(name="Photo", type=bpy.types.Image,
                           description="Image datablock to reconstruct (else the file path below, "
                                       "else the image shown in an Image Editor)")
    filepath: StringProperty(name="Photo file", subtype="FILE_PATH", default="")
    mask: PointerProperty(name="Mask", type=bpy.types.Image, description="Optional object mask")
    mask_path: StringProperty(name="Mask file", subtype="FILE_PATH", default="")
    mode: EnumProperty(name="Mode", items=MODES, default="OBJECT")
    seed: IntProperty(name="Seed", default=-1, min=-1, description="-1: the preferences' default")
    steps: IntProperty(name="Steps", default=0, min=0, max=500,
                       description="Sampler steps (0: the preferences' default)")


def _register_wm_props() -> None:
    wm = bpy.types.WindowManager
    wm.cupid_running = BoolProperty(default=False, options={"SKIP_SAVE"})
    wm.cupid_stage = StringProperty(default="", options={"SKIP_SAVE"})
    wm.cupid_progress = FloatProperty(default=0.0, min=0.0, max=1.0, subtype="FACTOR", options={"SKIP_SAVE"})
    wm.cupid_last_message = StringProperty(default="", options={"SKIP_SAVE"})


def register() -> None:
    bpy.utils.register_class(CUPID_SceneSettings)
    bpy.types.Scene.cupid = PointerProperty(type=CUPID_SceneSettings)
    _register_wm_props()


def unregister() -> None:
    for name in ("cupid_running", "cupid_stage", "cupid_progress", "cupid_last_message"):
        if hasattr(bpy.types.WindowManager, name):
            delattr(bpy.types.WindowManager, name)
    if hasattr(bpy.types.Scene, "cupid"):
        del bpy.types.Scene.cupid
    bpy.utils.unregister_class(CUPID_SceneSettings)
