"""MoGe v1/v2: official checkpoint layout, strict loading, inference outputs, focal/shift recovery."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from cupid.errors import CheckpointError, InputError
from cupid.models import moge as M
from cupid.models.dinov2 import DinoV2Config

TINY = DinoV2Config(dim=32, depth=4, num_heads=2, mlp_dim=64, img_size=70, num_registers=0,
                    interpolate_antialias=False, interpolate_offset=0.1)

V1_CFG = {"encoder": "dinov2_tiny14", "remap_output": "exp", "intermediate_layers": 2, "dim_proj": 32,
          "dim_upsample": [32, 32, 32], "dim_times_res_block_hidden": 2, "num_res_blocks": 2,
          "num_tokens_range": [20, 40], "last_conv_channels": 32, "last_conv_size": 1}


def _stack(dim_in, dims, dim_out, nres, **kw):
    return {"dim_in": dim_in, "dim_out": dim_out, "dim_res_blocks": dims, "num_res_blocks": nres,
            "res_block_in_norm": "none", "res_block_hidden_norm": "none",
            "resamplers": ["conv_transpose", "conv_transpose", "conv_transpose", "bilinear"], **kw}


D = [32, 32, 32, 32, 32]
V2_CFG = {
    "encoder": {"backbone": "dinov2_tiny14_reg", "intermediate_layers": [1, 3], "dim_out": 32},
    "neck": _stack([34, 2, 2, 2, 2], D, None, [0, 1, 1, 1, 0], res_block_hidden_norm="group_norm"),
    "points_head": _stack(D, D, [None, None, None, None, 3], [0, 1, 1, 1, 0]),
    "normal_head": _stack(D, D, [None, None, None, None, 3], [0, 1, 1, 1, 0]),
    "mask_head": _stack(D, D, [None, None, None, None, 1], [0, 1, 1, 1, 0]),
    "scale_head": {"dims": [32, 16, 1]},
    "remap_output": "exp", "num_tokens_range": [20, 40],
}


@pytest.fixture(autouse=True)
def tiny_backbones(monkeypatch):
    monkeypatch.setitem(M.BACKBONES, "dinov2_tiny14", TINY)
    monkeypatch.setitem(M.BACKBONES, "dinov2_tiny14_reg",
                        DinoV2Config(dim=32, depth=4, num_heads=2, mlp_dim=64, img_size=70, num_registers=4))


def _official_checkpoint(cfg: dict, seed: int = 0) -> dict:
    """model.pt content as MoGe's from_pretrained reads it; ImageNet buffers included as the originals save them."""
    torch.manual_seed(seed)
    net = M.build_moge(cfg)
    state = {}
    for k, v in net.state_dict().items():
        state[k] = torch.randn_like(v) * 0.1 if v.is_floating_point() else v
        if k.endswith(("gamma", "norm1.weight", "norm2.weight", "norm.weight")) or ".layers.0.weight" in k \
                or ".layers.3.weight" in k:
            state[k] = state[k] + 1.0
    prefix = "" if net.version == 1 else "encoder."
    state[prefix + "image_mean"] = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    state[prefix + "image_std"] = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return {"model_config": cfg, "model": state}


