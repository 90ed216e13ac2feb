"""Panel inputs (per scene) and job progress (per window manager, never saved in .blend files)."""
from __future__ import annotations

from typing import Any

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty,
                       IntVectorProperty, PointerProperty, StringProperty)

from .io.settings import UNSET
from .results import set_photo_texture

MODES = [("OBJECT", "Object", "Reconstruct the photo's main object: the photo's transparency or the mask "
                              "says which pixels are the object"),
         ("SCENE", "Scene", "Reconstruct every object of the photo under one camera: the mask is a label "
                            "image (0 = background, each other grey value or colour one object)")]

MASK_HELP = ("Optional. Object mode: white (or opaque) where the object is, black (or transparent) elsewhere; "
             "an image without real transparency is read by its brightness, so a mask painted in Blender "
             "works. Scene mode: a label image, 0 = background, each other value or colour one object")


REAL_SIZE_HELP = ("Object mode: measure the object in meters with the backend's metric point map (MoGe-2, "
                  "fetched by 'cupid download') when it has one; off: the object at relative size. A scene is in "
                  "meters whenever the backend has MoGe-2")
COMPOSITE_HELP = ("Add a shadow-catcher ground plane under the objects, a sun, a transparent film and compositor "
                  "nodes that lay the render over the photo: F12 gives the objects and their shadows in the photo "
                  "(Cycles). A compositor of your own is left alone")


class CUPID_Pick(bpy.types.PropertyGroup):
    """One pick on the photo, in its pixels (y down): a point (x0, y0) or a box (x0, y0)-(x1, y1)."""

    kind: EnumProperty(name="Kind", items=[("POINT", "Point", "A click on the object"),
                                           ("BOX", "Box", "A box dragged around the object")],
                       description="A click on an object or a box around it")
    x0: FloatProperty(name="X", description="Photo pixels from the left (the box's left edge)")
    y0: FloatProperty(name="Y", description="Photo pixels from the top (the box's top edge)")
    x1: FloatProperty(name="X1", description="The box's right edge, photo pixels")
    y1: FloatProperty(name="Y1", description="The box's bottom edge, photo pixels")


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
    real_size: BoolProperty(name="Real Size", default=True, description=REAL_SIZE_HELP)
    composite: BoolProperty(name="Composite over Photo", default=True, description=COMPOSITE_HELP)
    picks: CollectionProperty(type=CUPID_Pick, name="Picks",
                              description="Objects picked on the photo (scene mode): one object per click or box")
    picks_size: IntVectorProperty(name="Picked photo size", size=2, default=(0, 0),
                                  description="The size of the photo the picks were made on (pixels)")
    photo_texture: BoolProperty(name="Photo on Texture", default=True,
                                description="Paint the photo's own pixels (full resolution) onto the surface its "
                                            "camera sees, and match the hidden side's colours to them. Off: the "
                                            "generated texture alone")


def _photo_texture_changed(coll: Any, _context: Any) -> None:
    set_photo_texture(coll, coll.cupid_photo_texture)


def _register_wm_props() -> None:
    wm = bpy.types.WindowManager
    wm.cupid_running = BoolProperty(default=False, options={"SKIP_SAVE"})
    wm.cupid_stage = StringProperty(default="", options={"SKIP_SAVE"})
    wm.cupid_progress = FloatProperty(default=0.0, min=0.0, max=1.0, subtype="FACTOR", options={"SKIP_SAVE"})
    wm.cupid_last_message = StringProperty(default="", options={"SKIP_SAVE"})
    wm.cupid_device = StringProperty(default="", options={"SKIP_SAVE"},
                                     description="The device the backend reported last")
    wm.cupid_dtype = StringProperty(default="", options={"SKIP_SAVE"},
                                    description="The precision the backend reported last")


_WM_PROPS = ("cupid_running", "cupid_stage", "cupid_progress", "cupid_last_message", "cupid_device",
             "cupid_dtype")


def register() -> None:
    bpy.utils.register_class(CUPID_Pick)
    bpy.utils.register_class(CUPID_SceneSettings)
    bpy.types.Scene.cupid = PointerProperty(type=CUPID_SceneSettings)
    bpy.types.Collection.cupid_photo_texture = FloatProperty(
        name="Photo Texture", default=1.0, min=0.0, max=1.0, subtype="FACTOR", update=_photo_texture_changed,
        description="How much of the photo the result's textures show where the photo sees the surface: "
                    "1 the photo's own pixels, 0 the generated texture alone")
    _register_wm_props()


def unregister() -> None:
    for name in _WM_PROPS:
        if hasattr(bpy.types.WindowManager, name):
            delattr(bpy.types.WindowManager, name)
    if hasattr(bpy.types.Scene, "cupid"):
        del bpy.types.Scene.cupid
    if hasattr(bpy.types.Collection, "cupid_photo_texture"):
        del bpy.types.Collection.cupid_photo_texture
    bpy.utils.unregister_class(CUPID_SceneSettings)
    bpy.utils.unregister_class(CUPID_Pick)
