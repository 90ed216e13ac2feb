"""CUPID for Blender: reconstruct posed 3D objects and their camera from one photo.

Loaded by Blender as an extension (``bl_ext.<repo>.cupid``); every import inside is relative.
The heavy lifting happens in a separate backend process (`cupid serve`), reached over HTTP, so
Blender's Python needs nothing beyond numpy.

Layout (as Blender's glTF add-on: ``io`` beside the bpy code): ``io/`` holds the pure-Python rooms
(job, bundle reader, camera math, pixel work) and ``client``/``backend_manager`` are bpy-free too;
the other modules touch bpy. This file imports the bpy rooms only in :func:`register`, so the pure
rooms import without Blender.
"""
from __future__ import annotations


def _classes() -> tuple:
    from . import operators, panel, picking, preferences, refine, setup_ops

    return (*preferences.classes, *operators.classes, *setup_ops.classes, *refine.classes, *picking.classes,
            *panel.classes)


def register() -> None:
    import bpy

    from . import operators, properties, setup_ops

    properties.register()
    setup_ops.register()
    for cls in _classes():
        bpy.utils.register_class(cls)
    operators.register()


def unregister() -> None:
    import bpy

    from . import operators, picking, properties, setup_ops
    from .backend_manager import MANAGER

    operators.unregister()
    picking.unregister()
    MANAGER.stop()
    for cls in reversed(_classes()):
        bpy.utils.unregister_class(cls)
    setup_ops.unregister()
    properties.unregister()
