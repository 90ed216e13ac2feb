"""The fit score: how well a reconstruction explains the photo, as silhouette IoU against each mask.

Why: a camera or shape that is off shows at once as a silhouette that does not cover the object's
mask. All objects are rasterised through the camera with one z-buffer, so an object is scored on the
pixels where it is in front (the part of it the photo can show), against its own mask (which, in a
scene, already excludes the pixels its occluders own).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..geometry import CameraPose
from .raster import rasterize_objects

__all__ = ["front_object_ids", "fit_ious"]


def front_object_ids(meshes: Sequence[tuple[Any, Any]], camera: CameraPose) -> np.ndarray:
    """int32 [H, W]: index of the front-most object at each pixel, -1 where none is. `meshes` are
    (world vertices [V, 3], faces [F, 3]) pairs."""
    return rasterize_objects(meshes, camera.K, camera.R, camera.t, camera.width, camera.height)[3]


def fit_ious(meshes: Sequence[tuple[Any, Any]], masks: Sequence[Any], camera: CameraPose) -> list[float | None]:
    """Per object, IoU of its visible silhouette with its mask (alpha > 0.5); None where no mask is known."""
    ids = front_object_ids(meshes, camera)
    out: list[float | None] = []
    for k, mask in enumerate(masks):
        if mask is None:
            out.append(None)
            continue
        m = np.asarray(mask, np.float32) > 0.5
        if m.shape != ids.shape:
            raise ValueError(f"mask {k} is {m.shape[1]}x{m.shape[0]} but the camera's image is "
                             f"{camera.width}x{camera.height}")
        sil = ids == k
        union = int(np.count_nonzero(sil | m))
        out.append(float(np.count_nonzero(sil & m)) / union if union else 0.0)
    return out
