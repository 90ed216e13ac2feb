"""The clip range a scene's camera needs to see its objects (plain math: stdlib only, no bpy).

Blender draws nothing nearer than ``clip_start`` or farther than ``clip_end``; a fixed range (or one
from the camera's distance to the world origin) loses objects that a reconstruction puts far away
(a point map's metric scale can put them at 10⁸ m) or very close. :func:`clip_range` takes the depth
of every object's bounding-box corners in the camera and returns a range holding all of them with a
margin, robust to Blender storing both values as float32.

Frames as in :mod:`camera`: the camera is OpenCV's ``x_cam = R·x_world + t``; an object's
``matrix_world`` maps its local coordinates to the world.
"""
from __future__ import annotations

import struct
from typing import Any, Iterable, List, Optional, Sequence, Tuple

MARGIN = 0.05          # share of the depth added beyond the farthest and before the nearest corner
MIN_RATIO = 1e-6       # clip_start is at least this share of clip_end when an object reaches the camera


def _corners(bbox_min: Sequence[float], bbox_max: Sequence[float]) -> List[Tuple[float, float, float]]:
    lo, hi = [float(v) for v in bbox_min], [float(v) for v in bbox_max]
    if len(lo) != 3 or len(hi) != 3:
        raise ValueError("bounding boxes are (min xyz, max xyz)")
    return [(x, y, z) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]


def _rows(m: Any, n: int, what: str) -> List[List[float]]:
    rows = [[float(v) for v in row] for row in (m.tolist() if hasattr(m, "tolist") else m)]
    if len(rows) < n or any(len(r) < n for r in rows):
        raise ValueError(f"{what} must be at least {n}x{n}")
    return rows


def corner_depths(R: Any, t: Any, objects: Iterable[Tuple[Any, Any, Any]]) -> List[float]:
    """Camera depth (z_cam) of the 8 bounding-box corners of every (bbox_min, bbox_max, matrix_world)."""
    Rm = _rows(R, 3, "R")
    tv = [float(v) for v in (t.tolist() if hasattr(t, "tolist") else t)]
    depths = []
    for bbox_min, bbox_max, matrix_world in objects:
        M = _rows(matrix_world, 4, "matrix_world")
        for p in _corners(bbox_min, bbox_max):
            w = [sum(M[i][j] * p[j] for j in range(3)) + M[i][3] for i in range(3)]
            depths.append(sum(Rm[2][j] * w[j] for j in range(3)) + tv[2])
    return depths


def clip_range(R: Any, t: Any, objects: Iterable[Tuple[Any, Any, Any]],
               margin: float = MARGIN) -> Optional[Tuple[float, float]]:
    """(clip_start, clip_end) for a camera x_cam = R·x + t to see every object whole.

    ``objects`` are (bbox_min, bbox_max, matrix_world): each object's local bounding box and its
    local-to-world 4×4 matrix. The range spans the corners' depths with ``margin`` of them added on
    both sides; an object reaching the camera plane makes clip_start ``MIN_RATIO`` of clip_end.
    None when no object lies in front of the camera (the caller keeps its own default).
    """
    depths = corner_depths(R, t, objects)
    front = [d for d in depths if d > 0]
    if not front:
        return None
    far = max(front) * (1.0 + margin)
    near = min(depths)
    start = near * (1.0 - margin) if near > 0 else far * MIN_RATIO
    start = max(start, far * 1e-12, 1e-9)
    # Blender keeps both as float32: step outwards past the float32 neighbours of the exact values
    return _f32_down(start), _f32_up(far)


def _f32_down(x: float) -> float:
    y = struct.unpack("f", struct.pack("f", x))[0]
    return y if y <= x else struct.unpack("f", struct.pack("f", x * (1 - 2 ** -22)))[0]


def _f32_up(x: float) -> float:
    y = struct.unpack("f", struct.pack("f", x))[0]
    return y if y >= x else struct.unpack("f", struct.pack("f", x * (1 + 2 ** -22)))[0]
