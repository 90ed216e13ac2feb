"""`cupid_blender.camera.read_camera` in a clean headless Blender with the installed zip: cameras made
by `add_camera` read back, then moved, re-lensed, shifted, re-fitted and re-sized the way an artist
would, each compared with Blender's own projection (`bpy_extras.object_utils.world_to_camera_view`).

    python read_camera.py CONFIG_JSON

CONFIG_JSON: {"zip", "result", "cases": [{"name", "K", "R", "t", "width", "height"}, ...]}.
"""
from __future__ import annotations

import math
import sys

import bpy  # first: it puts Blender's script modules on sys.path
import numpy as np
from bpy_extras.object_utils import world_to_camera_view  # noqa: E402
from mathutils import Euler, Vector  # noqa: E402

from common import install, run_driver  # noqa: E402


def blender_pixels(scene, cam, points: np.ndarray) -> np.ndarray:
    """Pixels (x right, y down, from the top-left corner) where Blender's own camera-view
    projection puts world points."""
    W, H = scene.render.resolution_x, scene.render.resolution_y
    out = []
    for p in points:
        ndc = world_to_camera_view(scene, cam, Vector(p.tolist()))
        out.append([ndc.x * W, (1.0 - ndc.y) * H])
    return np.array(out)


def opencv_pixels(K, R, t, points: np.ndarray) -> np.ndarray:
    xc = points @ np.asarray(R).T + np.asarray(t)
    px = xc @ np.asarray(K).T
    return px[:, :2] / px[:, 2:3]


def points_in_view(K, R, t, W, H, rng) -> np.ndarray:
    """World points spread over the view, 1.5 to 4 units in front of the camera."""
    uv = rng.uniform([0.05 * W, 0.05 * H], [0.95 * W, 0.95 * H], size=(40, 2))
    z = rng.uniform(1.5, 4.0, size=(40, 1))
    rays = np.concatenate([uv, np.ones((40, 1))], axis=1) @ np.linalg.inv(np.asarray(K)).T
    xc = rays * z
    return (xc - np.asarray(t)) @ np.asarray(R)   # R^T (x_c - t)


def check(scene, cam, camera_mod, rng) -> dict:
    """read_camera against Blender's projection of 40 points in view."""
    bpy.context.view_layer.update()
    K, R, t, W, H = camera_mod.read_camera(scene, cam)
    pts = points_in_view(K, R, t, W, H, rng)
    err = np.abs(blender_pixels(scene, cam, pts) - opencv_pixels(K, R, t, pts)).max()
    return {"K": np.asarray(K).tolist(), "R": np.asarray(R).tolist(), "t": np.asarray(t).tolist(),
            "size": [W, H], "max_px_error": float(err), "orthonormal": float(np.abs(R @ R.T - np.eye(3)).max())}


def main(cfg: dict) -> dict:
    name, _ = install(cfg["zip"], sys.executable)
    camera_mod = sys.modules[name + ".camera"]
    scene = bpy.context.scene
    rng = np.random.default_rng(0)
    out: dict = {"round_trip": {}, "edited": {}}
    for case in cfg["cases"]:
        cam = camera_mod.add_camera(scene, case["K"], case["R"], case["t"], case["width"], case["height"],
                                    name=case["name"])
        K, R, t, W, H = camera_mod.read_camera(scene, cam)
        out["round_trip"][case["name"]] = {"K": np.asarray(K).tolist(), "R": np.asarray(R).tolist(),
                                           "t": np.asarray(t).tolist(), "size": [W, H],
                                           "projection": check(scene, cam, camera_mod, rng)}

    # the artist edits the last camera, one thing after another; each state is checked on its own
    cam = bpy.data.objects[cfg["cases"][-1]["name"]]
    r = scene.render
    def moved() -> None:
        cam.location = cam.location + Vector((0.3, -0.2, 0.15))
        e = cam.rotation_euler
        cam.rotation_euler = Euler((e.x + 0.1, e.y - 0.05, e.z + 0.2))

    def fov_unit() -> None:
        cam.data.lens_unit = "FOV"
        cam.data.angle = math.radians(50)

    edits = [
        ("moved", moved),
        ("re_lensed", lambda: setattr(cam.data, "lens", cam.data.lens * 1.3)),
        ("shifted", lambda: (setattr(cam.data, "shift_x", 0.07), setattr(cam.data, "shift_y", -0.04))),
        ("auto_fit", lambda: (setattr(cam.data, "sensor_fit", "AUTO"), setattr(cam.data, "sensor_width", 23.5))),
        ("vertical_fit", lambda: (setattr(cam.data, "sensor_fit", "VERTICAL"),
                                  setattr(cam.data, "sensor_height", 15.6))),
        ("resized", lambda: (setattr(r, "resolution_x", 300), setattr(r, "resolution_y", 500))),
        ("pixel_aspect", lambda: setattr(r, "pixel_aspect_x", 1.4)),
        ("auto_portrait", lambda: setattr(cam.data, "sensor_fit", "AUTO")),
        ("scaled_object", lambda: setattr(cam, "scale", (2.0, 2.0, 2.0))),
        ("fov_unit", fov_unit),
    ]
    for label, edit in edits:
        edit()
        out["edited"][label] = check(scene, cam, camera_mod, rng)
    cam.data.type = "ORTHO"
    try:
        camera_mod.read_camera(scene, cam)
        out["ortho"] = "accepted"
    except ValueError as exc:
        out["ortho"] = str(exc)
    return out


if __name__ == "__main__":
    run_driver(main)
