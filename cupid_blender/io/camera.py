"""OpenCV pinhole camera (K, R, t, W, H) <-> Blender camera settings, as plain math (no bpy).

The bpy half, which writes these settings into a camera datablock and reads them back, is
``cupid_blender.camera``. :func:`blender_camera_settings` goes one way, :func:`opencv_camera` the
other, for any perspective camera the artist may have made of it (any sensor fit, sensor size,
lens, shift, pixel aspect and placement).

How Blender maps a camera to pixels (perspective, ``BKE_camera_params_compute_viewplane``):
with render size W×H, pixel aspect (ax, ay) and ``ycor = ay / ax``, the view plane spans
W pixels horizontally and ``ycor·H`` "x-pixel units" vertically; the sensor length along the
fitted axis covers ``viewfac`` of those units (``W`` for HORIZONTAL fit, ``ycor·H`` for VERTICAL),
and the lens shift moves the plane by ``shift·viewfac`` units. Hence, for HORIZONTAL fit:

    fx = lens · W / sensor,     fy = fx / ycor = fx · ax / ay,
    cx = W/2 − shift_x · viewfac,   cy = H/2 + shift_y · viewfac / ycor.

The sensor length is ``sensor_height`` for VERTICAL fit and ``sensor_width`` otherwise (AUTO
included); AUTO fits HORIZONTAL when ``W·ax ≥ H·ay`` (``BKE_camera_sensor_size``/``_fit``).

Choices made when writing (explicit, never AUTO):
- ``sensor_fit`` is HORIZONTAL when the displayed image is at least as wide as tall
  (W·ax ≥ H·ay), VERTICAL otherwise, i.e. the sensor size always refers to the long side, which is
  what Blender's AUTO does too; ``sensor_width = sensor_height = 36 mm``.
- fx ≠ fy is expressed by the pixel aspect ratio (the larger of the two entries is ≥ 1, the other 1).
- Zero skew is required (|K[0,1]| ≤ 1e-6·fx); Blender cannot represent skew.
Axes: OpenCV cameras look down +Z with +Y down; Blender cameras look down −Z with +Y up, so the
camera's local frame is OpenCV's flipped by F = diag(1, −1, −1) and
``matrix_world = [[Rᵀ·F, −Rᵀ·t], [0, 0, 0, 1]]`` (world = the frame in which x_cam = R·x + t).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List

import numpy as np

SENSOR_MM = 36.0

Matrix = List[List[float]]


def _mat3(m: Any) -> Matrix:
    rows = [[float(v) for v in row] for row in m]
    if len(rows) != 3 or any(len(r) != 3 for r in rows):
        raise ValueError("expected a 3x3 matrix")
    return rows


def _vec3(v: Any) -> List[float]:
    out = [float(x) for x in (v.tolist() if hasattr(v, "tolist") else v)]
    if len(out) != 3:
        raise ValueError("expected a 3-vector")
    return out


@dataclass
class BlenderCameraSettings:
    """Everything ``cupid_blender.camera.add_camera`` writes, as plain numbers (testable without Blender)."""

    lens: float                    # focal length, mm
    sensor_width: float            # mm
    sensor_height: float           # mm
    sensor_fit: str                # 'HORIZONTAL' or 'VERTICAL'
    shift_x: float
    shift_y: float
    resolution_x: int
    resolution_y: int
    pixel_aspect_x: float
    pixel_aspect_y: float
    matrix_world: Matrix = field(default_factory=list)  # 4x4, row-major
    clip_start: float = 0.01
    clip_end: float = 1000.0


def blender_camera_settings(K: Any, R: Any, t: Any, width: int, height: int) -> BlenderCameraSettings:
    """Blender camera data/object/render settings reproducing the OpenCV camera exactly."""
    K = _mat3(K)
    R = _mat3(R)
    t = _vec3(t)
    W, H = int(width), int(height)
    if W <= 0 or H <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    fx, fy, cx, cy = K[0][0], K[1][1], K[0][2], K[1][2]
    if not (fx > 0 and fy > 0) or abs(K[2][2] - 1.0) > 1e-9 or K[1][0] or K[2][0] or K[2][1]:
        raise ValueError("K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with positive focals")
    if abs(K[0][1]) > 1e-6 * fx:
        raise ValueError("Blender cameras cannot represent a skewed K (K[0][1] != 0)")

    # pixel aspect: fy / fx = ax / ay, with min(ax, ay) = 1 (Blender expects values >= 1)
    if fy >= fx:
        ax, ay = fy / fx, 1.0
    else:
        ax, ay = 1.0, fx / fy
    ycor = ay / ax
    horizontal = W * ax >= H * ay
    if horizontal:
        fit, viewfac = "HORIZONTAL", float(W)
        lens = fx * SENSOR_MM / W
    else:
        fit, viewfac = "VERTICAL", ycor * H
        lens = fx * SENSOR_MM / viewfac
    shift_x = (W / 2.0 - cx) / viewfac
    shift_y = ycor * (cy - H / 2.0) / viewfac

    # camera-to-world: x_world = Rᵀ (F x_local − t) with F = diag(1, -1, -1)
    Rt = [[R[j][i] for j in range(3)] for i in range(3)]
    F = (1.0, -1.0, -1.0)
    M: Matrix = [[Rt[i][j] * F[j] for j in range(3)] for i in range(3)]
    c = [-sum(Rt[i][j] * t[j] for j in range(3)) for i in range(3)]
    matrix_world = [M[0] + [c[0]], M[1] + [c[1]], M[2] + [c[2]], [0.0, 0.0, 0.0, 1.0]]
    dist = math.sqrt(sum(v * v for v in c))
    return BlenderCameraSettings(
        lens=lens, sensor_width=SENSOR_MM, sensor_height=SENSOR_MM, sensor_fit=fit,
        shift_x=shift_x, shift_y=shift_y, resolution_x=W, resolution_y=H,
        pixel_aspect_x=ax, pixel_aspect_y=ay, matrix_world=matrix_world,
        clip_start=max(1e-4, 1e-3 * dist), clip_end=max(1000.0, 100.0 * dist),
    )



def _rotation_part(M: np.ndarray) -> np.ndarray:
    """The rotation of a camera's 3x3 world matrix: its columns normalised (a scaled camera object
    sees what an unscaled one sees: Blender normalises the camera matrix too), then the nearest
    rotation (float32 storage leaves the columns orthogonal only to ~1e-7)."""
    norms = np.linalg.norm(M, axis=0)
    if not np.all(norms > 1e-12):
        raise ValueError("the camera object is scaled to zero along an axis")
    U, _, Vt = np.linalg.svd(M / norms)
    Rw = U @ Vt
    if np.linalg.det(Rw) < 0:
        raise ValueError("the camera object is mirrored (a negative scale): Blender cameras cannot be read back")
    return Rw


def opencv_camera(s: BlenderCameraSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """(K, R, t, W, H) in OpenCV convention of a Blender perspective camera: the inverse of
    :func:`blender_camera_settings`, by the view-plane rules in this module's docstring.
    K is in pixels of the W×H render (x_cam = R·x_world + t, pixel = K·x_cam / z)."""
    W, H = int(s.resolution_x), int(s.resolution_y)
    ax, ay = float(s.pixel_aspect_x), float(s.pixel_aspect_y)
    if W <= 0 or H <= 0 or ax <= 0 or ay <= 0:
        raise ValueError(f"the render size {W}x{H} (pixel aspect {ax}:{ay}) is empty")
    if s.lens <= 0:
        raise ValueError("the camera's focal length must be positive")
    ycor = ay / ax
    fit = s.sensor_fit
    sensor = s.sensor_height if fit == "VERTICAL" else s.sensor_width
    if fit == "AUTO":
        fit = "HORIZONTAL" if W * ax >= H * ay else "VERTICAL"
    viewfac = float(W) if fit == "HORIZONTAL" else ycor * H
    f = s.lens * viewfac / sensor
    K = np.array([[f, 0.0, W / 2.0 - s.shift_x * viewfac],
                  [0.0, f / ycor, H / 2.0 + s.shift_y * viewfac / ycor],
                  [0.0, 0.0, 1.0]])
    M = np.asarray(s.matrix_world, dtype=np.float64).reshape(4, 4)
    R = np.diag([1.0, -1.0, -1.0]) @ _rotation_part(M[:3, :3]).T   # M[:3, :3] = Rᵀ·F
    t = -R @ M[:3, 3]                                                # M[:3, 3] = −Rᵀ·t
    return K, R, t, W, H


def scale_camera_K(K: Any, width: int, height: int, to_width: int, to_height: int) -> np.ndarray:
    """K of a W×H image expressed in pixels of the same picture stretched to another size (pixel
    coordinates from the top-left corner scale by to_width/width and to_height/height)."""
    S = np.diag([to_width / width, to_height / height, 1.0])
    return S @ np.asarray(K, dtype=np.float64)


def camera_in_object_frame(R: Any, t: Any, matrix_world: Any) -> tuple[np.ndarray, np.ndarray]:
    """(R, t) of an OpenCV world camera seen from an object's own frame, given the object's matrix_world
    (object -> world, ``[s·R_o | t_o]``): the frame a refine's camera is sent in. A pinhole image does
    not change when the camera frame is scaled, so ``R' = R·R_o`` and ``t' = (R·t_o + t) / s``. Raises
    ValueError for a matrix that is not a uniform scale times a rotation (the object was squashed,
    sheared or mirrored)."""
    M = np.asarray(matrix_world, dtype=np.float64).reshape(4, 4)
    A = M[:3, :3]
    det = float(np.linalg.det(A))
    if not det > 0:
        raise ValueError("the object is mirrored or scaled to zero")
    s = det ** (1.0 / 3.0)
    R_o = A / s
    if np.abs(R_o @ R_o.T - np.eye(3)).max() > 1e-4:
        raise ValueError("the object is scaled unevenly or sheared: reset its scale to one value on every axis")
    R = np.asarray(R, dtype=np.float64).reshape(3, 3)
    t = np.asarray(t, dtype=np.float64).reshape(3)
    return R @ R_o, (R @ M[:3, 3] + t) / s
