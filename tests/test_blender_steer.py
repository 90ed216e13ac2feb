"""The add-on's pure rooms behind the preview-and-refine loop and picking (no Blender): the preview
JSON read and scaled, the fit score read from scene.json, the job fetching its preview once and
refining from a camera (against a small real HTTP server playing the service), and picks turned
into segment-anything prompts."""
from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from cupid_blender.client import CupidClient
from cupid_blender.io.bundle import read_bundle, restore_original_photo
from cupid_blender.io.job import JobRequest, Refine, ReconstructJob, Restore, superseded_jobs
from cupid_blender.io.picks import (Pick, PickProblem, colour_labels, cutout, label_colours, labels_from_pixels,
                                    overlay, pick_from_drag, prompts, view_to_photo)
from cupid_blender.io.preview import read_preview
from cupid_blender.io.segment import segment_request
from cupid_blender.io.upload import Picture, Upload
from helpers.net import QuietHandler

TOKEN = "tok"
PREVIEW = {"camera": {"K": [[200.0, 0, 64], [0, 200, 48], [0, 0, 1]], "R": np.eye(3).tolist(), "t": [0, 0, 2.5]},
           "width": 128, "height": 96, "res": 4, "voxels": [[0, 0, 0], [3, 2, 1], [1, 1, 1]]}


# ------------------------------------------------------------------ the preview JSON

def test_preview_is_read_and_its_voxel_centres_follow_the_grid():
    p = read_preview(PREVIEW)
    assert (p.width, p.height, p.res) == (128, 96, 4) and p.voxels.shape == (3, 3)
    np.testing.assert_allclose(p.centres(), [[-0.375] * 3, [0.375, 0.125, -0.125], [-0.125] * 3])
    big = p.in_pixels_of(512, 384)
    np.testing.assert_allclose(big.K, [[800, 0, 256], [0, 800, 192], [0, 0, 1]])
    assert (big.width, big.height) == (512, 384) and p.in_pixels_of(128, 96) is p


@pytest.mark.parametrize("change,words", [
    (lambda d: d.pop("voxels"), "lacks"),
    (lambda d: d["camera"].update(K=[[1, 2], [3, 4]]), "K"),
    (lambda d: d["camera"].update(t=[0, float("nan"), 1]), "NaN"),
    (lambda d: d.update(voxels=[[0, 0, 4]]), "outside"),
    (lambda d: d.update(voxels=[[0, 0]]), "triples"),
    (lambda d: d.update(width=0), "empty"),
])
def test_a_bad_preview_is_one_clear_line(change, words):
    data = json.loads(json.dumps(PREVIEW))
    change(data)
    with pytest.raises(ValueError, match=words):
        read_preview(data)


def test_restore_scales_preview_json_with_scene_json(tmp_path):
    scene = {"schema": "cupid.scene/1", "image": {"file": "input.png", "width": 128, "height": 96},
             "camera": {"convention": "opencv", **PREVIEW["camera"]}, "objects": []}
    (tmp_path / "scene.json").write_text(json.dumps(scene))
    (tmp_path / "preview.json").write_text(json.dumps(PREVIEW))
    restore_original_photo(tmp_path, 512, 384, b"PNG", "photo_original.png")
    preview = read_preview(json.loads((tmp_path / "preview.json").read_text()))
    assert (preview.width, preview.height) == (512, 384)
    np.testing.assert_allclose(preview.K, json.loads((tmp_path / "scene.json").read_text())["camera"]["K"])
    np.testing.assert_allclose(preview.K[0], [800, 0, 256])


def _bundle(root: Path, fits: list) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "input.png").write_bytes(b"png")
    objects = []
    for k, fit in enumerate(fits):
        np.savez(root / f"object_{k}.npz", vertices=np.eye(3, dtype=np.float32), faces=np.array([[0, 1, 2]], np.int32))
        entry = {"name": f"object_{k}", "mesh": f"object_{k}.npz", "matrix_world": np.eye(4).tolist()}
        if fit is not None:
            entry["fit"] = fit
        objects.append(entry)
    scene = {"schema": "cupid.scene/1", "image": {"file": "input.png", "width": 128, "height": 96},
             "camera": {"convention": "opencv", **PREVIEW["camera"]}, "objects": objects}
    (root / "scene.json").write_text(json.dumps(scene))
    return root


def test_the_fit_score_is_read_per_object(tmp_path):
    data = read_bundle(_bundle(tmp_path / "b", [{"iou": 0.8125}, None, {"iou": "high"}, {"iou": 1.5}]))
    assert [o.fit_iou for o in data.objects] == [0.8125, None, None, None]


