"""Tests of cupid.geometry: projection conventions, camera solving from UV pairs, Umeyama."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cupid.errors import InputError
from helpers.cameras import random_camera, random_rotation
from helpers.meshes import surface_voxels, suzanne
from cupid.geometry import (
    CameraPose,
    decompose_projection,
    project,
    rotation_angle_deg,
    solve_camera,
    umeyama,
    umeyama_robust,
    uncrop_uv,
    uv_cube,
    voxel_centers,
)


@pytest.fixture(scope="module")
def suzanne_voxels() -> np.ndarray:
    """Surface voxels (indices, 64³) of Blender's Suzanne fitted into [-0.5, 0.5]³."""
    return surface_voxels(*suzanne(), res=64)


def _t_dir_err_deg(t_est: np.ndarray, t_true: np.ndarray) -> float:
    c = np.dot(t_est, t_true) / np.linalg.norm(t_est) / np.linalg.norm(t_true)
    return float(np.degrees(np.arccos(np.clip(c, -1, 1))))


SIZES = [(640, 480), (480, 640), (512, 512)]


# ------------------------------------------------------------------ conventions

def test_voxel_centers_and_pixel_convention():
    c = voxel_centers(np.array([[0, 0, 0], [63, 63, 63], [32, 0, 5]]))
    assert np.allclose(c[0], -0.5 + 0.5 / 64)
    assert np.allclose(c[1], 0.5 - 0.5 / 64)
    assert np.allclose(c[2], [(32.5) / 64 - 0.5, 0.5 / 64 - 0.5, 5.5 / 64 - 0.5])
    K = np.array([[100.0, 0, 30], [0, 100, 20], [0, 0, 1]])
    # a point on the optical axis lands on the principal point; +x right, +y down
    pts = np.array([[0, 0, 2.0], [0.2, 0, 2.0], [0, 0.2, 2.0], [0, 0, -1.0]])
    uv, z = project(pts, K, np.eye(3), np.zeros(3), (60, 40), return_depth=True)
    assert np.allclose(uv[0], [0.5, 0.5])
    assert np.allclose(uv[1], [(30 + 10) / 60, 0.5])
    assert np.allclose(uv[2], [0.5, (20 + 10) / 40])
    assert np.all(np.isnan(uv[3])) and z[3] < 0  # behind the camera


def test_uv_cube_round_trip(suzanne_voxels):
    rng = np.random.default_rng(3)
    K, R, t = random_camera(rng, 640, 480)
    occ = np.zeros((64, 64, 64), bool)
    occ[tuple(suzanne_voxels.T)] = True
    cube = uv_cube(occ, K, R, t, (640, 480))
    assert cube.shape == (64, 64, 64, 2) and cube.dtype == np.float32
    assert np.all(cube[~occ] == 0)
    idx = np.argwhere(occ)
    pts, uv = voxel_centers(idx), cube[tuple(idx.T)]
    assert np.allclose(uv, project(pts, K, R, t, (640, 480)), atol=1e-6)
    # every active voxel must be in front of the camera
    with pytest.raises(InputError):
        uv_cube(occ, K, R, np.array([0, 0, -3.0]), (640, 480))


# ------------------------------------------------------------------ camera solving

