"""The bpy half of the camera: write :func:`cupid_blender.io.camera.blender_camera_settings` into a
new camera datablock and object (the math and its documentation live in ``io/camera.py``)."""
from __future__ import annotations

from typing import Any

import bpy
from mathutils import Matrix

from .io.camera import blender_camera_settings


def add_camera(scene: Any, K: Any, R: Any, t: Any, width: int, height: int,
               name: str = "CUPID Camera") -> Any:
    """Create a camera (data + object) reproducing the OpenCV camera, link it to the scene's
    collection, make it the scene camera and set the render resolution and pixel aspect (the
    resolution percentage stays the artist's). Returns the camera object."""
    s = blender_camera_settings(K, R, t, width, height)
    data = bpy.data.cameras.new(name)
    data.type = "PERSP"
    data.lens_unit = "MILLIMETERS"
    data.sensor_fit = s.sensor_fit
    data.sensor_width = s.sensor_width
    data.sensor_height = s.sensor_height
    data.lens = s.lens
    data.shift_x = s.shift_x
    data.shift_y = s.shift_y
    data.clip_start = s.clip_start
    data.clip_end = s.clip_end
    obj = bpy.data.objects.new(name, data)
    scene.collection.objects.link(obj)
    obj.matrix_world = Matrix([list(r) for r in s.matrix_world])
    scene.camera = obj
    render = scene.render
    render.resolution_x = s.resolution_x
    render.resolution_y = s.resolution_y
    render.pixel_aspect_x = s.pixel_aspect_x
    render.pixel_aspect_y = s.pixel_aspect_y
    return obj