def test_official_key_layout():
    v1 = _official_checkpoint(V1_CFG)["model"]
    for k in ("backbone.cls_token", "backbone.pos_embed", "backbone.mask_token", "backbone.patch_embed.proj.weight",
              "backbone.blocks.3.attn.qkv.weight", "backbone.blocks.3.ls2.gamma", "backbone.norm.bias",
              "head.projects.1.weight", "head.upsample_blocks.0.0.0.weight", "head.upsample_blocks.0.0.1.weight",
              "head.upsample_blocks.2.2.layers.0.weight", "head.upsample_blocks.2.2.layers.5.bias",
              "head.output_block.0.0.weight", "head.output_block.0.2.weight", "head.output_block.1.2.bias",
              "image_mean", "image_std"):
        assert k in v1, k
    assert "backbone.register_tokens" not in v1
    assert v1["head.upsample_blocks.0.0.0.weight"].shape == (34, 32, 2, 2)  # ConvTranspose2d(in + 2 uv, out)
    assert v1["head.output_block.0.0.weight"].shape == (32, 34, 3, 3)
    assert v1["head.output_block.1.2.weight"].shape == (1, 32, 1, 1)
    v2 = _official_checkpoint(V2_CFG)["model"]
    for k in ("encoder.backbone.register_tokens", "encoder.backbone.blocks.0.attn.proj.weight",
              "encoder.output_projections.1.weight", "neck.input_blocks.0.weight", "neck.resamplers.0.0.weight",
              "neck.resamplers.3.1.weight", "neck.res_blocks.1.0.layers.2.weight", "neck.res_blocks.1.0.layers.3.weight",
              "points_head.output_blocks.4.weight", "mask_head.input_blocks.4.weight", "normal_head.res_blocks.3.0.layers.5.bias",
              "scale_head.0.weight", "scale_head.2.bias", "encoder.image_mean"):
        assert k in v2, k
    assert "points_head.output_blocks.0.weight" not in v2  # dim_out None -> Identity
    assert v2["neck.input_blocks.0.weight"].shape == (32, 34, 1, 1)
    # the released full-size v1 network builds with the hub ViT-L names
    with torch.device("meta"):
        full = M.build_moge({**V1_CFG, "encoder": "dinov2_vitl14", "dim_proj": 512, "dim_upsample": [256, 128, 64]})
    sd = full.state_dict()
    assert sd["backbone.pos_embed"].shape == (1, 1370, 1024) and "backbone.blocks.23.ls1.gamma" in sd


@pytest.mark.parametrize("cfg", [V1_CFG, V2_CFG], ids=["v1", "v2"])
def test_load_strict_and_infer(tmp_path, cfg):
    ckpt = _official_checkpoint(cfg)
    torch.save(ckpt, tmp_path / "model.pt")
    model = M.load_moge(tmp_path)  # a folder holding model.pt
    assert model.version == (1 if cfg is V1_CFG else 2)
    loaded = model.net.state_dict()
    for k, v in ckpt["model"].items():
        if "image_" not in k:
            assert torch.equal(loaded[k], v), k
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, size=(40, 56, 3), dtype=np.uint8)
    out = model.infer(img)
    assert out["points"].shape == (40, 56, 3) and out["points"].dtype == np.float32
    assert out["mask"].shape == (40, 56) and out["mask"].dtype == bool
    assert out["depth"].shape == (40, 56)
    # the mask is the network's own validity output, thresholded at 0.5
    raw = model.net(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255, 40)["mask"][0]
    want = (raw > 0.5).numpy()
    if model.version == 2:
        want &= out["depth"] > 0
    np.testing.assert_array_equal(out["mask"], want)
    k, kp = out["intrinsics"], out["intrinsics_px"]
    assert k[0, 2] == 0.5 and k[1, 2] == 0.5 and k[0, 0] != 0  # random weights: any sign
    np.testing.assert_allclose(kp, np.diag([56, 40, 1]) @ k)
    np.testing.assert_allclose(math.degrees(2 * math.atan(0.5 / k[0, 0])), out["fov_x"])
    m = out["mask"]
    if m.any():
        pts = out["points"][m]
        assert np.all(np.isfinite(pts))
        if model.version == 2:  # v2 drops points behind the camera
            assert np.all(pts[:, 2] > 0)
        np.testing.assert_allclose(pts[:, 2], out["depth"][m], rtol=1e-6)
        # every valid point projects back onto its own pixel centre
        ys, xs = np.nonzero(m)
        proj = (kp @ pts.T.astype(np.float64)).T
        np.testing.assert_allclose(proj[:, 0] / proj[:, 2], xs + 0.5, atol=1e-3)
        np.testing.assert_allclose(proj[:, 1] / proj[:, 2], ys + 0.5, atol=1e-3)
    assert np.all(np.isinf(out["points"][~m])) and np.all(np.isinf(out["depth"][~m]))
    if model.version == 2:
        assert out["normal"].shape == (40, 56, 3) and out["metric_scale"] > 0
        np.testing.assert_allclose(np.linalg.norm(out["normal"][m], axis=-1), 1.0, rtol=1e-5)
    # CHW float tensor input gives the same result; a known fov fixes the focal
    again = model.infer(torch.from_numpy(img).permute(2, 0, 1).float() / 255)
    np.testing.assert_allclose(again["intrinsics"], k, rtol=1e-5)
    fixed = model.infer(img, fov_x=60.0)
    assert abs(fixed["fov_x"] - 60.0) < 1e-9
    with pytest.raises(InputError):
        model.infer(np.zeros((4, 5), np.uint8))


