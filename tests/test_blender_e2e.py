"""The extension as an artist gets it: the zip built by install/, installed into a clean headless
Blender, enabled/disabled/enabled, then `bpy.ops.cupid.reconstruct` against the real `cupid serve`
(started by the add-on's backend manager) with the tiny model. The Cycles render from the built
camera must match the backend's own silhouette of the same mesh; failures leave the scene unchanged.

Blender runs in a subprocess (tests/blender_scripts/e2e.py) with its user resources in a temporary
directory, so nothing touches the developer's Blender set-up.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("bpy", reason="needs Blender as a Python module (bpy 4.5)")
pytestmark = [pytest.mark.blender, pytest.mark.slow]

from cupid.cli import main as cupid_main  # noqa: E402
from cupid.export import load_bundle, render_silhouette  # noqa: E402
from cupid.tiny import make_tiny_model  # noqa: E402
from tests.helpers.net import free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "monkey.png"
DRIVER = REPO / "tests" / "blender_scripts" / "e2e.py"
sys.path.insert(0, str(REPO / "install"))
import build_extension  # noqa: E402

COUNTED = ("objects", "meshes", "materials", "images", "cameras", "collections", "node_groups")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("blender_e2e")
    model = make_tiny_model(tmp / "tiny")
    zip_path = build_extension.build(tmp / "dist", model=str(model))  # as install/setup.sh does
    bad = tmp / "notes.png"
    bad.write_text("this is a shopping list, not a picture\n")
    cfg = {"zip": str(zip_path), "python": sys.executable, "model": str(model), "photo": str(PHOTO),
           "bad_photo": str(bad), "dead_url": f"http://127.0.0.1:{free_port()}",
           "result": str(tmp / "result.json"), "render": str(tmp / "render.png"), "seed": 0, "steps": 0}
    (tmp / "config.json").write_text(json.dumps(cfg))
    user = tmp / "blender_user"
    user.mkdir()
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(user), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)  # the backend runs from the installed environment, like an artist's
    log = tmp / "blender.log"
    with open(log, "wb") as fh:  # a file, not a pipe: Blender's own output must never block it
        proc = subprocess.run([sys.executable, str(DRIVER), str(tmp / "config.json")], stdin=subprocess.DEVNULL,
                              stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=tmp, timeout=900)
    tail = log.read_text(errors="replace")[-3000:]
    assert proc.returncode == 0 and Path(cfg["result"]).is_file(), f"Blender run failed:\n{tail}"
    result = json.loads(Path(cfg["result"]).read_text())
    assert "crash" not in result, result.get("crash", "") + "\n" + tail
    return {"result": result, "cfg": cfg, "tmp": tmp, "log": tail}


def _unchanged(case: dict) -> None:
    before, after = case["before"], case["after"]
    assert before == after, f"the scene changed: {before} -> {after}"


def test_install_enable_disable_enable(run):
    steps = run["result"]["install_cycle"]
    assert [s["step"] for s in steps] == ["install", "disable", "enable"]
    on = {"enabled": True, "operator": True, "panel": True, "scene_settings": True}
    off = {k: False for k in on}
    for step, want in zip(steps, (on, off, on)):
        assert {k: step[k] for k in want} == want, step
    assert steps[0]["module"] == "bl_ext.user_default.cupid"
    # the defaults recorded at build time: this checkout's backend environment and the model set up
    assert Path(steps[0]["default_python"]).name.startswith("python")
    assert steps[0]["default_model"] == run["cfg"]["model"]


def _drawn(log: list, method: str) -> list:
    return [entry for entry in log if entry[0] == method]


def test_panel_draws_inputs_button_progress_and_backend_status(run):
    idle, busy = run["result"]["panel_idle"], run["result"]["panel_running"]
    ops_idle = [e[1][0] for e in _drawn(idle, "operator")]
    ops_busy = [e[1][0] for e in _drawn(busy, "operator")]
    assert "cupid.reconstruct" in ops_idle and "cupid.cancel" not in ops_idle
    assert "cupid.cancel" in ops_busy and "cupid.reconstruct" not in ops_busy
    assert {"cupid.start_backend", "cupid.stop_backend"} <= set(ops_idle)
    assert any(e[1][1] == "image" for e in _drawn(idle, "template_ID_preview"))  # photo with a thumbnail
    assert any(e[1][1] == "mask" for e in _drawn(idle, "template_ID"))
    assert any(e[1][1] == "mode" for e in _drawn(idle, "prop"))
    progress = _drawn(busy, "progress")
    assert progress and progress[0][2]["factor"] == pytest.approx(0.4) and "latent 40%" in progress[0][2]["text"]
    labels = [e[2].get("text", "") for e in _drawn(idle, "label")]
    assert any(text.startswith("Backend: ") for text in labels)


def test_dead_backend_is_a_clear_report_and_changes_nothing(run):
    case = run["result"]["dead_backend"]
    assert case["ret"] == ["ERROR"]
    assert "CUPID backend unavailable" in case["message"] and run["cfg"]["dead_url"] in case["message"]
    assert "Traceback" not in case["message"]
    _unchanged(case)


def test_bad_image_is_a_clear_report_and_changes_nothing(run):
    case = run["result"]["bad_image"]
    assert case["ret"] == ["ERROR"]
    assert "CUPID backend error" in case["message"] and "image" in case["message"].lower()
    assert "Traceback" not in case["message"]
    _unchanged(case)


def test_cancelled_job_changes_nothing(run):
    case = run["result"]["cancelled"]
    assert case["ret"] == ["CANCELLED"]
    assert case["message"] == "Reconstruction cancelled"
    assert case["seconds"] < 120  # a 500-step job would take far longer than a prompt cancel
    _unchanged(case)


def test_reconstruct_builds_collection_objects_material_camera(run):
    res = run["result"]["success"]
    assert res["ret"] == ["FINISHED"], res
    assert res["collections"] == ["CUPID monkey"]
    by_type = {}
    for obj in res["objects"]:
        by_type.setdefault(obj["type"], []).append(obj)
    assert len(by_type["CAMERA"]) == 1 and len(by_type["MESH"]) == 1
    cam, mesh = by_type["CAMERA"][0], by_type["MESH"][0]
    assert res["scene_camera"] == cam["name"] == "monkey camera"
    w, h = Image.open(PHOTO).size
    assert res["resolution"] == [w, h, 100]
    assert cam["show_background"] and cam["background_size"] == [[w, h]]
    assert mesh["faces"] > 100 and mesh["uv_layers"] >= 1 and mesh["materials"]
    assert mesh["texture_images"] or mesh["color_attributes"]
    assert run["result"]["backend_running"] and not run["result"]["backend_running_after_disable"]


def test_cycles_render_matches_the_backends_silhouette(run, tmp_path):
    """Same photo, seed and steps straight through the pipeline (deterministic): its bundle's mesh
    seen through its K, R, t must cover the same pixels as Blender's render from the built camera."""
    cfg = run["cfg"]
    ref = tmp_path / "reference"
    assert cupid_main(["reconstruct", cfg["photo"], "-o", str(ref), "--model", cfg["model"], "--device", "cpu",
                       "--seed", str(cfg["seed"]), "--steps", str(cfg["steps"])]) == 0
    bundle = load_bundle(ref)
    cam = bundle.camera()
    K, R, t, w, h = cam.K, cam.R, cam.t, cam.width, cam.height
    expected = np.zeros((h, w), bool)
    for obj in bundle.objects:
        m = bundle.load_mesh(obj["name"])
        M = np.array(obj["matrix_world"])
        expected |= render_silhouette(m["vertices"] @ M[:3, :3].T + M[:3, 3], m["faces"], K, R, t, w, h)
    rgba = np.asarray(Image.open(cfg["render"]))
    assert rgba.shape == (h, w, 4)
    alpha = rgba[:, :, 3] > 127
    assert expected.sum() > 500, "the reference mesh should cover a visible part of the photo"
    iou = (alpha & expected).sum() / (alpha | expected).sum()
    assert iou >= 0.95, f"silhouette IoU {iou:.4f}"
    # the comparison can fail: the same render against a camera shifted by 3 px loses IoU
    shifted = np.roll(expected, 3, axis=1)
    assert (alpha & shifted).sum() / (alpha | shifted).sum() < iou - 0.02
