"""Camera and similarity geometry shared by the backend (numpy only).

Conventions (authoritative for the whole project)
-------------------------------------------------
Object frame
    The sparse-structure grid has ``res = 64`` voxels per axis over the cube [-0.5, 0.5]³.
    Voxel index ``i`` (per axis) has its centre at ``(i + 0.5) / res - 0.5``. Objects are Z-up.
Camera (OpenCV)
    ``x_cam = R @ x + t``; a point is in front of the camera when ``z_cam > 0``;
    ``pixel = (K @ x_cam) / z_cam`` (first two entries). K is in pixels of the image the uv refer to
    (the crop while solving, the original photo after :meth:`CameraPose.de_crop`).
Pixels and uv
    Pixel coordinates are continuous: (0, 0) is the top-left CORNER of the image, (W, H) the
    bottom-right corner, so the centre of pixel column j is at x = j + 0.5.
    uv are normalised image coordinates: ``u`` right, ``v`` down, ``pixel = (u * W, v * H)``;
    the image covers [0, 1]². ``image_size`` is always ``(W, H)``.
Similarity
    ``dst = scale * R @ src + t`` with ``R`` a proper rotation (det +1), ``scale > 0``.

Why this module exists: CUPID predicts, for every occupied voxel, where it lands in the photo
(a "UV cube"). The camera is recovered from those (point, uv) pairs by :func:`solve_camera`;
several objects of one scene are placed in a common camera frame by :func:`umeyama_robust`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import InputError

GRID_RES = 64

__all__ = [
    "GRID_RES",
    "CameraPose",
    "CameraSolution",
    "Similarity",
    "project",
    "uv_cube",
    "voxel_centers",
    "uv_pairs",
    "uncrop_uv",
    "solve_camera",
    "decompose_projection",
    "umeyama",
    "umeyama_robust",
    "rotation_angle_deg",
    "rodrigues",
]


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------

def _as_points(points: Any, dim: int, name: str) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise InputError(f"{name} must have shape (N, {dim}), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or infinite values")
    return arr


def _image_size(image_size: Sequence[float]) -> tuple[float, float]:
    try:
        w, h = (float(image_size[0]), float(image_size[1]))
    except (TypeError, IndexError, ValueError) as exc:
        raise InputError(f"image_size must be (W, H), got {image_size!r}") from exc
    if not (w > 0 and h > 0 and np.isfinite(w) and np.isfinite(h)):
        raise InputError(f"image_size must be positive (W, H), got {image_size!r}")
    return w, h


def _skew(v: np.ndarray) -> np.ndarray:
    """Cross-product matrices for vectors of shape (..., 3)."""
    z = np.zeros(v.shape[:-1])
    return np.stack([
        np.stack([z, -v[..., 2], v[..., 1]], -1),
        np.stack([v[..., 2], z, -v[..., 0]], -1),
        np.stack([-v[..., 1], v[..., 0], z], -1),
    ], -2)


def rodrigues(w: np.ndarray) -> np.ndarray:
    """Rotation matrix exp([w]x) of an axis-angle vector (radians)."""
    w = np.asarray(w, dtype=np.float64)
    theta = float(np.linalg.norm(w))
    if theta < 1e-12:
        return np.eye(3) + _skew(w)
    k = _skew(w / theta)
    return np.eye(3) + np.sin(theta) * k + (1.0 - np.cos(theta)) * (k @ k)


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle of the rotation R_a·R_bᵀ in degrees (geodesic distance), precise for tiny angles."""
    d = np.asarray(R_a, float) @ np.asarray(R_b, float).T
    sin_half = np.linalg.norm(d - d.T) / (2.0 * np.sqrt(2.0))  # = |sin θ|
    cos_ = (np.trace(d) - 1.0) / 2.0
    return float(np.degrees(np.arctan2(sin_half, cos_)))


def _distinct_samples(rng: np.random.Generator, n: int, batch: int, k: int) -> np.ndarray:
    """``batch`` random index sets of ``k`` distinct indices in [0, n) (n > k), shape (batch, k)."""
    out = rng.integers(0, n, size=(batch, k))
    while True:
        srt = np.sort(out, axis=1)
        dup = np.any(srt[:, 1:] == srt[:, :-1], axis=1)
        if not dup.any():
            return out
        out[dup] = rng.integers(0, n, size=(int(dup.sum()), k))


def _nearest_rotation(M: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(M)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt)) or 1.0])
    return U @ D @ Vt


