"""Image datablocks become the upload the backend expects: top row first, the file's own bytes when
the datablock is an unmodified file, and a readable PNG of the pixels otherwise."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

bpy = pytest.importorskip("bpy", reason="needs Blender as a Python module (bpy 4.5)")
pytestmark = pytest.mark.blender

from cupid_blender.imaging import image_bytes  # noqa: E402
from cupid_blender.io.imaging import png_bytes  # noqa: E402


@pytest.fixture(autouse=True)
def _empty_file():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))


def test_png_bytes_round_trips():
    rgba = np.random.default_rng(0).integers(0, 256, (7, 5, 4), dtype=np.uint8)
    np.testing.assert_array_equal(_decode(png_bytes(rgba)), rgba)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png_bytes(rgba[..., :3])))), rgba[..., :3])
    grey = Image.open(io.BytesIO(png_bytes(rgba[..., 0])))
    assert grey.mode == "L"
    np.testing.assert_array_equal(np.asarray(grey), rgba[..., 0])
    with pytest.raises(ValueError, match="expected"):
        png_bytes(rgba[..., :2])
    with pytest.raises(ValueError, match="expected"):
        png_bytes(rgba.astype(np.float32))


def test_generated_image_is_sent_top_row_first():
    """Blender keeps the bottom row first: a red top half must arrive on top."""
    w, h = 6, 4
    img = bpy.data.images.new("painted", w, h, alpha=True)
    px = np.zeros((h, w, 4), np.float32)   # Blender order: row 0 is the bottom
    px[: h // 2] = (0, 0, 1, 1)              # bottom half blue
    px[h // 2:] = (1, 0, 0, 1)               # top half red
    img.pixels.foreach_set(px.ravel())
    data, name = image_bytes(img)
    got = _decode(data)
    assert name == "painted.png" and got.shape == (h, w, 4)
    assert (got[: h // 2, :, 0] == 255).all() and (got[: h // 2, :, 2] == 0).all()   # top: red
    assert (got[h // 2:, :, 2] == 255).all() and (got[h // 2:, :, 0] == 0).all()     # bottom: blue


def test_unmodified_file_is_sent_as_its_own_bytes(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(path)
    img = bpy.data.images.load(str(path))
    data, name = image_bytes(img)
    assert data == path.read_bytes() and name == "photo.png"


def test_edited_file_sends_its_current_pixels(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    img = bpy.data.images.load(str(path))
    px = np.ones(4 * 4 * 4, np.float32)   # paint it white
    img.pixels.foreach_set(px)
    img.update()
    assert img.is_dirty
    data, _ = image_bytes(img)
    assert (_decode(data)[..., :3] == 255).all()
