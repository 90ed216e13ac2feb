"""Random but plausible pinhole cameras around the object cube, for the geometry tests and bench_pnp."""
from __future__ import annotations

import numpy as np


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
    ])


def random_camera(rng: np.random.Generator, width: int, height: int):
    """Camera with horizontal FOV in [15°, 70°], principal point up to 5% off centre, any
    rotation, looking at the unit cube from a distance where the object fills most of the view."""
    fov_x = np.radians(rng.uniform(15.0, 70.0))
    f = width / 2.0 / np.tan(fov_x / 2.0)
    cx = width / 2.0 + rng.uniform(-0.05, 0.05) * width
    cy = height / 2.0 + rng.uniform(-0.05, 0.05) * height
    K = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1.0]])
    R = random_rotation(rng)
    half_fov = np.arctan(min(width, height) / 2.0 / f)
    dist = 0.6 / np.tan(half_fov) * rng.uniform(1.0, 1.3) + 0.5
    t = np.array([rng.uniform(-0.05, 0.05) * dist, rng.uniform(-0.05, 0.05) * dist, dist])
    return K, R, t
