"""Photos stored in linear light: OpenEXR, Radiance HDR and floating-point TIFF.

Pillow reads none of them (or, for a one-channel float TIFF, without a colour space). Blender shows
them through the sRGB curve, and the add-on sends such a photo as those display values
(``cupid_blender/io/imaging.py``, ``display_pixels``); here the backend does the same to the file, so
the CLI and the service see an EXR as the artist sees it in Blender: decoded by OpenCV (a backend
dependency already), RGB clipped to [0, 1] and put through the sRGB curve, alpha clipped, 8 bits.
"""
from __future__ import annotations

import os
import struct

import numpy as np
from PIL import Image

EXR_MAGIC = b"\x76\x2f\x31\x01"
HDR_MAGICS = (b"#?RADIANCE", b"#?RGBE")
TIFF_ORDERS = {b"II*\x00": "<", b"MM\x00*": ">"}
TIFF_SAMPLE_FORMAT = 339     # the TIFF tag whose value 3 means IEEE floating point samples
TIFF_FLOAT = 3
TIFF_PHOTOMETRIC = 262       # 32844 LogL, 32845 LogLuv: SGI's high dynamic range encodings
TIFF_LOG = (32844, 32845)

# OpenCV decodes EXR only when asked to, and reads the switch once, at its first EXR: set it on import
os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")


def linear_to_srgb(rgb: np.ndarray) -> np.ndarray:
    """The sRGB transfer curve on linear values (clipped to [0, 1] first): the add-on's formula."""
    rgb = np.clip(rgb, 0.0, 1.0)
    return np.where(rgb <= 0.0031308, 12.92 * rgb, 1.055 * np.power(rgb, 1 / 2.4) - 0.055)


def _is_float_tiff(data: bytes) -> bool:
    """Does a classic TIFF's first image hold linear light: floating point samples (SampleFormat 3), or
    LogLuv / LogL high dynamic range pixels (as OpenCV writes a float image)?"""
    order = TIFF_ORDERS.get(data[:4])
    if order is None or len(data) < 8:
        return False
    try:
        (ifd,) = struct.unpack_from(order + "I", data, 4)
        (count,) = struct.unpack_from(order + "H", data, ifd)
        for i in range(count):
            tag, _kind, n, value = struct.unpack_from(order + "HHI4s", data, ifd + 2 + 12 * i)
            first = struct.unpack_from(order + "H", value if n * 2 <= 4 else
                                       data, 0 if n * 2 <= 4 else struct.unpack(order + "I", value)[0])[0]
            if (tag, first) == (TIFF_SAMPLE_FORMAT, TIFF_FLOAT) or (tag == TIFF_PHOTOMETRIC and first in TIFF_LOG):
                return True
    except struct.error:
        return False
    return False


def is_linear_image(data: bytes) -> bool:
    """Is `data` an EXR, a Radiance HDR or a floating-point TIFF file?"""
    return data.startswith(EXR_MAGIC) or data.startswith(HDR_MAGICS) or _is_float_tiff(data)


def read_linear_image(data: bytes) -> Image.Image | None:
    """An EXR / HDR / float TIFF file as an 8-bit sRGB RGBA image (None for any other file); raises
    ValueError when such a file cannot be decoded."""
    if not is_linear_image(data):
        return None
    import cv2

    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ValueError(f"OpenCV could not decode it ({exc})") from None
    if pixels is None or pixels.size == 0:
        raise ValueError("OpenCV could not decode it")
    pixels = pixels.astype(np.float32)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    channels = pixels.shape[2]
    if channels in (1, 2):          # grey, grey + alpha
        rgb, alpha = np.repeat(pixels[..., :1], 3, axis=2), pixels[..., 1] if channels == 2 else None
    else:                           # OpenCV's BGR(A)
        rgb, alpha = pixels[..., 2::-1], pixels[..., 3] if channels >= 4 else None
    rgba = np.empty(pixels.shape[:2] + (4,), np.float32)
    rgba[..., :3] = linear_to_srgb(np.nan_to_num(rgb, nan=0.0, posinf=1.0, neginf=0.0))
    rgba[..., 3] = 1.0 if alpha is None else np.clip(np.nan_to_num(alpha, nan=0.0), 0.0, 1.0)
    return Image.fromarray(np.round(rgba * 255.0).astype(np.uint8), "RGBA")
