"""The service's see-it-early, steer-it loop and object picking: the stage-1 preview, refines from a
job's kept stage 1 with a given camera, picks as scene prompts, and POST /v1/segment."""
from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_server import PHOTO, Server

from cupid_blender.client import BackendError
from helpers.bundles import object_frame_camera

SCENE = (Path(__file__).resolve().parents[1] / "examples" / "scene.png").read_bytes()


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    s = Server(tiny_model, tmp_path_factory.mktemp("steer"))
    yield s
    s.stop()


def _form(fields: dict, files: dict | None = None) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (fname, data) in (files or {}).items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{fname}"\r\n'
                  f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def _post(server, path: str, fields: dict, files: dict | None = None) -> dict:
    body, ctype = _form(fields, files)
    return server.client._json("POST", path, body, ctype)


def _scene_camera(bundle_zip_dir) -> dict:
    """The result's camera in the object's own frame (what previews show and refines take)."""
    return object_frame_camera(json.loads((bundle_zip_dir / "scene.json").read_text()))


def test_preview_then_refine_with_a_moved_camera(server, tmp_path):
    c = server.client
    job = c.submit(PHOTO, "monkey.png", seed=3, steps=2)
    done = c.wait(job, poll=0.05, timeout=300)
    assert done["state"] == "done" and done["preview"] is True
    preview = c._json("GET", f"/v1/jobs/{job}/preview")
    assert (preview["width"], preview["height"]) == (480, 360) and preview["res"] > 0 and preview["voxels"]
    first = c.result(job, tmp_path / "first", free=False)
    cam = _scene_camera(first)
    for key in ("K", "R", "t"):                                        # the preview is the final camera
        np.testing.assert_allclose(preview["camera"][key], cam[key], rtol=0, atol=1e-12)

    K = np.array(cam["K"])
    K[:2, :2] *= 1.08                  # the artist re-lensed the camera
    moved = {"K": K.tolist(), "R": cam["R"], "t": (np.array(cam["t"]) + [0.02, 0, 0]).tolist()}
    refine = _post(server, "/v1/jobs", {"from_job": job, "camera": json.dumps(moved), "steps": "2"})
    st = c.wait(refine["id"], poll=0.05, timeout=300)
    assert st["state"] == "done", st
    # a refine is itself refinable, and its preview is the camera it was given
    again = c._json("GET", f"/v1/jobs/{refine['id']}/preview")["camera"]
    got = _scene_camera(c.result(refine["id"], tmp_path / "refined"))
    np.testing.assert_allclose(got["K"], moved["K"], rtol=1e-12)
    np.testing.assert_allclose(got["t"], moved["t"], rtol=1e-9, atol=1e-12)
    assert again["K"] == got["K"]


def test_real_size_field(server):
    """`real_size` is object mode's; asked for without a metric point-map model the job says what is missing."""
    image = {"image": ("scene.png", SCENE)}
    with pytest.raises(BackendError) as info:
        _post(server, "/v1/jobs", {"mode": "scene", "real_size": "true"}, image)
    assert info.value.status == 422 and "object mode" in info.value.message
    with pytest.raises(BackendError) as info:
        _post(server, "/v1/jobs", {"mode": "object", "real_size": "maybe"}, image)
    assert info.value.status == 422
    job = _post(server, "/v1/jobs", {"mode": "object", "real_size": "true", "steps": "1"}, image)["id"]
    st = server.client.wait(job, poll=0.05, timeout=300)
    assert st["state"] == "failed" and "metric point-map model" in st["error"]["message"], st


