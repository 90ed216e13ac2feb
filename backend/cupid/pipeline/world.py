"""Every result comes out upright, and at real size where the point map is metric.

Scene mode: the objects are placed in the point-map camera's frame; :func:`upright_scene` moves that
whole world (camera and placements together, so every pixel keeps its point) onto the upright one of
`cupid.scene.upright.upright_world`. Object mode: the object's own frame is already upright;
:func:`stand_result` stands it on z = 0 centred on the origin, scaled to meters when *Real size* gave a
scale (:func:`real_size_scale`: the point map of the photo and scene mode's 3D-3D alignment), and moves
the camera with it. Nothing computed in a camera frame changes: a world move is applied to the camera
and to every placement at once.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import CupidError
from ..geometry import CameraPose, Similarity
from ..reconstruction import ReconstructedObject
from ..scene.upright import UprightWorld, stand_object, upright_world
from .scene import align_to_point_map, point_map

UNITS_METERS = "meters"
UNITS_RELATIVE = "relative"


def move_world(objects: Sequence[ReconstructedObject], camera: CameraPose, world: Similarity) -> CameraPose:
    """Apply the world move `world` to every object's placement (in place); returns the moved camera."""
    for obj in objects:
        obj.placement = world.compose(obj.placement)
    return camera.in_moved_world(world)


def alignment_confidence(placement: Similarity) -> float:
    """Share of an object's pairs its point-map alignment kept: how much the placement is to be trusted."""
    inliers = np.asarray(getattr(placement, "inliers", np.zeros(0, bool)), bool)
    return float(inliers.mean()) if inliers.size else 1.0


def upright_scene(objects: Sequence[ReconstructedObject], camera: CameraPose, points: np.ndarray,
                  valid: np.ndarray, alphas: Sequence[np.ndarray], *, seed: int = 0) -> tuple[CameraPose, UprightWorld]:
    """Scene mode's objects (placed in the point-map camera frame) and camera moved into an upright world;
    the objects' pixels are left out of the ground-plane search."""
    exclude = np.zeros(points.shape[:2], bool)
    for alpha in alphas:
        exclude |= np.asarray(alpha) > 0.5
    world = upright_world([o.placement for o in objects], [np.asarray(o.vertices) for o in objects],
                          weights=[max(alignment_confidence(o.placement), 1e-3) for o in objects],
                          points=points, valid=valid, exclude=exclude, seed=seed)
    return move_world(objects, camera, world), world


def real_size_scale(model: Any, photo: np.ndarray, obj: ReconstructedObject, alpha: np.ndarray, *,
                    seed: int = 0) -> float:
    """Meters per object-frame unit of one object: its pairs aligned (as scene mode places objects) to a
    metric point map of the photo. CupidError `real_size_failed` when the point map cannot place it."""
    points, valid, _ = point_map(model, photo, [obj.camera])
    try:
        placement = align_to_point_map(obj, alpha, points, valid, seed=seed, index=0)
    except CupidError as exc:
        raise CupidError(f"Real size could not measure the object: {exc.message}. Turn Real size off "
                         f"to get the object at relative size", code="real_size_failed") from None
    return float(placement.scale)


def stand_result(obj: ReconstructedObject, camera: CameraPose, scale: float | None) -> CameraPose:
    """Object mode's world: the object on z = 0, centred, `scale` meters per unit (None: relative, 1);
    its placement is set and the camera (solved in the object's frame) is returned moved with it."""
    world = stand_object(np.asarray(obj.vertices), 1.0 if scale is None else scale)
    obj.placement = world
    return camera.in_moved_world(world)