# --------------------------------------------------------------------------------------------
# camera pose container
# --------------------------------------------------------------------------------------------

@dataclass
class CameraPose:
    """An OpenCV pinhole camera with the size of the image its K refers to.

    ``K`` 3×3 in pixels (K[2,2] = 1), ``R`` 3×3 rotation, ``t`` (3,), ``width``/``height`` in pixels.
    """

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        self.K = np.asarray(self.K, dtype=np.float64).reshape(3, 3)
        self.R = np.asarray(self.R, dtype=np.float64).reshape(3, 3)
        self.t = np.asarray(self.t, dtype=np.float64).reshape(3)
        self.width = int(self.width)
        self.height = int(self.height)

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.width, self.height)

    def projection_matrix(self) -> np.ndarray:
        """P = K [R | t] (3×4), mapping homogeneous object points to homogeneous pixels."""
        return self.K @ np.concatenate([self.R, self.t[:, None]], axis=1)

    def camera_center(self) -> np.ndarray:
        """Camera centre in the object/world frame: C = -Rᵀ t."""
        return -self.R.T @ self.t

    def project(self, points: Any) -> np.ndarray:
        """uv of object-frame points in this camera's image (see :func:`project`)."""
        return project(points, self.K, self.R, self.t, self.image_size)

    def de_crop(self, scale: float, offset: Sequence[float],
                image_size: Sequence[int] | None = None) -> "CameraPose":
        """Re-express this camera, solved in a crop, in the pixels of the original photo.

        The crop is related to the original photo by ``p_orig = scale * p_crop + offset``
        (continuous pixel coordinates, corner convention): ``offset = (x_off, y_off)`` is where
        the crop's top-left corner lies in the original photo, ``scale`` is how many original
        pixels one crop pixel spans (crop side in the photo / crop side in pixels). Hence
        ``fx' = s·fx, fy' = s·fy, cx' = s·cx + x_off, cy' = s·cy + y_off``; R and t are unchanged.
        ``image_size`` is the original photo's (W, H); if omitted, the size the crop covers in
        the photo (``round(scale * W_crop)``, ``round(scale * H_crop)``) is used.
        """
        s = float(scale)
        if not (s > 0 and np.isfinite(s)):
            raise InputError(f"crop scale must be positive, got {scale!r}")
        ox, oy = float(offset[0]), float(offset[1])
        A = np.array([[s, 0.0, ox], [0.0, s, oy], [0.0, 0.0, 1.0]])
        if image_size is None:
            w, h = int(round(s * self.width)), int(round(s * self.height))
        else:
            w, h = int(image_size[0]), int(image_size[1])
        return CameraPose(A @ self.K, self.R.copy(), self.t.copy(), w, h)

    def to_dict(self) -> dict:
        """JSON-ready dict in the ``scene.json`` camera layout (plus width/height)."""
        return {
            "convention": "opencv",
            "K": self.K.tolist(),
            "R": self.R.tolist(),
            "t": self.t.tolist(),
            "width": self.width,
            "height": self.height,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], width: int | None = None,
                  height: int | None = None) -> "CameraPose":
        """Inverse of :meth:`to_dict`; width/height may come from the arguments (scene.json keeps
        them under ``image``)."""
        conv = data.get("convention", "opencv")
        if conv != "opencv":
            raise InputError(f"unsupported camera convention {conv!r} (expected 'opencv')")
        w = data.get("width", width)
        h = data.get("height", height)
        if w is None or h is None:
            raise InputError("camera dict has no width/height and none were given")
        try:
            return cls(np.array(data["K"], float), np.array(data["R"], float),
                       np.array(data["t"], float), int(w), int(h))
        except (KeyError, ValueError) as exc:
            raise InputError(f"malformed camera dict: {exc}") from exc


# --------------------------------------------------------------------------------------------
# projection and UV cubes
# --------------------------------------------------------------------------------------------

def project(points: Any, K: Any, R: Any, t: Any, image_size: Sequence[float],
            return_depth: bool = False):
    """Project object-frame points (N, 3) to uv (N, 2).

    Points with ``z_cam <= 0`` (at or behind the camera) get NaN uv. With ``return_depth`` the
    camera-frame depth ``z_cam`` (N,) is returned as well.
    """
    pts = _as_points(points, 3, "points")
    w, h = _image_size(image_size)
    K = np.asarray(K, float)
    R = np.asarray(R, float)
    t = np.asarray(t, float).reshape(3)
    xc = pts @ R.T + t
    z = xc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        pix = xc @ K.T
        uv = pix[:, :2] / pix[:, 2:3] / np.array([w, h])
    uv[~(z > 0)] = np.nan
    return (uv, z) if return_depth else uv


