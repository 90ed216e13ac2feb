"""Scene mode end to end on the tiny model: per-object reconstruction, MoGe point map, one camera."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cupid.errors import InputError
from cupid.export import load_bundle
from cupid.pipeline import CupidPipeline
from helpers.bundles import reconstruct_to

REPO = Path(__file__).resolve().parents[1]
SCENE = REPO / "examples" / "scene.png"
LABELS = REPO / "examples" / "scene_labels.png"


@pytest.fixture(scope="module")
def pipe(tiny_model) -> CupidPipeline:
    return CupidPipeline.from_pretrained(tiny_model, device="cpu")


def test_scene_bundle_places_every_labelled_object(pipe, tmp_path):
    fractions = []
    out = reconstruct_to(pipe, SCENE, tmp_path / "s", mask=LABELS, mode="scene", seed=1,
                         progress=lambda s, f: fractions.append(f))
    bundle = load_bundle(out)
    objs = bundle.scene["objects"]
    assert [o["name"] for o in objs] == ["object_0", "object_1", "object_2"]
    # the world is upright: the camera was moved off the point map's frame, the objects stand on z = 0
    scene = bundle.scene
    assert scene["units"] == "relative"                       # the tiny model's MoGe is v1 (affine)
    assert scene["up"]["source"] in ("objects", "ground_plane") and scene["up"]["ground_height"] == 0.0
    cam = bundle.camera()
    R_c = cam.R
    np.testing.assert_allclose(R_c @ R_c.T, np.eye(3), atol=1e-9)
    assert np.abs(R_c - np.eye(3)).max() > 1e-3
    lowest, highest = [], []
    for o in objs:
        M = np.array(o["matrix_world"])
        assert np.isfinite(M).all() and o["transform"]["scale"] > 0
        R = np.array(o["transform"]["R"])
        assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-6)
        v = bundle.load_mesh(o["name"])["vertices"].astype(np.float64)
        world = v @ M[:3, :3].T + M[:3, 3]
        lowest.append(world[:, 2].min())
        highest.append(world[:, 2].max())
        # the tiny model's point map is random, so where objects land is noise; but every one is in front
        assert (cam.R @ np.array(o["transform"]["t"]) + cam.t)[2] > 0
    tol = 0.01 * (max(highest) - min(lowest))   # the exported mesh is the simplified one
    if scene["up"]["source"] == "objects":
        assert min(lowest) == pytest.approx(0.0, abs=tol)
    assert scene["up"]["lowest_point"] == pytest.approx(min(lowest), abs=tol)
    assert scene["up"]["camera_height"] == pytest.approx(cam.camera_center()[2])
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert np.array(bundle.scene["camera"]["K"])[0, 0] > 0


def test_scene_mode_errors(pipe, tmp_path):
    blank = tmp_path / "labels.png"
    Image.new("L", (512, 384), 0).save(blank)
    with pytest.raises(InputError):
        reconstruct_to(pipe, SCENE, tmp_path / "a", mask=blank, mode="scene")
    wrong = tmp_path / "small.png"
    Image.new("L", (10, 10), 1).save(wrong)
    with pytest.raises(InputError, match="size"):
        reconstruct_to(pipe, SCENE, tmp_path / "b", mask=wrong, mode="scene")
    # picks outside the photo or none at all are refused before any model runs
    with pytest.raises(InputError, match="inside the photo|outside"):
        reconstruct_to(pipe, SCENE, tmp_path / "c", mode="scene", prompts=([[9999, 5]], []))
    with pytest.raises(InputError):
        reconstruct_to(pipe, SCENE, tmp_path / "d", mode="scene", prompts=([], []))
    with pytest.raises(InputError, match="scene mode"):
        reconstruct_to(pipe, SCENE, tmp_path / "e", mode="object", prompts=([[10, 10]], []))


def test_scene_from_picks_and_automatic_masks(pipe, tmp_path):
    """No label image: the objects come from clicks (one per point or box) or SAM's automatic masks
    (the tiny model's SAM segments by colour; examples/scene.png has a cube, a sphere and a cone)."""
    picks = ([[160, 175], [245, 255]], [[292, 112, 388, 208]])   # cube, cone (clicks); sphere (box)
    masks = pipe.segment(SCENE, picks)
    assert len(masks) == 3 and masks.size == (512, 384)
    b = masks.binary
    assert b[0][175, 160] and b[1][255, 245] and b[2][160, 340]
    assert not b[0][160, 340] and not b[2][175, 160]        # each mask is its own object
    out = reconstruct_to(pipe, SCENE, tmp_path / "picks", mode="scene", seed=1, steps=1, prompts=picks)
    assert [o["name"] for o in load_bundle(out).scene["objects"]] == ["object_0", "object_1", "object_2"]
    auto = pipe.segment(SCENE)
    assert len(auto) >= 1
