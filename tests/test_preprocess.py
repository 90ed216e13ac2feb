"""Photo loading and preprocessing: crop transform, odd image modes, and clear errors for bad input."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from helpers.bad_images import png_header_only

from cupid.errors import InputError
from cupid.preprocess import load_photo, preprocess


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
    # the release's crop: pixels 50..89 x 30..69, side int(1.2 * 39) = 46, centre (69.5, 49.5), corner
    # round(46.5) = 46, round(26.5) = 26 (PIL rounds a crop box half to even)
    assert p.crop.size == 46 and p.crop.offset == (46.0, 26.0)
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


def test_empty_alpha_and_wrong_mask_size(tmp_path):
    empty = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    with pytest.raises(InputError, match="mask is empty"):
        preprocess(empty)
    with pytest.raises(InputError, match="same size"):
        preprocess(rgba_square(), mask=Image.new("L", (10, 10), 255))
    with pytest.raises(InputError, match="not found"):
        preprocess(tmp_path / "missing.png")