def test_strict_loading_errors(tmp_path):
    ckpt = _official_checkpoint(V1_CFG)
    del ckpt["model"]["head.projects.0.bias"]
    ckpt["model"]["head.extra.weight"] = torch.zeros(1)
    ckpt["model"]["backbone.norm.weight"] = torch.zeros(7)
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as ei:
        M.load_moge(tmp_path / "bad.pt")
    msg = str(ei.value)
    assert "missing keys: head.projects.0.bias" in msg and "unexpected keys: head.extra.weight" in msg
    assert "backbone.norm.weight (checkpoint (7,), network (32,))" in msg
    ckpt = _official_checkpoint(V1_CFG)
    ckpt["model"]["image_std"] = torch.ones(1, 3, 1, 1)
    torch.save(ckpt, tmp_path / "std.pt")
    with pytest.raises(CheckpointError, match="image_std"):
        M.load_moge(tmp_path / "std.pt")
    torch.save({"model": {}}, tmp_path / "noconf.pt")
    with pytest.raises(CheckpointError, match="model_config"):
        M.load_moge(tmp_path / "noconf.pt")
    torch.save({"model_config": {**V1_CFG, "encoder": "dinov2_vitg14"}, "model": {}}, tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match="dinov2_vitg14"):
        M.load_moge(tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match="not found"):
        M.load_moge(tmp_path / "absent" / "model.pt")


def test_hf_offline_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(CheckpointError, match="Ruicheng/moge-vitl"):
        M.load_moge("Ruicheng/moge-vitl")