def voxel_centers(indices: Any, res: int = GRID_RES) -> np.ndarray:
    """Object-frame centres (N, 3) of integer voxel indices (N, 3): (i + 0.5) / res - 0.5."""
    idx = np.asarray(indices)
    if idx.ndim != 2 or idx.shape[1] != 3:
        raise InputError(f"voxel indices must have shape (N, 3), got {idx.shape}")
    return (idx.astype(np.float64) + 0.5) / res - 0.5


def _active_indices(occupancy: Any) -> np.ndarray:
    occ = np.asarray(occupancy)
    if occ.ndim != 3 or not (occ.shape[0] == occ.shape[1] == occ.shape[2]):
        raise InputError(f"occupancy must be a cubic (res, res, res) grid, got {occ.shape}")
    return np.argwhere(occ > 0)


def uv_cube(occupancy: Any, K: Any, R: Any, t: Any, image_size: Sequence[float],
            clip: bool = False) -> np.ndarray:
    """UV cube (res, res, res, 2) float32: the uv of every active voxel centre, 0 elsewhere.

    ``occupancy`` is a (res, res, res) grid; voxels with a value > 0 are active. Every active
    voxel must lie in front of the camera (InputError otherwise). With ``clip`` the uv are
    clamped to [0, 1] (CUPID's stage-2 conditioning clamps them).
    """
    idx = _active_indices(occupancy)
    res = np.asarray(occupancy).shape[0]
    cube = np.zeros((res, res, res, 2), dtype=np.float32)
    if len(idx) == 0:
        return cube
    uv, z = project(voxel_centers(idx, res), K, R, t, image_size, return_depth=True)
    if np.any(z <= 0):
        raise InputError(f"{int(np.sum(z <= 0))} active voxels lie behind the camera")
    if clip:
        uv = np.clip(uv, 0.0, 1.0)
    cube[idx[:, 0], idx[:, 1], idx[:, 2]] = uv
    return cube


def uv_pairs(occupancy: Any, cube: Any) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, 3), uv (N, 2)) of the active voxels of ``occupancy`` read from a UV cube."""
    idx = _active_indices(occupancy)
    cube = np.asarray(cube)
    res = np.asarray(occupancy).shape[0]
    if cube.shape != (res, res, res, 2):
        raise InputError(f"uv cube must have shape {(res, res, res, 2)}, got {cube.shape}")
    uv = cube[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.float64)
    return voxel_centers(idx, res), uv


def uncrop_uv(uv: Any, scale: float, offset: Sequence[float], crop_size: Sequence[float],
              image_size: Sequence[float]) -> np.ndarray:
    """uv in a crop -> uv in the original photo, with the crop transform of
    :meth:`CameraPose.de_crop` (``p_orig = scale * p_crop + offset``, pixels, corner convention)."""
    uv = np.asarray(uv, dtype=np.float64)
    cw, ch = _image_size(crop_size)
    w, h = _image_size(image_size)
    px = uv * np.array([cw, ch]) * float(scale) + np.asarray(offset, dtype=np.float64)
    return px / np.array([w, h])


# --------------------------------------------------------------------------------------------
# camera solving
# --------------------------------------------------------------------------------------------

@dataclass
class CameraSolution:
    """Result of :func:`solve_camera`: the camera plus how well it explains the pairs."""

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int
    inliers: np.ndarray            # bool (N,): pairs within the inlier threshold of the final fit
    rms_px: float                  # reprojection RMS over inliers, pixels
    threshold_px: float            # inlier threshold used
    iterations: int = 0            # RANSAC hypotheses drawn
    residuals_px: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def pose(self) -> CameraPose:
        return CameraPose(self.K, self.R, self.t, self.width, self.height)

    @property
    def inlier_ratio(self) -> float:
        return float(np.mean(self.inliers)) if self.inliers.size else 0.0


def _normalise_3d(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hartley: centroid to origin, mean distance √3. Returns (homogeneous normalised (N,4), T)."""
    c = X.mean(0)
    d = np.sqrt(((X - c) ** 2).sum(1)).mean()
    s = np.sqrt(3.0) / max(d, 1e-300)
    T = np.eye(4)
    T[:3, :3] *= s
    T[:3, 3] = -s * c
    Xn = np.empty((len(X), 4))
    Xn[:, :3] = (X - c) * s
    Xn[:, 3] = 1.0
    return Xn, T


