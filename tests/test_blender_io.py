"""The add-on's pure-Python rooms on their own (no Blender): what is uploaded for a photo and mask,
the area resampling behind a downscaled copy, putting the camera back into the photo's pixels, the
Gaussian PLY reader, and the decisions taken from the artist's settings."""
from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cupid.export.ply import GaussianArrays, read_gaussians_ply, write_gaussians_ply
from cupid_blender.io import settings
from cupid_blender.io.bundle import bundle_name, restore_original_photo
from cupid_blender.io.gaussians import GaussianFileError, read_gaussians
from cupid_blender.io.imaging import mask_values, resample_area, resample_nearest
from cupid_blender.io.upload import (BAD_INPUT, MAX_UPLOAD_PIXELS, InputProblem, Picture, prepare_upload,
                                     scaled_size, upload_scale)


def _supersampled(a: np.ndarray, w: int, h: int) -> np.ndarray:
    """Area averaging by definition: each pixel repeated h x w times, then h x w equal blocks."""
    H, W = a.shape
    return np.repeat(np.repeat(a, h, axis=0), w, axis=1).reshape(h, H, w, W).mean(axis=(1, 3))


@pytest.mark.parametrize("w,h", [(10, 7), (26, 18), (5, 3), (52, 36), (1, 1)])
def test_resample_area_is_exact_area_averaging(w, h):
    a = np.random.default_rng(w).random((37, 53)).astype(np.float32)
    np.testing.assert_allclose(resample_area(a, w, h), _supersampled(a, w, h), atol=2e-6)


def test_resample_area_maps_positions_by_the_size_ratio():
    """A bright bar over x in [301, 309) of 1000 (centre 305) lands, by its centroid, at 305 · 250/1000."""
    a = np.zeros((40, 1000), np.float32)
    a[:, 301:309] = 1.0
    row = resample_area(a, 250, 10)[0]
    centroid = (row * (np.arange(250) + 0.5)).sum() / row.sum()
    assert centroid == pytest.approx(305 * 0.25, abs=1e-4)
    with pytest.raises(ValueError, match="only shrinks"):
        resample_area(a, 2000, 40)


def test_nearest_keeps_label_values():
    labels = np.repeat(np.repeat(np.array([[0, 1], [2, 3]], np.uint8), 50, 0), 60, 1)
    small = resample_nearest(labels, 12, 10)
    assert set(np.unique(small)) == {0, 1, 2, 3} and small[0, 0] == 0 and small[-1, -1] == 3


def test_mask_values_alpha_when_real_else_brightness():
    rgba = np.zeros((4, 4, 4), np.float32)
    rgba[..., 3] = 1.0
    rgba[1:3, 1:3, :3] = 1.0   # painted white on black, opaque
    np.testing.assert_array_equal(mask_values(rgba), rgba[..., 0])
    rgba[..., 3] = 0.0
    rgba[0, 0, 3] = 1.0        # a real alpha channel wins
    np.testing.assert_array_equal(mask_values(rgba), rgba[..., 3])


def _photo(w: int, h: int, box: tuple | None = None, name: str = "photo.png", data: bytes | None = b"x") -> Picture:
    px = np.full((h, w, 4), 0.5, np.float32)
    px[..., 3] = 1.0
    if box is not None:
        x0, y0, x1, y1 = box
        px[..., 3] = 0.0
        px[y0:y1, x0:x1, 3] = 1.0
    return Picture(name, Path(name).stem, name, px, data)


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_a_small_photo_goes_up_as_its_own_file():
    up = prepare_upload(_photo(480, 360, (100, 50, 300, 300), data=b"the file itself"), None, "object")
    assert (up.image, up.filename, up.mask, up.downscaled) == (b"the file itself", "photo.png", None, False)


