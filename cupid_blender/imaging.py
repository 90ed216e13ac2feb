"""Image datablocks and files as the add-on reads them for an upload (the bpy half; the pixel math
is ``io/imaging.py``, what to send is decided in ``io/upload.py``).

Blender stores pixels bottom-to-top as float RGBA; float buffers (EXR, 16-bit PNG, float
datablocks) hold linear values unless marked as data (Non-Color). Pixels are read back as a photo
file would hold them: top row first, with the sRGB curve applied to linear buffers. An unmodified
file's own bytes are kept too, so an ordinary photo is sent as it is.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import bpy
import numpy as np

from .io.imaging import display_pixels, png_bytes, to_uint8
from .io.orientation import exif_orientation, upright
from .io.upload import Picture, picture_stem

__all__ = ["image_bytes", "image_pixels", "read_picture"]


def image_pixels(image: Any) -> np.ndarray:
    """float32 [H, W, 4] of a bpy image, first row at the top, display (sRGB) values."""
    w, h = int(image.size[0]), int(image.size[1])
    if w == 0 or h == 0:
        raise ValueError(f"image {image.name!r} has no pixel data")
    channels = int(image.channels)
    buf = np.empty(w * h * channels, dtype=np.float32)
    image.pixels.foreach_get(buf)
    px = buf.reshape(h, w, channels)[::-1]
    if channels < 3:  # grey (and grey + alpha)
        px = np.concatenate([np.repeat(px[..., :1], 3, axis=2), px[..., 1:]], axis=2)
    if px.shape[2] == 3:
        px = np.concatenate([px, np.ones((h, w, 1), np.float32)], axis=2)
    linear = bool(image.is_float) and not image.colorspace_settings.is_data
    return np.ascontiguousarray(display_pixels(px[..., :4], linear), dtype=np.float32)


def _own_bytes(image: Any) -> Optional[tuple[bytes, str]]:
    """(bytes, file name) of an unmodified file or packed file behind the datablock, else None."""
    path = bpy.path.abspath(image.filepath_raw or image.filepath) if image.source == "FILE" else ""
    if image.is_dirty:
        return None
    if path and image.packed_file is None and os.path.isfile(path):
        with open(path, "rb") as fh:
            return fh.read(), os.path.basename(path)
    if image.packed_file is not None:
        return bytes(image.packed_file.data), os.path.basename(path) or f"{image.name}.png"
    return None


def image_bytes(image: Any) -> tuple[bytes, str]:
    """(encoded bytes, file name) of a datablock: its own file when unmodified, else a PNG of its
    pixels (8-bit sRGB)."""
    own = _own_bytes(image)
    if own is not None:
        return own
    return png_bytes(to_uint8(image_pixels(image))), f"{bpy.path.clean_name(image.name)}.png"


def _picture(name: str, filename: str, pixels: Optional[np.ndarray], data: Optional[bytes]) -> Picture:
    """The Picture of decoded pixels and the file's bytes, turned upright as its EXIF orientation says
    (Blender's loader ignores it, the backend does not). A turned photo keeps no file bytes: what is
    sent and kept is then a PNG of the upright pixels, so no copy of it is ever shown sideways."""
    orientation = exif_orientation(data) if pixels is not None else 1
    if orientation != 1:
        pixels, data = upright(pixels, orientation), None
    return Picture(name, picture_stem(name), filename, pixels, data, orientation)


def read_picture(source: str, what: str) -> Picture:
    """A photo or mask from an image datablock's name or a file path (decoded by Blender, turned
    upright; a file Blender cannot decode keeps only its bytes, for the backend to judge). Raises
    ValueError with a one-line reason."""
    if source in bpy.data.images:
        img = bpy.data.images[source]
        own = _own_bytes(img)
        try:
            pixels = image_pixels(img)
        except (ValueError, RuntimeError) as exc:
            raise ValueError(f"cannot read the {what} image {img.name!r}: {exc}") from None
        filename = own[1] if own else f"{bpy.path.clean_name(img.name)}.png"
        return _picture(img.name, filename, pixels, own[0] if own else None)
    path = bpy.path.abspath(source)
    if not os.path.isfile(path):
        raise ValueError(f"{what} not found: {source!r} is neither a file nor an image in this file")
    with open(path, "rb") as fh:
        data = fh.read()
    if not data:
        raise ValueError(f"the {what} file {path} is empty")
    name = os.path.basename(path)
    return _picture(name, name, _decode_file(path), data)


def _decode_file(path: str) -> Optional[np.ndarray]:
    """The file's pixels through a temporary datablock (removed again), or None if Blender cannot
    decode it."""
    try:
        img = bpy.data.images.load(path, check_existing=False)
    except RuntimeError:
        return None
    try:
        return image_pixels(img) if img.size[0] and img.size[1] else None
    except (ValueError, RuntimeError):
        return None
    finally:
        bpy.data.images.remove(img)