# ------------------------------------------------------------------ the job against a service stand-in

class Service(QuietHandler):
    """Plays `cupid serve` for one job: running, then stage 1 done (preview), then done."""

    script: dict = {}
    log: list = []

    def do_GET(self) -> None:
        Service.log.append(("GET", self.path))
        if self.path == "/v1/health":
            self._send(200, b'{"device": "cpu", "dtype": "bfloat16"}')
        elif self.path.endswith("/preview"):
            status, body = self.script["preview"]
            self._send(status, json.dumps(body).encode())
        elif self.path.endswith("/result"):
            self._send(200, self.script["zip"], "application/zip")
        else:
            polls = sum(1 for entry in Service.log if entry[:2] == ("GET", self.path))
            states = self.script["states"]
            self._send(200, json.dumps(states[min(polls, len(states)) - 1]).encode())

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Service.log.append(("POST", self.path, body))
        self._send(202, b'{"id": "j1"}')

    def do_DELETE(self) -> None:
        Service.log.append(("DELETE", self.path))
        self._send(200, b'{"id": "j1", "state": "done"}')


@pytest.fixture()
def service(tmp_path):
    Service.log = []
    bundle = _bundle(tmp_path / "served", [{"iou": 0.5}])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in bundle.iterdir():
            z.write(p, p.name)
    running = {"state": "running", "stage": "structure", "progress": 0.3}
    Service.script = {"zip": buf.getvalue(), "preview": (200, PREVIEW),
                      "states": [running, {**running, "preview": True}, {**running, "stage": "latent",
                                                                          "preview": True},
                                 {"state": "done", "stage": "done", "progress": 1.0, "preview": True}]}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Service)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _run(url: str, request: JobRequest) -> tuple[ReconstructJob, list, object]:
    """Run the job on this thread (its worker's body), then drain it as the UI thread does."""
    job = ReconstructJob(lambda should_cancel: CupidClient(url, TOKEN), request)
    job.run()
    _, outcome = job.poll()
    return job, [job.take_preview(), job.take_preview()], outcome


def test_the_job_fetches_the_preview_once_in_the_photos_pixels(service, tmp_path):
    """A 512x384 photo went up as a 128x96 copy: the preview's camera comes back in the photo's pixels,
    with the full-size photo beside it for the camera's background."""
    up = Upload(b"small copy", "monkey.png", None, 512, 384, 128, 96, b"ORIGINAL", "photo_original.png")
    job, previews, outcome = _run(service, JobRequest(up, "object", 0, 0, tmp_path / "results"))
    assert outcome.state == "done", outcome
    progress, _ = job.poll()
    assert (progress.device, progress.dtype) == ("cpu", "bfloat16")   # what the panel's line shows
    assert sum(1 for entry in Service.log if entry[1].endswith("/preview")) == 1
    first, second = previews
    assert second is None and first is not None
    np.testing.assert_allclose(first.preview.K[0], [800, 0, 256])
    assert (first.preview.width, first.preview.height) == (512, 384)
    assert first.photo.read_bytes() == b"ORIGINAL" and first.photo.parent == job.workdir
    scene = json.loads((outcome.bundle / "scene.json").read_text())
    assert scene["image"]["width"] == 512 and outcome.bundle.is_relative_to(job.workdir)
    job.cleanup()
    assert not first.photo.exists()


def test_a_done_that_races_a_cancel_is_never_imported_and_is_deleted(service, tmp_path):
    """The artist cancels as the job finishes on the backend: the `done` is discarded (nothing is
    downloaded or imported) and the backend is told to delete the job."""
    up = Upload(b"photo", "monkey.png", None, 128, 96, 128, 96)
    job = ReconstructJob(lambda should_cancel: CupidClient(service, TOKEN), JobRequest(up, "object", 0, 0,
                                                                                        tmp_path / "results"))
    seen = job._on_status

    def cancel_at_done(st: dict) -> None:   # Cancel pressed as the last poll answered `done`
        if st["state"] == "done":
            job.cancel()
        seen(st)

    job._on_status = cancel_at_done
    job.run()
    _, outcome = job.poll()
    assert outcome.state == "cancelled" and outcome.bundle is None
    assert ("DELETE", "/v1/jobs/j1") in Service.log and not any(e[1].endswith("/result") for e in Service.log)
    job.cleanup()


