"""CUPID for Blender: reconstruct posed 3D objects and their camera from one photo.

Loaded by Blender as an extension (``bl_ext.<repo>.cupid``); every import inside is relative.
The heavy lifting happens in a separate backend process (`cupid serve`), reached over HTTP on
localhost, so Blender's Python needs nothing beyond numpy.
"""
from __future__ import annotations

import bpy

from . import operators, panel, preferences, properties
from .backend_manager import MANAGER

_CLASSES = (*preferences.classes, *operators.classes, *panel.classes)


def register() -> None:
    properties.register()
    for cls in _CLASSES:
        bpy.utils.register_class(cls)
    operators.register_handlers()


def unregister() -> None:
    operators.unregister_handlers()
    MANAGER.stop()
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
    properties.unregister()
