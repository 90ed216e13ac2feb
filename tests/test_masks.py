"""Object masks from user files / SAM, and the occlusion-aware object crop."""
from __future__ import annotations

from pathlib import Path

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


def test_grey_label_values_of_any_brightness_are_objects(tmp_path):
    """Scene mode's promise: each grey value is one object, 128 and 255 as well as 1 and 2 (issue 24)."""
    _, lab = _scene()
    grey = np.where(lab == 3, 128, np.where(lab == 7, 255, 0)).astype(np.uint8)
    for name, arr in (("grey.png", grey), ("grey_rgb.png", np.repeat(grey[..., None], 3, axis=2))):
        m = MS.load_object_masks(_save(tmp_path, name, arr), (W, H))
        assert m.names == ["label_128", "label_255"], name
        np.testing.assert_array_equal(m.binary[0], lab == 3)
        np.testing.assert_array_equal(m.binary[1], lab == 7)
    # three bright labels in 16-bit, too
    deep = np.where(lab == 3, 40000, np.where(lab == 7, 65535, 0)).astype(np.uint16)
    deep[60:75, 5:30] = 50000
    assert len(MS.load_object_masks(_save(tmp_path, "deep.png", deep), (W, H))) == 3


def test_an_anti_aliased_or_feathered_mask_stays_one_object(tmp_path):
    """Values that only form thin bands along an edge are a mask's anti-aliasing, not labels."""
    yy, xx = np.mgrid[0:H, 0:W]
    r = np.hypot(xx - 50.3, yy - 40.7)
    aa = np.clip((25.0 - r) * 255.0, 0, 255).astype(np.uint8)          # a disc, one pixel of anti-aliasing
    feathered = np.clip((25.0 - r) * 40.0, 0, 255).astype(np.uint8)     # a 6-pixel feather
    for name, arr in (("aa.png", aa), ("feathered.png", feathered)):
        assert len(np.unique(arr)) > 3, name
        m = MS.load_object_masks(_save(tmp_path, name, arr), (W, H))
        assert len(m) == 1 and m.names == [Path(name).stem], name
        np.testing.assert_allclose(m.alphas[0], arr / 255.0, atol=1e-6)


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


def test_sam_masks_need_a_model():
    photo, _ = _scene()
    with pytest.raises(CheckpointError, match="need a loaded SAM model"):
        MS.segment_automatic(photo)
    with pytest.raises(CheckpointError, match="need a loaded SAM model"):
        MS.segment_prompts(photo, boxes=[(10, 10, 50, 40)])


def test_bad_prompts_are_refused_before_the_model_runs():
    photo, _ = _scene()
    for kw, match in [({}, "no object picked"), ({"points": [], "boxes": []}, "no object picked"),
                      ({"points": [(10, 90)]}, r"point 1 \(10, 90\) is outside the 100x80 photo"),
                      ({"points": [(5, 5), (-1, 5)]}, "point 2"),
                      ({"boxes": [(10, 10, 500, 40)]}, r"box 1 \(10, 10, 500, 40\) is not .* inside the 100x80"),
                      ({"boxes": [(50, 10, 20, 40)]}, "x0 < x1"),
                      ({"points": [(1, 2, 3)]}, r"list of \[x, y\]"),
                      ({"points": [("a", 2)]}, "must be numbers"),
                      ({"boxes": [(1, 2, float("nan"), 4)]}, "x0, y0, x1, y1")]:
        with pytest.raises(InputError, match=match):
            MS.segment_prompts(photo, **kw, model=object())  # never called


def test_prompt_parsing():
    assert MS.parse_point("12.5, 30") == (12.5, 30.0)
    assert MS.parse_box("1,2,30,40") == (1.0, 2.0, 30.0, 40.0)
    for bad in ("12", "1,2,3", "a,b", "1,nan", ""):
        with pytest.raises(InputError, match="--point expects X,Y"):
            MS.parse_point(bad)
    with pytest.raises(InputError, match="--box expects X0,Y0,X1,Y1"):
        MS.parse_box("1,2,3")
    assert MS.parse_prompts(None) is None and MS.parse_prompts("  ") is None
    assert MS.parse_prompts('{"points": [[1, 2]], "boxes": [[0, 0, 5, 6]]}') == ([[1.0, 2.0]], [[0.0, 0.0, 5.0, 6.0]])
    assert MS.parse_prompts({"boxes": [[0, 0, 5, 6]]}) == ([], [[0.0, 0.0, 5.0, 6.0]])
    for bad, match in [("{", "must be JSON"), ("[1, 2]", "JSON object"), ('{"clicks": []}', "unknown prompt kind"),
                       ('{"points": []}', "no object picked"), ('{"points": 3}', "must be a list"),
                       ('{"points": [[1]]}', r"list of \[x, y\]")]:
        with pytest.raises(InputError, match=match):
            MS.parse_prompts(bad)


def test_label_png_round_trip():
    _, lab = _scene()
    masks = MS.masks_from_label_image(lab)
    assert masks.label_image().dtype == np.uint8
    back = MS.load_object_masks(MS.label_png(masks))
    np.testing.assert_array_equal(back.binary, masks.binary)
    many = MS.ObjectMasks(np.eye(300, dtype=np.float32)[:, None, :].repeat(20, axis=1), [f"o{i}" for i in range(300)])
    assert many.label_image().dtype == np.uint16 and many.label_image().max() == 300
    back16 = MS.load_object_masks(MS.label_png(many), kind="labels", min_pixels=1)
    np.testing.assert_array_equal(back16.binary, many.binary)


def test_sam_proposal_selection_keeps_whole_objects():
    def rect(x0, y0, x1, y1):
        m = np.zeros((H, W), bool)
        m[y0:y1, x0:x1] = True
        return m
    segs = [rect(0, 0, 100, 80),      # background: too large
            rect(20, 10, 50, 40),     # object A
            rect(25, 15, 35, 25),     # part of A
            rect(60, 50, 90, 75),     # object B
            rect(0, 0, 3, 3),         # speck
            rect(0, 60, 100, 79),     # floor: reaches three sides (one pixel short of the bottom)
            rect(0, 0, 100, 12),      # sky: the top and a little of both sides
            rect(80, 0, 100, 40)]     # object in a corner: two sides only
    keep = MS._select_masks(segs, [0.9] * 8, min_area=40, max_area=int(0.9 * W * H), max_objects=None)
    assert keep == [1, 7, 3]
    assert MS._select_masks(segs, [0.9] * 8, 40, int(0.9 * W * H), max_objects=1) == [1]


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
