"""Colour transfer: the generated texture brought to the photo's white balance and exposure.

Why: the photo's pixels replace the generated colours only where the camera sees the surface; the
hidden side keeps the generated colours, which the generator made from a small, premultiplied crop
and which often come out tinted, darker or paler than the photo. Fitting one colour map where both
are known (the seen texels: generated colour and photo colour of the same surface point) and applying
it to the whole generated texture gives the hidden side the photo's colour cast, so no seam shows
where the photo ends.

The map is a gain per channel on linear light (x' = diag(gain)·x on linearised sRGB), the ratio of
the two sides' mean colours: white balance and exposure are exactly such gains. A full affine colour
matrix fitted by least squares would also restore saturation, but where the seen side is plain the
generated texture's detail does not match the photo's, least squares then answers with the mean
colour, and the hidden side's own pattern (a label on the back of a mug) would be wiped flat; the
gains keep it, scaled.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ColorTransfer", "fit_color_transfer", "srgb_to_linear", "linear_to_srgb"]

GAIN_RANGE = (0.25, 4.0)  # two stops of correction each way at most
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
    """x' = A·x + b in linear light (sRGB primaries; A diagonal, b zero as fitted here); the identity
    when nothing was fitted."""

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


def fit_color_transfer(generated: np.ndarray, photo: np.ndarray, weights: np.ndarray | None = None) -> ColorTransfer:
    """The per-channel gains in linear light taking `generated` sRGB colours [N, 3] to `photo` sRGB
    colours [N, 3] (the same surface points), each pair weighted by `weights` [N] (how surely the photo
    sees it): the ratio of the weighted means, within GAIN_RANGE. Returns the identity with `samples=0`
    when fewer than MIN_SAMPLES pairs count."""
    g = np.asarray(generated, dtype=np.float32).reshape(-1, 3)
    p = np.asarray(photo, dtype=np.float32).reshape(-1, 3)
    w = np.ones(len(g)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    keep = np.flatnonzero((w > 0) & np.isfinite(g).all(1) & np.isfinite(p).all(1))
    n = len(keep)
    if n < MIN_SAMPLES:
        return ColorTransfer()
    if n > MAX_SAMPLES:      # an evenly spread subset gives the same means, and a 4096² texture has millions
        keep = keep[np.linspace(0, n - 1, MAX_SAMPLES).astype(np.int64)]
    w = w[keep][:, None]
    mean_g = (w * srgb_to_linear(g[keep])).sum(0) / w.sum()
    mean_p = (w * srgb_to_linear(p[keep])).sum(0) / w.sum()
    gain = np.clip(mean_p / np.maximum(mean_g, 1e-4), *GAIN_RANGE)
    return ColorTransfer(np.diag(gain), np.zeros(3), int(n))
