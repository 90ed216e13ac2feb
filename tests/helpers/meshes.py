"""Real test geometry shared by the tests: Blender's Suzanne, fitted into the object cube, and voxelised."""
from __future__ import annotations

from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def suzanne(extent: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Suzanne's (vertices, faces), centred and scaled so its longest side is `extent`."""
    data = np.load(ASSETS / "suzanne.npz")
    v, f = data["vertices"].astype(np.float64), data["faces"].astype(np.int64)
    v = (v - (v.max(0) + v.min(0)) / 2) * (extent / np.ptp(v, axis=0).max())
    return v, f


def surface_voxels(vertices: np.ndarray, faces: np.ndarray, res: int = 64, samples: int = 400_000,
                   seed: int = 0) -> np.ndarray:
    """Unique (N, 3) indices of the res³ voxels the surface passes through (dense area sampling)."""
    rng = np.random.default_rng(seed)
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    which = rng.choice(len(faces), size=samples, p=area / area.sum())
    r1, r2 = rng.random(samples), rng.random(samples)
    s = np.sqrt(r1)
    pts = (1 - s)[:, None] * tri[which, 0] + (s * (1 - r2))[:, None] * tri[which, 1] \
        + (s * r2)[:, None] * tri[which, 2]
    return np.unique(np.clip(np.floor((pts + 0.5) * res), 0, res - 1).astype(int), axis=0)
