"""The clip range of a scene's camera holds every object (cupid_blender/io/clipping.py, no Blender needed)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_SPEC = importlib.util.spec_from_file_location(
    "cupid_clipping", Path(__file__).resolve().parents[1] / "cupid_blender" / "io" / "clipping.py")
clipping = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(clipping)


def _look_at(eye, target):
    z = np.asarray(target, float) - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, [0, 0, 1.0])
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    return R, -R @ eye


def _object(scale, position, rot_deg=30.0):
    a = np.radians(rot_deg)
    M = np.eye(4)
    M[:3, :3] = scale * np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    M[:3, 3] = position
    return ([-0.5, -0.4, -0.3], [0.5, 0.4, 0.3], M)


def _inside(start, end, depths):
    f32 = np.float32
    return float(f32(start)) <= min(depths) and float(f32(end)) >= max(depths)


@pytest.mark.parametrize("distance", [0.05, 3.0, 9e7])
def test_every_object_corner_lies_inside_the_range(distance):
    """Objects 9·10⁷ m away (a metric point map can do that) are inside the range, as are close ones,
    even after Blender rounds both values to float32."""
    R, t = _look_at(np.array([0.3, -distance, 0.2 * distance]), np.zeros(3))
    objects = [_object(0.02 * distance, [0, 0, 0]), _object(0.01 * distance, [0.2 * distance, 0.1 * distance, 0])]
    start, end = clipping.clip_range(R, t, objects)
    depths = clipping.corner_depths(R, t, objects)
    assert min(depths) > 0 and _inside(start, end, depths)
    assert end < 1.2 * max(depths) and start > 0.8 * min(depths)   # tight: depth precision is kept


def test_depths_match_numpy():
    R, t = _look_at(np.array([2.0, -4.0, 1.5]), np.array([0.1, 0.2, 0.0]))
    bmin, bmax, M = _object(1.3, [0.4, -0.2, 0.1])
    corners = np.array([[x, y, z] for x in (bmin[0], bmax[0]) for y in (bmin[1], bmax[1]) for z in (bmin[2], bmax[2])])
    world = corners @ M[:3, :3].T + M[:3, 3]
    np.testing.assert_allclose(clipping.corner_depths(R, t, [(bmin, bmax, M)]), (world @ R.T + t)[:, 2])


def test_an_object_reaching_the_camera_and_nothing_in_front():
    R, t = np.eye(3), np.zeros(3)
    straddling = _object(2.0, [0, 0, 0.1])     # its box reaches behind the camera plane
    far = _object(1.0, [0, 0, 50.0])
    start, end = clipping.clip_range(R, t, [straddling, far])
    assert 0 < start <= end * clipping.MIN_RATIO * 1.001 and end >= 50.3
    assert clipping.clip_range(R, t, [_object(1.0, [0, 0, -10.0])]) is None
    assert clipping.clip_range(R, t, []) is None
    with pytest.raises(ValueError):
        clipping.clip_range(R, t, [([0, 0], [1, 1], np.eye(4))])
