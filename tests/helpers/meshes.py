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


def box(lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """An axis-aligned box from corner `lo` to corner `hi` (8 vertices, 12 outward triangles)."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    c = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], float)
    f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    return lo + c * (hi - lo), f


def merge(parts) -> tuple[np.ndarray, np.ndarray]:
    """One mesh from several (vertices, faces)."""
    vs, fs, off = [], [], 0
    for v, f in parts:
        vs.append(v)
        fs.append(f + off)
        off += len(v)
    return np.concatenate(vs), np.concatenate(fs)


def chair() -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric chair of four boxes inside the object cube."""
    return merge([box([-.4, -.4, -.1], [.4, .3, .0]), box([-.4, .3, -.1], [.4, .4, .45]),
                  box([-.4, -.4, -.45], [-.3, -.3, -.1]), box([.25, -.4, -.45], [.4, -.25, -.1])])


def ell() -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric L of three boxes inside the object cube."""
    return merge([box([-.45, -.2, -.3], [.45, .2, -.1]), box([.25, -.2, -.1], [.45, .2, .45]),
                  box([-.45, -.05, -.1], [-.3, .1, .15])])
