"""See it early, steer it: stage 1's preview, a refine from an edited camera, and the fit score."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from scipy.spatial import Delaunay

from cupid.cli import main as cupid_main
from cupid.errors import InputError
from cupid.export import ExportOptions, load_bundle, write_bundle
from cupid.geometry import CameraPose, rodrigues
from cupid.pipeline import CupidPipeline
from helpers.bundles import obj, object_frame_camera, reconstruction

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "monkey.png"
FAST = ExportOptions(target_faces=2000, texture=False, glb=False, gaussians=False)


@pytest.fixture(scope="module")
def pipe(tiny_model) -> CupidPipeline:
    return CupidPipeline.from_pretrained(tiny_model, device="cpu")


class _Calls:
    """Counts forward calls of one network."""

    def __init__(self, module):
        self.n = 0
        module.register_forward_hook(lambda *a: setattr(self, "n", self.n + 1))


def _moved(camera: CameraPose) -> CameraPose:
    """The camera turned by 3° and re-lensed by 10%, as an artist might."""
    K = camera.K.copy()
    K[0, 0] *= 1.1
    K[1, 1] *= 1.1
    return CameraPose(K, rodrigues(np.radians([0.0, 3.0, 0.0])) @ camera.R, camera.t + [0.01, 0, 0],
                      camera.width, camera.height)


def test_preview_before_stage_two_equals_the_final_camera_and_a_refine_uses_the_given_one(pipe, tmp_path):
    flow1 = _Calls(pipe.models["sparse_structure_flow_model"])
    flow2 = _Calls(pipe.models["slat_flow_model"])
    seen = []

    def on_stage_one(first):
        seen.append((first, first.preview().to_dict(), flow2.n))

    rec = pipe.reconstruct(PHOTO, seed=2, steps=2, on_stage_one=on_stage_one)
    (first, preview, stage2_calls_then), = seen
    assert stage2_calls_then == 0                     # the preview came before stage 2 started
    assert preview["res"] == first.structure.res and (preview["width"], preview["height"]) == (480, 360)
    np.testing.assert_array_equal(np.array(preview["voxels"]), np.argwhere(first.structure.occupancy))
    own = rec.camera.in_object_frame(rec.objects[0].placement)   # the result's world is upright
    for key in ("K", "R", "t"):
        np.testing.assert_allclose(np.array(preview["camera"][key]), getattr(own, key), rtol=0, atol=1e-12)
    assert json.loads(json.dumps(preview)) == preview  # JSON-ready

    before = (flow1.n, flow2.n)
    moved = _moved(first.camera)
    refined = pipe.refine(first, moved, steps=2)
    assert flow1.n == before[0] and flow2.n > before[1]   # stage 1 is not run again, stage 2 is
    out = write_bundle(refined, tmp_path / "r", FAST)
    scene = json.loads((out / "scene.json").read_text())
    own = object_frame_camera(scene)
    for key in ("K", "R", "t"):
        np.testing.assert_allclose(np.array(own[key]), getattr(moved, key), rtol=0, atol=1e-12)
    assert 0.0 <= scene["objects"][0]["fit"]["iou"] <= 1.0


def test_a_camera_that_cannot_be_used_is_bad_input(pipe):
    first = pipe.stage_one(__import__("cupid.preprocess", fromlist=["x"]).preprocess(PHOTO), seed=0, steps=1)
    c = first.camera
    with pytest.raises(InputError, match="not a rotation"):
        pipe.refine(first, CameraPose(c.K, 2 * c.R, c.t, c.width, c.height), steps=1)
    K = c.K.copy()
    K[1] = K[0]
    with pytest.raises(InputError, match="singular"):
        pipe.refine(first, CameraPose(K, c.R, c.t, c.width, c.height), steps=1)
    away = CameraPose(c.K, c.R, c.t * np.array([1, 1, -1]), c.width, c.height)  # the object is behind it
    with pytest.raises(InputError, match="sees none of the object's voxels"):
        pipe.refine(first, away, steps=1)
    with pytest.raises(InputError, match="640x480 image but the photo is 480x360"):
        pipe.refine(first, CameraPose(c.K, c.R, c.t, 640, 480), steps=1)


def test_fit_score_equals_an_independent_iou(tmp_path):
    """Two boxes through a known camera against hand-made masks: the bundle's IoU equals one computed
    from the convex hulls of the projected corners (no rasteriser), the front box occluding the back one."""
    W, H = 320, 240
    K = np.array([[300.0, 0, 160], [0, 300.0, 120], [0, 0, 1]])
    R, t = np.eye(3), np.zeros(3)
    front = trimesh.creation.box(extents=(0.4, 0.4, 0.4))
    back = trimesh.creation.box(extents=(0.6, 0.5, 0.4))
    place_front, place_back = (1.0, np.eye(3), [0.1, 0.0, 2.0]), (1.0, np.eye(3), [-0.2, 0.05, 3.0])
    mask_front = np.zeros((H, W), np.float32)
    mask_front[80:150, 140:205] = 1.0   # close to the front box (x 143..209, y 87..152), not equal
    mask_back = np.zeros((H, W), np.float32)
    mask_back[70:170, 60:150] = 1.0

    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)   # pixel centres
    centres = np.stack([jj.ravel(), ii.ravel()], 1)

    def fill(mesh, place):
        """A convex box's silhouette is the convex hull of its projected corners: pixel centres inside it."""
        v = np.asarray(mesh.vertices) * place[0] + np.asarray(place[2])
        p = (v @ K.T)[:, :2] / v[:, 2:3]
        return (Delaunay(p).find_simplex(centres) >= 0).reshape(H, W)

    sil_front, sil_back = fill(front, place_front), fill(back, place_back)
    vis_back = sil_back & ~sil_front

    def iou(a, b):
        return (a & b).sum() / (a | b).sum()

    expected = [iou(sil_front, mask_front > 0.5), iou(vis_back, mask_back > 0.5)]
    objs = [obj("front", front.vertices, front.faces, transform=place_front),
            obj("back", back.vertices, back.faces, transform=place_back)]
    objs[0].mask, objs[1].mask = mask_front, mask_back
    out = write_bundle(reconstruction(np.zeros((H, W, 3), np.uint8), (K, R, t, W, H), objs), tmp_path / "b",
                       ExportOptions(target_faces=None, texture=False, glb=False, gaussians=False))
    got = [o["fit"]["iou"] for o in load_bundle(out).objects]
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert got[0] > 0.7 and 0.05 < got[1] < 0.5


