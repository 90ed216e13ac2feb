"""Object masks from user files / SAM, and the occlusion-aware object crop."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from cupid.errors import CheckpointError, InputError
from cupid.scene import masks as MS

W, H = 100, 80


def _save(tmp_path, name, arr, mode=None):
    p = tmp_path / name
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(p)
    return p


def _scene():
    """Photo with a red object A (x 20..49, y 10..39) partly covered by a blue object B (x 40..69, y 30..59)."""
    photo = np.full((H, W, 3), 90, np.uint8)
    photo[10:40, 20:50] = (255, 0, 0)
    photo[30:60, 40:70] = (0, 0, 255)
    lab = np.zeros((H, W), np.uint8)
    lab[10:40, 20:50] = 3
    lab[30:60, 40:70] = 7
    return photo, lab


def test_label_image_split(tmp_path):
    _, lab = _scene()
    m = MS.masks_from_label_image(_save(tmp_path, "labels.png", lab), image_size=(W, H))
    assert len(m) == 2 and m.names == ["label_3", "label_7"] and m.size == (W, H)
    np.testing.assert_array_equal(m.binary[0], lab == 3)
    np.testing.assert_array_equal(m.binary[1], lab == 7)
    np.testing.assert_array_equal(m.label_image(), np.where(lab == 3, 1, np.where(lab == 7, 2, 0)))
    # auto-detection: small integer labels -> label image; colour-coded labels too
    auto = MS.load_object_masks(tmp_path / "labels.png", (W, H))
    assert auto.names == ["label_3", "label_7"]
    colour = np.zeros((H, W, 3), np.uint8)
    colour[lab == 3] = (200, 30, 30)
    colour[lab == 7] = (30, 200, 30)
    c = MS.load_object_masks(_save(tmp_path, "colour.png", colour), (W, H))
    assert c.names == ["label_1ec81e", "label_c81e1e"]  # by colour value; B overwrote A where they overlap
    np.testing.assert_array_equal(c.binary[1], lab == 3)
    np.testing.assert_array_equal(c.binary[0], lab == 7)
    with pytest.raises(InputError, match="label image is empty"):
        MS.masks_from_label_image(np.zeros((H, W), np.uint8))
    with pytest.raises(InputError, match="too small"):
        tiny = lab.copy()
        tiny[0, 0] = 9
        MS.masks_from_label_image(tiny)


def test_mask_list_soft_alpha_and_names(tmp_path):
    _, lab = _scene()
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = np.where(lab == 3, 255, 0)
    rgba[10:40, 19, 3] = 100  # anti-aliased edge
    grey = np.where(lab == 7, 255, 0).astype(np.uint8)
    files = [_save(tmp_path, "cup.png", rgba, "RGBA"), _save(tmp_path, "plate.png", grey)]
    m = MS.load_object_masks(files, image_size=(W, H))
    assert m.names == ["cup", "plate"]
    np.testing.assert_allclose(m.alphas[0, 20, 19], 100 / 255)
    np.testing.assert_array_equal(m.binary[0], lab == 3)
    np.testing.assert_array_equal(m.binary[1], lab == 7)
    # a single 0/255 mask is one object, not a label image
    one = MS.load_object_masks(files[1], (W, H))
    assert len(one) == 1 and one.names == ["plate"]
    arr = MS.masks_from_images([lab == 3, (lab == 7).astype(np.float32)], names=["a", "b"])
    assert arr.names == ["a", "b"] and arr.alphas.dtype == np.float32


def test_size_mismatch_and_empty_errors(tmp_path):
    ok = np.zeros((H, W), np.uint8)
    ok[5:20, 5:20] = 255
    small = _save(tmp_path, "small.png", np.full((H, W - 1), 255, np.uint8))
    with pytest.raises(InputError, match=r"mask 1 \(small.png\) is 99x80 pixels but the photo is 100x80"):
        MS.masks_from_images([ok, small], image_size=(W, H))
    with pytest.raises(InputError, match=r"is 99x80 pixels but mask 0 is 100x80"):
        MS.masks_from_images([ok, small])
    empty = _save(tmp_path, "empty.png", np.zeros((H, W), np.uint8))
    with pytest.raises(InputError, match=r"mask 1 \(empty.png\) is empty"):
        MS.masks_from_images([ok, empty], image_size=(W, H))
    with pytest.raises(InputError, match="covers only 4 pixel"):
        speck = np.zeros((H, W), np.uint8)
        speck[:2, :2] = 255
        MS.masks_from_images([speck])
    with pytest.raises(InputError, match="does not exist"):
        MS.load_object_masks(tmp_path / "nope.png")
    (tmp_path / "junk.png").write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a readable image"):
        MS.load_object_masks(tmp_path / "junk.png")
    with pytest.raises(InputError, match="no mask given"):
        MS.masks_from_images([])


def test_missing_sam_gives_clear_errors(tmp_path, monkeypatch):
    photo, _ = _scene()
    monkeypatch.delenv(MS.SAM_CHECKPOINT_ENV, raising=False)
    with pytest.raises(CheckpointError, match=MS.SAM_CHECKPOINT_ENV):
        MS.segment_automatic(photo)
    with pytest.raises(CheckpointError, match="does not exist"):
        MS.segment_automatic(photo, checkpoint=tmp_path / "sam_vit_b_01ec64.pth")
    ckpt = tmp_path / "sam_vit_b_01ec64.pth"
    ckpt.write_bytes(b"\0")
    monkeypatch.setitem(sys.modules, "segment_anything", None)  # as if not installed
    with pytest.raises(CheckpointError, match="optional package segment-anything"):
        MS.segment_automatic(photo, checkpoint=ckpt)
    monkeypatch.setenv(MS.SAM_CHECKPOINT_ENV, str(ckpt))
    with pytest.raises(CheckpointError, match="segment-anything"):
        MS.segment_prompts(photo, boxes=[(10, 10, 50, 40)])
    with pytest.raises(CheckpointError, match="model type"):
        other = tmp_path / "weights.pth"
        other.write_bytes(b"\0")
        MS.segment_automatic(photo, checkpoint=other)
    with pytest.raises(InputError, match="inside the 100x80 photo"):
        MS.segment_prompts(photo, boxes=[(10, 10, 500, 40)])


def test_sam_proposal_selection_keeps_whole_objects():
    def rect(x0, y0, x1, y1):
        m = np.zeros((H, W), bool)
        m[y0:y1, x0:x1] = True
        return m
    segs = [rect(0, 0, 100, 80),      # background: too large
            rect(20, 10, 50, 40),     # object A
            rect(25, 15, 35, 25),     # part of A
            rect(60, 50, 90, 75),     # object B
            rect(0, 0, 3, 3)]         # speck
    keep = MS._select_masks(segs, [0.9] * 5, min_area=40, max_area=int(0.9 * W * H), max_objects=None)
    assert keep == [1, 3]
    assert MS._select_masks(segs, [0.9] * 5, 40, int(0.9 * W * H), max_objects=1) == [1]


def test_occlusion_aware_object_input():
    """Scene mode gives each object its alpha without its occluders' pixels, and its conditioning crop
    shows that object alone: the occluder and the background are black after premultiplication."""
    from cupid.pipeline.scene import object_alphas
    from cupid.preprocess import preprocess

    photo, lab = _scene()
    m = MS.masks_from_label_image(lab)
    occ = MS.occluder_mask(m, 0)
    np.testing.assert_array_equal(occ, lab == 7)
    alphas = object_alphas(photo, lab)
    assert len(alphas) == 2
    np.testing.assert_array_equal(alphas[0] > 0.5, lab == 3)
    np.testing.assert_array_equal(alphas[1] > 0.5, lab == 7)
    processed = preprocess(photo, mask=(alphas[0] * 255).astype(np.uint8))
    crop, cond = processed.crop, processed.cond_image.numpy()   # [3, 518, 518], RGB·alpha
    side = cond.shape[-1]

    def at(px, py):  # photo pixel -> conditioning pixel
        cx, cy = (px - crop.offset[0]) / crop.size * side, (py - crop.offset[1]) / crop.size * side
        return cond[:, int(cy), int(cx)]
    np.testing.assert_allclose(at(27.5, 20.5), [1, 0, 0], atol=0.02)   # inside A: red
    np.testing.assert_allclose(at(46.5, 36.5), [0, 0, 0], atol=0.02)   # B covers this pixel
    np.testing.assert_allclose(at(19.0, 9.0), [0, 0, 0], atol=0.02)    # background
    with pytest.raises(InputError, match="out of range"):
        MS.occluder_mask(m, 2)


def test_soft_overlap_goes_to_the_stronger_mask():
    a = np.zeros((H, W), np.float32)
    b = np.zeros((H, W), np.float32)
    a[10:30, 10:30] = 1.0
    b[20:40, 20:40] = 1.0
    a[25, 25], b[25, 25] = 0.6, 0.9  # contested pixel: B wins
    m = MS.ObjectMasks(np.stack([a, b]), ["a", "b"])
    assert MS.occluder_mask(m, 0)[25, 25] and not MS.occluder_mask(m, 1)[25, 25]
    from cupid.pipeline.scene import object_alphas
    alphas = object_alphas(np.zeros((H, W, 3), np.uint8), [(a * 255).astype(np.uint8), (b * 255).astype(np.uint8)])
    assert alphas[0][25, 25] == 0 and alphas[1][25, 25] > 0.8