def test_a_big_photo_goes_up_downscaled_with_its_mask():
    """3000x2250 with a 1600-px object: its crop (1920 px) would become 518 px, but the long side
    stays at 1024 px; the mask is area-averaged to the same size; the file is kept for the result."""
    mask_px = np.zeros((2250, 3000, 4), np.float32)
    mask_px[..., 3] = 1.0
    mask_px[400:2000, 750:2350, :3] = 1.0
    mask = Picture("mask.png", "mask", "mask.png", mask_px)
    up = prepare_upload(_photo(3000, 2250, name="big.tif", data=b"TIFF bytes"), mask, "object")
    assert (up.width, up.height, up.upload_width, up.upload_height) == (3000, 2250, 1024, 768)
    assert up.downscaled and up.filename == "big.png"
    assert (up.original, up.original_name) == (b"TIFF bytes", "photo_original.tif")
    img, m = _decode(up.image), _decode(up.mask)
    assert img.shape == (768, 1024, 3) and m.shape == (768, 1024)          # opaque photo: RGB; mask: grey
    xs = np.nonzero(m[400] > 127)[0]
    assert xs.min() == pytest.approx(750 * 1024 / 3000, abs=1)
    assert xs.max() == pytest.approx(2350 * 1024 / 3000 - 1, abs=1)


def test_with_the_photo_texture_a_big_photo_goes_up_whole():
    up = prepare_upload(_photo(3000, 2250, (750, 400, 2350, 2000), name="big.png", data=None), None,
                        "object", keep_detail=True)
    assert not up.downscaled and (up.upload_width, up.upload_height) == (3000, 2250) and up.original is None
    assert _decode(up.image).shape == (2250, 3000, 4)     # the cut-out at full size, alpha and all


def test_upload_scale_rules():
    assert upload_scale(480, 360, 300) == 1.0                    # smaller than the model uses
    assert upload_scale(2000, 1500, 600) == 1.0                   # would gain little: kept
    assert upload_scale(6000, 4500, 3750) == pytest.approx(1024 / 6000)
    assert upload_scale(6000, 4500, 1000) == pytest.approx(518 / 1000)
    assert upload_scale(8000, 6000, 20) == pytest.approx(np.sqrt(MAX_UPLOAD_PIXELS / 48e6))  # 12 MP at most
    # the photo texture paints the photo's own pixels onto the object: it goes up whole, up to 12 MP
    assert upload_scale(6000, 4500, 1000, keep_detail=True) == pytest.approx(np.sqrt(MAX_UPLOAD_PIXELS / 27e6))
    assert upload_scale(3000, 2250, 1920, keep_detail=True) == 1.0
    assert scaled_size(6000, 4500, 1024 / 6000) == (1024, 768)
    assert scaled_size(6001, 4003, 0.25) == (1500, 1001)         # no exact ratio nearby: per axis


def test_an_opaque_photo_without_a_mask_goes_up_for_the_backend_to_cut_out():
    up = prepare_upload(_photo(64, 48, data=b"the JPEG itself", name="coffee.jpg"), None, "object")
    assert (up.image, up.filename, up.mask, up.downscaled) == (b"the JPEG itself", "coffee.jpg", None, False)
    big = prepare_upload(_photo(4800, 3200, data=b"JPEG", name="big.jpg"), None, "object")   # 15 MP: about 12
    assert big.downscaled and big.upload_width * big.upload_height <= 1.01 * MAX_UPLOAD_PIXELS and big.mask is None


def test_input_problems_are_reported_in_the_backends_words():
    opaque = _photo(64, 48)
    assert BAD_INPUT == "CUPID backend error (bad_input): "
    black_px = np.zeros((48, 64, 4), np.float32)
    black_px[..., 3] = 1.0
    black = Picture("m", "m", "m.png", black_px)
    with pytest.raises(InputProblem, match="the object mask is empty") as e:
        prepare_upload(opaque, black, "object")
    assert str(e.value).startswith(BAD_INPUT)
    with pytest.raises(InputProblem, match="label image is empty"):
        prepare_upload(opaque, black, "scene")
    small = Picture("m", "m", "m.png", np.ones((10, 10, 4), np.float32))
    with pytest.raises(InputProblem, match="the mask is 10x10 but the photo is 64x48"):
        prepare_upload(opaque, small, "object")


