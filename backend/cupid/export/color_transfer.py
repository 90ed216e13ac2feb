"""Colour transfer: the generated texture brought to the photo's white balance and exposure.

Why: the photo's pixels replace the generated colours only where the camera sees the surface; the
hidden side keeps the generated colours, which the generator made from a small, premultiplied crop
and which often come out paler or tinted ("washed-out" is the commonest complaint about image-to-3D
textures). Fitting one colour map where both are known (the seen texels: generated colour and
photo colour of the same surface point) and applying it to the whole generated texture gives the
hidden side the photo's colour cast, so no seam shows where the photo ends.

The map is affine in linear light (x' = A·x + b on linearised sRGB): white balance and exposure
are gains on linear light, a black level is an offset, and a full 3×3 A also restores saturation.
It is fitted by weighted least squares with a ridge towards A = I (so a seen region of one colour
moves the mean and leaves the rest alone) and re-weighted a few times against outliers (the
generated texture is blurred and a little misplaced, so detail never matches).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ColorTransfer", "fit_color_transfer", "srgb_to_linear", "linear_to_srgb"]

RIDGE = 1e-4          # pull towards A = I, in units of colour variance (linear light, [0, 1]²)
IRLS_ROUNDS = 3       # robust re-weighting rounds (Cauchy weights)
MIN_SAMPLES = 16      # fewer seen texels than this: no transfer
MAX_SAMPLES = 200_000  # pairs the fit looks at (evenly spread over the seen texels)


_LEVELS = 65535   # the transfer curves are tabulated at 16 bits: far finer than the 8-bit textures they feed


def _curve(c: np.ndarray, table: np.ndarray) -> np.ndarray:
    idx = np.clip(np.asarray(c, dtype=np.float32), 0.0, 1.0) * np.float32(_LEVELS) + np.float32(0.5)
    return table[idx.astype(np.int32)]


def _srgb_decode(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _srgb_encode(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)


_TO_LINEAR = _srgb_decode(np.linspace(0.0, 1.0, _LEVELS + 1)).astype(np.float32)
_TO_SRGB = _srgb_encode(np.linspace(0.0, 1.0, _LEVELS + 1)).astype(np.float32)


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear light (IEC 61966-2-1), float32."""
    return _curve(c, _TO_LINEAR)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """Linear light (clipped to [0, 1]) -> sRGB-encoded values, float32."""
    return _curve(c, _TO_SRGB)


@dataclass
class ColorTransfer:
    """x' = A·x + b in linear light (sRGB primaries); the identity when nothing was fitted."""

    matrix: np.ndarray = field(default_factory=lambda: np.eye(3))
    offset: np.ndarray = field(default_factory=lambda: np.zeros(3))
    samples: int = 0

    def apply(self, srgb: np.ndarray) -> np.ndarray:
        """sRGB colours [..., 3] in [0, 1] -> the transferred sRGB colours (float32, clipped to [0, 1])."""
        srgb = np.asarray(srgb, dtype=np.float32)
        if self.samples == 0:
            return srgb.copy()
        lin = srgb_to_linear(srgb.reshape(-1, 3))
        out = lin @ self.matrix.T.astype(np.float32) + self.offset.astype(np.float32)
        return linear_to_srgb(out).reshape(srgb.shape)

    def to_dict(self) -> dict:
        return {"space": "linear", "matrix": (np.asarray(self.matrix, float) + 0.0).tolist(),
                "offset": (np.asarray(self.offset, float) + 0.0).tolist(), "samples": int(self.samples)}


def fit_color_transfer(generated: np.ndarray, photo: np.ndarray, weights: np.ndarray | None = None,
                       *, ridge: float = RIDGE, rounds: int = IRLS_ROUNDS) -> ColorTransfer:
    """The affine linear-light map taking `generated` sRGB colours [N, 3] to `photo` sRGB colours
    [N, 3] (the same surface points), each pair weighted by `weights` [N] (e.g. how surely the
    photo sees it). Returns the identity with `samples=0` when fewer than MIN_SAMPLES pairs count."""
    g = np.asarray(generated, dtype=np.float32).reshape(-1, 3)
    p = np.asarray(photo, dtype=np.float32).reshape(-1, 3)
    w0 = np.ones(len(g)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    keep = np.flatnonzero((w0 > 0) & np.isfinite(g).all(1) & np.isfinite(p).all(1))
    n = len(keep)
    if n < MIN_SAMPLES:
        return ColorTransfer()
    if n > MAX_SAMPLES:      # an evenly spread subset fits as well, and a 4096² texture has millions
        keep = keep[np.linspace(0, n - 1, MAX_SAMPLES).astype(np.int64)]
    g = srgb_to_linear(g[keep]).astype(np.float64)
    p = srgb_to_linear(p[keep]).astype(np.float64)
    w0 = w0[keep]
    w = w0.copy()
    A, b = np.eye(3), np.zeros(3)
    for _ in range(max(1, int(rounds))):
        ws = w.sum()
        gm = (w[:, None] * g).sum(0) / ws
        pm = (w[:, None] * p).sum(0) / ws
        gc, pc = g - gm, p - pm
        cgg = (w[:, None] * gc).T @ gc / ws
        cpg = (w[:, None] * pc).T @ gc / ws
        A = (cpg + ridge * np.eye(3)) @ np.linalg.inv(cgg + ridge * np.eye(3))
        b = pm - A @ gm
        r = np.linalg.norm(g @ A.T + b - p, axis=1)
        scale = 1.5 * max(float(np.median(r)), 1e-4)
        w = w0 / (1.0 + (r / scale) ** 2)
    return ColorTransfer(A, b, int(n))