def _normalise_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = x.mean(0)
    d = np.sqrt(((x - c) ** 2).sum(1)).mean()
    s = np.sqrt(2.0) / max(d, 1e-300)
    T = np.array([[s, 0, -s * c[0]], [0, s, -s * c[1]], [0, 0, 1.0]])
    return (x - c) * s, T


def _dlt_normal_matrix(Xn: np.ndarray, xn: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """AᵀWA (12×12) of the DLT system, without materialising A (2N×12)."""
    u, v = xn[:, 0], xn[:, 1]
    ww = np.ones(len(Xn)) if w is None else w
    XX = (Xn * ww[:, None]).T @ Xn                      # Σ w X Xᵀ
    Xu = (Xn * (ww * u)[:, None]).T @ Xn                # Σ w u X Xᵀ
    Xv = (Xn * (ww * v)[:, None]).T @ Xn
    Xuv2 = (Xn * (ww * (u * u + v * v))[:, None]).T @ Xn
    M = np.zeros((12, 12))
    M[0:4, 0:4] = XX
    M[4:8, 4:8] = XX
    M[0:4, 8:12] = -Xu
    M[8:12, 0:4] = -Xu
    M[4:8, 8:12] = -Xv
    M[8:12, 4:8] = -Xv
    M[8:12, 8:12] = Xuv2
    return M


def _dlt(Xn: np.ndarray, xn: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Least-squares DLT in normalised coordinates: P_n (3×4), sign chosen so det(M) > 0."""
    M = _dlt_normal_matrix(Xn, xn, w)
    _, vecs = np.linalg.eigh(M)
    P = vecs[:, 0].reshape(3, 4)
    if np.linalg.det(P[:, :3]) < 0:
        P = -P
    return P


def _dlt_minimal_batch(Xs: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """DLT for a batch of samples: Xs (B, n, 4), xs (B, n, 2) -> P (B, 3, 4)."""
    B, n, _ = Xs.shape
    A = np.zeros((B, 2 * n, 12))
    A[:, 0::2, 0:4] = Xs
    A[:, 1::2, 4:8] = Xs
    A[:, 0::2, 8:12] = -xs[:, :, 0:1] * Xs
    A[:, 1::2, 8:12] = -xs[:, :, 1:2] * Xs
    _, _, Vt = np.linalg.svd(A)
    P = Vt[:, -1, :].reshape(B, 3, 4)
    sign = np.sign(np.linalg.det(P[:, :, :3]))
    sign[sign == 0] = 1.0
    return P * sign[:, None, None]


def _rq(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RQ decomposition M = U Q (U upper triangular, Q orthogonal) via QR of the flipped matrix."""
    flip = np.eye(3)[::-1]
    Q, U = np.linalg.qr((flip @ M).T)
    U = flip @ U.T @ flip
    Q = flip @ Q.T
    return U, Q


def decompose_projection(P: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a 3×4 projection matrix (any scale, any sign) into K, R, t.

    K has positive focal lengths and K[2,2] = 1, R is a proper rotation. The overall sign of P is
    chosen so that det(P[:, :3]) > 0, the only sign under which K[R|t] with positive focals and
    det R = +1 exists; points in front of that camera have positive ``(P X)_3``.
    """
    P = np.asarray(P, dtype=np.float64).reshape(3, 4)
    if abs(np.linalg.det(P[:, :3])) < 1e-300:
        raise InputError("projection matrix is singular; camera cannot be decomposed")
    if np.linalg.det(P[:, :3]) < 0:
        P = -P
    U, Q = _rq(P[:, :3])
    signs = np.sign(np.diag(U))
    signs[signs == 0] = 1.0
    D = np.diag(signs)
    U = U @ D
    Q = D @ Q
    if np.linalg.det(Q) < 0:  # only possible when U has a zero diagonal entry
        Q = -Q
        U = -U
    scale = U[2, 2]
    K = U / scale
    t = np.linalg.solve(U, P[:, 3])
    return K, Q, t


def _reproject_batch(P: np.ndarray, Xn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P (B,3,4) applied to Xn (M,4): returns (xy (B,M,2), depth-sign w (B,M))."""
    B = P.shape[0]
    h = (P.reshape(B * 3, 4) @ Xn.T).reshape(B, 3, -1)
    w = h[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = np.stack([h[:, 0] / w, h[:, 1] / w], -1)
    return xy, w


def _refine_lm(X: np.ndarray, px: np.ndarray, f: float, cx: float, cy: float, R: np.ndarray,
               t: np.ndarray, sigma_floor: float, iters: int = 30):
    """Robust (Huber IRLS) Levenberg-Marquardt over (f, cx, cy, rotation, t), square pixels.

    Residuals are pixel reprojection errors. Rotation is updated on the left, R <- exp([δ]x) R.
    Arrays are kept coordinate-major ((3, N) rows) because numpy's elementwise kernels on
    contiguous rows are several times faster than small matmuls on (N, 3) for N ~ 20k.
    """
    Xr = np.ascontiguousarray(X.T)
    pu, pv = np.ascontiguousarray(px[:, 0]), np.ascontiguousarray(px[:, 1])
    n = Xr.shape[1]
    params_f = np.array([f, cx, cy], float)
    R = R.copy()
    t = t.copy()
    lam = 1e-3

    def residuals(pf, R_, t_):
        rot = [R_[i, 0] * Xr[0] + R_[i, 1] * Xr[1] + R_[i, 2] * Xr[2] for i in range(3)]
        z = rot[2] + t_[2]
        z = np.where(np.abs(z) < 1e-12, 1e-12, z)
        inv_z = 1.0 / z
        a = (rot[0] + t_[0]) * inv_z
        b = (rot[1] + t_[1]) * inv_z
        ru = pf[0] * a + (pf[1] - pu)
        rv = pf[0] * b + (pf[2] - pv)
        return (ru, rv), (rot, inv_z, a, b)

    def weights(res):
        e = np.sqrt(res[0] * res[0] + res[1] * res[1])
        sigma = max(1.4826 * float(np.median(e)), sigma_floor)
        k = 1.345 * sigma
        return np.where(e <= k, 1.0, k / np.maximum(e, 1e-300))

    def wcost(w, res):
        return float(w @ (res[0] * res[0]) + w @ (res[1] * res[1]))

    res, aux = residuals(params_f, R, t)
    w = weights(res)
    cost = wcost(w, res)
    J = np.empty((9, 2 * n))
    rel = 1.0
    for _ in range(iters):
        (rx, ry, rz), inv_z, a, b = aux
        fz = params_f[0] * inv_z
        Ju, Jv = J[:, :n], J[:, n:]
        Ju[0], Jv[0] = a, b                       # focal
        Ju[1], Jv[1] = 1.0, 0.0                   # cx
        Ju[2], Jv[2] = 0.0, 1.0                   # cy
        # rotation: d xc / d w_k = e_k x (R x)
        Ju[3] = -fz * a * ry
        Jv[3] = -fz * (rz + b * ry)
        Ju[4] = fz * (rz + a * rx)
        Jv[4] = fz * b * rx
        Ju[5] = -fz * ry
        Jv[5] = fz * rx
        # translation
        Ju[6], Jv[6] = fz, 0.0
        Ju[7], Jv[7] = 0.0, fz
        Ju[8], Jv[8] = -fz * a, -fz * b
        ww = np.concatenate([w, w])
        rr = np.concatenate(res)
        Jw = J * ww
        JtJ = Jw @ J.T
        Jtr = Jw @ rr
        improved = False
        for _try in range(8):
            A = JtJ + lam * np.diag(np.diag(JtJ) + 1e-12)
            try:
                delta = -np.linalg.solve(A, Jtr)
            except np.linalg.LinAlgError:
                lam *= 10
                continue
            pf_new = params_f + delta[:3]
            R_new = rodrigues(delta[3:6]) @ R
            t_new = t + delta[6:9]
            res_new, aux_new = residuals(pf_new, R_new, t_new)
            cost_new = wcost(w, res_new)
            if cost_new <= cost:
                improved = True
                rel = (cost - cost_new) / max(cost, 1e-300)
                params_f, R, t, res, aux = pf_new, R_new, t_new, res_new, aux_new
                lam = max(lam / 10, 1e-12)
                break
            lam *= 10
        if not improved:
            break
        w = weights(res)
        cost = wcost(w, res)
        if rel < 1e-8 or cost < 1e-24 * n:
            break
    return params_f, _nearest_rotation(R), t


def solve_camera(points: Any, uv: Any, image_size: Sequence[float], *,
                 threshold_px: float | None = None, ransac: bool = True, seed: int = 0,
                 max_hypotheses: int = 1024, confidence: float = 0.9999,
                 score_subset: int = 2000, refine: bool = True,
                 min_inlier_ratio: float = 0.25) -> CameraSolution:
    """Recover K (square pixels, zero skew), R, t from object points (N, 3) and their uv (N, 2).

    Steps: uv -> pixels; Hartley normalisation; seed-fixed RANSAC over 6-point DLT hypotheses
    (scored on a fixed random subset with a truncated quadratic loss; points behind the camera
    count as outliers), local re-fit of the DLT on the inliers; RQ decomposition of P into K, R, t;
    Huber-IRLS Levenberg-Marquardt on pixel reprojection error over (f, cx, cy, R, t).

    ``threshold_px`` is the inlier threshold; default ``max(2, 0.01 * max(W, H))`` pixels.
    Raises InputError when fewer than ``min_inlier_ratio`` of the pairs fit the final camera.
    """
    X = _as_points(points, 3, "points")
    uv = _as_points(uv, 2, "uv")
    if len(X) != len(uv):
        raise InputError(f"points and uv differ in length ({len(X)} vs {len(uv)})")
    n = len(X)
    if n < 6:
        raise InputError(f"at least 6 point/uv pairs are needed to solve a camera, got {n}")
    W, H = _image_size(image_size)
    thr = float(threshold_px) if threshold_px is not None else max(2.0, 0.01 * max(W, H))
    px = uv * np.array([W, H])

    spread = np.linalg.svd(X - X.mean(0), compute_uv=False)
    if spread[0] <= 0 or spread[2] / spread[0] < 1e-6:
        raise InputError("object points are (nearly) coplanar or collinear; the camera cannot be solved")

    if np.ptp(px, axis=0).max() < 1e-9 * max(W, H):
        raise InputError("all uv are (nearly) identical; the camera cannot be solved")
    Xn, T3 = _normalise_3d(X)
    xn, T2 = _normalise_2d(px)
    thr_n = thr * T2[0, 0]
    rng = np.random.default_rng(seed)

    def score(P_b: np.ndarray, Xs: np.ndarray, xs: np.ndarray):
        xy, w = _reproject_batch(P_b, Xs)
        e2 = ((xy - xs[None]) ** 2).sum(-1)
        e2 = np.where((w > 0) & np.isfinite(e2), e2, np.inf)
        inl = e2 < thr_n ** 2
        return np.minimum(e2, thr_n ** 2).sum(-1), inl

    iterations = 0
    if ransac and n > 12:
        m = min(score_subset, n)
        sub = rng.choice(n, size=m, replace=False) if m < n else np.arange(n)
        Xs, xs = Xn[sub], xn[sub]
        best_cost, best_P, needed = np.inf, None, max_hypotheses
        batch = 64
        while iterations < min(needed, max_hypotheses):
            samples = _distinct_samples(rng, n, batch, 6)
            P_b = _dlt_minimal_batch(Xn[samples], xn[samples])
            cost, inl = score(P_b, Xs, xs)
            iterations += batch
            k = int(np.argmin(cost))
            if cost[k] < best_cost:
                best_cost, best_P = cost[k], P_b[k]
                ratio = max(inl[k].mean(), 1e-3)
                good = ratio ** 6
                needed = iterations if good >= 1 else int(np.ceil(np.log(1 - confidence) / np.log(1 - good)))
                needed = max(needed, 64)
        P_n = best_P
        # local optimisation: re-fit on all inliers of the best hypothesis
        for _ in range(3):
            _, inl = score(P_n[None], Xn, xn)
            inl = inl[0]
            if inl.sum() < 6:
                break
            P_n = _dlt(Xn[inl], xn[inl])
        _, inl = score(P_n[None], Xn, xn)
        inliers = inl[0]
    else:
        P_n = _dlt(Xn, xn)
        inliers = np.ones(n, bool)
    if inliers.sum() < 6:
        raise InputError("too few consistent point/uv pairs to solve a camera")

    P = np.linalg.inv(T2) @ P_n @ T3
    K, R, t = decompose_projection(P)
    f0 = 0.5 * (K[0, 0] + K[1, 1])
    cx, cy = K[0, 2], K[1, 2]
    if refine:
        # fit on the inliers, re-select with the refined camera, fit again
        for _ in range(2):
            (f0, cx, cy), R, t = _refine_lm(X[inliers], px[inliers], f0, cx, cy, R, t,
                                            sigma_floor=1e-3 * thr)
            K = np.array([[f0, 0, cx], [0, f0, cy], [0, 0, 1.0]])
            uvp, z = project(X, K, R, t, (W, H), return_depth=True)
            err = np.sqrt(((uvp - uv) ** 2 * np.array([W, H]) ** 2).sum(1))
            new_inl = (z > 0) & (err < thr)
            if new_inl.sum() < 6 or np.array_equal(new_inl, inliers):
                inliers = new_inl if new_inl.sum() >= 6 else inliers
                break
            inliers = new_inl
    else:
        K = np.array([[f0, 0, cx], [0, f0, cy], [0, 0, 1.0]])
    if f0 <= 0 or not np.all(np.isfinite(K)):
        raise InputError("camera solve failed: non-positive or invalid focal length")
    uvp, z = project(X, K, R, t, (W, H), return_depth=True)
    err = np.sqrt(np.nan_to_num((uvp - uv) ** 2 * np.array([W, H]) ** 2, nan=np.inf).sum(1))
    inliers = (z > 0) & (err < thr)
    if inliers.sum() < max(6, min_inlier_ratio * n):
        raise InputError(f"only {inliers.sum()} of {n} point/uv pairs agree on one camera; "
                         "the uv prediction is unusable")
    rms = float(np.sqrt(np.mean(err[inliers] ** 2)))
    return CameraSolution(K=K, R=R, t=t, width=int(round(W)), height=int(round(H)),
                          inliers=inliers, rms_px=rms, threshold_px=thr,
                          iterations=iterations, residuals_px=err)


# --------------------------------------------------------------------------------------------
# similarity (Umeyama)
# --------------------------------------------------------------------------------------------

@dataclass
class Similarity:
    """``dst = scale * R @ src + t``; ``inliers`` marks the pairs the robust fit kept."""

    scale: float
    R: np.ndarray
    t: np.ndarray
    inliers: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    rms: float = 0.0

    def apply(self, points: Any) -> np.ndarray:
        p = np.asarray(points, float)
        return self.scale * p @ self.R.T + self.t

    def matrix(self) -> np.ndarray:
        """4×4 homogeneous matrix of the similarity."""
        M = np.eye(4)
        M[:3, :3] = self.scale * self.R
        M[:3, 3] = self.t
        return M

    def to_dict(self) -> dict:
        """The ``transform`` entry of scene.json."""
        return {"scale": float(self.scale), "R": np.asarray(self.R).tolist(),
                "t": np.asarray(self.t).tolist()}


def umeyama(src: Any, dst: Any, with_scale: bool = True,
            weights: Any | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (s, R, t) with dst ≈ s·R·src + t (Umeyama 1991); never a reflection.

    ``weights`` (N,) non-negative per-pair weights. Without ``with_scale`` s = 1.
    """
    S = _as_points(src, 3, "src")
    D = _as_points(dst, 3, "dst")
    if len(S) != len(D):
        raise InputError(f"src and dst differ in length ({len(S)} vs {len(D)})")
    if weights is None:
        w = np.ones(len(S))
    else:
        w = np.asarray(weights, float).reshape(-1)
        if len(w) != len(S) or np.any(w < 0) or not np.all(np.isfinite(w)):
            raise InputError("weights must be finite, non-negative and one per pair")
    if np.count_nonzero(w) < 3:
        raise InputError("at least 3 weighted pairs are needed for a similarity")
    wsum = w.sum()
    mu_s = (w[:, None] * S).sum(0) / wsum
    mu_d = (w[:, None] * D).sum(0) / wsum
    Sc, Dc = S - mu_s, D - mu_d
    cov = (Dc * w[:, None]).T @ Sc / wsum
    U, sig, Vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        d[2] = -1.0
    R = (U * d) @ Vt
    var_s = float((w * (Sc * Sc).sum(1)).sum() / wsum)
    if var_s <= 1e-300:
        raise InputError("source points are all identical; similarity is undefined")
    s = float((sig * d).sum() / var_s) if with_scale else 1.0
    t = mu_d - s * R @ mu_s
    return s, R, t


def _umeyama_batch(S: np.ndarray, D: np.ndarray, with_scale: bool):
    """Unweighted Umeyama over a batch: S, D (B, n, 3) -> s (B,), R (B,3,3), t (B,3)."""
    mu_s = S.mean(1, keepdims=True)
    mu_d = D.mean(1, keepdims=True)
    Sc, Dc = S - mu_s, D - mu_d
    cov = np.einsum("bni,bnj->bij", Dc, Sc) / S.shape[1]
    U, sig, Vt = np.linalg.svd(cov)
    d = np.ones((len(S), 3))
    d[:, 2] = np.sign(np.linalg.det(U) * np.linalg.det(Vt))
    d[d == 0] = 1.0
    R = (U * d[:, None, :]) @ Vt
    var_s = (Sc * Sc).sum((1, 2)) / S.shape[1]
    if with_scale:
        s = (sig * d).sum(1) / np.maximum(var_s, 1e-300)
    else:
        s = np.ones(len(S))
    t = mu_d[:, 0] - s[:, None] * np.einsum("bij,bj->bi", R, mu_s[:, 0])
    return s, R, t


def umeyama_robust(src: Any, dst: Any, with_scale: bool = True, *,
                   threshold: float | None = None, seed: int = 0, max_hypotheses: int = 512,
                   confidence: float = 0.9999, irls_iterations: int = 10) -> Similarity:
    """Similarity dst ≈ s·R·src + t from pairs with outliers: seed-fixed RANSAC + Huber IRLS.

    ``threshold`` is the inlier distance in dst units; by default 10% of the median distance of
    dst to its (coordinate-wise) median, i.e. relative to the target object's size.
    Returns a :class:`Similarity` with the inlier mask and the inlier RMS residual.
    """
    S = _as_points(src, 3, "src")
    D = _as_points(dst, 3, "dst")
    if len(S) != len(D):
        raise InputError(f"src and dst differ in length ({len(S)} vs {len(D)})")
    n = len(S)
    if n < 3:
        raise InputError(f"at least 3 pairs are needed for a similarity, got {n}")
    if threshold is None:
        spread = float(np.median(np.linalg.norm(D - np.median(D, 0), axis=1)))
        threshold = 0.1 * spread if spread > 0 else 1e-9
    thr = float(threshold)
    rng = np.random.default_rng(seed)

    best_cost, best, it, needed = np.inf, None, 0, max_hypotheses
    sub = rng.choice(n, size=min(n, 2000), replace=False)
    Ss, Ds = S[sub], D[sub]
    while n > 3 and it < min(needed, max_hypotheses):
        B = 64
        idx = _distinct_samples(rng, n, B, 3)
        s_b, R_b, t_b = _umeyama_batch(S[idx], D[idx], with_scale)
        pred = s_b[:, None, None] * np.einsum("bij,mj->bmi", R_b, Ss) + t_b[:, None, :]
        e2 = ((pred - Ds[None]) ** 2).sum(-1)
        cost = np.minimum(e2, thr * thr).sum(1)
        cost[~(s_b > 0) | ~np.isfinite(cost)] = np.inf
        it += B
        k = int(np.argmin(cost))
        if cost[k] < best_cost:
            best_cost, best = cost[k], (s_b[k], R_b[k], t_b[k])
            ratio = max(float((e2[k] < thr * thr).mean()), 1e-3)
            good = ratio ** 3
            needed = it if good >= 1 else int(np.ceil(np.log(1 - confidence) / np.log(1 - good)))
            needed = max(needed, 64)
    if best is None:
        best = umeyama(S, D, with_scale)
    s, R, t = best
    res = np.linalg.norm(s * S @ R.T + t - D, axis=1)
    inliers = res < thr
    if inliers.sum() < 3:
        raise InputError("too few consistent pairs to fit a similarity")
    for _ in range(irls_iterations):
        e = res[inliers]
        sigma = max(1.4826 * float(np.median(e)), 1e-6 * thr)
        k = 1.345 * sigma
        w = np.where(res <= k, 1.0, k / np.maximum(res, 1e-300)) * inliers
        s_new, R_new, t_new = umeyama(S, D, with_scale, weights=w)
        res_new = np.linalg.norm(s_new * S @ R_new.T + t_new - D, axis=1)
        inl_new = res_new < thr
        if inl_new.sum() < 3:
            break
        converged = (np.array_equal(inl_new, inliers) and abs(s_new - s) <= 1e-12 * abs(s)
                     and np.allclose(R_new, R, atol=1e-12) and np.allclose(t_new, t, atol=1e-12 * thr))
        s, R, t, res, inliers = s_new, R_new, t_new, res_new, inl_new
        if converged:
            break
    rms = float(np.sqrt(np.mean(res[inliers] ** 2)))
    return Similarity(scale=float(s), R=R, t=t, inliers=inliers, rms=rms)
