"""OpenCV pinhole camera (K, R, t, W, H) -> Blender camera settings, as plain math (stdlib only).

The bpy half, which writes these settings into a camera datablock, is ``cupid_blender.camera``.

How Blender maps a camera to pixels (perspective, ``BKE_camera_params_compute_viewplane``):
with render size W×H, pixel aspect (ax, ay) and ``ycor = ay / ax``, the view plane spans
W pixels horizontally and ``ycor·H`` "x-pixel units" vertically; the sensor length along the
fitted axis covers ``viewfac`` of those units (``W`` for HORIZONTAL fit, ``ycor·H`` for VERTICAL),
and the lens shift moves the plane by ``shift·viewfac`` units. Hence, for HORIZONTAL fit:

    fx = lens · W / sensor,     fy = fx / ycor = fx · ax / ay,
    cx = W/2 − shift_x · viewfac,   cy = H/2 + shift_y · viewfac / ycor.

Choices made here (explicit, never AUTO):
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