@pytest.mark.parametrize("size", SIZES)
def test_solve_camera_exact(size, suzanne_voxels):
    rng = np.random.default_rng(hash(size) % 1000)
    pts = voxel_centers(suzanne_voxels)
    W, H = size
    for _ in range(4):
        K, R, t = random_camera(rng, W, H)
        uv = project(pts, K, R, t, size)
        sol = solve_camera(pts, uv, size)
        assert rotation_angle_deg(sol.R, R) < 1e-4
        assert abs(sol.K[0, 0] / K[0, 0] - 1) < 1e-5
        assert abs(sol.K[1, 1] - sol.K[0, 0]) < 1e-9 and sol.K[0, 1] == 0 and sol.K[2, 2] == 1
        assert np.allclose(sol.K[:2, 2], K[:2, 2], atol=1e-3)
        assert np.allclose(sol.t, t, rtol=1e-5, atol=1e-6)
        assert abs(np.linalg.det(sol.R) - 1) < 1e-9
        assert sol.inliers.all() and sol.rms_px < 1e-4


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("outliers", [0.0, 0.15])
def test_solve_camera_noise_and_outliers(size, outliers, suzanne_voxels):
    rng = np.random.default_rng(17 + int(outliers * 100) + size[0])
    pts = voxel_centers(suzanne_voxels)
    assert 5000 < len(pts) < 20000
    W, H = size
    for _ in range(3):
        K, R, t = random_camera(rng, W, H)
        uv = project(pts, K, R, t, size)
        uv = uv + rng.normal(0, 0.5, uv.shape) / np.array([W, H])
        bad = rng.random(len(uv)) < outliers
        uv[bad] = rng.random((int(bad.sum()), 2))
        sol = solve_camera(pts, uv, size)
        assert rotation_angle_deg(sol.R, R) < 0.5
        assert _t_dir_err_deg(sol.t, t) < 0.5
        assert abs(sol.K[0, 0] / K[0, 0] - 1) < 0.02
        assert 0.5 < sol.rms_px < 1.0  # 2-D Gaussian with σ = 0.5 px per axis: rms ≈ 0.71
        if outliers:
            # nearly all replaced pairs are flagged; the kept ones are nearly all true pairs
            assert sol.inliers[bad].mean() < 0.05
            assert sol.inliers[~bad].mean() > 0.99


def test_solve_camera_is_deterministic(suzanne_voxels):
    rng = np.random.default_rng(5)
    pts = voxel_centers(suzanne_voxels)
    K, R, t = random_camera(rng, 640, 480)
    uv = project(pts, K, R, t, (640, 480)) + rng.normal(0, 1e-3, (len(pts), 2))
    a = solve_camera(pts, uv, (640, 480), seed=3)
    b = solve_camera(pts, uv, (640, 480), seed=3)
    assert np.array_equal(a.R, b.R) and np.array_equal(a.K, b.K)


def test_decompose_projection_sign_and_cheirality():
    rng = np.random.default_rng(11)
    K, R, t = random_camera(rng, 640, 480)
    P = K @ np.c_[R, t]
    for s in (1.0, 3.5, -0.2, -7.0):
        K2, R2, t2 = decompose_projection(s * P)
        assert np.allclose(K2, K) and np.allclose(R2, R) and np.allclose(t2, t)
    # a camera that looks AWAY from the points: P' = K[-R | -t] has the same projections up to
    # sign; with det > 0 fixed, the decomposition yields R, t (points in front), never -R.
    K3, R3, t3 = decompose_projection(K @ np.c_[-R, -t])
    assert np.linalg.det(R3) > 0 and np.allclose(R3, R) and np.allclose(t3, t)
    pts = rng.uniform(-0.5, 0.5, (50, 3))
    assert np.all((pts @ R3.T + t3)[:, 2] > 0)


def test_solve_camera_bad_input():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.5, 0.5, (100, 3))
    uv = rng.random((100, 2))
    with pytest.raises(InputError):
        solve_camera(pts[:5], uv[:5], (64, 64))
    with pytest.raises(InputError):
        solve_camera(pts, uv[:50], (64, 64))
    flat = pts.copy()
    flat[:, 2] = 0.1
    with pytest.raises(InputError):
        solve_camera(flat, uv, (64, 64))
    bad = uv.copy()
    bad[3, 0] = np.nan
    with pytest.raises(InputError):
        solve_camera(pts, bad, (64, 64))
    with pytest.raises(InputError):
        solve_camera(pts, uv, (0, 64))
    with pytest.raises(InputError):
        solve_camera(pts, np.full((100, 2), 0.3), (64, 64))
    with pytest.raises(InputError):  # pure noise: no camera explains the pairs
        solve_camera(rng.uniform(-0.5, 0.5, (3000, 3)), rng.random((3000, 2)), (640, 480))


# ------------------------------------------------------------------ CameraPose

