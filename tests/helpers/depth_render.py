"""A z-buffer rasteriser of triangle meshes (numpy): the true depth and object id of every pixel.

Pixel (row i, column j) holds what the ray through the pixel centre (j + 0.5, i + 0.5) hits first;
1/z is interpolated linearly in the image, which is exact for planar triangles, so
`point_map_from_depth(depth, K)` is the exact camera-frame point map of the scene.
"""
from __future__ import annotations

import numpy as np


def render_depth(meshes: list[tuple[np.ndarray, np.ndarray]], K: np.ndarray, R: np.ndarray, t: np.ndarray,
                 width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(depth (H, W), inf where nothing is hit; ids (H, W), index into `meshes` or -1) for world-frame
    meshes seen by the OpenCV camera x_cam = R x + t with pixel intrinsics K."""
    depth = np.full((height, width), np.inf)
    ids = np.full((height, width), -1)
    for k, (v, f) in enumerate(meshes):
        cam = np.asarray(v, float) @ np.asarray(R, float).T + np.asarray(t, float)
        if np.any(cam[:, 2] <= 1e-9):
            raise ValueError("every vertex must lie in front of the camera")
        h = cam @ np.asarray(K, float).T
        px = h[:, :2] / h[:, 2:3]
        for a, b, c in np.asarray(f):
            _raster_triangle(px[[a, b, c]], cam[[a, b, c], 2], k, depth, ids)
    return depth, ids


def _raster_triangle(p: np.ndarray, z: np.ndarray, k: int, depth: np.ndarray, ids: np.ndarray) -> None:
    height, width = depth.shape
    x0 = max(int(np.floor(p[:, 0].min() - 0.5)), 0)
    x1 = min(int(np.ceil(p[:, 0].max() - 0.5)), width - 1)
    y0 = max(int(np.floor(p[:, 1].min() - 0.5)), 0)
    y1 = min(int(np.ceil(p[:, 1].max() - 0.5)), height - 1)
    if x0 > x1 or y0 > y1:
        return
    area = (p[1, 0] - p[0, 0]) * (p[2, 1] - p[0, 1]) - (p[2, 0] - p[0, 0]) * (p[1, 1] - p[0, 1])
    if abs(area) < 1e-12:
        return
    xs, ys = np.meshgrid(np.arange(x0, x1 + 1) + 0.5, np.arange(y0, y1 + 1) + 0.5)
    w = []
    for i in range(3):
        q, r = p[(i + 1) % 3], p[(i + 2) % 3]
        w.append(((r[0] - q[0]) * (ys - q[1]) - (xs - q[0]) * (r[1] - q[1])) / area)
    w0, w1, w2 = w
    inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
    if not inside.any():
        return
    zz = 1.0 / (w0 / z[0] + w1 / z[1] + w2 / z[2])
    win = depth[y0:y1 + 1, x0:x1 + 1]
    nearer = inside & (zz < win)
    win[nearer] = zz[nearer]
    ids[y0:y1 + 1, x0:x1 + 1][nearer] = k
