"""Our SAM against segment-anything's own outputs (tests/fixtures/sam_parity), strict loading, and the
hand-built tiny SAM of `cupid make-tiny-model`.

Tolerances (float32 on the CPU; the reference ran torch 2.14, we run the project's torch): image
embedding, low-res and photo-size mask logits within 1e-4 (values up to ~12), predicted IoU within
1e-5; automatic masks equal up to 2 pixels each (logits that sit on 0), stability within 1e-3.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from cupid.errors import CheckpointError, InputError
from cupid.models.sam import SAM_CONFIGS, load_sam, resize_photo
from cupid.models.sam_amg import generate_proposals, masks_to_boxes, nms, point_grid
from cupid.models.sam_tiny import TINY_SAM_FILE, write_tiny_sam
from cupid.scene import masks as MS

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "sam_parity"
CASES = ("points", "multi_points", "boxes", "point_and_box")


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "reference.npz") as d:
        return {k: d[k] for k in d.files}


@pytest.fixture(scope="module")
def sam():
    torch.set_num_threads(1)
    return load_sam(FIXTURE / "sam_tiny_random.pth")


@pytest.fixture(scope="module")
def embedded(sam, ref):
    return sam.embed(ref["photo"])


def test_fixture_is_our_tiny_architecture(ref):
    recorded = json.loads(str(ref["config"]))
    ours = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(SAM_CONFIGS["tiny"]).items()}
    assert recorded == ours


def test_preprocessing_and_image_embedding_match(sam, ref, embedded):
    x = sam.preprocess(resize_photo(ref["photo"], sam.img_size))
    np.testing.assert_allclose(x.numpy(), ref["input_image"], atol=1e-6, rtol=0)
    assert embedded.original_size == (97, 150) and embedded.input_size == (166, 256)
    np.testing.assert_allclose(embedded.embedding.numpy(), ref["embedding"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("multimask", [True, False])
def test_prompted_masks_match(sam, ref, embedded, case, multimask):
    key = f"{case}/{'multi' if multimask else 'single'}"
    pred = sam.predict(embedded, ref.get(f"{case}/points"), ref.get(f"{case}/labels"), ref.get(f"{case}/boxes"),
                       multimask=multimask)
    assert pred.low_res_logits.shape == ref[f"{key}/low_res"].shape
    np.testing.assert_allclose(pred.low_res_logits.numpy(), ref[f"{key}/low_res"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(pred.iou_predictions.numpy(), ref[f"{key}/iou"], atol=1e-5, rtol=0)
    if f"{key}/masks" in ref:
        want = ref[f"{key}/masks"]
        got = sam.upscale(pred.low_res_logits, embedded).numpy()[: len(want)]
        assert got.shape == want.shape == (1, 3 if multimask else 1, 97, 150)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
        sure = np.abs(want) > 1e-3
        np.testing.assert_array_equal((got > 0)[sure], (want > 0)[sure])


def test_mask_prompt_matches(sam, ref, embedded):
    prev = torch.as_tensor(ref["points/single/low_res"][:1])  # [1, 1, 64, 64], fed back in
    pred = sam.predict(embedded, ref["points/points"][:1], np.ones((1, 1)), mask_input=prev, multimask=True)
    np.testing.assert_allclose(pred.low_res_logits.numpy()[0], ref["mask_input/low_res"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(pred.iou_predictions.numpy()[0], ref["mask_input/iou"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("run", ["all", "filtered"])
def test_automatic_masks_match(sam, ref, run):
    settings = json.loads(str(ref["amg_settings"]))[run]
    props = generate_proposals(sam, ref["amg/photo"], **settings)
    want = ref[f"amg/{run}/masks"]
    assert len(props) == len(want) > 0
    for p, w in zip(props, want):
        assert int((p.mask != w).sum()) <= 2
    np.testing.assert_allclose([p.predicted_iou for p in props], ref[f"amg/{run}/predicted_iou"], atol=1e-5)
    np.testing.assert_allclose([p.stability_score for p in props], ref[f"amg/{run}/stability_score"], atol=1e-3)
    np.testing.assert_allclose([p.point for p in props], ref[f"amg/{run}/point_coords"], atol=1e-9)
    boxes = np.array([p.box for p in props], dtype=float)
    boxes[:, 2:] -= boxes[:, :2]
    np.testing.assert_allclose(boxes, ref[f"amg/{run}/bbox_xywh"], atol=1)


@pytest.mark.parametrize("thresh", [0.3, 0.7])
def test_nms_matches_torchvision(ref, thresh):
    keep = nms(torch.as_tensor(ref["nms/boxes"]), torch.as_tensor(ref["nms/scores"]), thresh)
    np.testing.assert_array_equal(keep.numpy(), ref[f"nms/keep_{thresh}"])


def test_amg_helpers():
    g = point_grid(2)
    np.testing.assert_allclose(g, [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    m = torch.zeros(2, 5, 6, dtype=torch.bool)
    m[0, 1:3, 2:5] = True
    assert masks_to_boxes(m).tolist() == [[2, 1, 4, 2], [0, 0, 0, 0]]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0


# ---------------------------------------------------------------- strict loading

@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_official_layouts_load_strictly(variant, tmp_path):
    """Our networks hold exactly the keys and shapes of segment-anything's vit_b/l/h, so the official
    sam_vit_*.pth files load strictly (checked here with meta tensors, no 0.4-2.5 GB download)."""
    from cupid.models.loading import check_state_dict
    from cupid.models.sam import Sam, _variant

    official = json.loads((FIXTURE / "official_shapes.json").read_text())[variant]
    with torch.device("meta"):
        ours = Sam(SAM_CONFIGS[variant])
        state = {k: torch.empty(shape) for k, shape in official.items()}
    assert {k: list(v.shape) for k, v in ours.state_dict().items()} == official
    check_state_dict(ours, state)
    assert _variant(tmp_path / "weights.pth", state, None) == variant  # from the encoder width alone


def _state() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURE / "sam_tiny_random.pth", weights_only=True)


def test_strict_loading_names_the_bad_keys(tmp_path):
    state = _state()
    del state["mask_decoder.iou_token.weight"]
    state["mask_decoder.extra.weight"] = torch.zeros(3)
    state["image_encoder.blocks.1.attn.rel_pos_h"] = torch.zeros(5, 16)
    path = tmp_path / "sam_tiny_broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_sam(path)
    msg = str(err.value)
    assert "sam_tiny_broken.pth" in msg and "(tiny)" in msg
    assert "missing keys: mask_decoder.iou_token.weight" in msg
    assert "unexpected keys: mask_decoder.extra.weight" in msg
    assert "image_encoder.blocks.1.attn.rel_pos_h (checkpoint (5, 16), network (31, 16))" in msg


def test_loading_refuses_other_checkpoints(tmp_path):
    # a tiny state dict called vit_b: checked against ViT-B's shapes, every mismatch named
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(_state(), path)
    with pytest.raises(CheckpointError, match=r"\(vit_b\) does not match.*image_encoder.pos_embed"):
        load_sam(path)
    other = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(CheckpointError, match="not a segment-anything checkpoint"):
        load_sam(other)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable SAM checkpoint"):
        load_sam(tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="unknown SAM model type"):
        load_sam(FIXTURE / "sam_tiny_random.pth", model_type="vit_x")


def test_missing_weights_name_cupid_download(tmp_path, monkeypatch):
    from cupid import config
    from cupid.models.sam import SAM_CHECKPOINT_ENV

    with pytest.raises(CheckpointError, match="no SAM weights at .*sam_vit_b_01ec64.pth: run 'cupid download'"):
        load_sam(tmp_path / "sam_vit_b_01ec64.pth")
    monkeypatch.setenv(SAM_CHECKPOINT_ENV, str(tmp_path / "mine.pth"))
    with pytest.raises(CheckpointError, match="no SAM weights at .*mine.pth"):
        load_sam()
    monkeypatch.delenv(SAM_CHECKPOINT_ENV)
    import huggingface_hub

    asked = []

    def offline(repo_id, filename, **kwargs):
        asked.append((repo_id, filename))
        raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(CheckpointError, match=r"cannot get the segment-anything weights checkpoints/sam_vit_b_01ec64.pth "
                                              r"\(ybelkada/segment-anything\).*Run 'cupid download'"):
        load_sam()  # the default checkpoint
    assert asked == [(config.SAM_REPO_ID, config.SAM_FILENAME)]


# ---------------------------------------------------------------- the hand-built tiny SAM

def _photo(w: int, h: int, objects: list[tuple[float, float, float, tuple[int, int, int]]],
           background=(90, 140, 170), seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """A noisy, slightly graded background with filled discs (cx, cy, r as fractions of w, colour)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3)) + background + 20 * (xx / w)[..., None]
    discs = []
    for cx, cy, r, colour in objects:
        disc = (xx - cx * w) ** 2 + (yy - cy * h) ** 2 < (r * w) ** 2
        img[disc] = colour
        discs.append(disc)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), discs


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = write_tiny_sam(tmp_path_factory.mktemp("tiny_sam"))
    assert path.name == TINY_SAM_FILE
    return load_sam(path)  # the same strict loader as the official checkpoints


