"""Similarity transforms (Umeyama, and a robust variant) that place objects in a shared frame (numpy only)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ._util import _as_points, _distinct_samples


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
