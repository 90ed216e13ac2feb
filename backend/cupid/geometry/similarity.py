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

    def compose(self, inner: "Similarity") -> "Similarity":
        """``self ∘ inner``: first `inner`, then this one (x -> s·R·(s'·R'·x + t') + t)."""
        R = np.asarray(self.R, float) @ np.asarray(inner.R, float)
        t = self.scale * np.asarray(self.R, float) @ np.asarray(inner.t, float) + np.asarray(self.t, float)
        return Similarity(scale=float(self.scale * inner.scale), R=R, t=t)

    def inverse(self) -> "Similarity":
        """The similarity that undoes this one."""
        R_inv = np.asarray(self.R, float).T
        return Similarity(scale=1.0 / float(self.scale), R=R_inv, t=-(R_inv @ np.asarray(self.t, float)) / self.scale)

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


# Residual scale of a similarity fit: MAD of the residual norms (1.4826 · median), and the inlier
# threshold as a multiple of it. 3 MADs keep > 99% of the inliers whether the noise is isotropic (3D
# Gaussian: |e| has median 1.54 σ, 99% quantile 3.37 σ) or along the viewing rays (depth noise: |e|
# has median 0.67 σ, 99% quantile 2.58 σ), and still reject pairs a few noise levels off.
MAD_TO_SIGMA = 1.4826
THRESHOLD_MADS = 3.0


def residual_threshold(residuals: np.ndarray, floor: float) -> float:
    """Inlier threshold from measured residual norms: THRESHOLD_MADS · 1.4826 · median, at least `floor`."""
    return max(THRESHOLD_MADS * MAD_TO_SIGMA * float(np.median(residuals)), floor)


