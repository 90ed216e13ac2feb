"""Stage 1's preview (``GET /v1/jobs/{id}/preview``, or a bundle's ``preview.json``) read and checked
without bpy: the solved camera and the occupied voxels, shown while stage 2 still runs.

Voxel (i, j, k) of a ``res``³ grid has its centre at ``(i + 0.5) / res − 0.5`` on each axis, in the
object frame (Z up), the frame the camera's R, t map from.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .bundle import finite_array
from .camera import scale_camera_K


@dataclass(frozen=True)
class PreviewData:
    """The camera (OpenCV, pixels of a width × height photo) and the occupied voxels of a res³ grid."""

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int
    res: int
    voxels: np.ndarray   # int64 [M, 3]

    def centres(self) -> np.ndarray:
        """float32 [M, 3]: the voxels' centres in the object frame."""
        return ((self.voxels.astype(np.float64) + 0.5) / self.res - 0.5).astype(np.float32)

    def in_pixels_of(self, width: int, height: int) -> "PreviewData":
        """The same preview with K in pixels of the photo at another size (a downscaled upload's
        preview shown on the artist's full-size photo)."""
        if (width, height) == (self.width, self.height):
            return self
        return replace(self, K=scale_camera_K(self.K, self.width, self.height, width, height),
                       width=int(width), height=int(height))


def _array(value: Any, shape: tuple, what: str) -> np.ndarray:
    return finite_array(value, shape, what, where="the preview", error=ValueError)


def read_preview(data: Any) -> PreviewData:
    """A preview JSON checked completely; ValueError with a one-line reason otherwise."""
    try:
        camera = data["camera"]
        K, R, t = _array(camera["K"], (3, 3), "K"), _array(camera["R"], (3, 3), "R"), _array(camera["t"], (3,), "t")
        width, height, res = int(data["width"]), int(data["height"]), int(data["res"])
        raw = data["voxels"]
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith("the preview:"):
            raise
        raise ValueError(f"the preview lacks a camera, size, res or voxels ({exc!r})") from exc
    if width < 1 or height < 1 or res < 1:
        raise ValueError(f"the preview's size {width}x{height} or grid {res} is empty")
    try:
        voxels = np.asarray(raw, dtype=np.int64).reshape(-1, 3)
    except (TypeError, ValueError) as exc:
        raise ValueError("the preview's voxels are not [i, j, k] triples of integers") from exc
    if voxels.size and (voxels.min() < 0 or voxels.max() >= res):
        raise ValueError(f"the preview's voxels lie outside its {res}^3 grid")
    return PreviewData(K, R, t, width, height, res, voxels)
