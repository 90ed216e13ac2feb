"""Turn Blender image datablocks into PNG bytes for the backend.

Blender stores pixels bottom-to-top as float RGBA; the backend expects an ordinary top-to-bottom
image file. When the datablock is an unmodified file on disk its bytes are sent as they are
(keeping the original encoding and size); otherwise the pixels are flipped and written as an
8-bit RGBA PNG with numpy + zlib (no temporary files, no render settings touched).
"""
from __future__ import annotations

import os
import struct
import zlib
from typing import Any

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


def image_pixels_top_down(image: Any) -> np.ndarray:
    """[H, W, 4] uint8 of a bpy image, first row at the top (Blender stores the bottom row first)."""
    w, h = int(image.size[0]), int(image.size[1])
    if w == 0 or h == 0:
        raise ValueError(f"image {image.name!r} has no pixel data")
    channels = int(image.channels)
    buf = np.empty(w * h * channels, dtype=np.float32)
    image.pixels.foreach_get(buf)
    px = buf.reshape(h, w, channels)[::-1]
    if channels == 1:
        px = np.repeat(px, 3, axis=2)
    if px.shape[2] == 3:
        px = np.concatenate([px, np.ones((h, w, 1), np.float32)], axis=2)
    if image.colorspace_settings.name not in ("sRGB",) and not image.is_data and image.is_float:
        px = px.copy()
        rgb = np.clip(px[..., :3], 0.0, 1.0)  # linear float buffers: encode to sRGB for the photo
        px[..., :3] = np.where(rgb <= 0.0031308, 12.92 * rgb, 1.055 * np.power(rgb, 1 / 2.4) - 0.055)
    return np.round(np.clip(px[..., :4], 0.0, 1.0) * 255.0).astype(np.uint8)


def image_bytes(image: Any) -> tuple[bytes, str]:
    """(encoded bytes, file name) to upload for an image datablock."""
    import bpy

    path = bpy.path.abspath(image.filepath_raw or image.filepath) if image.source == "FILE" else ""
    if path and not image.is_dirty and image.packed_file is None and os.path.isfile(path):
        with open(path, "rb") as fh:
            return fh.read(), os.path.basename(path)
    if image.packed_file is not None and not image.is_dirty:
        name = os.path.basename(path) or f"{image.name}.png"
        return bytes(image.packed_file.data), name
    return png_bytes(image_pixels_top_down(image)), f"{bpy.path.clean_name(image.name)}.png"
