"""Read a bundle's 3D Gaussian Splatting PLY with numpy alone (Blender has no PLY reader for it).

The file is the standard 3DGS layout the backend writes (``cupid.export.ply``): one binary
``vertex`` element with x, y, z, f_dc_0..2 (degree-0 spherical-harmonic colour), opacity (logit),
scale_0..2 (natural log of the standard deviations) and rot_0..3 (quaternion w, x, y, z), in the
object frame. :func:`read_gaussians` returns the activated values a viewer uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SH_C0 = 0.28209479177387814  # degree-0 spherical harmonic: colour = 0.5 + SH_C0 · f_dc
_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
          "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
          "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
            "rot_0", "rot_1", "rot_2", "rot_3")


class GaussianFileError(Exception):
    """The PLY is not a readable 3DGS file; the message names the file and the reason."""


@dataclass
class GaussianData:
    """Activated Gaussians, one row per splat."""

    xyz: np.ndarray        # float32 [N, 3], object frame
    opacity: np.ndarray    # float32 [N] in (0, 1)
    scale: np.ndarray      # float32 [N, 3], standard deviations
    rotation: np.ndarray   # float32 [N, 4], unit quaternion (w, x, y, z)
    color: np.ndarray      # float32 [N, 3] in [0, 1], the splat's base colour

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


def _header(raw: bytes, path: Path) -> tuple[str, int, list[tuple[str, str]], int]:
    """(format, vertex count, vertex properties (name, numpy type), offset of the vertex data).
    The vertex element must come first (so its data starts right after the header)."""
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply\n") or end < 0:
        raise GaussianFileError(f"{path.name} is not a PLY file")
    fmt, count, props, elements = "", 0, [], []
    for line in raw[:end].decode("ascii", "replace").splitlines()[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format" and len(words) > 1:
            fmt = words[1]
        elif words[0] == "element" and len(words) > 2:
            elements.append(words[1])
            if words[1] == "vertex":
                count = int(words[2])
        elif words[0] == "property" and elements == ["vertex"]:
            if len(words) != 3 or words[1] not in _TYPES:
                raise GaussianFileError(f"{path.name}: unsupported vertex property {' '.join(words[1:])!r}")
            props.append((words[2], _TYPES[words[1]]))
    if not elements or elements[0] != "vertex":
        raise GaussianFileError(f"{path.name}: the first element must be 'vertex', got {elements[:1]}")
    return fmt, count, props, end + len(b"end_header\n")


def read_gaussians(path: str | Path) -> GaussianData:
    """The Gaussians of a 3DGS PLY, activated (sigmoid opacity, exp scales, unit quaternions)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GaussianFileError(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    fmt, count, props, offset = _header(raw, path)
    if fmt not in ("binary_little_endian", "binary_big_endian"):
        raise GaussianFileError(f"{path.name}: only binary PLY files are read, not {fmt or 'this format'!r}")
    missing = [n for n in REQUIRED if n not in {p for p, _ in props}]
    if missing:
        raise GaussianFileError(f"{path.name} is not a 3DGS PLY: missing {', '.join(missing)}")
    order = "<" if fmt == "binary_little_endian" else ">"
    dtype = np.dtype([(name, order + t) for name, t in props])
    if len(raw) - offset < count * dtype.itemsize:
        raise GaussianFileError(f"{path.name} is truncated: {count} splats need {count * dtype.itemsize} bytes")
    rec = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)

    def cols(*names: str) -> np.ndarray:
        return np.stack([rec[n].astype(np.float64) for n in names], axis=1)

    values = cols(*REQUIRED)
    if not np.all(np.isfinite(values)):
        raise GaussianFileError(f"{path.name} holds NaN or infinite values")
    rot = cols("rot_0", "rot_1", "rot_2", "rot_3")
    norm = np.linalg.norm(rot, axis=1, keepdims=True)
    rot = np.where(norm > 1e-12, rot / np.maximum(norm, 1e-12), [1.0, 0.0, 0.0, 0.0])
    return GaussianData(
        xyz=cols("x", "y", "z").astype(np.float32),
        opacity=(1.0 / (1.0 + np.exp(-rec["opacity"].astype(np.float64)))).astype(np.float32),
        scale=np.exp(cols("scale_0", "scale_1", "scale_2")).astype(np.float32),
        rotation=rot.astype(np.float32),
        color=np.clip(0.5 + SH_C0 * cols("f_dc_0", "f_dc_1", "f_dc_2"), 0.0, 1.0).astype(np.float32),
    )
