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


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear light (IEC 61966-2-1)."""
    c = np.asarray(c, dtype=np.float32)
    return np.where(c <= 0.04045, c / 12.92, ((np.maximum(c, 0.0) + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """Linear light in [0, 1] -> sRGB-encoded values."""
    c = np.clip(np.asarray(c, dtype=np.float32), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055).astype(np.float32)


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
    g = srgb_to_linear(np.asarray(generated, dtype=np.float32).reshape(-1, 3)).astype(np.float64)
    p = srgb_to_linear(np.asarray(photo, dtype=np.float32).reshape(-1, 3)).astype(np.float64)
    w0 = np.ones(len(g)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    keep = (w0 > 0) & np.isfinite(g).all(1) & np.isfinite(p).all(1)
    g, p, w0 = g[keep], p[keep], w0[keep]
    if len(g) < MIN_SAMPLES:
        return ColorTransfer()
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
    return ColorTransfer(A, b, int(len(g)))
