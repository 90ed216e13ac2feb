"""Pixel work for uploads, numpy + zlib only: PNG encoding, the sRGB curve, mask channels and
resampling.

The bpy half (reading an image datablock's pixels) is ``cupid_blender.imaging``; what to upload is
decided in :mod:`.upload`.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

_PNG_COLOR_TYPE = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (grey, RGB, RGBA)


def png_bytes(px: np.ndarray) -> bytes:
    """Encode uint8 pixels, top row first, as PNG: [H, W] grey, [H, W, 3] RGB or [H, W, 4] RGBA."""
    if px.dtype != np.uint8 or px.ndim not in (2, 3) or (px.ndim == 3 and px.shape[2] not in _PNG_COLOR_TYPE):
        raise ValueError(f"expected [H, W], [H, W, 3] or [H, W, 4] uint8, got {px.dtype} {px.shape}")
    if px.ndim == 2:
        px = px[:, :, None]
    h, w, c = px.shape
    raw = np.zeros((h, 1 + c * w), dtype=np.uint8)  # filter byte 0 (None) per row
    raw[:, 1:] = px.reshape(h, c * w)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, _PNG_COLOR_TYPE[c], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b""))


def linear_to_srgb(rgb: np.ndarray) -> np.ndarray:
    """The sRGB transfer curve on linear values (clipped to [0, 1] first)."""
    rgb = np.clip(rgb, 0.0, 1.0)
    return np.where(rgb <= 0.0031308, 12.92 * rgb, 1.055 * np.power(rgb, 1 / 2.4) - 0.055)


def display_pixels(rgba: np.ndarray, linear: bool) -> np.ndarray:
    """Pixels as a photo file holds them: linear float buffers (EXR, float datablocks) get the sRGB
    curve, so the backend sees the colours the artist sees."""
    if not linear:
        return rgba
    out = rgba.copy()
    out[..., :3] = linear_to_srgb(rgba[..., :3])
    return out


def to_uint8(px: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 1] (clipped) -> uint8."""
    return np.round(np.clip(px, 0.0, 1.0) * 255.0).astype(np.uint8)


def has_real_alpha(rgba: np.ndarray) -> bool:
    """Does the alpha channel carry anything (not one constant value)? The backend's rule too."""
    alpha = rgba[..., 3]
    return bool(alpha.min() != alpha.max())


def mask_values(rgba: np.ndarray) -> np.ndarray:
    """[H, W] mask in [0, 1] from RGBA pixels: the alpha where it is real, else the grey value
    (mean of R, G, B, as ``cupid reconstruct --mask`` reads a grey or colour file). A mask painted
    in Blender is opaque white on black, so its alpha says nothing and its brightness everything."""
    if has_real_alpha(rgba):
        return rgba[..., 3]
    return rgba[..., :3].mean(axis=2)


def _area_axis(a: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Downscale one axis of length N to n <= N by exact area averaging: output pixel i is the mean
    of the input span [e_i, e_i+1) with e_i = i·N/n, fractional end pixels weighted by their overlap.
    The whole pixels of a span are summed in one pass (np.add.reduceat); the fractional ends are
    corrected with the two pixels they cut."""
    N = a.shape[axis]
    if n == N:
        return a
    if n > N:
        raise ValueError(f"area resampling only shrinks, got {N} -> {n}")
    edges = np.arange(n + 1, dtype=np.float64) * (N / n)
    up = np.minimum(np.ceil(edges - 1e-9).astype(np.int64), N)   # first whole pixel at or after each edge
    total = np.add.reduceat(a, up[:-1], axis=axis).astype(np.float64)  # sums over [up_i, up_i+1)

    def cut(i: np.ndarray) -> np.ndarray:
        """(up_i - e_i) · a[floor(e_i)]: the part of the pixel before a whole-pixel boundary."""
        part = (up[i] - edges[i]).reshape([-1 if d == axis else 1 for d in range(a.ndim)])
        return part * np.take(a, np.minimum(up[i] - 1, N - 1).clip(0), axis=axis)

    inner = np.arange(n)
    total += cut(inner) - cut(inner + 1)
    return (total / (N / n)).astype(np.float32)


def resample_area(px: np.ndarray, width: int, height: int) -> np.ndarray:
    """Downscale float pixels ([H, W] or [H, W, C]) to width x height by area averaging: pixel
    (i, j) of the result covers the photo region [j·W/w, (j+1)·W/w) x [i·H/h, (i+1)·H/h)."""
    return _area_axis(_area_axis(px.astype(np.float32, copy=False), int(width), 1), int(height), 0)


def resample_nearest(px: np.ndarray, width: int, height: int) -> np.ndarray:
    """Downscale by taking each output pixel's centre sample (label images: no blended labels)."""
    H, W = px.shape[:2]
    rows = np.minimum(((np.arange(height) + 0.5) * (H / height)).astype(np.int64), H - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * (W / width)).astype(np.int64), W - 1)
    return px[rows][:, cols]
