"""What a careful artist found (issue #24) as an artist gets it: the zip installed into a clean headless
Blender, the real `cupid serve` started by the add-on with the tiny model, one Blender session
(tests/blender_scripts/artist.py) for all of it.

- Refine with This Camera reads a camera at its own photo's size whatever camera is active and whatever
  size the scene renders at, and leaves the result selected and active (the panel's Result box stays).
- A phone photo (stored portrait with EXIF Orientation 6, as the issue's 500x741, smaller here) is upright
  everywhere: the camera's background, the size the job and the camera record, the mask check, the refine.
- A backend stopped with SIGTERM mid-job: "stopped while working", reported once the process is gone; the
  next job starts a new one.
- "starting backend" shows only while the backend starts; the CPU-time warning; an image loaded twice.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

pytest.importorskip("bpy", reason="needs Blender as a Python module (bpy 4.5)")
pytestmark = [pytest.mark.blender, pytest.mark.slow]

from tests.blender_scripts import launch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MONKEY = REPO / "examples" / "monkey.png"
DRIVER = REPO / "tests" / "blender_scripts" / "artist.py"


def _photo(size: tuple[int, int], path: Path, **save) -> Image.Image:
    """The monkey on a table top, filling about two thirds of the photo's height."""
    rgba = Image.open(MONKEY).convert("RGBA")
    side = int(0.66 * min(size))
    rgba = rgba.resize((side, side))
    photo = Image.new("RGB", size, (205, 196, 180))
    photo.paste(rgba, ((size[0] - side) // 2, (size[1] - side) // 2), mask=rgba.getchannel("A"))
    photo.save(path, **save)
    return photo


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model) -> dict:
    tmp = tmp_path_factory.mktemp("blender_artist")
    _, zip_path = launch.tiny_zip(tmp, tiny_model)
    _photo((480, 320), tmp / "wide.jpg", quality=92)
    _photo((320, 320), tmp / "square.png")
    upright = _photo((480, 320), tmp / "phone_upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6    # "turn 90 degrees clockwise to show": the pixels are stored turned the other way
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp / "phone.jpg", quality=92, exif=exif)
    shown = ImageOps.exif_transpose(Image.open(tmp / "phone.jpg"))
    assert Image.open(tmp / "phone.jpg").size == (320, 480) and shown.size == (480, 320)
    mask = launch.ellipse(480, 320, 240, 160, 130, 130)
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp / "phone_mask.png")
    Image.fromarray(mask.T.astype(np.uint8) * 255).save(tmp / "sideways_mask.png")   # 320x480
    full = tmp / "full_model"
    full.mkdir()
    (full / "pipeline.json").write_text('{"args": {}}')   # a full-size model as the add-on sees one
    cfg = {"zip": str(zip_path), "python": sys.executable, "wide": str(tmp / "wide.jpg"),
           "square": str(tmp / "square.png"), "phone": str(tmp / "phone.jpg"),
           "phone_mask": str(tmp / "phone_mask.png"), "sideways_mask": str(tmp / "sideways_mask.png"),
           "steps": 0, "long_steps": 400, "results_dir": str(tmp / "results"), "backend_dir": str(tmp / "backend"),
           "full_model": str(full), "result": str(tmp / "result.json")}
    out = launch.run(DRIVER, cfg, tmp, HF_HUB_CACHE=str(tmp / "empty_hub"), HF_HOME=str(tmp / "empty_hf"))
    print("seconds per case:", out.get("seconds"))
    return {"out": out, "cfg": cfg, "tmp": tmp}


def test_an_image_loaded_twice_names_its_result_after_the_photo(run):
    out = run["out"]
    assert out["datablock"] == "wide.jpg.001"
    assert out["wide"]["ret"] == ["FINISHED"], out["wide"]
    assert "CUPID wide" in out["wide"]["collections"]
    assert not [c for c in out["wide"]["collections"] if ".jpg" in c]


def test_starting_backend_shows_only_while_the_backend_starts(run):
    stages = run["out"]["first_stages"]
    # the first job starts the backend; the next ones find it up; the one after the SIGTERM starts it again
    assert stages[:4] == ["starting backend", "uploading", "refining", "uploading"], stages
    assert stages[4:] == ["starting backend", "refining"], stages   # the sideways mask never became a job


def test_refine_reads_a_camera_at_its_own_photo_size_whatever_the_scene_camera(run):
    out = run["out"]
    assert out["square"]["ret"] == ["FINISHED"] and out["square"]["render"] == [320, 320]
    assert out["square"]["scene_camera"] == "square camera"                 # not the refined result's camera
    refine = out["refine"]
    assert refine["ret"] == ["FINISHED"], refine
    sent, first = np.array(refine["job"]["camera"]["K"]), np.array(out["wide"]["K"])
    assert out["wide"]["job_size"] == [480, 320]
    np.testing.assert_allclose(sent, first, rtol=1e-5)                      # untouched: the very same K
    assert sent[1, 1] / sent[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_after_a_refine_the_result_stays_selected_and_active(run):
    refine = run["out"]["refine"]
    assert refine["active"] == refine["active_before"] == "wide object_0"
    assert "wide object_0" in refine["selected"] and all(n.startswith("wide ") for n in refine["selected"])
    assert "cupid.refine" in refine["panel_ops"]                             # the Result box is still drawn


def test_a_backend_stopped_mid_job_says_so_and_restarts_on_the_next_press(run):
    out = run["out"]
    case = out["sigterm"]
    assert case["pid"] is not None and case["ret"] == ["ERROR"], case
    assert "the local CUPID backend stopped while working" in case["message"], case
    assert "not running at" not in case["message"]
    assert case["gone_at_report"]                                            # waited for: the process is gone
    assert out["phone"]["ret"] == ["FINISHED"] and out["phone"]["new_pid"] != case["pid"]


def test_a_phone_photo_is_upright_everywhere(run):
    out = run["out"]
    assert out["phone_stored_size"] == [320, 480]                            # Blender's loader ignores EXIF
    refused = out["phone_sideways_mask"]
    assert refused["ret"] == ["ERROR"] and "320x480 but the photo is 480x320 upright" in refused["message"]
    phone = out["phone"]
    assert phone["job_size"] == [480, 320] and phone["camera_resolution"] == [480, 320]
    assert phone["background"] == [[480, 320]] and phone["image"]["width"] == 480
    K = np.array(phone["K"])
    assert K[1, 1] / K[0, 0] == pytest.approx(1.0, abs=1e-6)
    refine = out["phone_refine"]
    assert refine["ret"] == ["FINISHED"], refine
    sent = np.array(refine["job"]["camera"]["K"])
    np.testing.assert_allclose(sent, K, rtol=1e-5)                           # an untouched refine: the same camera
    assert refine["background"] == [[480, 320]]


def test_a_pick_on_a_phone_photo_as_blender_shows_it_segments_the_upright_photo(run):
    case = run["out"]["phone_pick"]
    assert case["ret"] == ["FINISHED"], case
    assert case["size"] == [480, 320] and case["at_pick"] > 0   # upright masks, the picked object under the pick


def test_the_cpu_time_warning(run):
    warnings = run["out"]["cpu_warning"]
    assert warnings["absent_cpu"] is None and warnings["absent_auto"] is None   # that job fails at once
    assert warnings["full_auto"] and "on the CPU" in warnings["full_auto"]       # before the backend answered
