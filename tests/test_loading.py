"""Strict loading of official-format checkpoints (NAME.json + NAME.safetensors)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cupid.errors import CheckpointError
from cupid.models import build_model, load_model, parse_hf_stem
from cupid.models.dtype import is_stored
from cupid.models.loading import _target_dtype
from cupid.sparse import SparseTensor

TINY = {
    "name": "SLatFlowModel",
    "args": {"resolution": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32, "cond_channels": 16,
             "num_blocks": 1, "num_heads": 2, "mlp_ratio": 2, "patch_size": 2, "num_io_res_blocks": 1,
             "io_block_channels": [16], "pe_mode": "ape", "qk_rms_norm": True, "use_fp16": True},
}


def _write(tmp: Path, state: dict[str, torch.Tensor], cfg: dict = TINY, stem: str = "tiny") -> Path:
    (tmp / f"{stem}.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / f"{stem}.safetensors"))
    return tmp / stem


def _random_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(TINY["name"], TINY["args"])
    return {k: (torch.randn_like(v.float()) * 0.1).to(v.dtype) for k, v in model.state_dict().items()}


def test_fp16_checkpoint_runs_float32_on_cpu_from_its_stored_weights(tmp_path: Path) -> None:
    """A float16 torso computes in float32 from the float16 tensors as stored: every weight reads as its
    exact float32 value, the output equals that of float32 copies bit for bit, at half the memory."""
    state = _random_state()
    assert state["blocks.0.self_attn.to_qkv.weight"].dtype == torch.float16
    assert state["input_layer.weight"].dtype == torch.float32
    stem = _write(tmp_path, state)
    model = load_model(stem)
    copies = load_model(stem, keep_low=False)
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k   # stored as in the checkpoint
        assert copies.state_dict()[k].dtype == torch.float32 and torch.equal(copies.state_dict()[k], v.float()), k
    qkv = model.blocks[0].self_attn.to_qkv
    assert is_stored(qkv) and isinstance(qkv, torch.nn.Linear) and type(qkv).__name__ == "Linear"
    assert qkv.weight.dtype == torch.float32 and torch.equal(qkv.weight, state["blocks.0.self_attn.to_qkv.weight"].float())
    assert is_stored(model.input_blocks[0].conv1.conv) and not is_stored(model.input_layer)
    assert not any(is_stored(m) for m in copies.modules())
    assert not model.training and model.dtype == torch.float32
    nbytes = [sum(p.numel() * p.element_size() for p in m.parameters()) for m in (model, copies)]
    assert nbytes[0] < 0.6 * nbytes[1]
    coords = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 4], [0, 5, 5, 5], [1, 0, 0, 0], [1, 7, 7, 7]], dtype=torch.int32)
    x, t, cond = SparseTensor(torch.randn(5, 4), coords), torch.tensor([500.0, 20.0]), torch.randn(2, 3, 16)
    with torch.no_grad():
        out, ref = model(x, t, cond), copies(x, t, cond)
    assert out.feats.shape == (5, 4) and out.feats.dtype == torch.float32
    assert torch.isfinite(out.feats).all() and torch.equal(out.feats, ref.feats)
    model.set_compute_dtype(torch.bfloat16)   # a later cast re-types the stored weights for real
    assert not is_stored(qkv) and qkv.weight.dtype == torch.bfloat16


def test_bfloat16_torso_on_cpu(tmp_path: Path) -> None:
    state = _random_state()
    model = load_model(_write(tmp_path, state), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert model.blocks[0].mlp.mlp[0].weight.dtype == torch.bfloat16
    assert model.input_blocks[0].conv1.conv.weight.dtype == torch.bfloat16
    assert model.t_embedder.mlp[0].weight.dtype == torch.float32
    assert model.blocks[0].norm2.weight.dtype == torch.float32


def test_float16_request_on_cpu_is_honoured(tmp_path: Path) -> None:
    """An explicit dtype is used on every device: float16 on the CPU is slow, but it is what was asked."""
    model = load_model(_write(tmp_path, _random_state()), dtype=torch.float16)
    assert model.dtype == torch.float16 and model.use_fp16
    assert model.blocks[0].self_attn.to_qkv.weight.dtype == torch.float16
    assert model.input_blocks[0].conv1.conv.weight.dtype == torch.float16
    assert model.t_embedder.mlp[0].weight.dtype == torch.float32      # embedders and norms stay float32
    assert model.blocks[0].norm2.weight.dtype == torch.float32
    coords = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 4], [0, 5, 5, 5], [1, 0, 0, 0]], dtype=torch.int32)
    out = model(SparseTensor(torch.randn(4, 4), coords), torch.tensor([500.0, 20.0]), torch.randn(2, 3, 16))
    assert out.feats.dtype == torch.float32 and torch.isfinite(out.feats).all()


def test_no_dtype_means_the_checkpoints_default_for_the_device() -> None:
    """None: float32 on the CPU whatever the checkpoint; on a GPU float16 where it was trained so."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert _target_dtype(cpu, None, use_fp16=True) == torch.float32
    assert _target_dtype(cuda, None, use_fp16=True) == torch.float16
    assert _target_dtype(cuda, None, use_fp16=False) == torch.float32
    assert _target_dtype(cpu, torch.float16, use_fp16=False) == torch.float16
    assert _target_dtype(cuda, torch.float32, use_fp16=True) == torch.float32


