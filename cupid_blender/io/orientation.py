"""EXIF orientation (phone photos), numpy + stdlib only.

A phone stores a portrait photo as landscape pixels plus an EXIF Orientation tag saying how to turn
them. The backend turns every photo upright (PIL's ``ImageOps.exif_transpose``); Blender's image
loader ignores the tag. The add-on therefore turns the pixels it reads upright too, so that one
orientation holds everywhere: the photo sent, the size masks are checked against, the camera's
frame and the background it shows.
"""
from __future__ import annotations

import struct
from typing import Optional

import numpy as np

TAG_ORIENTATION = 0x0112
TURNS_AXES = (5, 6, 7, 8)   # orientations that swap width and height


def _tiff_orientation(tiff: bytes) -> int:
    """The Orientation of IFD0 of a TIFF-structured EXIF block (1 when absent or unreadable)."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    end = "<" if tiff[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack(end + "I", tiff[4:8])
        (count,) = struct.unpack(end + "H", tiff[ifd:ifd + 2])
        for k in range(count):
            at = ifd + 2 + 12 * k
            tag, kind = struct.unpack(end + "HH", tiff[at:at + 4])
            if tag == TAG_ORIENTATION and kind == 3:   # SHORT
                (value,) = struct.unpack(end + "H", tiff[at + 8:at + 10])
                return value if 1 <= value <= 8 else 1
    except struct.error:
        return 1
    return 1


def _jpeg_exif(data: bytes) -> Optional[bytes]:
    """The TIFF block of a JPEG's APP1 Exif segment, if any."""
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF:           # a fill byte before the marker
            at += 1
            continue
        if marker in (0xD9, 0xDA):   # end of image / start of scan: no more headers
            return None
        (length,) = struct.unpack(">H", data[at + 2:at + 4])
        body = data[at + 4:at + 2 + length]
        if marker == 0xE1 and body.startswith(b"Exif\x00\x00"):
            return body[6:]
        at += 2 + length
    return None


def _png_exif(data: bytes) -> Optional[bytes]:
    """The eXIf chunk of a PNG, if any (it comes before the image data)."""
    at = 8
    while at + 8 <= len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        kind = data[at + 4:at + 8]
        if kind == b"eXIf":
            return data[at + 8:at + 8 + length]
        if kind in (b"IDAT", b"IEND"):
            return None
        at += 12 + length
    return None


def exif_orientation(data: Optional[bytes]) -> int:
    """The EXIF Orientation (1..8) of a JPEG or PNG file's bytes; 1 (upright) for anything else."""
    if not data:
        return 1
    if data[:2] == b"\xff\xd8":
        exif = _jpeg_exif(data)
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        exif = _png_exif(data)
    else:
        return 1
    return _tiff_orientation(exif) if exif else 1


def upright(px: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels ([H, W, ...], top row first) as stored, turned as EXIF `orientation` says (PIL's
    ``exif_transpose``): the photo as the camera held it."""
    turned = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }.get(int(orientation))
    return px if turned is None else np.ascontiguousarray(turned(px))


def stored_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """The size of the pixels as stored (as Blender shows them) of an upright width × height photo."""
    return (height, width) if orientation in TURNS_AXES else (width, height)


def upright_xy(x: float, y: float, width: int, height: int, orientation: int) -> tuple[float, float]:
    """A position in the stored pixels (width × height, x right, y down from the top-left corner, as
    picked on the photo Blender shows) in the upright photo's pixels: the same turn as :func:`upright`."""
    W, H = float(width), float(height)
    return {2: (W - x, y), 3: (W - x, H - y), 4: (x, H - y), 5: (y, x), 6: (H - y, x), 7: (H - y, W - x),
            8: (y, W - x)}.get(int(orientation), (x, y))
