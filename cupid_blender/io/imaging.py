"""Pixel work for uploads, numpy + zlib only: PNG encoding and the sRGB transfer curve.

The bpy half (reading an image datablock's pixels, choosing what to send) is
``cupid_blender.imaging``.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np


def png_bytes(rgba: np.ndarray) -> bytes:
    """Encode an [H, W, 4] uint8 array (top row first) as PNG."""
    if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.dtype != np.uint8:
        raise ValueError(f"expected [H, W, 4] uint8, got {rgba.dtype} {rgba.shape}")
    h, w = rgba.shape[:2]
    raw = np.zeros((h, 1 + 4 * w), dtype=np.uint8)  # filter byte 0 (None) per row
    raw[:, 1:] = rgba.reshape(h, 4 * w)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b""))


def linear_to_srgb(rgb: np.ndarray) -> np.ndarray:
    """The sRGB transfer curve on linear values (clipped to [0, 1] first)."""
    rgb = np.clip(rgb, 0.0, 1.0)
    return np.where(rgb <= 0.0031308, 12.92 * rgb, 1.055 * np.power(rgb, 1 / 2.4) - 0.055)


def to_uint8(px: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 1] (clipped) -> uint8."""
    return np.round(np.clip(px, 0.0, 1.0) * 255.0).astype(np.uint8)
