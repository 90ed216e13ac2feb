"""EXR, Radiance HDR and float TIFF photos: read by the backend and shown as sRGB, as the add-on sends them."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
cv2 = pytest.importorskip("cv2")

from cupid.errors import InputError  # noqa: E402
from cupid.linear_images import linear_to_srgb, read_linear_image  # noqa: E402
from cupid.preprocess import load_photo  # noqa: E402


def _linear(h: int = 24, w: int = 32) -> np.ndarray:
    """Linear RGB in [0, 1.5] (above 1: a highlight, clipped as Blender's display clips it)."""
    rng = np.random.default_rng(7)
    return rng.uniform(0.0, 1.5, (h, w, 3)).astype(np.float32)


def _expected(rgb: np.ndarray) -> np.ndarray:
    return np.round(linear_to_srgb(rgb) * 255.0)


def test_the_srgb_curve_is_the_add_ons():
    from cupid_blender.io.imaging import linear_to_srgb as addon_curve

    x = np.linspace(-0.5, 2.0, 2001, dtype=np.float32)
    np.testing.assert_array_equal(linear_to_srgb(x), addon_curve(x))


@pytest.mark.parametrize("name, params", [
    ("photo.exr", []),                                      # float samples
    ("photo.hdr", []),                                      # RGBE: 8-bit mantissas, one shared exponent
    ("photo.tif", [cv2.IMWRITE_TIFF_COMPRESSION, 1]),       # uncompressed float32 samples
    ("logluv.tif", []),                                     # OpenCV's default for float: SGI LogLuv
])
def test_linear_photos_read_as_srgb(tmp_path, name, params):
    """Each pixel is the sRGB curve of the file's linear value (clipped to 1), rounded to 8 bits."""
    rgb = _linear()
    path = tmp_path / name
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]), params)
    stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1]   # the file's values, after its codec
    photo = load_photo(path)
    assert photo.shape == (24, 32, 4) and photo.dtype == np.uint8 and (photo[..., 3] == 255).all()
    assert np.abs(photo[..., :3].astype(float) - _expected(stored)).max() <= 0.5, name
    if name == "photo.exr":
        assert np.abs(photo[..., :3].astype(float) - _expected(rgb)).max() <= 0.5


def test_alpha_and_grey_float_files(tmp_path):
    rgb = _linear()
    alpha = np.zeros(rgb.shape[:2], np.float32)
    alpha[4:20, 6:26] = 1.0
    path = tmp_path / "cutout.exr"
    assert cv2.imwrite(str(path), np.dstack([rgb[..., ::-1], alpha]))
    photo = load_photo(path)
    np.testing.assert_array_equal(photo[..., 3], np.where(alpha > 0, 255, 0))
    grey = tmp_path / "grey.tif"   # Pillow's one-channel float TIFF: sRGB too, not the raw values
    Image.fromarray(rgb[..., 0].clip(0, 1), "F").save(grey)
    photo = load_photo(grey)
    assert np.abs(photo[..., 0].astype(float) - _expected(rgb[..., 0])).max() <= 0.6
    assert (photo[..., 0] == photo[..., 2]).all()


def test_an_ordinary_tiff_is_left_to_pillow_and_a_broken_exr_is_one_line(tmp_path):
    Image.new("RGB", (20, 20), (10, 200, 30)).save(tmp_path / "plain.tif")
    assert read_linear_image((tmp_path / "plain.tif").read_bytes()) is None
    assert tuple(load_photo(tmp_path / "plain.tif")[0, 0]) == (10, 200, 30, 255)
    good = tmp_path / "good.exr"
    cv2.imwrite(str(good), _linear())
    broken = tmp_path / "broken.exr"
    broken.write_bytes(good.read_bytes()[:60])
    with pytest.raises(InputError, match="broken.exr is not a readable image"):
        load_photo(broken)
