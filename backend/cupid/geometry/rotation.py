"""Rotation helpers: axis-angle, geodesic angle, nearest rotation (numpy only)."""
from __future__ import annotations

import numpy as np


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



def _nearest_rotation(M: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(M)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt)) or 1.0])
    return U @ D @ Vt

