"""DINOv2 conditioner: architecture, both official key layouts, strict loading, TRELLIS normalisation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from cupid.errors import CheckpointError, InputError
from cupid.models.dinov2 import (IMAGENET_MEAN, IMAGENET_STD, DinoV2, ImageConditioner, hf_to_hub,
                                 load_dinov2)

DIM, HEADS, DEPTH, IMG = 32, 2, 2, 70  # 5x5 stored grid


def _random_tiny(seed: int = 0) -> DinoV2:
    torch.manual_seed(seed)
    m = DinoV2.tiny(dim=DIM, depth=DEPTH, num_heads=HEADS, img_size=IMG)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
        for b in m.blocks:  # layer scales and norm gains near 1 keep activations lively
            for g in (b.ls1.gamma, b.ls2.gamma, b.norm1.weight, b.norm2.weight):
                g.add_(1.0)
    return m.eval()


def _hub_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The transformers Dinov2WithRegisters names, written out by hand from the HF model definition."""
    out = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.mask_token": state["mask_token"],
        "embeddings.register_tokens": state["register_tokens"],
        "embeddings.position_embeddings": state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    for i in range(DEPTH):
        s, d = f"blocks.{i}.", f"encoder.layer.{i}."
        for leaf in ("weight", "bias"):
            q, k, v = state[s + f"attn.qkv.{leaf}"].chunk(3, 0)
            out[d + f"attention.attention.query.{leaf}"] = q
            out[d + f"attention.attention.key.{leaf}"] = k
            out[d + f"attention.attention.value.{leaf}"] = v
            out[d + f"attention.output.dense.{leaf}"] = state[s + f"attn.proj.{leaf}"]
            for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[d + f"{n}.{leaf}"] = state[s + f"{n}.{leaf}"]
        out[d + "layer_scale1.lambda1"] = state[s + "ls1.gamma"]
        out[d + "layer_scale2.lambda1"] = state[s + "ls2.gamma"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def _reference_prenorm(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Explicit ViT math (no module code shared) for a stored-size input."""
    t = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=14)
    t = t.flatten(2).transpose(1, 2)
    b = x.shape[0]
    t = torch.cat([state["cls_token"].expand(b, -1, -1), t], 1) + state["pos_embed"]
    t = torch.cat([t[:, :1], state["register_tokens"].expand(b, -1, -1), t[:, 1:]], 1)
    hd = DIM // HEADS
    for i in range(DEPTH):
        p = lambda n: state[f"blocks.{i}.{n}"]  # noqa: E731
        h = F.layer_norm(t, (DIM,), p("norm1.weight"), p("norm1.bias"), eps=1e-6)
        qkv = h @ p("attn.qkv.weight").T + p("attn.qkv.bias")
        q, k, v = qkv.reshape(b, -1, 3, HEADS, hd).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1) @ v
        a = a.transpose(1, 2).reshape(b, -1, DIM) @ p("attn.proj.weight").T + p("attn.proj.bias")
        t = t + a * p("ls1.gamma")
        h = F.layer_norm(t, (DIM,), p("norm2.weight"), p("norm2.bias"), eps=1e-6)
        h = F.gelu(h @ p("mlp.fc1.weight").T + p("mlp.fc1.bias")) @ p("mlp.fc2.weight").T + p("mlp.fc2.bias")
        t = t + h * p("ls2.gamma")
    return t


def test_vitl14_reg4_layout_matches_hub_release():
    with torch.device("meta"):
        m = DinoV2.vitl14_reg4()
    sd = m.state_dict()
    assert tuple(sd["pos_embed"].shape) == (1, 37 * 37 + 1, 1024)
    assert tuple(sd["register_tokens"].shape) == (1, 4, 1024)
    assert tuple(sd["mask_token"].shape) == (1, 1024)
    assert tuple(sd["patch_embed.proj.weight"].shape) == (1024, 3, 14, 14)
    assert tuple(sd["blocks.23.attn.qkv.weight"].shape) == (3072, 1024)
    assert tuple(sd["blocks.23.mlp.fc1.weight"].shape) == (4096, 1024)
    assert tuple(sd["blocks.0.ls1.gamma"].shape) == (1024,)
    assert "blocks.24.norm1.weight" not in sd and "norm.weight" in sd
    assert len(sd) == 6 + 24 * 14 + 2
    assert m.num_tokens(518, 518) == 1374
    assert m.blocks[0].attn.heads == 16


def test_forward_matches_reference_math_and_token_count():
    m = _random_tiny()
    x = torch.rand(2, 3, IMG, IMG)
    out = m.forward_features(x)
    ref = _reference_prenorm(m.state_dict(), x)
    assert out["x_prenorm"].shape == (2, 1 + 4 + 25, DIM)
    torch.testing.assert_close(out["x_prenorm"], ref, rtol=1e-4, atol=1e-4)
    assert out["x_norm_regtokens"].shape == (2, 4, DIM)
    assert out["x_norm_patchtokens"].shape == (2, 25, DIM)
    # other sizes: bicubic-resized pos-embeds, token count 1 + 4 + (H/14)(W/14)
    y = m.forward_features(torch.rand(1, 3, 28, 42))["x_prenorm"]
    assert y.shape[1] == m.num_tokens(28, 42) == 1 + 4 + 2 * 3
    with pytest.raises(InputError, match="multiple of the patch size"):
        m.forward_features(torch.rand(1, 3, 30, 42))


def test_pos_embed_interpolation_is_bicubic_resize_of_grid():
    m = _random_tiny()
    pe = m.interpolate_pos_encoding(7, 3, torch.float32)
    grid = m.pos_embed[:, 1:].reshape(1, 5, 5, DIM).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(7, 3), mode="bicubic", antialias=True).permute(0, 2, 3, 1).reshape(1, 21, DIM)
    torch.testing.assert_close(pe[:, 1:], want)
    torch.testing.assert_close(pe[:, 0], m.pos_embed[:, 0])
    assert m.interpolate_pos_encoding(5, 5, torch.float32) is not None
    torch.testing.assert_close(m.interpolate_pos_encoding(5, 5, torch.float32), m.pos_embed)


def test_hub_and_hf_layouts_load_to_identical_outputs(tmp_path):
    m = _random_tiny(1)
    hub = {k: v.clone() for k, v in m.state_dict().items()}
    torch.save(hub, tmp_path / "tiny_hub.pth")
    save_file(_hub_to_hf(hub), str(tmp_path / "model.safetensors"))
    a = load_dinov2(tmp_path / "tiny_hub.pth", num_heads=HEADS)
    b = load_dinov2(tmp_path / "model.safetensors", num_heads=HEADS)
    assert a.config == b.config == m.config
    x = torch.rand(1, 3, IMG, IMG)
    want = m.forward_features(x)["x_prenorm"]
    torch.testing.assert_close(a.forward_features(x)["x_prenorm"], want, rtol=0, atol=0)
    torch.testing.assert_close(b.forward_features(x)["x_prenorm"], want, rtol=0, atol=0)
    assert not any(p.requires_grad for p in b.parameters()) and not b.training
    # HF prefix of a head-model export is stripped; heads come from an adjacent config.json
    (tmp_path / "hf").mkdir()
    save_file({"dinov2_with_registers." + k: v for k, v in _hub_to_hf(hub).items()},
              str(tmp_path / "hf" / "model.safetensors"))
    (tmp_path / "hf" / "config.json").write_text('{"num_attention_heads": 2}')
    c = load_dinov2(tmp_path / "hf")
    assert c.config.num_heads == HEADS
    torch.testing.assert_close(c.forward_features(x)["x_prenorm"], want, rtol=0, atol=0)
    assert hf_to_hub(_hub_to_hf(hub)).keys() == hub.keys()


def test_strict_loading_names_bad_keys(tmp_path):
    hub = _random_tiny().state_dict()
    bad = dict(hub)
    del bad["blocks.1.ls2.gamma"]
    bad["blocks.0.extra.weight"] = torch.zeros(3)
    bad["norm.bias"] = torch.zeros(DIM + 1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as ei:
        load_dinov2(tmp_path / "bad.pth", num_heads=HEADS)
    msg = str(ei.value)
    assert "missing keys: blocks.1.ls2.gamma" in msg
    assert "unexpected keys: blocks.0.extra.weight" in msg
    assert "norm.bias (checkpoint (33,), network (32,))" in msg
    hf = _hub_to_hf(hub)
    del hf["encoder.layer.1.attention.attention.key.bias"]
    save_file(hf, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.1\.attention\.attention\.\{key\}\.bias"):
        load_dinov2(tmp_path / "bad.safetensors", num_heads=HEADS)
    with pytest.raises(CheckpointError, match="not found"):
        load_dinov2(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_dinov2(tmp_path / "junk.pth")


def test_hf_id_offline_error_is_clear(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(CheckpointError, match="facebook/dinov2-with-registers-large"):
        load_dinov2("facebook/dinov2-with-registers-large")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_dtype_asked_for_is_used_on_the_cpu(tmp_path, dtype):
    m = _random_tiny(4)
    torch.save(m.state_dict(), tmp_path / "tiny_hub.pth")
    assert {p.dtype for p in load_dinov2(tmp_path / "tiny_hub.pth", num_heads=HEADS).parameters()} == {torch.float32}
    cond = ImageConditioner(load_dinov2(tmp_path / "tiny_hub.pth", device="cpu", dtype=dtype, num_heads=HEADS))
    assert cond.dtype == dtype and {p.dtype for p in cond.model.parameters()} == {dtype}
    img = torch.rand(1, 3, IMG, IMG)
    tok = cond.encode(img)
    assert tok.dtype == torch.float32
    err = (tok - ImageConditioner(m).encode(img)).abs().max()
    assert 0 < err < (0.1 if dtype == torch.bfloat16 else 0.02)   # computed in low precision, same features


def test_conditioner_normalisation_and_non_affine_layer_norm():
    m = _random_tiny(2)
    with torch.no_grad():  # a strongly affine final norm must NOT show up in the conditioning
        m.norm.weight.fill_(3.0)
        m.norm.bias.fill_(5.0)
    cond = ImageConditioner(m)
    img = torch.rand(2, 3, IMG, IMG)
    tok = cond.encode(img)
    assert tok.shape == (2, 30, DIM) and tok.dtype == torch.float32
    torch.testing.assert_close(tok.mean(-1), torch.zeros(2, 30), atol=1e-5, rtol=0)
    torch.testing.assert_close(tok.std(-1, unbiased=False), torch.ones(2, 30), atol=1e-3, rtol=0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pre = m.forward_features((img - mean) / std)["x_prenorm"]
    torch.testing.assert_close(tok, F.layer_norm(pre, (DIM,)))
    # un-normalised input gives something else: the normalisation is really applied
    assert (F.layer_norm(m.forward_features(img)["x_prenorm"], (DIM,)) - tok).abs().max() > 1e-2
    grid = cond.patch_tokens(tok)
    assert grid.shape == (2, DIM, 5, 5)
    torch.testing.assert_close(grid[1, :, 2, 3], tok[1, 1 + 4 + 2 * 5 + 3])
    with pytest.raises(InputError):
        cond.encode(torch.rand(3, IMG, IMG))


def test_torch_hub_name_uses_hub_cache(tmp_path, monkeypatch):
    m = _random_tiny(3)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    torch.save(m.state_dict(), tmp_path / "checkpoints" / "dinov2_vitl14_reg4_pretrain.pth")
    got = load_dinov2("dinov2_vitl14_reg", num_heads=HEADS)
    x = torch.rand(1, 3, IMG, IMG)
    torch.testing.assert_close(got.forward_features(x)["x_prenorm"], m.forward_features(x)["x_prenorm"], rtol=0, atol=0)

    # not in the torch hub cache: the same weights come from the Hub (HF layout); offline that is one clear line
    from huggingface_hub import constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setenv("CUPID_WEIGHTS_DIR", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError, match="facebook/dinov2-with-registers-base.*cupid download"):
        load_dinov2("dinov2_vitb14_reg")


def test_register_free_checkpoints_use_hub_interpolation(tmp_path):
    torch.manual_seed(4)
    m = DinoV2.tiny(dim=DIM, depth=1, num_heads=HEADS, img_size=IMG, num_registers=0)
    torch.save(m.state_dict(), tmp_path / "noreg.pth")
    got = load_dinov2(tmp_path / "noreg.pth", num_heads=HEADS)
    assert got.num_registers == 0 and "register_tokens" not in got.state_dict()
    assert got.config.interpolate_offset == 0.1 and not got.config.interpolate_antialias
    assert got.forward_features(torch.rand(1, 3, 28, 56))["x_prenorm"].shape == (1, 1 + 2 * 4, DIM)