def test_refine_refusals(server):
    c = server.client
    with pytest.raises(BackendError) as info:
        _post(server, "/v1/jobs", {"from_job": "0123456789abcdef", "camera": json.dumps({"K": [], "R": [], "t": []})})
    assert info.value.status == 404 and "run the reconstruction again" in info.value.message
    job = c.submit(PHOTO, "monkey.png", steps=1)
    assert c.wait(job, poll=0.05, timeout=300)["state"] == "done"
    cam = c._json("GET", f"/v1/jobs/{job}/preview")["camera"]
    bad = [({**cam, "R": (2 * np.eye(3)).tolist()}, "not a rotation"),
           ({**cam, "K": [[1, 0, 0], [1, 0, 0], [0, 0, 1]]}, "singular"),
           ({**cam, "t": (np.array(cam["t"]) * [1, 1, -1]).tolist()}, "sees none of the object's voxels"),
           ({**cam, "K": {}}, "camera K must be a 3x3 matrix"),   # was a TypeError (500)
           ({**cam, "R": [[1, 0, 0]]}, "camera R must be a 3x3 matrix"),
           ("[" * 30_000 + "]" * 30_000, "nests JSON deeper"),           # was a RecursionError (500)
           ("not json", "not JSON")]
    for camera, why in bad:
        with pytest.raises(BackendError) as info:
            _post(server, "/v1/jobs", {"from_job": job, "camera": camera if isinstance(camera, str)
                                       else json.dumps(camera)})
        assert info.value.status == 422 and info.value.code == "bad_input" and why in info.value.message
        assert "'camera'" in info.value.message
    with pytest.raises(BackendError) as info:   # a refine brings no photo
        _post(server, "/v1/jobs", {"from_job": job, "camera": json.dumps(cam)}, {"image": ("a.png", PHOTO)})
    assert info.value.status == 422
    c.cancel(job)   # a DELETE frees the result, and with it the kept stage 1
    with pytest.raises(BackendError) as info:
        _post(server, "/v1/jobs", {"from_job": job, "camera": json.dumps(cam)})
    assert info.value.status == 404


def _labels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def test_segment_picks_and_object_cut_out(server):
    c = server.client
    picks = {"points": [[160, 175], [245, 255]], "boxes": [[292, 112, 388, 208]]}   # cube, cone; sphere
    body, ctype = _form({"prompts": json.dumps(picks)}, {"image": ("scene.png", SCENE)})
    lab = _labels(c._request("POST", "/v1/segment", body, ctype)[0])
    assert lab.shape == (384, 512)
    assert lab[175, 160] == 1 and lab[255, 245] == 2 and lab[160, 340] == 3 and lab[20, 20] == 0
    # object mode: what the background remover keeps of an opaque photo (the tiny one keeps its centre)
    opaque = io.BytesIO()
    Image.open(io.BytesIO(PHOTO)).convert("RGB").save(opaque, format="JPEG")
    body, ctype = _form({"mode": "object"}, {"image": ("monkey.jpg", opaque.getvalue())})
    cut = _labels(c._request("POST", "/v1/segment", body, ctype)[0])
    assert cut.shape == (360, 480) and set(np.unique(cut)) == {0, 1} and cut[180, 240] == 1
    for fields, why in (({"prompts": json.dumps({"points": [[9999, 1]]})}, "outside the 512x384 photo"),
                        ({"prompts": json.dumps({"points": []})}, "no object picked"),
                        ({"prompts": "{", "mode": "scene"}, "JSON")):
        body, ctype = _form(fields, {"image": ("scene.png", SCENE)})
        with pytest.raises(BackendError) as info:
            c._request("POST", "/v1/segment", body, ctype)
        assert info.value.status == 422 and why in info.value.message, info.value.message


def test_scene_job_from_picks(server, tmp_path):
    c = server.client
    picks = {"points": [[160, 175], [245, 255]], "boxes": []}
    job = _post(server, "/v1/jobs", {"mode": "scene", "steps": "1", "prompts": json.dumps(picks)},
                {"image": ("scene.png", SCENE)})
    st = c.wait(job["id"], poll=0.05, timeout=300)
    assert st["state"] == "done" and st["preview"] is False, st
    out = c.result(job["id"], tmp_path / "s")
    assert [o["name"] for o in json.loads((out / "scene.json").read_text())["objects"]] == ["object_0", "object_1"]
    with pytest.raises(BackendError) as info:   # picks are for scene mode
        _post(server, "/v1/jobs", {"prompts": json.dumps(picks)}, {"image": ("scene.png", SCENE)})
    assert info.value.status == 422