def test_mismatched_keys_are_all_named(tmp_path: Path) -> None:
    state = _random_state()
    del state["out_layer.bias"]
    state["blocks.0.surprise"] = torch.zeros(3)
    state["input_layer.weight"] = torch.zeros(16, 5)
    with pytest.raises(CheckpointError) as info:
        load_model(_write(tmp_path, state))
    msg = info.value.message
    assert "missing keys: out_layer.bias" in msg
    assert "unexpected keys: blocks.0.surprise" in msg
    assert "input_layer.weight (checkpoint (16, 5), network (16, 4))" in msg


def test_unknown_class_and_bad_args(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="unknown network class"):
        load_model(_write(tmp_path, {"w": torch.zeros(1)}, {"name": "NoSuchNet", "args": {}}, "a"))
    with pytest.raises(CheckpointError, match="bad arguments"):
        build_model("SparseStructureDecoder", {"nonsense": 1})


def test_meta_device_build_has_no_storage() -> None:
    args = dict(TINY["args"], model_channels=1024, num_blocks=24, num_heads=16, cond_channels=1024,
                io_block_channels=[128], resolution=64)
    with torch.device("meta"):
        model = build_model("SLatFlowModel", args)
    tensors = list(model.state_dict().values())
    assert tensors and all(t.is_meta for t in tensors)
    assert sum(t.numel() for t in tensors) > 4e8


def test_incomplete_local_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "half.json").write_text(json.dumps(TINY))
    with pytest.raises(CheckpointError, match="missing .*half.safetensors"):
        load_model(tmp_path / "half")


def test_hf_stem_parsing() -> None:
    assert parse_hf_stem("microsoft/TRELLIS-image-large/ckpts/ss_dec_conv3d_16l8_fp16") == (
        "microsoft/TRELLIS-image-large", "ckpts/ss_dec_conv3d_16l8_fp16")
    with pytest.raises(CheckpointError, match="neither a local checkpoint"):
        parse_hf_stem("just_a_name")


def test_hf_offline_error_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(CheckpointError) as info:
        load_model("microsoft/TRELLIS-image-large/ckpts/ss_dec_conv3d_16l8_fp16")
    msg = info.value.message
    assert "offline" in msg and "microsoft/TRELLIS-image-large" in msg and "ckpts/ss_dec_conv3d_16l8_fp16" in msg


def test_registry_lists_every_checkpoint_class() -> None:
    from cupid.models import REGISTRY
    from cupid.models.structured_latent_flow import ElasticSLatFlowModel, SLatFlowModel
    for name in ("SparseStructureEncoder", "SparseStructureDecoder", "SparseStructureFlowModel", "SLatFlowModel",
                 "ElasticSLatFlowModel", "SLatEncoder", "SLatGaussianDecoder", "SLatMeshDecoder",
                 "ElasticVisualLatentConditioningSLatFlowModel"):
        assert name in REGISTRY
    with torch.device("meta"):
        plain = build_model("SLatFlowModel", TINY["args"])
        elastic = build_model("ElasticSLatFlowModel", TINY["args"])
    assert isinstance(elastic, ElasticSLatFlowModel) and isinstance(elastic, SLatFlowModel)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in elastic.state_dict().items()}


@torch.no_grad()
def test_ss_encoder_posterior_and_shapes() -> None:
    torch.manual_seed(0)
    enc = build_model("SparseStructureEncoder", {"in_channels": 1, "latent_channels": 8, "num_res_blocks": 1,
                                                 "channels": [8, 16, 16], "num_res_blocks_middle": 1})
    x = (torch.rand(2, 1, 16, 16, 16) > 0.7).float()
    z, mean, logvar = enc(x, sample_posterior=False, return_raw=True)
    assert z.shape == (2, 8, 4, 4, 4) and torch.equal(z, mean)
    sample = enc(x, sample_posterior=True, generator=torch.Generator().manual_seed(1))
    noise = (sample - mean) / torch.exp(0.5 * logvar)
    assert 0.5 < noise.std().item() < 1.5  # reparameterised N(mean, exp(logvar)) draw
