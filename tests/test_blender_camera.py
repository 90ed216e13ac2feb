"""OpenCV -> Blender camera: pure-math round trips, and a Cycles render whose silhouette must match
the same mesh projected through K, R, t."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cupid_blender.io.camera import BlenderCameraSettings, blender_camera_settings, opencv_camera, scale_camera_K
from tests.blender_scripts import launch
from tests.blender_scripts.silhouette import setup_silhouette_render

ASSETS = Path(__file__).resolve().parent / "assets"
READ_DRIVER = Path(__file__).resolve().parent / "blender_scripts" / "read_camera.py"


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def _camera(rng, W, H, fy_over_fx=1.0, pp_off=0.08):
    f = W / 2.0 / math.tan(math.radians(rng.uniform(30, 60)) / 2.0)
    K = np.array([[f, 0, W * (0.5 + rng.uniform(-pp_off, pp_off))],
                  [0, f * fy_over_fx, H * (0.5 + rng.uniform(-pp_off, pp_off))], [0, 0, 1.0]])
    R = _rotation(rng)
    half = math.atan(min(W / K[0, 0], H / K[1, 1]) / 2.0)
    t = np.array([0.02, -0.03, 0.45 / math.tan(half) + 0.5])
    return K, R, t


def opencv_from_blender(s: BlenderCameraSettings) -> tuple:
    """The test's oracle: Blender's view-plane rules (see cupid_blender/io/camera.py) read backwards,
    from the settings to (K, R, t, W, H)."""
    W, H = s.resolution_x, s.resolution_y
    ycor = s.pixel_aspect_y / s.pixel_aspect_x
    viewfac = float(W) if s.sensor_fit == "HORIZONTAL" else ycor * H
    sensor = s.sensor_width if s.sensor_fit == "HORIZONTAL" else s.sensor_height
    fx = s.lens * viewfac / sensor
    K = np.array([[fx, 0.0, W / 2.0 - s.shift_x * viewfac], [0.0, fx / ycor, H / 2.0 + s.shift_y * viewfac / ycor],
                  [0.0, 0.0, 1.0]])
    M = np.array(s.matrix_world)
    R = np.diag([1.0, -1.0, -1.0]) @ M[:3, :3].T    # M[:3,:3] = Rᵀ·F, F = diag(1, -1, -1)
    return K, R, -R @ M[:3, 3], W, H                  # M[:3,3] = −Rᵀ·t


CASES = [(160, 120, 1.0), (120, 160, 1.0), (128, 128, 1.0), (160, 120, 1.15), (120, 160, 0.9)]


@pytest.mark.parametrize("W,H,aspect", CASES)
def test_settings_round_trip(W, H, aspect):
    rng = np.random.default_rng(W * 7 + H)
    K, R, t = _camera(rng, W, H, aspect)
    s = blender_camera_settings(K, R, t, W, H)
    assert s.sensor_fit == ("HORIZONTAL" if W * s.pixel_aspect_x >= H * s.pixel_aspect_y else "VERTICAL")
    assert min(s.pixel_aspect_x, s.pixel_aspect_y) == 1.0
    K2, R2, t2, W2, H2 = opencv_from_blender(s)
    assert (W2, H2) == (W, H)
    assert np.allclose(K2, K, rtol=1e-12, atol=1e-9)
    assert np.allclose(R2, R, atol=1e-12) and np.allclose(t2, t, atol=1e-12)
    M = np.array(s.matrix_world)
    # the camera looks down its local -Z: the world point in front maps to +Z in OpenCV
    ahead = M @ np.array([0, 0, -1.0, 1.0])
    assert (R @ ahead[:3] + t)[2] > 0
    assert np.allclose(M[:3, 3], -R.T @ t)


@pytest.mark.parametrize("W,H,aspect", CASES)
def test_opencv_camera_inverts_the_settings(W, H, aspect):
    rng = np.random.default_rng(W * 3 + H)
    K, R, t = _camera(rng, W, H, aspect, pp_off=0.2)
    K2, R2, t2, W2, H2 = opencv_camera(blender_camera_settings(K, R, t, W, H))
    assert (W2, H2) == (W, H)
    np.testing.assert_allclose(K2, K, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(R2, R, atol=1e-12)
    np.testing.assert_allclose(t2, t, atol=1e-12)


def test_opencv_camera_reads_auto_fit_and_other_sensors():
    """AUTO measures the sensor width along whichever side is longer; VERTICAL uses the height."""
    s = blender_camera_settings(np.array([[100.0, 0, 40], [0, 100, 50], [0, 0, 1]]), np.eye(3), [0, 0, 2], 80, 100)
    assert s.sensor_fit == "VERTICAL"
    base, _, _, _, _ = opencv_camera(s)
    s.sensor_fit, s.sensor_width, s.sensor_height = "AUTO", 18.0, 99.0   # AUTO: the width, along the height
    K, _, _, _, _ = opencv_camera(s)
    np.testing.assert_allclose(K[0, 0], base[0, 0] * 2.0)
    s.sensor_fit, s.sensor_height = "VERTICAL", 72.0
    K, _, _, _, _ = opencv_camera(s)
    np.testing.assert_allclose(K[0, 0], base[0, 0] / 2.0)


def test_opencv_camera_refuses_a_mirrored_or_flat_camera():
    s = blender_camera_settings(np.array([[100.0, 0, 40], [0, 100, 50], [0, 0, 1]]), np.eye(3), [0, 0, 2], 80, 100)
    s.matrix_world[0][0] *= -1.0
    with pytest.raises(ValueError, match="mirrored"):
        opencv_camera(s)
    s.matrix_world[0][0] = 0.0
    s.matrix_world[1][0] = s.matrix_world[2][0] = 0.0
    with pytest.raises(ValueError, match="scaled to zero"):
        opencv_camera(s)


def test_scale_camera_K_follows_the_stretched_picture():
    K = np.array([[100.0, 0, 40], [0, 120, 50], [0, 0, 1]])
    K2 = scale_camera_K(K, 80, 100, 160, 50)
    np.testing.assert_allclose(K2, [[200, 0, 80], [0, 60, 25], [0, 0, 1]])


def test_settings_reject_skew_and_bad_k():
    K = np.array([[100.0, 5.0, 50], [0, 100, 40], [0, 0, 1]])
    with pytest.raises(ValueError):
        blender_camera_settings(K, np.eye(3), [0, 0, 2], 100, 80)
    with pytest.raises(ValueError):
        blender_camera_settings(np.diag([-1.0, 1, 1]), np.eye(3), [0, 0, 2], 100, 80)


# ------------------------------------------------------------------ render check

def _suzanne():
    data = np.load(ASSETS / "suzanne.npz")
    v, f = data["vertices"].astype(np.float64), data["faces"].astype(np.int64)
    v = (v - (v.max(0) + v.min(0)) / 2) * (0.95 / np.ptp(v, axis=0).max())
    return v, f


def _rasterise(v, f, K, R, t, W, H):
    """Point-sample the projected triangles at pixel centres (j + 0.5, i + 0.5): the exact
    silhouette a renderer sampling pixel centres produces (no conservative edge rule)."""
    xc = v @ R.T + t
    px = (xc @ K.T)[:, :2] / xc[:, 2:3]
    img = np.zeros((H, W), bool)
    for tri in px[f]:
        x0, y0 = np.floor(tri.min(0) - 0.5).astype(int)
        x1, y1 = np.ceil(tri.max(0) - 0.5).astype(int)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W - 1), min(y1, H - 1)
        if x1 < x0 or y1 < y0:
            continue
        gx, gy = np.meshgrid(np.arange(x0, x1 + 1) + 0.5, np.arange(y0, y1 + 1) + 0.5)
        (ax, ay), (bx, by), (cx, cy) = tri
        d1 = (bx - ax) * (gy - ay) - (by - ay) * (gx - ax)
        d2 = (cx - bx) * (gy - by) - (cy - by) * (gx - bx)
        d3 = (ax - cx) * (gy - cy) - (ay - cy) * (gx - cx)
        inside = ((d1 >= 0) & (d2 >= 0) & (d3 >= 0)) | ((d1 <= 0) & (d2 <= 0) & (d3 <= 0))
        img[y0:y1 + 1, x0:x1 + 1] |= inside
    return img


def _render_alpha(bpy, v, f, K, R, t, W, H, path: Path) -> np.ndarray:
    import cv2

    from cupid_blender.camera import add_camera

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    mesh = bpy.data.meshes.new("suzanne")
    mesh.from_pydata(v.tolist(), [], f.tolist())
    mesh.update()
    obj = bpy.data.objects.new("suzanne", mesh)
    scene.collection.objects.link(obj)
    cam = add_camera(scene, K, R, t, W, H)
    assert scene.camera == cam and cam.name in scene.collection.objects
    setup_silhouette_render(scene, path, samples=16)
    bpy.ops.render.render(write_still=True)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.shape == (H, W, 4)
    return img[:, :, 3] > 127


@pytest.mark.blender
@pytest.mark.parametrize("W,H,aspect", CASES)
def test_render_matches_projection(W, H, aspect, tmp_path):
    bpy = pytest.importorskip("bpy", reason="bpy (Blender as a Python module) is not installed")
    rng = np.random.default_rng(100 + W + H)
    v, f = _suzanne()
    K, R, t = _camera(rng, W, H, aspect)
    expected = _rasterise(v, f, K, R, t, W, H)
    assert expected.sum() > 0.08 * W * H  # the object fills a good part of the view
    alpha = _render_alpha(bpy, v, f, K, R, t, W, H, tmp_path / "render.png")
    iou = (alpha & expected).sum() / (alpha | expected).sum()
    assert iou >= 0.98, f"silhouette IoU {iou:.4f}"
    # a camera off by one pixel in cx must visibly lose IoU (the test can fail)
    K_off = K.copy()
    K_off[0, 2] += 1.5
    shifted = _rasterise(v, f, K_off, R, t, W, H)
    assert (alpha & shifted).sum() / (alpha | shifted).sum() < iou - 0.01


# ------------------------------------------------------------------ read_camera in Blender

READ_CASES = [("landscape", 160, 120, 1.0, 0.0), ("portrait", 120, 160, 1.0, 0.0), ("square", 128, 128, 1.0, 0.0),
              ("off_centre", 160, 120, 1.0, 0.25), ("anamorphic", 120, 160, 1.15, 0.1)]


@pytest.fixture(scope="module")
def read_run(tmp_path_factory) -> dict:
    pytest.importorskip("bpy", reason="bpy (Blender as a Python module) is not installed")
    import build_extension  # launch put install/ on sys.path

    tmp = tmp_path_factory.mktemp("read_camera")
    zip_path = build_extension.build(tmp / "dist", with_defaults=False)
    cases = []
    for k, (name, W, H, aspect, off) in enumerate(READ_CASES):
        K, R, t = _camera(np.random.default_rng(k), W, H, aspect, pp_off=0.02)
        K[0, 2] += off * W                       # off-centre: the principal point far from the middle
        K[1, 2] -= 0.6 * off * H
        cases.append({"name": name, "K": K.tolist(), "R": R.tolist(), "t": t.tolist(), "width": W, "height": H})
    cfg = {"zip": str(zip_path), "result": str(tmp / "result.json"), "cases": cases}
    return {"out": launch.run(READ_DRIVER, cfg, tmp, timeout=600), "cases": {c["name"]: c for c in cases}}


@pytest.mark.blender
@pytest.mark.parametrize("name", [c[0] for c in READ_CASES])
def test_read_camera_inverts_add_camera_to_float32_precision(read_run, name):
    case, got = read_run["cases"][name], read_run["out"]["round_trip"][name]
    assert got["size"] == [case["width"], case["height"]]
    K, K2 = np.array(case["K"]), np.array(got["K"])
    # Blender keeps lens, shift, pixel aspect and the matrix in float32: ~6e-8 relative each
    np.testing.assert_allclose(K2, K, rtol=4e-7, atol=4e-7 * case["width"])
    np.testing.assert_allclose(got["R"], case["R"], atol=1e-6)
    np.testing.assert_allclose(got["t"], case["t"], atol=1e-6 * (1 + np.abs(case["t"]).max()))
    assert got["projection"]["max_px_error"] < 1e-3
    # float64 would be closer still: the test sees float32's rounding, not a loose formula
    assert np.abs(K2 - K).max() > 0 or np.abs(np.array(got["R"]) - np.array(case["R"])).max() > 0


@pytest.mark.blender
def test_read_camera_follows_the_artists_edits(read_run):
    edited = read_run["out"]["edited"]
    assert list(edited) == ["moved", "re_lensed", "shifted", "auto_fit", "vertical_fit", "resized", "pixel_aspect",
                            "auto_portrait", "scaled_object", "fov_unit"]
    for label, got in edited.items():
        assert got["max_px_error"] < 2e-3, (label, got["max_px_error"])   # Blender's own projection
        assert got["orthonormal"] < 1e-9, label
    last = read_run["out"]["round_trip"]["anamorphic"]
    # each edit changed what read_camera returns (so the projection check is not comparing a constant)
    assert edited["moved"]["t"] != last["t"] and edited["moved"]["R"] != last["R"]
    assert edited["re_lensed"]["K"][0][0] == pytest.approx(edited["moved"]["K"][0][0] * 1.3, rel=1e-6)
    assert edited["shifted"]["K"][0][2] != edited["re_lensed"]["K"][0][2]
    assert edited["resized"]["size"] == [300, 500] and edited["pixel_aspect"]["K"][0][0] != edited["resized"]["K"][0][0]
    assert edited["scaled_object"]["K"] == edited["auto_portrait"]["K"]
    np.testing.assert_allclose(edited["scaled_object"]["t"], edited["auto_portrait"]["t"], atol=1e-6)
    assert "perspective" in read_run["out"]["ortho"]
