"""What a careful artist found (issue #24), the add-on's pure rooms on their own (no Blender): phone
photos' EXIF orientation, result names of an image loaded twice, when the CPU-time warning shows, and the
first stage a job shows when the backend is already up. The Blender side is in test_blender_artist_e2e.py."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from cupid_blender.io.job import JobRequest, ReconstructJob, Refine
from cupid_blender.io.orientation import exif_orientation, upright
from cupid_blender.io.settings import full_size_model, runs_on_cpu
from cupid_blender.io.upload import BAD_INPUT, InputProblem, Picture, picture_stem, prepare_upload


def _oriented(fmt: str, orientation: int, size=(5, 3)) -> tuple[bytes, np.ndarray]:
    """(file bytes with EXIF Orientation, its stored pixels) of a photo with distinct pixels."""
    w, h = size
    px = np.arange(w * h * 3, dtype=np.uint8).reshape(h, w, 3)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, fmt, exif=exif, **({"quality": 100} if fmt == "JPEG" else {}))
    return buf.getvalue(), px


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_turns_the_pixels_as_pil_does(fmt, orientation):
    data, px = _oriented(fmt, orientation)
    assert exif_orientation(data) == orientation
    stored = np.asarray(Image.open(io.BytesIO(data)))   # what Blender's loader gives: EXIF ignored
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    np.testing.assert_array_equal(upright(stored, orientation), want)


def test_no_exif_or_another_format_is_upright():
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "JPEG")
    assert exif_orientation(buf.getvalue()) == 1 and exif_orientation(b"BM....") == 1 and exif_orientation(None) == 1


def _picture(w: int, h: int, orientation: int = 1) -> Picture:
    return Picture("phone.jpg", "phone", "phone.jpg", np.ones((h, w, 4), np.float32), None, orientation)


def test_a_mask_of_the_sideways_size_is_refused_with_the_upright_size_named():
    """A phone photo stored 500x741 with Orientation 6 is 741x500 upright: a mask painted on the photo as
    Blender shows it (500x741) is refused, and the report names the upright size and what to do."""
    photo = _picture(741, 500, orientation=6)            # upright pixels (the add-on turned them)
    sideways = Picture("m.png", "m", "m.png", np.ones((741, 500, 4), np.float32))
    with pytest.raises(InputProblem) as info:
        prepare_upload(photo, sideways, "object")
    msg = str(info.value)
    assert msg.startswith(BAD_INPUT) and "500x741 but the photo is 741x500 upright" in msg and "EXIF" in msg
    upright_mask = Picture("m.png", "m", "m.png", np.ones((500, 741, 4), np.float32))
    up = prepare_upload(photo, upright_mask, "object")
    assert (up.width, up.height) == (741, 500) and up.mask is not None


@pytest.mark.parametrize("name,stem", [("astronaut.jpg", "astronaut"), ("astronaut.jpg.001", "astronaut"),
                                       ("astronaut.001", "astronaut"), ("astronaut", "astronaut"),
                                       ("my photo.PNG.012", "my photo"), (".001", ".001")])
def test_the_same_image_loaded_twice_names_its_result_after_the_photo(name, stem):
    assert picture_stem(name) == stem


def test_no_cpu_time_warning_for_a_model_path_that_does_not_exist(tmp_path, tiny_model):
    assert not full_size_model(str(tmp_path / "no" / "such" / "model"))
    assert not full_size_model("./weights/absent") and not full_size_model("")
    assert not full_size_model(str(tiny_model))                       # the tiny model is quick anywhere
    assert full_size_model("hbb1/Cupid")                               # the official weights (downloaded on use)
    real = tmp_path / "real"
    real.mkdir()
    (real / "pipeline.json").write_text('{"args": {}}')
    assert full_size_model(str(real))


def test_auto_on_a_cpu_only_machine_warns_before_the_backend_answered():
    cpu_record = {"device": "cpu", "torch": {"kind": "cpu"}}
    assert runs_on_cpu("auto", "", cpu_record)                          # what the set-up's health check saw
    assert runs_on_cpu("auto", "", {"torch": {"kind": "cpu"}})           # a CPU build runs on the CPU only
    assert not runs_on_cpu("auto", "", {"device": "cuda", "torch": {"kind": "cuda"}})
    assert runs_on_cpu("auto", "", None, gpu_seen=False)               # no record: no GPU driver on this machine
    assert not runs_on_cpu("auto", "", None, gpu_seen=True)
    assert not runs_on_cpu("auto", "cuda", cpu_record)                 # what the backend answered wins
    assert runs_on_cpu("auto", "cpu", None) and runs_on_cpu("cpu", "", None) and not runs_on_cpu("cuda", "", None)


def test_the_first_stage_shown_is_the_upload_when_the_backend_is_up(tmp_path):
    never = lambda should_cancel: None   # noqa: E731  (the job is not run here)
    upload = JobRequest(None, "object", 0, 1, tmp_path)
    refine = JobRequest(None, "object", 0, 1, tmp_path, Refine("j", {}))
    assert ReconstructJob(never, upload).poll()[0].stage == "starting backend"
    assert ReconstructJob(never, upload, backend_up=True).poll()[0].stage == "uploading"
    assert ReconstructJob(never, refine, backend_up=True).poll()[0].stage == "refining"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_picks_on_the_photo_blender_shows_land_on_the_same_pixels_upright(orientation):
    """Picks are made on the stored pixels (Blender shows a phone photo sideways); the photo sent is upright:
    each pick is turned with it, onto the very pixel it was made on, and a box stays that box."""
    from cupid_blender.io.orientation import stored_size, upright_xy
    from cupid_blender.io.picks import Pick, upright_picks

    W, H = 7, 4
    stored = np.arange(W * H).reshape(H, W)
    up = upright(stored, orientation)
    assert stored_size(up.shape[1], up.shape[0], orientation) == (W, H)
    for y in range(H):
        for x in range(W):
            ux, uy = upright_xy(x + 0.5, y + 0.5, W, H, orientation)
            assert up[int(uy), int(ux)] == stored[y, x]
    box, = upright_picks([Pick("BOX", 1.0, 1.0, 3.0, 2.0)], W, H, orientation)
    inside = up[int(box.y0):int(box.y1), int(box.x0):int(box.x1)]
    assert sorted(inside.ravel()) == sorted(stored[1:2, 1:3].ravel())


def test_a_truncated_or_odd_exif_block_reads_as_upright():
    data, _ = _oriented("JPEG", 6)
    assert exif_orientation(data[:40]) == 1                          # cut inside the EXIF block
    assert exif_orientation(b"\xff\xd8\xff\xff" + data[2:]) == 6     # a fill byte before the first marker
