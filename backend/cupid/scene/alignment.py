"""Place each reconstructed object in the shared camera frame of a scene photo.

For object k CUPID gives pairs (x_i, u_i): voxel centres in the object frame and where they land in
the photo (uv of the ORIGINAL photo, see :mod:`cupid.geometry`). A monocular point map (MoGe:
H×W×3, camera frame, metric-ish, with a validity mask) gives the camera-frame surface point seen
at every pixel. Sampling the point map at u_i yields p_i, and a robust Umeyama fit of
``p_i ≈ s_k·R_k·x_i + t_k`` gives the similarity S_k: object frame -> camera frame. All objects
then share one frame, which is what makes a multi-object scene consistent.

Only voxels that the camera can actually see carry a valid pair (a hidden voxel's uv hits the
surface in front of it), so :func:`visible_points` keeps the front-most voxels per image cell using
the object's own solved camera; wrong pairs that remain (mask bleed, occlusion by other objects,
depth edges) are left to the robust fit.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..geometry import GRID_RES, Similarity, refine_similarity_along_rays, umeyama_robust

__all__ = ["Similarity", "sample_point_map", "point_map_from_depth", "visible_points", "align_object"]


def _check_map(point_map: Any, valid: Any) -> tuple[np.ndarray, np.ndarray]:
    pm = np.asarray(point_map)
    if pm.ndim != 3 or pm.shape[2] != 3:
        raise InputError(f"point map must have shape (H, W, 3), got {pm.shape}")
    if valid is None:
        vm = np.all(np.isfinite(pm), axis=2)
    else:
        vm = np.asarray(valid, dtype=bool)
        if vm.shape != pm.shape[:2]:
            raise InputError(f"validity mask shape {vm.shape} does not match point map {pm.shape[:2]}")
        vm = vm & np.all(np.isfinite(pm), axis=2)
    return pm, vm


def sample_point_map(point_map: Any, valid: Any, uv: Any) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear samples of a camera-frame point map at uv.

    Pixel (row i, column j) of the map holds the point seen through the pixel centre
    ``(j + 0.5, i + 0.5)``, so uv maps to the fractional index ``(u·W − 0.5, v·H − 0.5)``.
    Rule: a sample is valid only if all four neighbouring pixels exist and are valid
    (so uv within half a pixel of the border, and any sample touching an invalid pixel, are
    rejected rather than extrapolated). Returns (points (N, 3) float64, ok (N,) bool);
    points at rejected samples are NaN.
    """
    pm, vm = _check_map(point_map, valid)
    uv = np.asarray(uv, dtype=np.float64)
    if uv.ndim != 2 or uv.shape[1] != 2:
        raise InputError(f"uv must have shape (N, 2), got {uv.shape}")
    H, W = vm.shape
    x = uv[:, 0] * W - 0.5
    y = uv[:, 1] * H - 0.5
    if W < 2 or H < 2:
        raise InputError("point map must be at least 2x2 pixels")
    inside = np.isfinite(x) & np.isfinite(y) & (x >= 0) & (y >= 0) & (x <= W - 1) & (y <= H - 1)
    xi = np.clip(np.floor(np.where(inside, x, 0)), 0, W - 2).astype(np.int64)
    yi = np.clip(np.floor(np.where(inside, y, 0)), 0, H - 2).astype(np.int64)
    ok = inside & vm[yi, xi] & vm[yi, xi + 1] & vm[yi + 1, xi] & vm[yi + 1, xi + 1]
    fx = (x - xi)[:, None]
    fy = (y - yi)[:, None]
    pm = pm.astype(np.float64, copy=False)
    with np.errstate(invalid="ignore"):
        pts = ((1 - fx) * (1 - fy) * pm[yi, xi] + fx * (1 - fy) * pm[yi, xi + 1]
               + (1 - fx) * fy * pm[yi + 1, xi] + fx * fy * pm[yi + 1, xi + 1])
    pts[~ok] = np.nan
    return pts, ok


def point_map_from_depth(depth: Any, K: Any) -> np.ndarray:
    """Camera-frame point map (H, W, 3) from a z-depth map (H, W) and pixel intrinsics K:
    the point seen through pixel centre (j + 0.5, i + 0.5) at depth z."""
    z = np.asarray(depth, dtype=np.float64)
    if z.ndim != 2:
        raise InputError(f"depth must have shape (H, W), got {z.shape}")
    K = np.asarray(K, dtype=np.float64)
    H, W = z.shape
    j, i = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    rays = np.stack([j, i, np.ones_like(j)], -1) @ np.linalg.inv(K).T
    return rays * z[..., None]


