"""Camera-solve benchmark: speed against OpenCV and accuracy against the official CUPID solver.

1. Speed: ``cupid.geometry.solve_camera`` (free focal, principal point, robust) on 20k pairs,
   beside ``cv2.solvePnP(SOLVEPNP_ITERATIVE)`` given the TRUE K (an easier problem: pose only),
   timed in the same run; prints milliseconds and the ratio.
2. Accuracy (issue 8): the official CUPID solve -- a plain DLT on normalised uv (no Hartley
   normalisation, no robustness, no refinement) followed by an RQ split with free intrinsics --
   versus ours, on the same noisy / outlier-ridden UV cubes of a real mesh (Suzanne, 64³ surface
   voxels). Prints median and worst rotation / translation-direction / focal errors.

Run: PYTHONPATH=backend:. python bench/bench_pnp.py [--trials 20]
(on a loaded 2-core machine, OPENBLAS_NUM_THREADS=1 avoids BLAS thread contention that can
double the timings of both solvers.)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's helpers: synthetic cameras and Suzanne

from helpers.cameras import random_camera  # noqa: E402
from cupid.geometry import project, rotation_angle_deg, solve_camera, voxel_centers  # noqa: E402
from helpers.meshes import surface_voxels, suzanne  # noqa: E402


def official_cupid_solve(points: np.ndarray, uv: np.ndarray, size) -> tuple:
    """The official CUPID solve, re-expressed in numpy: DLT on raw (uv in [0,1]) coordinates,
    SVD null vector, sign so that det(M) > 0, K/R from a QR of M⁻¹, K scaled so K[2,2] = 1,
    t = K⁻¹ p4. Intrinsics are in uv units; converted to pixels with diag(W, H, 1)."""
    n = len(points)
    Xh = np.c_[points, np.ones(n)]
    A = np.zeros((2 * n, 12))
    A[0::2, 0:4] = Xh
    A[1::2, 4:8] = Xh
    A[0::2, 8:12] = -uv[:, :1] * Xh
    A[1::2, 8:12] = -uv[:, 1:2] * Xh
    P = np.linalg.svd(A, full_matrices=False)[2][-1].reshape(3, 4)
    if np.linalg.det(P[:, :3]) < 0:
        P = -P
    Q, U = np.linalg.qr(np.linalg.pinv(P[:, :3]))
    K = np.linalg.pinv(U)
    R = np.linalg.pinv(Q)
    d = np.sign(np.diag(K))
    d[d == 0] = 1
    K, R = K @ np.diag(d), np.diag(d) @ R
    t = np.linalg.pinv(K) @ P[:, 3]
    if np.linalg.det(R) < 0:
        R = -R
    K = K / K[2, 2]
    W, H = size
    return np.diag([W, H, 1.0]) @ K, R, t


def t_dir_err(a: np.ndarray, b: np.ndarray) -> float:
    c = np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)
    return float(np.degrees(np.arccos(np.clip(c, -1, 1))))


def bench_speed(rng: np.random.Generator, repeats: int) -> None:
    import cv2

    W, H = 518, 518
    pts = rng.uniform(-0.5, 0.5, (20000, 3))
    ours, cv = [], []
    for _ in range(repeats):
        K, R, t = random_camera(rng, W, H)
        uv = project(pts, K, R, t, (W, H)) + rng.normal(0, 0.5, (len(pts), 2)) / np.array([W, H])
        px = (uv * np.array([W, H])).astype(np.float64)
        t0 = time.perf_counter()
        solve_camera(pts, uv, (W, H))
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cv2.solvePnP(pts, px, K, None, flags=cv2.SOLVEPNP_ITERATIVE)
        cv.append(time.perf_counter() - t0)
    mo, mc = 1e3 * np.median(ours), 1e3 * np.median(cv)
    print(f"speed, 20000 pairs, median of {repeats}:")
    print(f"  cupid.geometry.solve_camera (free f, cx, cy; RANSAC+LM): {mo:8.2f} ms")
    print(f"  cv2.solvePnP ITERATIVE (true K given, pose only):        {mc:8.2f} ms")
    print(f"  ratio ours / cv2: {mo / mc:.2f}")


def bench_accuracy(rng: np.random.Generator, trials: int) -> None:
    pts = voxel_centers(surface_voxels(*suzanne(), res=64))
    print(f"\naccuracy on Suzanne surface voxels ({len(pts)} pairs), {trials} random cameras per row;"
          " median / max over trials")
    header = f"{'scenario':<26}{'solver':<10}{'rot deg':>18}{'t-dir deg':>18}{'focal rel':>20}"
    print(header)
    scenarios = [("exact", 0.0, 0.0), ("0.5 px noise", 0.5, 0.0), ("2 px noise", 2.0, 0.0),
                 ("0.5 px + 15% wrong", 0.5, 0.15), ("0.5 px + 30% wrong", 0.5, 0.30)]
    for name, sigma, wrong in scenarios:
        errs = {"official": [], "ours": []}
        for k in range(trials):
            W, H = [(640, 480), (480, 640), (518, 518)][k % 3]
            K, R, t = random_camera(rng, W, H)
            uv = project(pts, K, R, t, (W, H)) + rng.normal(0, sigma, (len(pts), 2)) / np.array([W, H])
            bad = rng.random(len(uv)) < wrong
            uv[bad] = rng.random((int(bad.sum()), 2))
            K1, R1, t1 = official_cupid_solve(pts, uv, (W, H))
            sol = solve_camera(pts, uv, (W, H))
            f_true = K[0, 0]
            for key, (Ke, Re, te) in (("official", (K1, R1, t1)), ("ours", (sol.K, sol.R, sol.t))):
                f_est = 0.5 * (Ke[0, 0] + Ke[1, 1])
                errs[key].append((rotation_angle_deg(Re, R), t_dir_err(te, t), abs(f_est / f_true - 1)))
        for key in ("official", "ours"):
            e = np.array(errs[key])
            med, mx = np.median(e, 0), e.max(0)
            print(f"{name:<26}{key:<10}{med[0]:>9.4f}/{mx[0]:<8.3f}{med[1]:>9.4f}/{mx[1]:<8.3f}"
                  f"{med[2]:>10.5f}/{mx[2]:<9.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    bench_speed(rng, args.repeats)
    bench_accuracy(rng, args.trials)


if __name__ == "__main__":
    main()