def _synthetic_affine_map(h, w, focal, shift, seed=0):
    """Camera points of a random smooth surface seen with half-diagonal focal `focal`, z shifted by -shift."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    z = 2.0 + 0.5 * np.sin(3 * xx + rng.uniform(0, 3)) + 0.3 * np.cos(2 * yy) + 0.2 * xx * yy
    uv = M.view_plane_uv(w, h)
    cam = np.concatenate([uv / focal * z[..., None], z[..., None]], axis=-1)
    affine = cam.copy()
    affine[..., 2] -= shift
    return cam, affine


@pytest.mark.parametrize("h,w,focal,shift", [(48, 64, 1.3, 0.7), (90, 60, 0.8, -1.2), (33, 33, 2.5, 0.0)])
def test_focal_shift_recovery_exact(h, w, focal, shift):
    cam, affine = _synthetic_affine_map(h, w, focal, shift)
    f, s = M.recover_focal_shift(affine)
    assert abs(f - focal) < 1e-6 * focal and abs(s - shift) < 1e-6
    mask = np.zeros((h, w), bool)
    mask[h // 4:, : w // 2] = True
    garbage = affine.copy()
    garbage[~mask] = 1e3  # outside the mask nothing may influence the solution
    f2, s2 = M.recover_focal_shift(garbage, mask)
    assert abs(f2 - focal) < 1e-6 * focal and abs(s2 - shift) < 1e-6
    _, s3 = M.recover_focal_shift(affine, focal=focal)
    assert abs(s3 - shift) < 1e-6
    # normalised intrinsics + depth reproduce the camera-frame points
    k = M.focal_to_intrinsics(f, w, h)
    np.testing.assert_allclose(M.depth_to_points(affine[..., 2] + s, k), cam, rtol=1e-6, atol=1e-6)


class _FakeNet(nn.Module):
    """Stands in for the network to check post-processing on a map with known camera."""
    version = 1
    num_tokens_range = [20, 40]

    def __init__(self, affine: np.ndarray):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.affine = torch.from_numpy(affine).float()

    def forward(self, image, num_tokens):
        return {"points": self.affine[None], "mask": torch.ones(1, *self.affine.shape[:2])}

    def mask_from(self, raw):
        return raw > 0.5


def test_infer_postprocessing_recovers_known_camera():
    h, w, focal, shift = 40, 60, 1.1, 0.9
    cam, affine = _synthetic_affine_map(h, w, focal, shift, seed=3)
    out = M.MoGeModel(_FakeNet(affine)).infer(np.zeros((h, w, 3), np.uint8))
    np.testing.assert_allclose(out["points"], cam, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["depth"], cam[..., 2], rtol=1e-4)
    # pixel intrinsics project camera points to pixel centres
    p = (out["intrinsics_px"] @ cam.reshape(-1, 3).T).T
    ys, xs = np.mgrid[0:h, 0:w]
    np.testing.assert_allclose(p[:, 0] / p[:, 2], xs.ravel() + 0.5, atol=1e-3)
    np.testing.assert_allclose(p[:, 1] / p[:, 2], ys.ravel() + 0.5, atol=1e-3)


def _off_centre_affine_map(h, w, focal, shift, pp, seed=0):
    """Like _synthetic_affine_map, seen by a camera whose principal point is `pp` (uv)."""
    cam, _ = _synthetic_affine_map(h, w, focal, 0.0, seed)
    z = cam[..., 2]
    uv = M.view_plane_uv(w, h) - M.principal_point_offset(pp, w, h)
    cam = np.concatenate([uv / focal * z[..., None], z[..., None]], axis=-1)
    affine = cam.copy()
    affine[..., 2] -= shift
    return cam, affine


@pytest.mark.parametrize("pp", [(0.62, 0.41), (0.35, 0.57)])
def test_known_principal_point_recovers_an_off_centre_camera(pp):
    h, w, focal, shift = 48, 64, 1.2, 0.8
    cam, affine = _off_centre_affine_map(h, w, focal, shift, pp)
    f, s = M.recover_focal_shift(affine, principal_point=pp)
    assert abs(f - focal) < 1e-6 * focal and abs(s - shift) < 1e-6
    k = M.focal_to_intrinsics(f, w, h, pp)
    assert tuple(k[:2, 2]) == pytest.approx(pp)
    np.testing.assert_allclose(M.depth_to_points(affine[..., 2] + s, k), cam, rtol=1e-6, atol=1e-6)
    # read as centred, the same map gives depths off by percents
    f0, s0 = M.recover_focal_shift(affine)
    assert np.abs((affine[..., 2] + s0) / cam[..., 2] - 1).max() > 0.02
    # through infer: intrinsics, depth and points of the known camera
    out = M.MoGeModel(_FakeNet(affine)).infer(np.zeros((h, w, 3), np.uint8), principal_point=pp)
    np.testing.assert_allclose(out["points"], cam, rtol=1e-4, atol=1e-4)
    assert out["intrinsics_px"][0, 2] == pytest.approx(pp[0] * w) and out["intrinsics_px"][1, 2] == pytest.approx(pp[1] * h)
    assert M.principal_point_offset(None, w, h).tolist() == [0.0, 0.0]
    assert np.allclose(M.principal_point_offset((0.5, 0.5), w, h), 0.0)


def test_scene_principal_point_rule():
    from cupid.geometry import CameraPose
    from cupid.pipeline.scene import scene_principal_point

    def cam(cx, cy):
        return CameraPose(np.array([[500.0, 0, cx], [0, 500.0, cy], [0, 0, 1]]), np.eye(3), np.zeros(3), 640, 480)

    off = [cam(420, 200), cam(425, 195), cam(416, 204)]
    assert scene_principal_point(off, 640, 480) == pytest.approx((420 / 640, 200 / 480))
    assert scene_principal_point(off[:1], 640, 480) is None                          # one object: the centre
    assert scene_principal_point([cam(322, 238), cam(318, 243)], 640, 480) is None  # at the centre anyway
    assert scene_principal_point([cam(420, 200), cam(250, 300)], 640, 480) is None  # the objects disagree
