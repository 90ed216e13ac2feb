"""CUPID's stage-2 conditioning, checked against an independent re-derivation: per voxel, DINOv2
patch tokens bilinearly sampled at its uv (align_corners=False, zeros outside) and compressed by the
SLat encoder (posterior mean), then the conv head's four maps sampled the same way, concatenated after
the noisy latent; zeroed DINOv2 tokens give a zero latent; the per-run cache changes nothing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cupid.models import build_model
from cupid.models.structured_latent_flow import SLatFlowModel
from cupid.sparse import SparseTensor

SIDE, DIM, REGISTERS = 6, 16, 5


@pytest.fixture(scope="module")
def flow():
    torch.manual_seed(0)
    model = build_model("ElasticVisualLatentConditioningSLatFlowModel", {
        "resolution": 16, "in_channels": 8, "out_channels": 8, "model_channels": 32, "cond_channels": DIM,
        "cond_latent_channels": 8, "num_blocks": 1, "num_heads": 2, "mlp_ratio": 2, "patch_size": 2,
        "num_io_res_blocks": 1, "io_block_channels": [16], "visual_feat_channels": [4, 4, 4, 4],
        "visual_feat_resolution": 32, "visual_conv_kernel_size": 3, "pe_mode": "ape", "qk_rms_norm": True})
    encoder = build_model("SLatEncoder", {"resolution": 16, "in_channels": DIM, "model_channels": 32,
                                          "latent_channels": 8, "num_blocks": 1, "num_heads": 2, "mlp_ratio": 2,
                                          "attn_mode": "swin", "window_size": 4})
    with torch.no_grad():
        for p in list(model.parameters()) + list(encoder.parameters()):
            p.normal_(0, 0.2)
    model.attach_slat_encoder(encoder)
    return model.eval(), encoder.eval()


def _inputs(n: int = 40, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(16 ** 3, generator=g)[:n]
    coords = torch.stack([torch.zeros_like(idx), idx // 256, (idx // 16) % 16, idx % 16], 1).int()
    uv = torch.rand(n, 2, generator=g) * 1.2 - 0.1  # a few fall outside the photo
    dino = torch.randn(1, REGISTERS + SIDE * SIDE, DIM, generator=g)
    visual = torch.rand(1, 3, 40, 40, generator=g)
    noisy = torch.randn(n, 8, generator=g)
    return SparseTensor(uv, coords), SparseTensor(noisy, coords), dino, visual


def _bilinear(grid: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """[C, H, W] sampled at uv ∈ [0,1]² with pixel centres at (i + 0.5)/size, zeros outside."""
    c, h, w = grid.shape
    out = np.zeros((len(uv), c))
    for k, (u, v) in enumerate(uv):
        x, y = u * w - 0.5, v * h - 0.5
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
            xi, yi = x0 + dx, y0 + dy
            wgt = (1 - abs(x - xi)) * (1 - abs(y - yi))
            if 0 <= xi < w and 0 <= yi < h:
                out[k] += wgt * grid[:, yi, xi]
    return out


def test_voxel_condition_matches_the_formula(flow):
    model, encoder = flow
    uvs, _, dino, visual = _inputs()
    with torch.no_grad():
        got = model.voxel_condition(uvs, {"dino_cond": dino, "visual_cond": visual}).numpy()
        tokens = dino[0, REGISTERS:].T.reshape(DIM, SIDE, SIDE).numpy()
        sampled = torch.from_numpy(_bilinear(tokens, uvs.feats.numpy())).float()
        latent = encoder(SparseTensor(sampled, uvs.coords), sample_posterior=False).feats.numpy()
        img = torch.nn.functional.interpolate(visual, size=(32, 32), mode="bilinear", align_corners=False,
                                              antialias=True)
        maps = []
        for conv in model.visual_conv_blocks:
            img = conv(img)
            maps.append(_bilinear(img[0].numpy(), uvs.feats.numpy()))
    assert got.shape == (40, 8 + 16)
    np.testing.assert_allclose(got[:, :8], latent, atol=1e-4)
    np.testing.assert_allclose(got[:, 8:], np.concatenate(maps, 1), atol=1e-5)
    assert [m.stride[0] for m in model.visual_conv_blocks] == [1, 2, 2, 2]


def test_unconditional_pass_zeroes_the_dino_latent(flow):
    model, _ = flow
    uvs, _, dino, visual = _inputs()
    with torch.no_grad():
        neg = model.voxel_condition(uvs, {"dino_cond": torch.zeros_like(dino), "visual_cond": visual})
    assert torch.count_nonzero(neg[:, :8]) == 0 and torch.count_nonzero(neg[:, 8:]) > 0


def test_unconditional_pass_does_not_run_the_slat_encoder(flow):
    """Its latent is zeros by construction: the encoder (~40% of a forward) is skipped for it, and still
    runs for a batch that mixes a conditional and an unconditional item (zeroing only the latter)."""
    model, encoder = flow
    uvs, _, dino, visual = _inputs()
    calls = []
    hook = encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            neg = model.encode_latent(uvs, torch.zeros_like(dino))
            assert calls == [] and neg.shape == (40, 8) and torch.count_nonzero(neg) == 0
            pos = model.encode_latent(uvs, dino)
            assert calls == [1] and torch.count_nonzero(pos) > 0
            both = SparseTensor(torch.cat([uvs.feats, uvs.feats]),
                                torch.cat([uvs.coords, uvs.coords + torch.tensor([1, 0, 0, 0], dtype=torch.int32)]))
            mixed = model.encode_latent(both, torch.cat([dino, torch.zeros_like(dino)]))
    finally:
        hook.remove()
    torch.testing.assert_close(mixed[:40], pos, rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(mixed[40:]) == 0


def test_forward_concatenates_noisy_latent_then_condition_and_the_cache_is_exact(flow):
    model, _ = flow
    uvs, x, dino, visual = _inputs()
    cond = {"dino_cond": dino, "visual_cond": visual}
    t = torch.tensor([700.0])
    with torch.no_grad():
        direct = model(x, t, cond, uvs=uvs).feats
        feats = model.voxel_condition(uvs, cond)
        cached = model(x, t, {**cond, "voxel_cond": feats}).feats
        by_hand = SLatFlowModel.forward(model, x.replace(torch.cat([x.feats, feats], 1)), t, dino).feats
    torch.testing.assert_close(cached, direct, rtol=0, atol=0)
    torch.testing.assert_close(by_hand, direct, rtol=0, atol=0)
    with pytest.raises(ValueError, match="uvs"):
        model(x, t, cond)
