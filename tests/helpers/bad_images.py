"""Crafted image files for the bad-input tests (shared by the preprocessing and service tests)."""
from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(w: int, h: int) -> bytes:
    """A PNG that claims w×h pixels but carries almost no data (a decompression-bomb header)."""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))


def eps_file(side: int = 64) -> bytes:
    """A small Encapsulated PostScript drawing: PIL would open it with Ghostscript."""
    return (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 " + str(side).encode() + b" " + str(side).encode()
            + b"\nnewpath 0 0 moveto " + str(side).encode() + b" " + str(side).encode()
            + b" lineto stroke\nshowpage\n%%EOF\n")


def label_squares(n: int, side: int) -> bytes:
    """A colour label PNG of `side`² pixels with `n` differently coloured 8x8 squares (one object each):
    a few KB that a naive splitter turns into n full-size masks."""
    import io

    import numpy as np
    from PIL import Image

    lab = np.zeros((side, side, 3), np.uint8)
    per_row = side // 10
    for k in range(n):
        y, x = divmod(k, per_row)
        v = k + 1
        lab[10 * y: 10 * y + 8, 10 * x: 10 * x + 8] = (v & 255, (v >> 8) & 255, 200)
    buf = io.BytesIO()
    Image.fromarray(lab).save(buf, format="PNG", optimize=True)
    return buf.getvalue()
