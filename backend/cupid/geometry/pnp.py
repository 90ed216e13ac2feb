"""The camera from 3D-2D pairs (numpy only), by one of two solvers.

CUPID predicts, for every occupied voxel, where it lands in the photo (a \"UV cube\"); the camera is
recovered from those (point, uv) pairs by :func:`solve_camera`:

- ``"robust"`` (default): Hartley-normalised DLT in a seeded RANSAC, RQ decomposition, then a robust
  refinement with square pixels and zero skew. Stray uv cannot pull the camera.
- ``"dlt"``: the release's own solver (``calibrate_camera_dlt`` + ``decompose_projection`` in CUPID's
  ``cupid/utils/pose_utils.py``): one linear DLT over every pair in normalised uv, unweighted and
  without coordinate normalisation, then RQ; K keeps its skew and separate focal lengths. It gives
  the release's camera for a given UV cube, so a published result can be reproduced seed for seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ._util import _as_points, _distinct_samples, _image_size
from .camera import CameraPose, project
from .rotation import _nearest_rotation, rodrigues


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


PNP_METHODS = ("robust", "dlt")


def _solve_dlt_release(X: np.ndarray, uv: np.ndarray, W: float, H: float, thr: float) -> CameraSolution:
    """The release's DLT: min ||A p|| (||p|| = 1) with rows [X 1, 0, -u (X 1)] and [0, X 1, -v (X 1)]
    built from the raw points and the uv in [0, 1], sign so that det(P[:, :3]) > 0, then K, R, t by RQ
    (positive diagonal) and K scaled to K[2,2] = 1. K is in uv units, then scaled to pixels."""
    Xh = np.concatenate([X, np.ones((len(X), 1))], axis=1)
    _, vecs = np.linalg.eigh(_dlt_normal_matrix(Xh, uv, None))
    P = vecs[:, 0].reshape(3, 4)
    K_uv, R, t = decompose_projection(P)
    K = np.diag([W, H, 1.0]) @ K_uv
    uvp, z = project(X, K, R, t, (W, H), return_depth=True)
    err = np.sqrt(np.nan_to_num((uvp - uv) ** 2 * np.array([W, H]) ** 2, nan=np.inf).sum(1))
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError("camera solve failed: non-positive or invalid focal length")
    inliers = (z > 0) & (err < thr)
    rms = float(np.sqrt(np.mean(err[inliers] ** 2))) if inliers.any() else float("inf")
    return CameraSolution(K=K, R=R, t=t, width=int(round(W)), height=int(round(H)), inliers=inliers,
                          rms_px=rms, threshold_px=thr, iterations=0, residuals_px=err)


def solve_camera(points: Any, uv: Any, image_size: Sequence[float], *, method: str = "robust",
                 threshold_px: float | None = None, ransac: bool = True, seed: int = 0,
                 max_hypotheses: int = 1024, confidence: float = 0.9999,
                 score_subset: int = 2000, refine: bool = True,
                 min_inlier_ratio: float = 0.25) -> CameraSolution:
    """Recover K, R, t from object points (N, 3) and their uv (N, 2) in an image of ``image_size``.

    ``method="dlt"`` is the release's solver (see the module doc): the other options do not apply,
    K may have skew and fx != fy, and no pair is rejected (``inliers`` only reports the fit).

    ``method="robust"``: K with square pixels and zero skew. Steps: uv -> pixels; Hartley normalisation; seed-fixed RANSAC over 6-point DLT hypotheses
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
    if method not in PNP_METHODS:
        raise InputError(f"method must be one of {', '.join(PNP_METHODS)}, got {method!r}")
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
    if method == "dlt":
        return _solve_dlt_release(X, uv, W, H, thr)
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
