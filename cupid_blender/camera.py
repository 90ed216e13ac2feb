"""The bpy half of the camera: write :func:`cupid_blender.io.camera.blender_camera_settings` into a
new camera datablock and object, and read any perspective camera back as OpenCV (K, R, t) with
:func:`cupid_blender.io.camera.opencv_camera` (the math and its documentation live in ``io/camera.py``)."""
from __future__ import annotations

from typing import Any, Optional

import bpy
from mathutils import Matrix

from .io.camera import BlenderCameraSettings, blender_camera_settings, opencv_camera


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


def read_camera(scene: Any, camera_object: Any, render_size: Optional[tuple] = None) -> tuple:
    """(K, R, t, width, height) in OpenCV convention of a camera object as the scene renders it now
    (its lens, sensor size and fit, shift, placement, and the scene's render size and pixel aspect):
    the exact inverse of :func:`add_camera`, and what the artist sees through a moved or re-lensed
    camera. K is in pixels of the full render size (the resolution percentage aside). `render_size`
    (width, height, pixel_aspect_x, pixel_aspect_y) stands in for the scene's: a CUPID camera that is
    not the scene camera is read at its own photo's size (the scene's belongs to another photo). Raises
    ValueError with a one-line reason for what OpenCV cannot describe (not a camera, orthographic
    or panoramic, zero or negative scale)."""
    if camera_object is None or getattr(camera_object, "type", None) != "CAMERA":
        raise ValueError(f"{getattr(camera_object, 'name', camera_object)!r} is not a camera")
    cam = camera_object.data
    if cam.type != "PERSP":
        raise ValueError(f"camera {camera_object.name!r} is {cam.type.lower()}: only perspective cameras "
                         f"have a pinhole K")
    r = scene.render
    w, h, ax, ay = render_size or (r.resolution_x, r.resolution_y, r.pixel_aspect_x, r.pixel_aspect_y)
    settings = BlenderCameraSettings(
        lens=cam.lens, sensor_width=cam.sensor_width, sensor_height=cam.sensor_height, sensor_fit=cam.sensor_fit,
        shift_x=cam.shift_x, shift_y=cam.shift_y, resolution_x=w, resolution_y=h, pixel_aspect_x=ax,
        pixel_aspect_y=ay, matrix_world=[list(row) for row in camera_object.matrix_world])
    return opencv_camera(settings)