def test_scene_labels_keep_their_values():
    labels = np.zeros((48, 64, 4), np.float32)
    labels[..., 3] = 1.0
    labels[:, :30, :3] = 1 / 255.0
    labels[:, 30:, :3] = 2 / 255.0
    up = prepare_upload(_photo(64, 48), Picture("l", "l", "l.png", labels), "scene")
    sent = _decode(up.mask)
    assert sent.ndim == 2 and set(np.unique(sent)) == {1, 2}


def test_restore_original_photo_scales_K_to_the_photos_pixels(tmp_path):
    K = [[500.0, 0.0, 512.0], [0.0, 500.0, 384.0], [0.0, 0.0, 1.0]]
    scene = {"schema": "cupid.scene/1", "image": {"file": "input.png", "width": 1024, "height": 768},
             "camera": {"convention": "opencv", "K": K, "R": np.eye(3).tolist(), "t": [0, 0, 2]}, "objects": []}
    (tmp_path / "scene.json").write_text(json.dumps(scene))
    restore_original_photo(tmp_path, 6000, 4500, b"TIFF", "photo_original.tif")
    out = json.loads((tmp_path / "scene.json").read_text())
    assert out["image"] == {"file": "photo_original.tif", "width": 6000, "height": 4500}
    s = 6000 / 1024
    np.testing.assert_allclose(out["camera"]["K"], [[500 * s, 0, 512 * s], [0, 500 * s, 384 * s], [0, 0, 1]])
    assert out["camera"]["R"] == scene["camera"]["R"] and (tmp_path / "photo_original.tif").read_bytes() == b"TIFF"
    assert bundle_name(tmp_path / "monkey.002") == "monkey" and bundle_name(tmp_path / "monkey") == "monkey"


def test_gaussian_reader_matches_the_backends(tmp_path):
    rng = np.random.default_rng(0)
    n = 500
    q = rng.normal(size=(n, 4))
    g = GaussianArrays(rng.normal(size=(n, 3)).astype(np.float32), rng.uniform(0.01, 0.1, (n, 3)).astype(np.float32),
                       rng.uniform(0.05, 0.95, (n, 1)).astype(np.float32),
                       (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32),
                       rng.normal(size=(n, 1, 3)).astype(np.float32), rng.normal(size=(n, 15, 3)).astype(np.float32))
    path = write_gaussians_ply(tmp_path / "g.ply", g)
    ours, theirs = read_gaussians(path), read_gaussians_ply(path)
    assert len(ours) == n
    np.testing.assert_allclose(ours.xyz, theirs.xyz)
    np.testing.assert_allclose(ours.opacity, theirs.opacity[:, 0], rtol=1e-6)
    np.testing.assert_allclose(ours.scale, theirs.scaling, rtol=1e-6)
    np.testing.assert_allclose(ours.rotation, theirs.rotation, atol=1e-6)
    dc = theirs.features_dc[:, 0]
    np.testing.assert_allclose(ours.color, np.clip(0.5 + 0.28209479177387814 * dc, 0, 1), atol=1e-6)
    raw = path.read_bytes()
    (tmp_path / "short.ply").write_bytes(raw[:-100])
    with pytest.raises(GaussianFileError, match="truncated"):
        read_gaussians(tmp_path / "short.ply")
    (tmp_path / "plain.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nend_header\n")
    with pytest.raises(GaussianFileError, match="only binary"):
        read_gaussians(tmp_path / "plain.ply")


@pytest.mark.skipif(os.name != "posix",
                    reason=("0700 is a POSIX mode; on Windows ~/cupid_results inherits the user profile's "
                            "owner-only ACL"))
def test_the_home_results_folder_is_owner_only(tmp_path):
    """Under umask 022 `~/cupid_results` is made 0700 (and a readable one left by an older version is
    fixed); a folder beside a .blend keeps what its place gives it."""
    home = tmp_path / "home"
    home.mkdir()
    old = os.umask(0o022)
    try:
        settings.make_results_root(home / "cupid_results", home)
        assert stat.S_IMODE((home / "cupid_results").stat().st_mode) == 0o700
        os.chmod(home / "cupid_results", 0o755)
        settings.make_results_root(home / "cupid_results", home)
        assert stat.S_IMODE((home / "cupid_results").stat().st_mode) == 0o700
        beside = tmp_path / "project" / "cupid_results"
        settings.make_results_root(beside, home)
        assert stat.S_IMODE(beside.stat().st_mode) == 0o755
    finally:
        os.umask(old)


