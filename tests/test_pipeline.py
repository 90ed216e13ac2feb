"""The CUPID pipeline end to end on the tiny model, and the pose path on real geometry."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from plyfile import PlyData

from cupid.errors import Cancelled, CheckpointError, CupidError, InputError
from cupid.export import load_bundle, render_silhouette, write_bundle
from cupid.geometry import rotation_angle_deg, uv_cube
from cupid.pipeline import CupidPipeline
from cupid.pipeline.stage1 import pose_from_structure, structure_from_cubes
from helpers.bundles import obj, object_frame_camera, reconstruct_to, reconstruction
from helpers.meshes import surface_voxels, suzanne

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "monkey.png"


@pytest.fixture(scope="session")
def pipe(tiny_model) -> CupidPipeline:
    return CupidPipeline.from_pretrained(tiny_model, device="cpu")


def test_end_to_end_bundle(pipe, tmp_path):
    stages = []
    out = reconstruct_to(pipe, PHOTO, tmp_path / "b", seed=3, progress=lambda s, f: stages.append((s, f)))
    bundle = load_bundle(out)  # schema + files + npz checks
    scene = bundle.scene
    assert (scene["image"]["width"], scene["image"]["height"]) == (480, 360)
    K = np.array(scene["camera"]["K"])
    assert K[0, 0] > 0 and K[0, 0] == pytest.approx(K[1, 1]) and K[0, 1] == 0
    R = np.array(scene["camera"]["R"])
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
    obj = scene["objects"][0]
    glb = trimesh.load(out / obj["glb"], force="mesh")
    assert len(glb.faces) == obj["counts"]["faces"]
    ply = PlyData.read(str(out / obj["gaussians"]))
    assert ply["vertex"].count == obj["counts"]["gaussians"] > 0
    fr = [f for _, f in stages]
    assert fr == sorted(fr) and fr[-1] == pytest.approx(1.0)
    assert {"structure", "pose", "latent", "decode", "export"} <= {s for s, _ in stages}


def test_tiny_camera_sees_the_photos_object(pipe, tmp_path):
    """The tiny model decodes a shell centred in the object cube, seen by a fixed 40° camera; the
    solved camera must be in the PHOTO's pixels (de_crop): the shell's centre projects to the centre
    of the object's crop, with the crop's focal length."""
    out = reconstruct_to(pipe, PHOTO, tmp_path / "b", seed=0)
    scene = json.loads((out / "scene.json").read_text())
    K, R, t = (np.array(object_frame_camera(scene)[k]) for k in ("K", "R", "t"))   # the object's own frame
    from cupid.preprocess import preprocess
    crop = preprocess(PHOTO).crop
    centre = K @ t
    centre = centre[:2] / centre[2]
    expected = np.array(crop.offset) + crop.size / 2
    assert np.abs(centre - expected).max() < 0.03 * crop.size
    f_expected = crop.size / 2 / np.tan(np.radians(20.0))
    assert K[0, 0] == pytest.approx(f_expected, rel=0.1)


def test_same_seed_same_bundle(pipe, tmp_path):
    a = reconstruct_to(pipe, PHOTO, tmp_path / "a", seed=5)
    b = reconstruct_to(pipe, PHOTO, tmp_path / "b", seed=5)
    c = reconstruct_to(pipe, PHOTO, tmp_path / "c", seed=6)
    for name in ("scene.json", "object_0.npz", "object_0.ply"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "object_0.npz").read_bytes() != (c / "object_0.npz").read_bytes()


def test_cancel_and_bad_input(pipe, tmp_path):
    with pytest.raises(Cancelled):
        reconstruct_to(pipe, PHOTO, tmp_path / "x", should_cancel=lambda: True)
    assert not (tmp_path / "x" / "scene.json").exists()
    with pytest.raises(InputError):
        reconstruct_to(pipe, PHOTO, tmp_path / "y", mode="panorama")
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(InputError, match="not a readable image"):
        reconstruct_to(pipe, bad, tmp_path / "z")


def test_strict_loading_of_the_model_directory(tiny_model, tmp_path):
    import shutil
    from safetensors.torch import load_file, save_file
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    f = broken / "ckpts" / "ss_dec_tiny.safetensors"
    state = load_file(str(f))
    state.pop(next(iter(state)))
    save_file(state, str(f))
    with pytest.raises(CheckpointError, match="missing"):
        CupidPipeline.from_pretrained(broken, device="cpu")
    with pytest.raises(CheckpointError, match="pipeline.json"):
        CupidPipeline.from_pretrained(tmp_path, device="cpu")


def test_pose_path_on_real_geometry(tmp_path):
    """Suzanne's true occupancy and UV cube through the stage-1 output path give back the camera."""
    v, f = suzanne()
    res = 64
    idx = surface_voxels(v, f, res)
    occ = np.zeros((res,) * 3, bool)
    occ[tuple(idx.T)] = True
    # a photo 640×480 whose object crop is a 300-px square at (200, 90)
    W, H, crop_off, side = 640, 480, (200.0, 90.0), 300.0
    f_px = side / 2 / np.tan(np.radians(22.0))
    K_crop = np.array([[f_px, 0, side / 2 + 4], [0, f_px, side / 2 - 3], [0, 0, 1.0]])
    ang = np.radians(35.0)
    Rz = np.array([[np.cos(ang), -np.sin(ang), 0], [np.sin(ang), np.cos(ang), 0], [0, 0, 1]])
    Rx = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]]) @ np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)],
                                                                    [0, np.sin(0.3), np.cos(0.3)]])
    R_true = Rx @ Rz
    t_true = np.array([0.02, -0.01, 2.0])
    cube = uv_cube(occ, K_crop, R_true, t_true, (side, side))
    pose, _ = pose_from_structure(structure_from_cubes(occ, cube), crop_off, side, (W, H))
    assert rotation_angle_deg(pose.R, R_true) < 0.1
    K_true = K_crop.copy()
    K_true[0, 2] += crop_off[0]
    K_true[1, 2] += crop_off[1]
    np.testing.assert_allclose(pose.K, K_true, rtol=1e-4, atol=0.05)
    # the bundle's overlay geometry matches the truth
    photo = np.zeros((H, W, 3), np.uint8)
    out = write_bundle(reconstruction(photo, pose, [obj("suzanne", v, f)]), tmp_path / "b")
    cam = load_bundle(out).camera()
    sil = render_silhouette(v, f, cam.K, cam.R, cam.t, W, H)
    truth = render_silhouette(v, f, K_true, R_true, t_true, W, H)
    assert (sil & truth).sum() / (sil | truth).sum() >= 0.98


def test_empty_structure_is_a_clear_error():
    occ = np.zeros((16,) * 3, bool)
    with pytest.raises(CupidError, match="empty shape"):
        pose_from_structure(structure_from_cubes(occ, np.zeros((16,) * 3 + (2,))), (0, 0), 100, (100, 100))