def test_a_cancel_after_the_download_is_not_imported_either(service, tmp_path):
    """The worker already queued `done` when Cancel was pressed: the UI takes `cancelled`, the
    downloaded files go with the clean-up, and the backend deletes the job."""
    up = Upload(b"photo", "monkey.png", None, 128, 96, 128, 96)
    job = ReconstructJob(lambda should_cancel: CupidClient(service, TOKEN), JobRequest(up, "object", 0, 0,
                                                                                        tmp_path / "results"))
    job.run()
    job.cancel()
    _, outcome = job.poll()
    assert outcome.state == "cancelled"
    deadline = time.monotonic() + 10
    while ("DELETE", "/v1/jobs/j1") not in Service.log:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    job.cleanup()
    assert not job.workdir.exists()


def test_a_missing_preview_does_not_stop_the_job(service, tmp_path):
    Service.script["preview"] = (404, {"error": {"code": "not_found", "message": "no preview"}})
    up = Upload(b"photo", "monkey.png", None, 128, 96, 128, 96)
    job, previews, outcome = _run(service, JobRequest(up, "object", 0, 0, tmp_path / "results"))
    assert outcome.state == "done" and previews == [None, None]
    job.cleanup()


def test_a_refine_posts_the_camera_and_restores_the_photo(service, tmp_path):
    camera = {"K": np.array(PREVIEW["camera"]["K"]), "R": np.eye(3), "t": [0.1, 0, 2.5]}
    refine = Refine("j0", camera, Restore(512, 384, b"ORIGINAL", "photo_original.png"))
    job, previews, outcome = _run(service, JobRequest(None, "object", 0, 5, tmp_path / "results", refine))
    assert outcome.state == "done", outcome
    posts = [entry for entry in Service.log if entry[0] == "POST"]
    assert len(posts) == 1 and b'name="from_job"\r\n\r\nj0' in posts[0][2] and b'name="image"' not in posts[0][2]
    sent = posts[0][2].split(b'name="camera"\r\n\r\n')[1].split(b"\r\n")[0]
    assert json.loads(sent)["t"] == [0.1, 0.0, 2.5]
    assert not [entry for entry in Service.log if entry[1].endswith("/preview")]   # its camera is the artist's
    assert previews == [None, None]
    scene = json.loads((outcome.bundle / "scene.json").read_text())
    assert scene["image"] == {"file": "photo_original.png", "width": 512, "height": 384}
    job.cleanup()


def _deletes(wait: float = 2.0) -> list[str]:
    """The paths DELETEd so far (a release runs on its own thread: give it a moment)."""
    import time

    end = time.monotonic() + wait
    while True:
        found = [entry[1] for entry in Service.log if entry[0] == "DELETE"]
        if found or time.monotonic() > end:
            return found
        time.sleep(0.02)


def test_a_scene_job_is_freed_once_fetched_and_an_object_job_kept_for_refines(service, tmp_path):
    up = Upload(b"photo", "room.png", None, 128, 96, 128, 96)
    job, _, outcome = _run(service, JobRequest(up, "object", 0, 0, tmp_path / "results"))
    assert outcome.state == "done" and _deletes(0.3) == []   # its stage 1 is what a refine starts from
    job.cleanup()
    job, _, outcome = _run(service, JobRequest(up, "scene", 0, 0, tmp_path / "results"))
    assert outcome.state == "done" and _deletes() == ["/v1/jobs/j1"]   # a scene has nothing to refine from
    job.cleanup()


def test_a_built_refine_frees_its_source_unless_another_result_names_it(service, tmp_path):
    camera = {"K": np.array(PREVIEW["camera"]["K"]), "R": np.eye(3), "t": [0.1, 0, 2.5]}
    request = JobRequest(None, "object", 0, 5, tmp_path / "results", Refine("j0", camera))
    assert superseded_jobs(request, ["j1", "j0"]) == [] and superseded_jobs(request, ["j1"]) == ["j0"]
    assert superseded_jobs(JobRequest(None, "object", 0, 5, tmp_path), ["j1"]) == []   # not a refine
    job, _, outcome = _run(service, request)
    assert outcome.state == "done" and _deletes(0.3) == []   # fetched: the refine's own job stays for refines
    job.release(superseded_jobs(request, ["j1"]))            # what the operator does once the result is built
    assert _deletes() == ["/v1/jobs/j0"]
    job.cleanup()


# ------------------------------------------------------------------ picks -> prompts