def test_settings_decisions(tmp_path):
    assert settings.resolve_sampling(0, 0, 7, 12) == (0, 0)        # 0 is a seed, 0 steps the model's default
    assert settings.resolve_sampling(-1, -1, 7, 12) == (7, 12)
    home = tmp_path / "home"
    assert settings.results_root(str(tmp_path / "p" / "a.blend"), True, "", home) == tmp_path / "p" / "cupid_results"
    assert settings.results_root("", True, "", home) == home / "cupid_results"
    assert settings.results_root(str(tmp_path / "a.blend"), False, str(tmp_path / "r"), home) == tmp_path / "r"
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    (tiny / "pipeline.json").write_text(json.dumps({"args": {"tiny": True}}))
    hub = tmp_path / "hub"
    assert settings.effective_model(str(tiny), str(tiny), [hub]) == str(tiny)            # nothing downloaded
    (hub / "models--hbb1--Cupid" / "snapshots" / "abc").mkdir(parents=True)
    (hub / "models--hbb1--Cupid" / "snapshots" / "abc" / "pipeline.json").write_text("{}")
    assert settings.effective_model(str(tiny), str(tiny), [hub]) == "hbb1/Cupid"          # downloaded: used
    assert settings.effective_model("/my/model", str(tiny), [hub]) == "/my/model"         # chosen: kept
    # the tiny model Set Up Backend installed offline (an artist's zip has no build default) is replaced too
    assert settings.effective_model(str(tiny), "", [hub], setup_model=str(tiny)) == "hbb1/Cupid"
    assert settings.effective_model(str(tiny), "", [hub]) == str(tiny)
    assert settings.hub_caches({"HF_HUB_CACHE": "/c"}, home, "/w") == [Path("/w")]   # the add-on's Weights cache
    assert settings.hub_caches({"HF_HUB_CACHE": "/c", "HF_HOME": "/h"}, home) == [Path("/c")]
    assert settings.hub_caches({"HF_HOME": "/h"}, home) == [Path("/h/hub")]
    assert settings.hub_caches({}, home) == [home / ".cache" / "huggingface" / "hub"]
    assert settings.folder_name("a/b: c?") == "a_b_ c_" and settings.folder_name("..") == "result"
    assert 30 * 60 < settings.expected_cpu_seconds(0) < 40 * 60                  # float32, or not known yet
    assert settings.expected_cpu_seconds(0, "auto") == settings.expected_cpu_seconds(25, "float32")
    assert 20 * 60 < settings.expected_cpu_seconds(0, "bfloat16") < 30 * 60
    assert settings.expected_cpu_seconds(2, "bfloat16") < settings.expected_cpu_seconds(25, "bfloat16")
    for name in ("b.jpg", "a.png", "a_mask.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert settings.batch_inputs(tmp_path) == [(tmp_path / "a.png", tmp_path / "a_mask.png"),
                                               (tmp_path / "b.jpg", None)]
    taken = {"", ".001"}
    assert settings.free_suffix(lambda s: s in taken) == ".002" and settings.free_suffix(lambda s: False) == ""


def test_the_model_line_names_the_device_and_precision():
    """The backend's answer (cpu, float32) once it gave one; before it, the preferences (auto hides)."""
    line = settings.model_line
    assert line("tiny test model (random weights)", "cpu", "float32") == \
        "Model: tiny test model (random weights) · Device: cpu (float32)"
    assert line("hbb1/Cupid", "cuda", "float16") == "Model: hbb1/Cupid · Device: cuda (float16)"
    assert line("hbb1/Cupid", "auto", "bfloat16") == "Model: hbb1/Cupid · Device: auto (bfloat16)"   # asked for
    assert line("hbb1/Cupid", "auto", "auto") == "Model: hbb1/Cupid · Device: auto"   # not chosen yet
    assert line("set on the remote service", "not asked yet", "") == \
        "Model: set on the remote service · Device: not asked yet"
