"""Photo loading and preprocessing: the release's crop and network images exactly, odd image modes,
and clear errors for bad input."""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.bad_images import png_header_only

from cupid.background import BackgroundRemover
from cupid.errors import InputError
from cupid.preprocess import load_photo, preprocess
from cupid.tiny import write_tiny_remover

RELEASE = Path(__file__).resolve().parent / "fixtures" / "preprocess_release"
RELEASE_META = json.loads((RELEASE / "release.json").read_text())


def rgba_square(w=200, h=120, box=(50, 30, 90, 70), color=(200, 100, 50)) -> Image.Image:
    arr = np.zeros((h, w, 4), np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1, :3] = color
    arr[y0:y1, x0:x1, 3] = 255
    return Image.fromarray(arr, "RGBA")


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def test_crop_is_square_around_the_object_in_photo_pixels():
    p = preprocess(rgba_square())
    # pixels 50..89 x 30..69: the release's box is max - min = 39 wide around (69.5, 49.5), its side
    # int(39 * 1.2) = 46, its top-left the centre minus 46 // 2 (unrounded)
    assert p.crop.size == 46 and p.crop.offset == (46.5, 26.5)
    assert p.size == (200, 120)
    assert tuple(p.cond_image.shape) == (3, 518, 518) and tuple(p.visual_image.shape) == (3, 256, 256)
    img = p.cond_image.numpy()
    # the object fills pixels 4..43 of the 46-pixel crop; the margins are black background
    assert img[:, 259, 259] == pytest.approx(np.array([200, 100, 50]) / 255, abs=1e-3)
    assert np.abs(img[:, 5, 5]).max() < 1e-3 and np.abs(img[:, 259, 10]).max() < 1e-3


def test_mask_instead_of_alpha_and_premultiplication():
    rgb = Image.new("RGB", (64, 48), (255, 255, 255))
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:40] = 255
    p = preprocess(rgb, mask=Image.fromarray(mask))
    assert p.crop.size == 22 and p.alpha.sum() == 400
    assert np.abs(p.cond_image[:, 5, 5]).max() < 1e-2  # outside the mask: black (Lanczos ringing aside), not white


def test_no_alpha_and_no_mask_is_refused():
    with pytest.raises(InputError, match="no transparent background"):
        preprocess(Image.new("RGB", (64, 64), (10, 20, 30)))


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "I;16", "LA"])
def test_image_modes_load_as_rgba(mode):
    base = rgba_square().convert("RGB")
    if mode == "I;16":
        arr = (np.asarray(base.convert("L"), np.uint16) * 257)
        img = Image.fromarray(arr.astype("<u2"))
    else:
        img = base.convert(mode)
    rgba = load_photo(png_bytes(img) if mode != "CMYK" else _jpeg(img))
    assert rgba.shape == (120, 200, 4) and rgba.dtype == np.uint8
    grey = rgba[50, 70, :3].astype(int)
    assert grey.max() > 60  # the object's pixel is bright, not crushed to black by a 16-bit cast


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_exif_orientation_is_applied():
    img = rgba_square().convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    assert load_photo(buf.getvalue()).shape[:2] == (200, 120)


@pytest.mark.parametrize("data, message", [
    (b"this is a text file, not a picture\n", "not a readable image"),
    (png_bytes(rgba_square())[:200], "not a readable image"),
    (png_header_only(40000, 40000), "too large"),
    (png_header_only(9000, 9000), "too large: 9000x9000"),
    (png_bytes(Image.new("RGBA", (1, 1))), "at least"),
])
def test_bad_files_give_clear_errors(tmp_path, data, message):
    f = tmp_path / "photo.png"
    f.write_bytes(data)
    with pytest.raises(InputError, match=message):
        preprocess(f)


def test_object_of_one_or_two_pixels_is_refused():
    arr = np.zeros((32, 32, 4), np.uint8)
    arr[10, 10:12] = 255  # the release's side int((11 - 10) * 1.2) = 1 would crop nothing
    with pytest.raises(InputError, match="too small"):
        preprocess(Image.fromarray(arr, "RGBA"))
    arr[10, 10:13] = 255  # side int(2 * 1.2) = 2: a 2-pixel crop, upsampled
    assert preprocess(Image.fromarray(arr, "RGBA")).crop.size == 2


