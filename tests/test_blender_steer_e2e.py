"""See it early, steer it, pick it (issues #14 and #18) as an artist gets it: the zip installed into a
clean headless Blender, the real `cupid serve` started by the add-on with the tiny model (which brings
a tiny background remover and a tiny segment-anything that segments by colour).

An opaque JPEG loaded as an image datablock is reconstructed in object mode with no mask: stage 1's
camera and voxels appear while the job still runs and the result takes their place; the panel shows
the fit score; *Refine with This Camera* after moving and re-lensing the camera gives a result with
exactly that camera in the same collection; an expired job and a cancelled job leave the scene as it
was. Then picking: an empty pick list is refused, *Show Cut-out* shows the removed background, picks on
examples/scene.png become masks (the scene mask) and a three-object scene.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("bpy", reason="needs Blender as a Python module (bpy 4.5)")
pytestmark = [pytest.mark.blender, pytest.mark.slow]

from tests.blender_scripts import launch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MONKEY = REPO / "examples" / "monkey.png"
SCENE = REPO / "examples" / "scene.png"
SCENE_LABELS = REPO / "examples" / "scene_labels.png"
DRIVER = REPO / "tests" / "blender_scripts" / "steer.py"
# cube: a click; cone: a click; sphere: a box dragged around it (photo pixels of examples/scene.png)
PICKS = [["POINT", 160.0, 175.0, 0.0, 0.0], ["POINT", 245.0, 255.0, 0.0, 0.0], ["BOX", 292.0, 112.0, 388.0, 208.0]]
TRUTH = [1, 3, 2]   # scene_labels.png's label of each pick's object


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model) -> dict:
    tmp = tmp_path_factory.mktemp("blender_steer")
    _, zip_path = launch.tiny_zip(tmp, tiny_model)
    rgba = Image.open(MONKEY).convert("RGBA")
    photo = Image.new("RGB", rgba.size, (205, 196, 180))   # a table top: an ordinary opaque photo
    photo.paste(rgba, mask=rgba.getchannel("A"))
    photo.save(tmp / "coffee.jpg", quality=92)
    cfg = {"zip": str(zip_path), "python": sys.executable, "jpeg": str(tmp / "coffee.jpg"), "scene_photo": str(SCENE),
           "results_dir": str(tmp / "results"), "result": str(tmp / "result.json"), "steps": 0, "long_steps": 400,
           "picks": PICKS}
    out = launch.run(DRIVER, cfg, tmp, HF_HUB_CACHE=str(tmp / "empty_hub"), HF_HOME=str(tmp / "empty_hf"))
    return {"out": out, "cfg": cfg, "tmp": tmp}


def _labels(log: list) -> list:
    return [e[2].get("text", "") for e in log if e[0] == "label"]


def _ops(log: list) -> list:
    return [e[1][0] for e in log if e[0] == "operator"]


def _camera_close(a: dict, b: dict, rtol: float = 1e-6) -> None:
    for key in ("K", "R", "t"):
        np.testing.assert_allclose(np.array(a[key]), np.array(b[key]), rtol=rtol, atol=rtol * 10, err_msg=key)


# ------------------------------------------------------------------ an opaque JPEG, its preview and result

def test_an_opaque_jpeg_datablock_reconstructs_in_object_mode(run):
    case = run["out"]["opaque"]
    assert case["ret"] == ["FINISHED"], case
    result = case["result"]
    assert result["name"] == "CUPID coffee" and all(o["part"] for o in result["objects"])
    assert sorted(o["type"] for o in result["objects"]) == ["CAMERA", "LIGHT", "MESH", "MESH", "POINTCLOUD"]
    camera = case["camera"]   # upright: the object stands on z = 0 (the ground plane and sun: Composite over Photo)
    assert camera["up"]["source"] == "objects" and camera["up"]["ground_height"] == 0.0 and camera["units"] == "relative"
    assert camera["up"]["camera_height"] > 0
    assert result["props"]["cupid_name"] == "coffee" and result["props"]["cupid_job_size"] == [480, 360]


def test_the_preview_shows_before_the_job_ends_and_equals_the_final_camera(run):
    out = run["out"]
    preview = out["previews"][0]
    assert preview["job_state"] == "running"                       # stage 2 still to come
    assert preview["name"] == "CUPID coffee" and preview["scene_camera"] == "coffee camera"
    kinds = {o["type"]: o for o in preview["objects"]}
    assert set(kinds) == {"CAMERA", "POINTCLOUD"}
    assert kinds["POINTCLOUD"]["name"] == "coffee voxels" and kinds["POINTCLOUD"]["points"] == preview["voxels"] > 0
    assert kinds["CAMERA"]["background"] == [["coffee photo", [480, 360]]]
    _camera_close(preview["read_camera"], preview["preview_camera"], rtol=2e-5)   # shown as solved (float32)
    # the final camera is stage 1's, seen from the object's own frame (the result's world is upright)
    _camera_close(preview["preview_camera"], out["opaque"]["camera"]["object_frame"])
    assert preview["job_id"] == out["opaque"]["result"]["props"]["cupid_job"]


def test_the_result_replaces_the_preview_without_leftovers(run):
    case = run["out"]["opaque"]
    added = {k: sorted(set(case["after"][k]) - set(case["before"][k])) for k in case["before"]}
    removed = {k: sorted(set(case["before"][k]) - set(case["after"][k])) for k in case["before"]}
    assert not any(removed.values()), removed
    assert added["objects"] == ["coffee camera", "coffee ground", "coffee object_0", "coffee object_0 gaussians",
                                "coffee sun"]
    assert added["collections"] == ["CUPID coffee"] and added["cameras"] == ["coffee camera"]
    assert "coffee photo" in added["images"] and not [n for k in added for n in added[k] if "voxels" in n or ".00" in n]


def test_the_fit_score_is_shown_next_to_the_result(run):
    out = run["out"]
    iou = out["opaque"]["camera"]["fits"][0]["iou"]
    mesh = next(o for o in out["opaque"]["result"]["objects"] if o["type"] == "MESH" and o["name"] != "coffee ground")
    assert mesh["fit"] == pytest.approx(iou) and 0.0 < iou <= 1.0
    assert f"coffee object_0: fit IoU {iou:.2f}" in _labels(out["panel_result"])
    assert "cupid.refine" in _ops(out["panel_result"])


# ------------------------------------------------------------------ refine

def test_refine_gives_exactly_the_moved_camera_in_the_same_collection(run):
    out = run["out"]
    case = out["refine"]
    assert case["ret"] == ["FINISHED"], case
    assert case["job"]["from_job"] == out["opaque"]["result"]["props"]["cupid_job"]
    # what was sent: the moved camera as the object's own frame sees it; what came back: exactly that camera
    _camera_close(case["job"]["camera"], case["moved_object_frame"])
    _camera_close(case["camera"]["object_frame"], case["moved_object_frame"], rtol=1e-5)
    assert np.abs(np.array(case["moved"]["K"]) - np.array(out["opaque"]["camera"]["K"])).max() > 1.0  # it moved
    assert case["camera"]["folder"] != out["opaque"]["camera"]["folder"]    # a result of its own, kept beside
    assert case["result"]["name"] == "CUPID coffee"
    props = case["result"]["props"]
    assert props["cupid_job"] not in (case["job"]["from_job"], "") and props["cupid_job_size"] == [480, 360]
    assert [o["name"] for o in case["result"]["objects"]] == [o["name"] for o in out["opaque"]["result"]["objects"]]
    assert case["before"] == case["after"]                                  # the same names: replaced, none left over


def test_a_refine_of_an_expired_job_says_run_it_again(run):
    case = run["out"]["expired"]
    assert case["ret"] == ["ERROR"] and "run the reconstruction again" in case["message"]
    assert "Traceback" not in case["message"]
    assert case["before"] == case["after"] and case["names_kept"]


def test_a_job_cancelled_after_its_preview_leaves_nothing(run):
    case = run["out"]["cancelled"]
    assert case["preview_seen"] and case["ret"] == ["CANCELLED"], case
    assert case["before"] == case["after"] and case["names_kept"], case["diff"]


def test_a_result_that_cannot_be_built_takes_its_preview_away(run):
    case = run["out"]["unbuildable"]
    assert case["preview_seen"] and case["ret"] == ["ERROR"] and "injected" in case["message"], case
    assert case["before"] == case["after"] and case["names_kept"], case["diff"]
    assert not [f for f in case["kept_folders"] if f.startswith(".incoming")]   # no download left behind


# ------------------------------------------------------------------ picking

def test_show_cutout_shows_the_removed_background(run):
    out = run["out"]
    assert "cupid.show_cutout" in _ops(out["panel_object"]) and "cupid.pick_objects" not in _ops(out["panel_object"])
    case = out["cutout"]
    assert case["ret"] == ["FINISHED"], case
    assert case["size"] == [480, 360] and case["alpha_values"] == [0.0, 1.0] and case["packed"]
    assert 0.02 < case["opaque_share"] < 0.9


def test_an_empty_pick_list_is_refused_before_anything_is_sent(run):
    case = run["out"]["no_picks"]
    assert case["ret"] == ["ERROR"] and "no objects picked" in case["message"]
    assert case["names_kept"] and case["seconds"] < 5


def test_picks_become_masks_over_the_photo_and_the_scene_mask(run):
    out = run["out"]
    assert out["picks"] == PICKS
    assert {"cupid.pick_objects", "cupid.clear_picks"} <= set(_ops(out["panel_scene"]))
    case = out["segment"]
    assert case["ret"] == ["FINISHED"], case
    assert case["mask"] == "scene masks" and case["size"] == [512, 384] and case["packed"]
    assert case["overlay"] == [512, 384] and len(case["colours"]) == 3
    got = np.array(case["label_map"])
    truth = np.asarray(Image.open(SCENE_LABELS))
    for (kind, x0, y0, x1, y1), label in zip(PICKS, TRUTH):
        x, y = (x0, y0) if kind == "POINT" else ((x0 + x1) / 2, (y0 + y1) / 2)
        colour = got[int(y), int(x)]
        assert colour != 0, (kind, x, y)
        mine, theirs = got == colour, truth == label
        iou = (mine & theirs).sum() / (mine | theirs).sum()
        assert iou > 0.5, (kind, label, iou)


def test_a_scene_from_picks(run):
    out = run["out"]
    case = out["scene"]
    assert case["ret"] == ["FINISHED"], case
    sent = np.asarray(Image.open(io.BytesIO(bytes.fromhex(case["job"]["mask"]))))
    colours = {tuple(c) for c in sent.reshape(-1, sent.shape[-1]) if any(c)} if sent.ndim == 3 else set()
    assert len(colours) == 3                                               # the picked masks went up as labels
    meshes = [o for o in case["result"]["objects"] if o["type"] == "MESH" and " ground" not in o["name"]]
    assert len(meshes) == 3
    assert "cupid_job" not in case["result"]["props"]                    # a scene keeps no stage 1 to refine
    assert out["clear"]["ret"] == ["FINISHED"] and out["picks_after_clear"] == 0