def test_cli_writes_the_preview_and_takes_a_camera(tiny_model, tmp_path):
    tiny = tiny_model
    first = tmp_path / "first"
    assert cupid_main(["reconstruct", str(PHOTO), "-o", str(first), "--model", str(tiny), "--device", "cpu",
                       "--steps", "1"]) == 0
    preview = json.loads((first / "preview.json").read_text())
    scene = json.loads((first / "scene.json").read_text())
    own = object_frame_camera(scene)
    for key in ("K", "R", "t"):
        np.testing.assert_allclose(preview["camera"][key], own[key], rtol=0, atol=1e-12)
    cam = {**preview["camera"], "K": (np.array(preview["camera"]["K"]) * [[1.05], [1.05], [1]]).tolist()}
    (tmp_path / "cam.json").write_text(json.dumps(cam))
    second = tmp_path / "second"
    assert cupid_main(["reconstruct", str(PHOTO), "-o", str(second), "--model", str(tiny), "--device", "cpu",
                       "--steps", "1", "--camera", str(tmp_path / "cam.json")]) == 0
    got = json.loads((second / "scene.json").read_text())["camera"]
    np.testing.assert_allclose(got["K"], cam["K"], rtol=1e-12)
    # a scene.json as the camera: its upright world's camera is taken back into the object's frame
    third = tmp_path / "third"
    assert cupid_main(["reconstruct", str(PHOTO), "-o", str(third), "--model", str(tiny), "--device", "cpu",
                       "--steps", "1", "--camera", str(first / "scene.json")]) == 0
    again = object_frame_camera(json.loads((third / "scene.json").read_text()))
    for key in ("K", "R", "t"):
        np.testing.assert_allclose(again[key], own[key], rtol=0, atol=1e-9)
    (tmp_path / "bad.json").write_text(json.dumps({**cam, "R": np.diag([1, 1, 2]).tolist()}))
    assert cupid_main(["reconstruct", str(PHOTO), "-o", str(tmp_path / "x"), "--model", str(tiny),
                       "--camera", str(tmp_path / "bad.json")]) == 2
