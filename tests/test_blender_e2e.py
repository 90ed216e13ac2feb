"""The extension as an artist gets it: the zip built by install/, installed into a clean headless
Blender, enabled/disabled/enabled, then `bpy.ops.cupid.reconstruct` against the real `cupid serve`
(started by the add-on's backend manager) with the tiny model. The Cycles render from the built
camera must match the backend's own silhouette of the same mesh; failures leave the scene unchanged.
Then what an artist trips over (issue #16): masks painted in Blender, results kept beside the .blend
and imported from File › Import, the artist's render size, big TIFFs, EXRs, a remote GPU box (two
`cupid serve` processes, one restarted), the model and device shown, seeds, names of a re-run,
tooltips, Stop Backend, and the Gaussians as a point cloud.

Blender runs in a subprocess (tests/blender_scripts/e2e.py) with its user resources in a temporary
directory, so nothing touches the developer's Blender set-up; one Blender process serves the module.
"""
from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("bpy", reason="needs Blender as a Python module (bpy 4.5)")
pytestmark = [pytest.mark.blender, pytest.mark.slow]

from cupid.cli import main as cupid_main  # noqa: E402
from cupid.export import load_bundle, read_gaussians_ply, render_silhouette  # noqa: E402
from cupid.models.dtype import dtype_name, resolve_dtype  # noqa: E402
from tests.blender_scripts import launch  # noqa: E402
from tests.helpers.net import free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "monkey.png"
DRIVER = REPO / "tests" / "blender_scripts" / "e2e.py"
README = REPO / "README.md"
ELLIPSE = (300.0, 200.0, 70.0, 95.0)   # cx, cy, rx, ry in pixels of the 480x360 photo

EXR_WRITER = """
import sys, numpy as np
from PIL import Image
srgb = np.asarray(Image.open(sys.argv[1]).convert("RGBA"), np.float32) / 255.0
rgb = srgb[..., :3]
lin = np.concatenate([np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4), srgb[..., 3:]], 2)
import cv2
assert cv2.imwrite(sys.argv[2], lin[..., [2, 1, 0, 3]].astype(np.float32))
"""


def ellipse_mask(w: int, h: int) -> np.ndarray:
    return launch.ellipse(w, h, *ELLIPSE)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """The zip (built as install/setup.sh does) and every file the driver's cases use."""
    tmp = tmp_path_factory.mktemp("blender_e2e")
    model, zip_path = launch.tiny_zip(tmp)
    bad = tmp / "notes.png"
    bad.write_text("this is a shopping list, not a picture\n")
    w, h = Image.open(PHOTO).size
    inside = ellipse_mask(w, h)
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(tmp / "black.png")       # an opaque black image, painted in Blender
    rgba[inside, :3] = 255
    Image.fromarray(rgba).save(tmp / "ellipse_mask.png")  # RGBA with an all-opaque alpha
    Image.open(PHOTO).convert("RGBA").resize((6000, 4500), Image.Resampling.LANCZOS).save(tmp / "monkey_big.tif")
    subprocess.run([sys.executable, "-c", EXR_WRITER, str(PHOTO), str(tmp / "monkey_exr.exr")], check=True,
                   env={**os.environ, "OPENCV_IO_ENABLE_OPENEXR": "1"}, timeout=120)
    cli = tmp / "out" / "monkey"   # `cupid reconstruct photo.png -o out/monkey`, as the README says
    assert cupid_main(["reconstruct", str(PHOTO), "-o", str(cli), "--model", str(model), "--device", "cpu",
                       "--seed", "0", "--steps", "0"]) == 0
    snapshot = tmp / "hub" / "models--hbb1--Cupid" / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)   # what `cupid download --cache-dir` leaves (the files themselves not needed)
    (snapshot / "pipeline.json").write_text(json.dumps({"name": "Cupid3DPipeline", "args": {"models": {}}}))
    full = tmp / "full_model"
    full.mkdir()
    (full / "pipeline.json").write_text(json.dumps({"name": "Cupid3DPipeline", "args": {"models": {}}}))
    return {"tmp": tmp, "model": model, "zip": zip_path, "bad": bad, "cli": cli, "hub": tmp / "hub", "full": full}


