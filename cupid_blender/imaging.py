"""Turn Blender image datablocks into the bytes uploaded to the backend (the bpy half; the pixel
math is ``io/imaging.py``).

Blender stores pixels bottom-to-top as float RGBA; the backend expects an ordinary top-to-bottom
image file. When the datablock is an unmodified file on disk its bytes are sent as they are
(keeping the original encoding and size); otherwise the pixels are flipped and written as an
8-bit RGBA PNG with numpy + zlib (no temporary files, no render settings touched).
"""
from __future__ import annotations

import os
from typing import Any

import bpy
import numpy as np

from .io.imaging import linear_to_srgb, png_bytes, to_uint8

__all__ = ["image_bytes", "image_pixels_top_down", "png_bytes"]


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
        px[..., :3] = linear_to_srgb(px[..., :3])  # linear float buffers: encode to sRGB for the photo
    return to_uint8(px[..., :4])


def image_bytes(image: Any) -> tuple[bytes, str]:
    """(encoded bytes, file name) to upload for an image datablock."""
    path = bpy.path.abspath(image.filepath_raw or image.filepath) if image.source == "FILE" else ""
    if path and not image.is_dirty and image.packed_file is None and os.path.isfile(path):
        with open(path, "rb") as fh:
            return fh.read(), os.path.basename(path)
    if image.packed_file is not None and not image.is_dirty:
        name = os.path.basename(path) or f"{image.name}.png"
        return bytes(image.packed_file.data), name
    return png_bytes(image_pixels_top_down(image)), f"{bpy.path.clean_name(image.name)}.png"