def visible_points(points: Any, K: Any, R: Any, t: Any, image_size: Sequence[float], *,
                   res: int = GRID_RES, depth_tolerance: float = 2.0) -> np.ndarray:
    """Mask of voxel centres the camera sees (front-most per image cell), as a z-buffer of voxels.

    Image cells are one voxel footprint wide at the object's median depth; a voxel is visible if
    its depth is within ``depth_tolerance`` voxel sizes of the nearest voxel in its own or the 8
    neighbouring cells (conservative: voxels right beside a nearer depth edge count as hidden). The
    camera is the object's own (object frame, units of the [-0.5, 0.5]³ grid).
    """
    X = np.asarray(points, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != 3:
        raise InputError(f"points must have shape (N, 3), got {X.shape}")
    if len(X) == 0:
        return np.zeros(0, bool)
    K = np.asarray(K, float)
    xc = X @ np.asarray(R, float).T + np.asarray(t, float).reshape(3)
    z = xc[:, 2]
    front = z > 0
    if not front.any():
        return front
    px = (xc[:, :2] / np.where(front, z, 1.0)[:, None]) * np.diag(K)[:2] + K[:2, 2]
    voxel = 1.0 / res
    cell = max(float(np.sqrt(K[0, 0] * K[1, 1])) * voxel / float(np.median(z[front])), 1e-6)
    ij = np.floor(px[front] / cell).astype(np.int64)
    ij -= ij.min(0) - 1                      # one empty cell of margin on every side
    gw, gh = ij.max(0) + 2
    zbuf = np.full((gh, gw), np.inf)
    np.minimum.at(zbuf, (ij[:, 1], ij[:, 0]), z[front])
    # each voxel covers about one cell; take the min over 3x3 cells so that nearer surfaces whose
    # voxels project sparser than the cell grid still hide what lies behind them
    near = zbuf.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dx or dy:
                near[1:-1, 1:-1] = np.minimum(near[1:-1, 1:-1],
                                              zbuf[1 + dy:gh - 1 + dy, 1 + dx:gw - 1 + dx])
    vis = np.zeros(len(X), bool)
    vis[front] = z[front] <= near[ij[:, 1], ij[:, 0]] + depth_tolerance * voxel
    return vis & front


def align_object(points: Any, uv: Any, point_map: Any, valid_mask: Any = None, *,
                 object_mask: Any = None, visible: Any = None, with_scale: bool = True,
                 threshold: float | None = None, seed: int = 0, min_pairs: int = 10) -> Similarity:
    """Similarity S (object frame -> point-map camera frame) from an object's (points, uv) pairs.

    ``points`` (N, 3) object-frame voxel centres, ``uv`` (N, 2) their uv in the photo the point
    map (H, W, 3) belongs to; ``valid_mask`` (H, W) marks usable point-map pixels; the optional
    ``object_mask`` (H, W) restricts samples to the object's own pixels (all four bilinear
    neighbours inside it); ``visible`` (N,) bool keeps only pairs the camera sees (see
    :func:`visible_points`). The robust fit is :func:`cupid.geometry.umeyama_robust` (its inlier
    threshold follows the measured residuals), then its inliers are re-fitted with depth error and
    lateral error weighed apart (:func:`cupid.geometry.refine_similarity_along_rays`); the returned
    ``inliers`` mask is over all N input pairs (False for pairs never used).
    """
    X = np.asarray(points, dtype=np.float64)
    uv = np.asarray(uv, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != 3 or uv.shape != (len(X), 2):
        raise InputError(f"points (N, 3) and uv (N, 2) expected, got {X.shape} and {uv.shape}")
    pm, vm = _check_map(point_map, valid_mask)
    if object_mask is not None:
        om = np.asarray(object_mask, dtype=bool)
        if om.shape != vm.shape:
            raise InputError(f"object mask shape {om.shape} does not match point map {vm.shape}")
        vm = vm & om
    use = np.ones(len(X), bool) if visible is None else np.asarray(visible, dtype=bool).copy()
    if use.shape != (len(X),):
        raise InputError("visible must be a boolean mask with one entry per pair")
    dst, ok = sample_point_map(pm, vm, uv)
    use &= ok
    if use.sum() < min_pairs:
        raise InputError(f"only {int(use.sum())} pairs hit valid point-map pixels; "
                         f"at least {min_pairs} are needed to place the object")
    sim = umeyama_robust(X[use], dst[use], with_scale=with_scale, threshold=threshold, seed=seed)
    if with_scale and sim.inliers.sum() >= 7:
        # the point map's error runs along its rays (depth): re-weigh the inliers' residuals so
        refined = refine_similarity_along_rays(X[use][sim.inliers], dst[use][sim.inliers], sim)
        sim = Similarity(scale=refined.scale, R=refined.R, t=refined.t, inliers=sim.inliers, rms=refined.rms)
    full = np.zeros(len(X), bool)
    full[np.flatnonzero(use)[sim.inliers]] = True
    sim.inliers = full
    return sim