class Serve:
    """`cupid serve --host 0.0.0.0` as a GPU box runs it, its output in a file."""

    def __init__(self, args: list, log: Path):
        self.log = log
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "cupid", "serve", *args], stdin=subprocess.DEVNULL,
                                         stdout=fh, stderr=subprocess.STDOUT)
        self.url = self.wait_for(r"reachable from other machines at (\S+)")

    def wait_for(self, pattern: str, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log.read_text(errors="replace"))
            if m:
                return m.group(1)
            assert self.proc.poll() is None, self.log.read_text(errors="replace")
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in {self.log.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def remote(inputs) -> dict:
    """Two `cupid serve` processes in turn on one port and token file: the second is the GPU box."""
    tmp, port = inputs["tmp"], free_port()
    token_file = tmp / "gpu-box" / "server.json"
    args = ["--host", "0.0.0.0", "--port", str(port), "--token-file", str(token_file), "--model",
            str(inputs["model"]), "--device", "cpu"]
    first = Serve(args, tmp / "serve1.log")
    token1 = json.loads(token_file.read_text())["token"]
    first.stop()
    kept = token_file.is_file()
    second = Serve(args, tmp / "serve2.log")
    token2 = json.loads(token_file.read_text())["token"]
    info = {"port": port, "urls": [first.url, second.url], "tokens": [token1, token2],
            "kept_after_stop": kept, "log": first.log.read_text(errors="replace")}
    yield info
    second.stop()


@pytest.fixture(scope="module")
def run(inputs, remote) -> dict:
    tmp = inputs["tmp"]
    cfg = {"zip": str(inputs["zip"]), "python": sys.executable, "model": str(inputs["model"]), "photo": str(PHOTO),
           "bad_photo": str(inputs["bad"]), "dead_url": f"http://127.0.0.1:{free_port()}",
           "result": str(tmp / "result.json"), "render": str(tmp / "render.png"), "seed": 0, "steps": 0,
           "blend": str(tmp / "project" / "scene.blend"), "ellipse": list(ELLIPSE),
           "mask_file": str(tmp / "ellipse_mask.png"), "black_file": str(tmp / "black.png"),
           "big_photo": str(tmp / "monkey_big.tif"), "exr_photo": str(tmp / "monkey_exr.exr"),
           "cli_bundle": str(inputs["cli"]), "remote_url": remote["urls"][1], "remote_token": remote["tokens"][1],
           "fake_hub": str(inputs["hub"]), "full_model": str(inputs["full"]), "results_dir": str(tmp / "elsewhere")}
    (tmp / "project").mkdir()
    out = launch.run(DRIVER, cfg, tmp, HF_HUB_CACHE=str(tmp / "empty_hub"), HF_HOME=str(tmp / "empty_hf"))
    return {"result": out, "cfg": cfg, "tmp": tmp}


def _unchanged(case: dict) -> None:
    before, after = case["before"], case["after"]
    assert before == after, f"the scene changed: {before} -> {after}"


def _png(hex_bytes: str) -> Image.Image:
    return Image.open(io.BytesIO(bytes.fromhex(hex_bytes)))


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
    # from a script, as the README says: a RuntimeError whose message is the report (issue 24)
    assert case["raised"] == "RuntimeError" and case["message"].startswith("Error: CUPID backend error (bad_input)")
    assert "which Blender turns into a `RuntimeError` in a script" in " ".join(README.read_text().split())
    assert "CUPID backend error" in case["message"] and "image" in case["message"].lower()
    assert "Traceback" not in case["message"]
    _unchanged(case)


def test_cancelled_job_changes_nothing(run):
    case = run["result"]["cancelled"]
    assert case["ret"] == ["CANCELLED"] and case["raised"] is None   # returned, not raised (README)
    assert case["message"] == "Reconstruction cancelled"
    assert case["seconds"] < 120  # a 500-step job would take far longer than a prompt cancel
    _unchanged(case)


def test_reconstruct_builds_collection_objects_material_camera(run):
    res = run["result"]["success"]
    assert res["ret"] == ["FINISHED"], res
    assert res["collections"] == ["CUPID monkey"]
    by_type = {}
    for obj in res["objects"]:
        kind = "GROUND" if obj["name"] == "monkey ground" else obj["type"]   # Composite over Photo's plane
        by_type.setdefault(kind, []).append(obj)
    assert len(by_type["CAMERA"]) == 1 and len(by_type["MESH"]) == 1
    assert len(by_type["GROUND"]) == 1 and [o["name"] for o in by_type["LIGHT"]] == ["monkey sun"]
    cam, mesh = by_type["CAMERA"][0], by_type["MESH"][0]
    assert res["scene_camera"] == cam["name"] == "monkey camera"
    w, h = Image.open(PHOTO).size
    assert res["resolution"] == [w, h, 100]
    assert cam["show_background"] and cam["background_size"] == [[w, h]]
    assert mesh["faces"] > 100 and mesh["uv_layers"] >= 1 and mesh["materials"]
    assert mesh["texture_images"] or mesh["color_attributes"]
    # the photo texture (on by default): the material mixes the generated texture and the photo's by the
    # result box's Photo Texture factor
    assert res["photo_mix"] == {"default": 1.0, "slid": 0.25,
                                "inputs": ["monkey object_0 generated", "monkey object_0 texture"]}, res.get("photo_mix")
    assert len(mesh["texture_images"]) == 3
    assert run["result"]["backend_running"] and not run["result"]["backend_running_after_disable"]


def test_cycles_render_matches_the_backends_silhouette(run, inputs):
    """Same photo, seed and steps straight through the pipeline (deterministic): its bundle's mesh
    seen through its K, R, t must cover the same pixels as Blender's render from the built camera."""
    cfg = run["cfg"]
    bundle = load_bundle(inputs["cli"])
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


# ------------------------------------------------------------------ issue #16, point by point

def test_1_a_mask_painted_in_blender_means_its_brightness(run):
    """A new datablock, a file and an edited image, all opaque white on black, send the ellipse;
    the reconstruction with it gets another camera than the photo's own alpha gives."""
    masks = run["result"]["masks"]
    want = np.where(ellipse_mask(480, 360), 255, 0).astype(np.uint8)
    assert masks["edited_is_dirty"]
    for label in ("datablock", "file", "edited"):
        img = _png(masks[label])
        assert img.mode == "L", label
        np.testing.assert_array_equal(np.asarray(img), want, err_msg=label)
    masked, plain = run["result"]["masked"], run["result"]["success"]
    assert masked["ret"] == ["FINISHED"], masked
    np.testing.assert_array_equal(np.asarray(_png(masked["job"]["mask"])), want)   # what the job sent
    K1, K0 = np.array(masked["camera"]["K"]), np.array(plain["camera"]["K"])
    assert abs(K1[0, 2] - K0[0, 2]) > 5 or abs(K1[0, 0] / K0[0, 0] - 1) > 0.05, (K0, K1)


def test_2_results_are_kept_and_import_from_the_file_menu(run):
    res, tmp = run["result"]["success"], run["tmp"]
    kept = tmp / "project" / "cupid_results" / "monkey"
    assert Path(res["bundle_path"]) == kept and res["bundle_prop"].startswith("//")  # relative to the .blend
    assert {"scene.json", "object_0.glb", "object_0.ply", "overlay.png", "input.png"} <= set(res["kept_files"])
    assert not [p for p in kept.parent.iterdir() if p.name.startswith(".incoming")]  # no download left behind
    folders = run["result"]["results_folder"]
    assert folders == {"saved": str(tmp / "project" / "cupid_results"), "preference": run["cfg"]["results_dir"]}
    menu = run["result"]["import_menu"]
    assert menu == [["operator", ["cupid.import_bundle"], {"text": "Import CUPID Result (scene.json)"}]]
    imported = run["result"]["imported"]
    assert imported["ret"] == ["FINISHED"]
    # named after the photo (the CLI bundle's folder), with the suffix a second "monkey" needs
    assert imported["collection"] == "CUPID monkey.001" and imported["camera"] == "monkey camera.001"
    assert imported["photo"] == "monkey photo.001"


def test_3_the_artists_render_size_stays(run):
    r = run["result"]
    assert r["resolution_kept"] == [1000, 500, 50]        # changed after the camera came: kept
    assert r["big"]["resolution"] == [6000, 4500, 50]     # a new CUPID camera: its photo, the artist's 50%
    assert r["resolution_switched"] == [480, 360, 50]     # back to the first camera: its photo
    assert r["resolution_after_edit"] == [800, 360, 50]


def test_4_a_big_tiff_goes_up_downscaled_and_comes_back_in_its_pixels(run):
    big, plain = run["result"]["big"], run["result"]["success"]
    assert big["ret"] == ["FINISHED"], big
    assert os.path.getsize(run["cfg"]["big_photo"]) > 64 * 1024 * 1024  # above the backend's upload limit
    job = big["job"]
    assert job["size"] == [6000, 4500] and max(job["upload_size"]) < 6000 and job["image_bytes"] < 32 * 2 ** 20
    assert job["upload_size"][0] * 3 == job["upload_size"][1] * 4   # the same aspect ratio
    assert big["camera"]["image"] == {"file": "photo_original.tif", "width": 6000, "height": 4500}
    assert "photo_original.tif" in big["kept_files"]
    # the same photo 12.5x larger: the same camera in 12.5x larger pixels (the tiny model's pose
    # comes from the object's crop, which a resampled photo reproduces to within a pixel or two)
    K_big, K = np.array(big["camera"]["K"]), np.array(plain["camera"]["K"])
    np.testing.assert_allclose(K_big[:2] / 12.5, K[:2], rtol=0.03, atol=3.0)
    np.testing.assert_allclose(big["camera"]["R"], plain["camera"]["R"], atol=0.05)


def test_5_exr_and_linear_float_images_are_sent_as_srgb(run):
    exr, lin = run["result"]["exr"], run["result"]["linear_datablock"]
    assert exr["ret"] == ["FINISHED"], exr
    assert lin["colorspace"] == "Linear Rec.709" and lin["is_float"] and "error" not in lin, lin
    sent = np.asarray(_png(lin["upload"]).convert("RGBA")).astype(int)
    photo = np.asarray(Image.open(PHOTO).convert("RGBA")).astype(int)
    assert np.abs(sent - photo).max() <= 2


def test_6_a_remote_gpu_box(run, remote):
    assert remote["tokens"][0] == remote["tokens"][1] and remote["kept_after_stop"]   # stable token
    assert remote["urls"][0] == remote["urls"][1]                                     # stable port and URL
    url = remote["urls"][1]
    assert url.endswith(f":{remote['port']}") and "0.0.0.0" not in url and "127.0.0.1" not in url
    assert "warning: over the network the token and the photos travel unencrypted" in remote["log"]
    assert "SSH tunnel" in remote["log"]
    assert run["result"]["remote"]["ret"] == ["FINISHED"], run["result"]["remote"]
    stop = run["result"]["remote_stop"]
    assert stop["ret"] == ["CANCELLED"] and "cannot stop a remote service" in stop["message"]
    assert any(text == f"Backend: remote {url}" for text in run["result"]["remote_panel"])


def test_7_the_panel_shows_the_model_and_device_and_warns_about_the_cpu(run, inputs):
    m = run["result"]["model"]
    dtype = dtype_name(resolve_dtype("auto", "cpu"))                   # what the backend chose on this machine
    assert m["tiny_config"] == str(inputs["model"])
    # switched back from the remote service: its report is not shown as the local backend's
    assert "Model: tiny test model (random weights) · Device: cpu" in run["result"]["local_again_panel"]
    assert run["result"]["local_again_start"]["ret"] == ["FINISHED"]     # Start Backend asks the local one
    assert f"Model: tiny test model (random weights) · Device: cpu ({dtype})" in m["tiny_panel"]
    assert not [t for t in m["tiny_panel"] if "Full-size model" in t]
    assert m["downloaded_config"] == "hbb1/Cupid"                      # downloaded: used, nothing changed
    assert f"Model: hbb1/Cupid · Device: cpu ({dtype})" in m["downloaded_panel"]
    assert "Model: full_model · Device: cuda (bfloat16)" in m["asked_panel"] and m["asked_config"] == "bfloat16"
    # changing a backend setting forgets what the running backend reported (the panel said it stale)
    assert m["forgotten"] == {"before": ["cpu", dtype], "after": ["", ""]}
    warning = [t for t in m["full_cpu_panel"] if t.startswith("Full-size model on the CPU")]
    assert warning and "about 37 min" in warning[0]   # precision not known yet: float32's time
    assert not [t for t in m["full_cuda_panel"] if "Full-size model" in t]


def test_8_seed_zero_is_a_seed(run):
    assert run["result"]["success"]["job"]["seed"] == 0        # chosen, although the default is 7
    assert run["result"]["masked"]["job"]["seed"] == 7         # -1: the preferences' default
    assert run["result"]["success"]["job"]["steps"] == 0 and run["result"]["masked"]["job"]["steps"] == 0


def test_10_names_of_a_rerun_agree(run):
    names = run["result"]["masked"]["names"]
    assert names["collection"] == "CUPID monkey.002" and names["camera"] == "monkey camera.002"
    assert names["photo"] == "monkey photo.002" and names["folder"] == "monkey.002"
    assert names["objects"] == ["monkey ground.002", "monkey object_0 gaussians.002", "monkey object_0.002",
                                "monkey sun.002"]   # the ground plane and sun of Composite over Photo


def test_10_every_control_has_a_tooltip_and_a_readme_line(run):
    r = run["result"]
    for group in ("tooltips", "pref_tooltips", "op_tooltips"):
        empty = [k for k, v in r[group].items() if not v.strip()]
        assert not empty, f"{group} without a tooltip: {empty}"
    artist = README.read_text().split("## In Blender", 1)[1].split("## From the command line", 1)[0]
    controls = ["Photo", "Photo file", "Mask", "Mask file", "Mode", "Seed", "Steps", "Reconstruct", "Cancel",
                "Set Active CUPID Camera", "Start Backend", "Stop Backend", "Backend Python", "URL", "Token",
                "Device", "Precision", "Model", "Weights cache", "Keep results beside the .blend file",
                "Results folder", "Import CUPID Result (scene.json)", "Pick Objects", "Clear Picks", "Show Cut-out",
                "Refine with This Camera", "Real Size", "Composite over Photo", "Photo on Texture", "Photo Texture"]
    missing = [c for c in controls if f"**{c}**" not in artist]
    assert not missing, f"README's artist section does not explain {missing}"
    assert set(r["panel_props"]) == {"image", "filepath", "mask", "mask_path", "mode", "seed", "steps", "real_size",
                                     "composite", "photo_texture"}


def test_10_stop_backend_says_stopped_and_input_errors_come_at_submit(run):
    stop = run["result"]["stop"]
    assert stop["ret"] == ["FINISHED"] and stop["message"] == "CUPID backend stopped"
    assert "Backend: stopped" in run["result"]["stopped_panel"]
    assert not [t for t in run["result"]["stopped_panel"] if "exit code" in t]
    empty = run["result"]["empty_mask"]
    assert empty["ret"] == ["ERROR"] and empty["job"] == {} and empty["seconds"] < 10
    assert "CUPID backend error (bad_input): the object mask is empty" in empty["message"]
    assert "CUPID backend error (bad_input)" in README.read_text()
    _unchanged(empty)


def test_11_gaussians_become_a_point_cloud(run):
    res = run["result"]["success"]
    clouds = [o for o in res["objects"] if o["type"] == "POINTCLOUD"]
    mesh = next(o for o in res["objects"] if o["type"] == "MESH" and o["name"] != "monkey ground")
    assert [c["name"] for c in clouds] == ["monkey object_0 gaussians"]
    pc = clouds[0]
    g = read_gaussians_ply(Path(res["bundle_path"]) / "object_0.ply")
    assert pc["points"] == len(g) > 0
    assert {k: pc["attributes"][k] for k in ("opacity", "scale", "rotation", "color", "radius")} == {
        "opacity": "FLOAT", "scale": "FLOAT_VECTOR", "rotation": "QUATERNION", "color": "FLOAT_COLOR",
        "radius": "FLOAT"}
    np.testing.assert_allclose(pc["opacity_mean"], [g.opacity.mean()], atol=1e-4)
    np.testing.assert_allclose(pc["scale_mean"], g.scaling.mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(pc["rotation_mean"], g.rotation.mean(axis=0), atol=1e-4)
    rgb = np.clip(0.5 + 0.28209479177387814 * g.features_dc[:, 0], 0, 1)
    np.testing.assert_allclose(pc["color_mean"][:3], rgb.mean(axis=0), atol=1e-4)
    assert pc["hide_render"] and pc["hidden"]
    assert mesh["name"] == "monkey object_0"
