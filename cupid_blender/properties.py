"""Panel inputs (per scene) and job progress (per window manager, never saved in .blend files)."""
from __future__ import annotations

import bpy
from bpy.props import (BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty,
                       StringProperty)

from .io.settings import UNSET

MODES = [("OBJECT", "Object", "Reconstruct the photo's main object: the photo's transparency or the mask "
                              "says which pixels are the object"),
         ("SCENE", "Scene", "Reconstruct every object of the photo under one camera: the mask is a label "
                            "image (0 = background, each other grey value or colour one object)")]

MASK_HELP = ("Optional. Object mode: white (or opaque) where the object is, black (or transparent) elsewhere; "
             "an image without real transparency is read by its brightness, so a mask painted in Blender "
             "works. Scene mode: a label image, 0 = background, each other value or colour one object")


class CUPID_SceneSettings(bpy.types.PropertyGroup):
    image: PointerProperty(name="Photo", type=bpy.types.Image,
                           description="Image datablock to reconstruct (else the file path below, "
                                       "else the image shown in an Image Editor)")
    filepath: StringProperty(name="Photo file", subtype="FILE_PATH", default="",
                             description="Photo file to reconstruct when no Photo image is picked "
                                         "(PNG, JPEG, TIFF, WebP, BMP or EXR)")
    mask: PointerProperty(name="Mask", type=bpy.types.Image, description=MASK_HELP)
    mask_path: StringProperty(name="Mask file", subtype="FILE_PATH", default="",
                              description="Mask file, when no Mask image is picked. " + MASK_HELP)
    mode: EnumProperty(name="Mode", items=MODES, default="OBJECT",
                       description="Object: one object; Scene: every labelled object under one camera")
    seed: IntProperty(name="Seed", default=UNSET, min=UNSET,
                      description="Random seed of the generation: the same seed and photo give the same "
                                  "result. -1: the preferences' default seed")
    steps: IntProperty(name="Steps", default=UNSET, min=UNSET, max=500,
                       description="Sampler steps per stage: fewer is faster and rougher. 0: the model's "
                                   "default (25); -1: the preferences' default")


def _register_wm_props() -> None:
    wm = bpy.types.WindowManager
    wm.cupid_running = BoolProperty(default=False, options={"SKIP_SAVE"})
    wm.cupid_stage = StringProperty(default="", options={"SKIP_SAVE"})
    wm.cupid_progress = FloatProperty(default=0.0, min=0.0, max=1.0, subtype="FACTOR", options={"SKIP_SAVE"})
    wm.cupid_last_message = StringProperty(default="", options={"SKIP_SAVE"})
    wm.cupid_device = StringProperty(default="", options={"SKIP_SAVE"},
                                     description="The device the backend reported last")


_WM_PROPS = ("cupid_running", "cupid_stage", "cupid_progress", "cupid_last_message", "cupid_device")


def register() -> None:
    bpy.utils.register_class(CUPID_SceneSettings)
    bpy.types.Scene.cupid = PointerProperty(type=CUPID_SceneSettings)
    _register_wm_props()


def unregister() -> None:
    for name in _WM_PROPS:
        if hasattr(bpy.types.WindowManager, name):
            delattr(bpy.types.WindowManager, name)
    if hasattr(bpy.types.Scene, "cupid"):
        del bpy.types.Scene.cupid
    bpy.utils.unregister_class(CUPID_SceneSettings)