def test_tiny_sam_finds_the_central_object(tiny):
    for (w, h, colour), per_side in zip([(320, 240, (200, 60, 40)), (240, 320, (40, 40, 40)),
                                         (300, 300, (230, 230, 220))], [32, 12, 12]):
        photo, (disc,) = _photo(w, h, [(0.5, 0.5, 0.2, colour)])
        found = MS.segment_automatic(photo, model=tiny, points_per_side=per_side)  # 32: SAM's default
        assert len(found) == 1 and found.size == (w, h)
        assert _iou(found.binary[0], disc) > 0.75


def test_make_tiny_model_writes_the_tiny_sam(tmp_path):
    import cupid.tiny

    out = cupid.tiny.make_tiny_model(tmp_path / "tiny")
    name = json.loads((out / "pipeline.json").read_text())["args"]["sam_model"]
    assert name == f"ckpts/{TINY_SAM_FILE}"
    photo, (disc,) = _photo(200, 160, [(0.5, 0.5, 0.2, (200, 60, 40))])
    found = MS.segment_automatic(photo, model=load_sam(out / name), points_per_side=8)
    assert len(found) == 1 and _iou(found.binary[0], disc) > 0.7


def test_tiny_sam_picks_one_object_per_prompt(tiny):
    photo, (red, green) = _photo(400, 300, [(0.3, 0.45, 0.12, (210, 50, 40)), (0.72, 0.55, 0.12, (40, 200, 60))])
    picked = MS.segment_prompts(photo, points=[[120, 135]], boxes=[[240, 115, 340, 215]], model=tiny)
    assert picked.names == ["point_1", "box_1"]
    assert _iou(picked.binary[0], red) > 0.7 and _iou(picked.binary[1], green) > 0.7
    lab = picked.label_image()
    assert lab.dtype == np.uint8 and set(np.unique(lab).tolist()) == {0, 1, 2}
    assert _iou(MS.segment_prompts(photo, points=[[288, 165]], model=tiny).binary[0], green) > 0.7
    flat = np.full((100, 100, 3), 150, np.uint8)  # nothing stands out: the click finds nothing
    with pytest.raises(InputError, match="no object at point 1"):
        MS.segment_prompts(flat, points=[[50, 50]], model=tiny)
    with pytest.raises(InputError, match="found no object in the photo"):
        MS.segment_automatic(flat, model=tiny, points_per_side=4)