def test_empty_alpha_and_wrong_mask_size(tmp_path):
    empty = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    with pytest.raises(InputError, match="mask is empty"):
        preprocess(empty)
    with pytest.raises(InputError, match="same size"):
        preprocess(rgba_square(), mask=Image.new("L", (10, 10), 255))
    with pytest.raises(InputError, match="not found"):
        preprocess(tmp_path / "missing.png")


# ---------------------------------------------------------------- the release's preprocessing, exactly
def _release_photos():
    spec = importlib.util.spec_from_file_location("release_photos", RELEASE / "photos.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def release_cases():
    photos = _release_photos()
    return photos, photos.release_cases()


@pytest.fixture(scope="module")
def release_images():
    with np.load(RELEASE / "release.npz") as z:  # q = round(value * 65025), stored as row differences
        return {k: np.cumsum(z[k], axis=-1, dtype=np.uint16).astype(np.float64) / 65025 for k in z.files}


@pytest.fixture(scope="module")
def tiny_remover(tmp_path_factory):
    path = write_tiny_remover(tmp_path_factory.mktemp("remover") / "u2net_tiny.onnx")
    assert hashlib.md5(path.read_bytes()).hexdigest() == RELEASE_META["tiny_remover_md5"], \
        "the tiny remover changed since the fixture was made: rerun tests/fixtures/preprocess_release/make_fixture.py"
    return BackgroundRemover(path)


@pytest.mark.parametrize("name", sorted(RELEASE_META["cases"]))
def test_preprocessing_equals_the_release(name, release_cases, release_images, tiny_remover):
    """Images to 1e-4 and crop to 1e-4 px against the release's own ImageProcessor (fixture README).
    The release's crop is normalised by the longer side of the image it cropped (the cut-out, which the
    release downsizes to 1024 px); ours is in the ORIGINAL photo's pixels: release × photo's longer side."""
    photos, cases = release_cases
    case, ref = cases[name], RELEASE_META["cases"][name]
    assert photos.digest(case["photo"]) == ref["photo_sha256"] and photos.digest(case["mask"]) == ref["mask_sha256"], \
        "photos.py changed since the fixture was made: rerun make_fixture.py"
    p = preprocess(case["photo"], case["mask"], remover=tiny_remover if case["remover"] else None)
    longest = max(case["photo"].size)
    assert p.size == tuple(ref["photo_size"])
    assert abs(p.crop.size - ref["fov_scale"] * longest) < 1e-4
    assert abs(p.crop.offset[0] - ref["cx_offset"] * longest) < 1e-4
    assert abs(p.crop.offset[1] - ref["cy_offset"] * longest) < 1e-4
    for key, ours in (("cond", p.cond_image), ("visual", p.visual_image)):
        theirs = release_images[f"{name}.{key}"]
        assert ours.shape == theirs.shape
        assert np.abs(ours.numpy() - theirs).max() < 1e-4, key


def test_the_release_cases_cover_its_half_pixel_arithmetic():
    """The fixture holds the cases where the release's rounding matters: a box centre on a half pixel
    (PIL rounds the crop box, the release reports it unrounded), an odd side (PIL's crop is one pixel
    narrower than the side reported), a crop leaving the photo, a 518-px crop (PIL copies instead of
    resampling), and a photo downsized to 1024 px before the remover."""
    cases = RELEASE_META["cases"].values()
    pixels = [(c["fov_scale"] * max(c["cropped_from_size"]), c["cx_offset"] * max(c["cropped_from_size"]),
               c["cy_offset"] * max(c["cropped_from_size"])) for c in cases]
    assert any(abs(x % 1 - 0.5) < 1e-6 or abs(y % 1 - 0.5) < 1e-6 for _, x, y in pixels)
    assert any(round(side) % 2 == 1 for side, _, _ in pixels)
    assert any(x < 0 or y < 0 for _, x, y in pixels)
    assert any(round(side) == 518 for side, _, _ in pixels)
    assert any(c["remover"] and max(c["cropped_from_size"]) == 1024 < max(c["photo_size"]) for c in cases)