def test_image_editor_positions_become_photo_pixels():
    assert view_to_photo(0.0, 1.0, 480, 360) == (0.0, 0.0)              # the view's top-left corner
    assert view_to_photo(0.5, 0.25, 480, 360) == (240.0, 270.0)          # v up, y down
    assert view_to_photo(1.0, 0.0, 480, 360) == (480.0, 360.0)


def test_a_click_is_a_point_and_a_drag_a_box():
    assert pick_from_drag((100, 100), (102, 103), (160.2, 175.7), (163.0, 171.0), 480, 360) == \
        Pick("POINT", 160.2, 175.7)                                       # 3.6 screen px: a click, where pressed
    box = pick_from_drag((100, 100), (200, 40), (388, 112), (292, 208), 480, 360)
    assert box == Pick("BOX", 292, 112, 388, 208)                         # any drag direction: x0 < x1, y0 < y1
    assert pick_from_drag((0, 0), (50, 50), (-40, -30), (20, 25), 480, 360) == Pick("BOX", 0, 0, 20, 25)  # clipped
    assert pick_from_drag((0, 0), (1, 1), (-5, 10), (-5, 10), 480, 360) is None   # a click beside the photo
    assert pick_from_drag((0, 0), (50, 0), (-60, 10), (-10, 80), 480, 360) is None  # a box beside the photo


def test_picks_become_the_services_prompts_in_the_uploads_pixels():
    picks = [Pick("POINT", 160, 175), Pick("BOX", 292, 112, 388, 208), Pick("POINT", 245, 255)]
    assert prompts(picks, 480, 360) == {"points": [[160, 175], [245, 255]], "boxes": [[292, 112, 388, 208]]}
    half = prompts(picks, 480, 360, (0.5, 0.5))
    assert half == {"points": [[80, 87.5], [122.5, 127.5]], "boxes": [[146, 56, 194, 104]]}


@pytest.mark.parametrize("picks,words", [
    ([], "no objects picked"),
    ([Pick("POINT", 500, 10)], "outside the 480x360 photo"),
    ([Pick("BOX", 10, 10, 10, 50)], "empty or outside"),
])
def test_empty_or_outside_picks_are_refused_before_sending(picks, words):
    with pytest.raises(PickProblem, match=words):
        prompts(picks, 480, 360)


def test_an_empty_pick_list_sends_nothing(tmp_path):
    px = np.ones((36, 48, 4), np.float32)
    with pytest.raises(PickProblem, match="no objects picked"):
        segment_request(Picture("scene.png", "scene", "scene.png", px, b"file"), [], "scene")
    req = segment_request(Picture("scene.png", "scene", "scene.png", px, b"file"), [], "object")
    assert req.prompts is None and req.upload.image == b"file" and req.mode == "object"


def test_a_huge_photos_picks_scale_with_its_upload():
    px = np.ones((3200, 4800, 4), np.float32)   # 15 MP: goes up at about 12 MP
    req = segment_request(Picture("big.png", "big", "big.png", px, b"file"), [Pick("POINT", 4800, 1600)], "scene")
    up = req.upload
    assert up.downscaled and req.prompts["points"] == [[up.upload_width, 1600 * up.upload_height / 3200]]


def test_labels_coloured_overlaid_and_cut_out():
    labels = np.zeros((4, 6), np.uint8)
    labels[0, :2], labels[1:3, 3:], labels[3, 0] = 1, 2, 7
    rgb = colour_labels(labels)
    assert (rgb[labels == 0] == 0).all()
    colours = {tuple(rgb[labels == v][0]) for v in (1, 2, 7)}
    assert len(colours) == 3 and all(max(c) > 0 and len(set(c)) > 1 for c in colours)   # distinct, not grey
    for v in (1, 2, 7):
        assert (rgb[labels == v] == rgb[labels == v][0]).all()
    assert len({tuple(c) for c in label_colours(60)}) == 60 and label_colours(60).max(axis=1).min() > 0
    photo = np.full((4, 6, 4), 0.2, np.float32)
    shown = overlay(photo, labels)
    np.testing.assert_allclose(shown[labels == 0, :3], 0.2)
    assert np.abs(shown[labels > 0, :3] - 0.2).max() > 0.1 and (shown[..., 3] == 1).all()
    cut = cutout(photo, labels)
    assert (cut[..., 3] == (labels > 0)).all() and (cut[..., :3] == 0.2).all()
    grey = np.repeat((labels.astype(np.float32) / 255.0)[..., None], 4, axis=2)
    assert (labels_from_pixels(grey) == labels).all()