def test_camera_pose_de_crop_round_trip():
    rng = np.random.default_rng(2)
    K, R, t = random_camera(rng, 1200, 800)
    orig = CameraPose(K, R, t, 1200, 800)
    # a 518×518 crop of a 700×700 square whose top-left corner is at (310.5, 40) in the photo
    s, off = 700 / 518, (310.5, 40.0)
    A = np.array([[s, 0, off[0]], [0, s, off[1]], [0, 0, 1.0]])
    crop = CameraPose(np.linalg.inv(A) @ K, R, t, 518, 518)
    pts = rng.uniform(-0.5, 0.5, (200, 3))
    pix_crop = crop.project(pts) * 518
    pix_orig = orig.project(pts) * np.array([1200, 800])
    assert np.allclose(pix_orig, s * pix_crop + np.array(off), atol=1e-8)
    back = crop.de_crop(s, off, image_size=(1200, 800))
    assert np.allclose(back.K, K) and (back.width, back.height) == (1200, 800)
    assert np.allclose(back.K[0, 0], s * crop.K[0, 0])
    assert np.allclose(back.K[:2, 2], s * crop.K[:2, 2] + np.array(off))
    assert crop.de_crop(s, off).image_size == (700, 700)
    # uv measured in the crop, carried to the photo, equal the photo camera's uv
    assert np.allclose(uncrop_uv(crop.project(pts), s, off, (518, 518), (1200, 800)), orig.project(pts))
    # projection matrix and JSON round trip
    P = back.projection_matrix()
    h = np.c_[pts, np.ones(len(pts))] @ P.T
    assert np.allclose(h[:, :2] / h[:, 2:], pix_orig)
    again = CameraPose.from_dict(json.loads(json.dumps(back.to_dict())))
    assert np.allclose(again.K, back.K) and np.allclose(again.R, R) and np.allclose(again.t, t)
    assert np.allclose(back.camera_center(), -R.T @ t)
    with pytest.raises(InputError):
        CameraPose.from_dict({"K": K.tolist(), "R": R.tolist(), "t": t.tolist()})
    with pytest.raises(InputError):
        crop.de_crop(0.0, off)


# ------------------------------------------------------------------ Umeyama

def test_umeyama_exact_and_no_reflection():
    rng = np.random.default_rng(7)
    src = rng.normal(size=(300, 3))
    for _ in range(5):
        s, R, t = rng.uniform(0.2, 5.0), random_rotation(rng), rng.normal(size=3) * 3
        dst = s * src @ R.T + t
        s2, R2, t2 = umeyama(src, dst)
        assert abs(s2 / s - 1) < 1e-10 and rotation_angle_deg(R2, R) < 1e-7
        assert np.allclose(t2, t, atol=1e-9)
        _, R3, _ = umeyama(src, src @ R.T + t, with_scale=False)
        assert rotation_angle_deg(R3, R) < 1e-7
        w = rng.random(len(src))
        s4, R4, t4 = umeyama(src, dst, weights=w)
        assert abs(s4 / s - 1) < 1e-10 and rotation_angle_deg(R4, R) < 1e-7
    mirrored = src * np.array([1, 1, -1])
    _, Rm, _ = umeyama(src, mirrored)
    assert abs(np.linalg.det(Rm) - 1) < 1e-9
    with pytest.raises(InputError):
        umeyama(src[:2], src[:2])
    with pytest.raises(InputError):
        umeyama(np.ones((10, 3)), src[:10])


def test_umeyama_robust_outliers():
    rng = np.random.default_rng(8)
    for _ in range(3):
        src = rng.uniform(-0.5, 0.5, (3000, 3))
        s, R, t = rng.uniform(0.3, 3.0), random_rotation(rng), rng.normal(size=3)
        dst = s * src @ R.T + t + rng.normal(0, 0.002 * s, src.shape)
        bad = rng.random(len(src)) < 0.2
        dst[bad] = rng.uniform(-1, 1, (int(bad.sum()), 3)) * 2 * s + t
        plain = umeyama(src, dst)
        sim = umeyama_robust(src, dst)
        assert rotation_angle_deg(sim.R, R) < 0.2 < rotation_angle_deg(plain[1], R)
        assert abs(sim.scale / s - 1) < 2e-3
        assert np.linalg.norm(sim.t - t) < 2e-3 * s
        assert sim.inliers[~bad].mean() > 0.99 and sim.inliers[bad].mean() < 0.05
        assert np.allclose(sim.apply(src[~bad]), dst[~bad], atol=0.02 * s)
