"""Input checks and sampling shared by the geometry modules (numpy only)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import InputError


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



def _distinct_samples(rng: np.random.Generator, n: int, batch: int, k: int) -> np.ndarray:
    """``batch`` random index sets of ``k`` distinct indices in [0, n) (n > k), shape (batch, k)."""
    out = rng.integers(0, n, size=(batch, k))
    while True:
        srt = np.sort(out, axis=1)
        dup = np.any(srt[:, 1:] == srt[:, :-1], axis=1)
        if not dup.any():
            return out
        out[dup] = rng.integers(0, n, size=(int(dup.sum()), k))

