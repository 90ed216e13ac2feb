"""SLat VAE networks against the original TRELLIS code (tiny random-weight checkpoints, float32 CPU)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from cupid.models import build_model, load_model
from cupid.models.structured_latent_vae import SLatEncoder, SLatGaussianDecoder, SLatMeshDecoder
from cupid.representations.gaussian import Gaussians
from cupid.representations.mesh import MeshExtractResult
from cupid.sparse import SparseTensor
from tests.conftest import FIXTURES, MANIFEST, PARITY
from tests.test_flexicubes import assert_same_mesh

TOL = 1e-4

# TRELLIS-image-large's ckpts/slat_enc_swin8_B_64l8_fp16 (the encoder CUPID loads for its visual latent)
ENCODER_ARGS = {"resolution": 64, "in_channels": 1024, "model_channels": 768, "latent_channels": 8,
                "num_blocks": 12, "num_heads": 12, "mlp_ratio": 4, "attn_mode": "swin", "window_size": 8,
                "use_fp16": True}


def _io(name: str) -> dict[str, torch.Tensor]:
    path = PARITY / f"{name}.io.safetensors"
    if not path.is_file():
        pytest.fail(f"parity fixture missing: {path}")
    return load_file(str(path))


def _sorted_rows(coords: torch.Tensor) -> torch.Tensor:
    c = coords.long()
    return torch.argsort(((c[:, 0] * 4096 + c[:, 1]) * 4096 + c[:, 2]) * 4096 + c[:, 3])


def _assert_rows_close(got: SparseTensor, ref_coords: torch.Tensor, ref_feats: torch.Tensor) -> None:
    oa, ob = _sorted_rows(got.coords), _sorted_rows(ref_coords)
    assert torch.equal(got.coords[oa], ref_coords[ob].to(got.coords.dtype)), "output voxels differ"
    err = (got.feats[oa] - ref_feats[ob]).abs().max().item()
    assert err <= TOL, f"max abs err {err:.3g}"


@pytest.fixture(scope="module")
def gs_case():
    return load_model(PARITY / "slat_dec_gs"), _io("slat_dec_gs")


@pytest.fixture(scope="module")
def mesh_case():
    # This reference was made with a dense stand-in for spconv, which computes the 1×1 skip convolutions
    # the textbook way: it holds the "textbook" convention. TRELLIS on real spconv (the default
    # convention) is tests/fixtures/spconv_parity, checked in tests/test_spconv_parity.py.
    return load_model(PARITY / "slat_dec_mesh", conv1x1_convention="textbook"), _io("slat_dec_mesh")


@torch.no_grad()
def test_gaussian_decoder_raw_output(gs_case):
    model, io = gs_case
    assert isinstance(model, SLatGaussianDecoder)
    raw = model.forward_raw(SparseTensor(io["feats"], io["coords"]))
    _assert_rows_close(raw, io["coords"], io["out_feats"])


@torch.no_grad()
def test_gaussian_decoder_gaussians(gs_case):
    model, io = gs_case
    gaussians = model(SparseTensor(io["feats"], io["coords"]))
    assert len(gaussians) == 2 and all(isinstance(g, Gaussians) for g in gaussians)
    for i, gs in enumerate(gaussians):
        for key in ("xyz", "scaling", "opacity", "rotation", "features_dc"):
            ref, got = io[f"gs{i}_{key}"], getattr(gs, key)
            assert got.shape == ref.shape, key
            assert (got - ref).abs().max().item() <= TOL, key


@torch.no_grad()
def test_mesh_decoder_raw_output(mesh_case):
    model, io = mesh_case
    assert isinstance(model, SLatMeshDecoder) and model.mesh_resolution == 64
    raw = model.forward_raw(SparseTensor(io["feats"], io["coords"]))
    assert raw.feats.shape[1] == 101
    _assert_rows_close(raw, io["out_coords"], io["out_feats"])


@torch.no_grad()
def test_mesh_decoder_meshes(mesh_case):
    model, io = mesh_case
    meshes = model(SparseTensor(io["feats"], io["coords"]))
    assert len(meshes) == 2 and all(isinstance(m, MeshExtractResult) and m.success for m in meshes)
    for i, mesh in enumerate(meshes):
        assert_same_mesh(mesh, io[f"mesh{i}_vertices"], io[f"mesh{i}_faces"], io[f"mesh{i}_vertex_attrs"])


def test_encoder_checkpoint_layout_on_meta():
    """The released encoder's args build on the meta device with TRELLIS's state-dict layout."""
    with torch.device("meta"):
        enc = build_model("SLatEncoder", ENCODER_ARGS)
    assert isinstance(enc, SLatEncoder)
    sd = enc.state_dict()
    assert all(t.is_meta for t in sd.values())
    assert sd["input_layer.weight"].shape == (768, 1024) and sd["input_layer.weight"].dtype == torch.float32
    assert sd["out_layer.weight"].shape == (16, 768) and sd["out_layer.weight"].dtype == torch.float32
    # the transformer trunk is the same as the released Gaussian decoder's (manifest: names, shapes, fp16)
    manifest = json.loads(MANIFEST.read_text())["slat_dec_gs_swin8_B_64l8gs32_fp16"]["tensors"]
    trunk = {k: (list(s), d) for k, (s, d) in manifest.items() if k.startswith("blocks.")}
    got = {k: (list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in sd.items() if k.startswith("blocks.")}
    assert got == trunk
    n_params = sum(v.numel() for v in sd.values())
    assert n_params == 1024 * 768 + 768 + 85017600 + 768 * 16 + 16
    assert [b.attn.shift_window for b in enc.blocks[:3]] == [0, 4, 0]


def _small_encoder() -> SLatEncoder:
    torch.manual_seed(0)
    enc = SLatEncoder(resolution=16, in_channels=12, model_channels=32, latent_channels=4, num_blocks=2,
                      num_heads=2, window_size=4)
    with torch.no_grad():  # the out layer starts at zero (as in TRELLIS); give it weights to test the head
        enc.out_layer.weight.normal_(0, 0.2)
        enc.out_layer.bias.normal_(0, 0.2)
    return enc.eval()


@torch.no_grad()
def test_encoder_shapes_and_posterior():
    enc = _small_encoder()
    g = torch.Generator().manual_seed(1)
    coords = torch.cat([torch.zeros(30, 1, dtype=torch.int32), torch.randint(0, 16, (30, 3), generator=g, dtype=torch.int32)], 1)
    coords = torch.unique(coords, dim=0)
    x = SparseTensor(torch.randn(coords.shape[0], 12, generator=g), coords)
    raw = enc.forward_raw(x)
    assert raw.feats.shape == (coords.shape[0], 8) and torch.equal(raw.coords, x.coords)
    z, mean, logvar = enc(x, sample_posterior=False, return_raw=True)
    assert torch.equal(z.feats, mean) and torch.equal(mean, raw.feats[:, :4]) and torch.equal(logvar, raw.feats[:, 4:])
    z1 = enc(x, sample_posterior=True, generator=torch.Generator().manual_seed(5))
    z2 = enc(x, sample_posterior=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(z1.feats, z2.feats) and not torch.equal(z1.feats, mean)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(z1.feats, mean + torch.exp(0.5 * logvar) * noise)
    with pytest.raises(ValueError, match="input channels"):
        enc(SparseTensor(torch.randn(coords.shape[0], 5), coords))


@torch.no_grad()
def test_encoder_swin_attention_is_local():
    """Windowed attention: a voxel far away (other windows in both shifted partitions) has no influence."""
    enc = _small_encoder()
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 15, 15, 15]], dtype=torch.int32)
    feats = torch.randn(3, 12, generator=torch.Generator().manual_seed(2))
    a = enc.forward_raw(SparseTensor(feats, coords)).feats
    feats2 = feats.clone()
    feats2[2] += 1.0
    b = enc.forward_raw(SparseTensor(feats2, coords)).feats
    assert torch.allclose(a[:2], b[:2], atol=1e-6) and not torch.allclose(a[2], b[2])


def test_bad_attention_mode_is_rejected():
    with pytest.raises(ValueError, match="attn_mode"):
        SLatMeshDecoder(resolution=8, model_channels=64, latent_channels=8, num_blocks=1, num_heads=2,
                        attn_mode="shift_order", representation_config={"use_color": True})


@torch.no_grad()
def test_mesh_decoder_bfloat16_close():
    """bfloat16 torso (transformer + subdivide convs) on the CPU stays near the float32 reference
    (TRELLIS's own decoder on real spconv)."""
    io = load_file(str(FIXTURES / "spconv_parity" / "slat_dec_mesh.io.safetensors"))
    model = load_model(PARITY / "slat_dec_mesh", dtype=torch.bfloat16)
    assert model.upsample[0].out_layers[0].conv.weight.dtype == torch.bfloat16
    assert model.upsample[0].act_layers[0].weight.dtype == torch.float32
    assert model.out_layer.weight.dtype == torch.float32
    raw = model.forward_raw(SparseTensor(io["feats"], io["coords"]))
    assert raw.feats.dtype == torch.float32
    oa, ob = _sorted_rows(raw.coords), _sorted_rows(io["out_coords"])
    ref = io["out_feats"][ob]
    rel = (raw.feats[oa] - ref).norm() / ref.norm()
    assert rel.item() < 0.05
    meshes = model.to_representation(raw)
    assert all(m.success for m in meshes)