def umeyama_robust(src: Any, dst: Any, with_scale: bool = True, *,
                   threshold: float | None = None, seed: int = 0, max_hypotheses: int = 512,
                   confidence: float = 0.9999, irls_iterations: int = 10) -> Similarity:
    """Similarity dst ≈ s·R·src + t from pairs with outliers: seed-fixed RANSAC + Huber IRLS.

    ``threshold`` is the inlier distance in dst units. By default it follows the measured residuals,
    so it holds at whatever noise the target points have (a point map's depth noise grows with
    depth; a fixed share of the object's size rejects good pairs of a small, far object):

    1. least median of squares over 3-pair hypotheses picks a first fit (no threshold needed, up to
       50% wrong pairs), and the MAD of its residuals gives the threshold (:func:`residual_threshold`);
    2. MSAC scoring (truncated squared residuals at that threshold) over the same hypotheses picks the
       fit the refinement starts from;
    3. Huber IRLS on the inliers, then the threshold is re-measured on the refined fit's inlier
       residuals and the refinement repeated until the threshold settles (at most 3 rounds).
    Up to half the pairs may be wrong; a fixed ``threshold`` skips steps 1 and 3's re-measuring.
    Returns a :class:`Similarity` with the inlier mask and the inlier RMS residual.
    """
    S = _as_points(src, 3, "src")
    D = _as_points(dst, 3, "dst")
    if len(S) != len(D):
        raise InputError(f"src and dst differ in length ({len(S)} vs {len(D)})")
    n = len(S)
    if n < 3:
        raise InputError(f"at least 3 pairs are needed for a similarity, got {n}")
    spread = float(np.median(np.linalg.norm(D - np.median(D, 0), axis=1)))
    floor = 1e-9 * spread if spread > 0 else 1e-12
    adaptive = threshold is None
    rng = np.random.default_rng(seed)

    sub = rng.choice(n, size=min(n, 2000), replace=False)
    Ss, Ds = S[sub], D[sub]
    hyps, errs = [], []
    it, needed = 0, max_hypotheses
    best_med = np.inf
    while n > 3 and it < min(needed, max_hypotheses):
        B = 64
        idx = _distinct_samples(rng, n, B, 3)
        s_b, R_b, t_b = _umeyama_batch(S[idx], D[idx], with_scale)
        pred = s_b[:, None, None] * np.einsum("bij,mj->bmi", R_b, Ss) + t_b[:, None, :]
        e2 = ((pred - Ds[None]) ** 2).sum(-1)
        e2[~(s_b > 0) | ~np.isfinite(e2).all(1)] = np.inf
        hyps.extend(zip(s_b, R_b, t_b))
        errs.append(e2)
        it += B
        med = np.partition(e2, len(sub) // 2, axis=1)[:, len(sub) // 2]
        k = int(np.argmin(med))
        if med[k] < best_med:
            best_med = float(med[k])
            thr_k = float(threshold) if not adaptive else residual_threshold(np.sqrt(e2[k]), floor)
            ratio = max(float((e2[k] < thr_k * thr_k).mean()), 1e-3)
            good = ratio ** 3
            needed = it if good >= 1 else int(np.ceil(np.log(1 - confidence) / np.log(1 - good)))
            needed = max(needed, 64)
    if hyps:
        e2_all = np.concatenate(errs)
        med = np.partition(e2_all, len(sub) // 2, axis=1)[:, len(sub) // 2]
        lmeds = int(np.argmin(med))
        thr = float(threshold) if not adaptive else residual_threshold(np.sqrt(e2_all[lmeds]), floor)
        best = hyps[int(np.argmin(np.minimum(e2_all, thr * thr).sum(1)))]
    else:
        best = umeyama(S, D, with_scale)
        thr = float(threshold) if not adaptive else residual_threshold(
            np.linalg.norm(best[0] * S @ best[1].T + best[2] - D, axis=1), floor)
    s, R, t = best
    res = np.linalg.norm(s * S @ R.T + t - D, axis=1)
    inliers = res < thr
    if inliers.sum() < 3:
        raise InputError("too few consistent pairs to fit a similarity")
    for _round in range(3 if adaptive else 1):
        s, R, t, res, inliers = _refine_irls(S, D, with_scale, s, R, t, res, inliers, thr, irls_iterations)
        if not adaptive:
            break
        new_thr = residual_threshold(res[inliers], floor)
        if abs(new_thr - thr) <= 0.05 * thr:
            break
        thr = new_thr
        if (res < thr).sum() < 3:
            break
        inliers = res < thr
    rms = float(np.sqrt(np.mean(res[inliers] ** 2)))
    return Similarity(scale=float(s), R=R, t=t, inliers=inliers, rms=rms)


def _refine_irls(S: np.ndarray, D: np.ndarray, with_scale: bool, s: float, R: np.ndarray, t: np.ndarray,
                 res: np.ndarray, inliers: np.ndarray, thr: float, iterations: int):
    """Huber-weighted Umeyama on the pairs within `thr`, re-selecting them after every fit."""
    for _ in range(iterations):
        e = res[inliers]
        sigma = max(MAD_TO_SIGMA * float(np.median(e)), 1e-6 * thr)
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
    return s, R, t, res, inliers


def refine_similarity_along_rays(src: Any, dst: Any, sim: Similarity, *, iterations: int = 20) -> Similarity:
    """Re-fit ``sim`` to the pairs when dst's error lies mostly along the rays from the origin.

    A point map (camera at the origin) knows where a pixel looks far better than how deep it is: its
    depth noise (1-2% of the depth) can be tens of times its lateral error. Plain Umeyama weighs both
    alike, so on a small far object the depth noise tilts the fit. This Gauss-Newton re-fit weighs each
    residual's component along the pixel's ray and across it by their own measured scales (MAD of
    each, over the pairs), with Huber weights on the whitened residual, over rotation, log-scale and
    translation. Pairs are all taken as inliers: give the inliers of a robust fit.
    """
    S = _as_points(src, 3, "src")
    D = _as_points(dst, 3, "dst")
    if len(S) != len(D) or len(S) < 3:
        raise InputError("at least 3 pairs, as many src as dst, are needed to refine a similarity")
    from .rotation import rodrigues

    norm = np.linalg.norm(D, axis=1, keepdims=True)
    if np.any(norm <= 0):
        raise InputError("a target point lies at the ray origin")
    ray = D / norm
    floor = 1e-9 * max(float(np.median(norm)), 1e-300)
    s, R, t = float(sim.scale), np.asarray(sim.R, float), np.asarray(sim.t, float)

    def state(s_, R_, t_):
        P = s_ * S @ R_.T
        r = P + t_ - D
        along = (r * ray).sum(1)
        across = np.linalg.norm(r - along[:, None] * ray, axis=1)
        return P, r, along, across

    P, r, along, across = state(s, R, t)
    sd_along = max(MAD_TO_SIGMA * float(np.median(np.abs(along))), floor)
    sd_across = max(float(np.median(across)) / 1.1774, floor)   # 2D: median |e| = 1.1774 σ
    k = 1.345 * np.sqrt(3.0)

    def cost(along_, across_):
        e = np.sqrt((along_ / sd_along) ** 2 + (across_ / sd_across) ** 2)
        return float(np.where(e <= k, 0.5 * e * e, k * e - 0.5 * k * k).sum()), e

    c, e = cost(along, across)
    info_ray = 1.0 / sd_along ** 2 - 1.0 / sd_across ** 2
    for _ in range(iterations):
        w = np.where(e <= k, 1.0, k / np.maximum(e, 1e-300))
        J = np.zeros((len(S), 3, 7))
        J[:, 0, 1], J[:, 0, 2] = P[:, 2], -P[:, 1]                 # d r / d rotation (left): -[P]x
        J[:, 1, 0], J[:, 1, 2] = -P[:, 2], P[:, 0]
        J[:, 2, 0], J[:, 2, 1] = P[:, 1], -P[:, 0]
        J[:, :, 3] = P                                            # d r / d log-scale
        J[:, :, 4:] = np.eye(3)                                   # d r / d t
        info = (np.eye(3)[None] / sd_across ** 2 + info_ray * ray[:, :, None] * ray[:, None, :]) * w[:, None, None]
        JtI = np.einsum("nij,nik->njk", J, info)
        A = np.einsum("nji,nik->jk", JtI, J)
        b = np.einsum("nji,ni->j", JtI, r)
        try:
            step = -np.linalg.solve(A, b)
        except np.linalg.LinAlgError:
            break
        s_n, R_n, t_n = s * float(np.exp(step[3])), rodrigues(step[:3]) @ R, t + step[4:]
        P_n, r_n, along_n, across_n = state(s_n, R_n, t_n)
        c_n, e_n = cost(along_n, across_n)
        if not c_n <= c:
            break
        s, R, t, P, r, c, e = s_n, R_n, t_n, P_n, r_n, c_n, e_n
        if np.abs(step).max() < 1e-12:
            break
    res = np.linalg.norm(r, axis=1)
    return Similarity(scale=s, R=R, t=t, inliers=np.ones(len(S), bool), rms=float(np.sqrt(np.mean(res ** 2))))
