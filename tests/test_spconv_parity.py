"""Sparse convolutions and the mesh decoder against TRELLIS's own code run on REAL spconv 2.3.8.

spconv computes a kernel-size-1 convolution as `features @ weight.view(Cin, Cout)` (not `features @ Wᵀ`),
and TRELLIS/CUPID checkpoints were trained that way; `conv1x1_convention` says how a network takes its
1×1 weights ("spconv", the default, or "textbook"). References: tests/fixtures/spconv_parity (README
there), made by TRELLIS's `sp.SparseConv3d` and `SLatMeshDecoder` on spconv 2.3.8, CPU, one thread.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from cupid.errors import CheckpointError
from cupid.models import load_model
from cupid.models.structured_latent_vae import SLatMeshDecoder, SparseSubdivideBlock3d
from cupid.sparse import SparseConv3d, SparseTensor, sparse_subdivide
from cupid.sparse import conv as conv_module
from cupid.sparse.conv import spconv_1x1_to_textbook, textbook_1x1_to_spconv
from tests.conftest import FIXTURES, MANIFEST, PARITY, REPO_ROOT
from tests.test_flexicubes import assert_same_mesh
from tests.test_slat_vae_parity import _sorted_rows

SPCONV = FIXTURES / "spconv_parity"
RELEASE_CKPTS = REPO_ROOT / "tests" / "assets" / "cupid_release_ckpts.json"
REL = 1e-5  # the bound, relative L2 over all output features
CASES = [c["case"] for c in json.loads((SPCONV / "reference.json").read_text())["layer_cases"]]


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref.double()).norm() / ref.double().norm()).item()


def _fixture(name: str) -> dict[str, torch.Tensor]:
    path = SPCONV / f"{name}.safetensors"
    if not path.is_file():
        pytest.fail(f"spconv parity fixture missing: {path}")
    return load_file(str(path))


@pytest.fixture(scope="module")
def layers() -> dict[str, torch.Tensor]:
    return _fixture("layers")


@pytest.fixture(scope="module")
def mesh_io() -> dict[str, torch.Tensor]:
    return _fixture("slat_dec_mesh.io")


def _conv(case: str, layers: dict[str, torch.Tensor], convention: str) -> SparseConv3d:
    w = layers[f"{case}.weight"]
    conv = SparseConv3d(w.shape[-1], w.shape[0], w.shape[1], conv1x1_convention=convention)
    conv.load_state_dict({"conv.weight": w, "conv.bias": layers[f"{case}.bias"]})
    return conv.eval()


@pytest.mark.parametrize("case", CASES)
@torch.no_grad()
def test_a_sparse_conv_with_spconv_weights_equals_spconv(case, layers):
    """Each layer, its weights loaded as spconv holds them, gives spconv's output (square and non-square
    1×1s, the mesh decoders' skip shapes, kernel 3). Under "textbook" a 1×1 gives F.conv3d's convolution
    of the same tensor instead, far from spconv's; for kernel 3 the setting changes nothing."""
    x = SparseTensor(layers[f"{case}.feats"], layers["coords"])
    ref, w, b = layers[f"{case}.out"], layers[f"{case}.weight"], layers[f"{case}.bias"]
    assert _rel(_conv(case, layers, "spconv")(x).feats, ref) <= REL
    textbook = _conv(case, layers, "textbook")(x).feats
    if w.shape[1] == 1:
        assert _rel(textbook, F.linear(x.feats, w.reshape(w.shape[0], -1), b)) <= REL
        assert _rel(textbook, ref) > 0.5
    else:
        assert _rel(textbook, ref) <= REL


@pytest.mark.parametrize("cin,cout", [(3, 5), (5, 3), (4, 4), (1, 6), (6, 1)])
def test_the_relay_reproduces_spconvs_view(cin, cout):
    """x @ weight.view(Cin, Cout) (spconv's 1×1 branch, taken literally) equals the textbook product with
    the re-laid weight; saving re-lays it back bit for bit. A square weight is not left alone: its re-lay
    is the transpose."""
    g = torch.Generator().manual_seed(cin * 10 + cout)
    w = torch.randn(cout, 1, 1, 1, cin, generator=g)
    x = torch.randn(7, cin, generator=g)
    t = spconv_1x1_to_textbook(w)
    assert t.shape == w.shape and t.is_contiguous()
    torch.testing.assert_close(x @ t.reshape(cout, cin).t(), x @ w.view(cin, cout), rtol=1e-6, atol=1e-6)
    assert torch.equal(textbook_1x1_to_spconv(t), w)
    if cin == cout:
        assert torch.equal(t.reshape(cin, cin), w.reshape(cin, cin).t()) and not torch.equal(t, w)


@torch.no_grad()
def test_the_mesh_decoder_equals_trellis_on_real_spconv(mesh_io):
    """The tiny mesh decoder (channel-changing 1×1 skips 256→64 and 64→32) loaded as an official
    checkpoint: its output layer and meshes equal TRELLIS's on spconv 2.3.8; as "textbook" it does not."""
    model = load_model(PARITY / "slat_dec_mesh")
    assert isinstance(model, SLatMeshDecoder) and model.conv1x1_convention == "spconv"
    x = SparseTensor(mesh_io["feats"], mesh_io["coords"])
    raw = model.forward_raw(x)
    a, b = _sorted_rows(raw.coords), _sorted_rows(mesh_io["out_coords"])
    assert torch.equal(raw.coords[a], mesh_io["out_coords"][b])
    assert _rel(raw.feats[a], mesh_io["out_feats"][b]) <= REL
    meshes = model.to_representation(raw)
    assert len(meshes) == 2 and all(m.success for m in meshes)
    for i, mesh in enumerate(meshes):
        assert_same_mesh(mesh, mesh_io[f"mesh{i}_vertices"], mesh_io[f"mesh{i}_faces"],
                         mesh_io[f"mesh{i}_vertex_attrs"])
    textbook = load_model(PARITY / "slat_dec_mesh", conv1x1_convention="textbook").forward_raw(x)
    assert _rel(textbook.feats[_sorted_rows(textbook.coords)], mesh_io["out_feats"][b]) > 0.5


@torch.no_grad()
def test_the_relay_happens_once_at_load(monkeypatch, mesh_io):
    """Only the two 1×1 skip weights are re-laid, as the checkpoint loads; running the decoder re-lays
    nothing (the re-lay functions are made to fail after loading)."""
    state = load_file(str(PARITY / "slat_dec_mesh.safetensors"))
    model = load_model(PARITY / "slat_dec_mesh")
    params = dict(model.named_parameters())
    relaid = sorted(k for k, v in state.items() if not torch.equal(params[k], v))
    assert relaid == ["upsample.0.skip_connection.conv.weight", "upsample.1.skip_connection.conv.weight"]
    for k in relaid:
        assert torch.equal(params[k], spconv_1x1_to_textbook(state[k]))

    def refuse(w):
        raise AssertionError("re-laid at run time")
    monkeypatch.setattr(conv_module, "spconv_1x1_to_textbook", refuse)
    monkeypatch.setattr(conv_module, "textbook_1x1_to_spconv", refuse)
    model.forward_raw(SparseTensor(mesh_io["feats"][:40], mesh_io["coords"][:40]))


def test_a_loaded_checkpoint_saves_as_it_was_stored(tmp_path):
    """state_dict() gives the checkpoint's tensors back exactly (float32, and a float16 torso kept as
    stored), so a checkpoint round-trips through load and save unchanged."""
    state = load_file(str(PARITY / "slat_dec_mesh.safetensors"))
    saved = load_model(PARITY / "slat_dec_mesh").state_dict()
    assert set(saved) == set(state) and all(torch.equal(saved[k], v) for k, v in state.items())
    key = "upsample.0.skip_connection.conv."
    given = {"conv.weight": state[key + "weight"].clone(), "conv.bias": state[key + "bias"]}
    tensor = given["conv.weight"]
    SparseConv3d(256, 64, 1).load_state_dict(given)
    assert given["conv.weight"] is tensor and torch.equal(tensor, state[key + "weight"])  # caller's dict untouched
    cfg = json.loads((PARITY / "slat_dec_mesh.json").read_text())
    cfg["args"]["use_fp16"] = True
    half = {k: v.half() if k.startswith("upsample.") and ".conv." in k else v for k, v in state.items()}
    (tmp_path / "m.json").write_text(json.dumps(cfg))
    save_file(half, str(tmp_path / "m.safetensors"))
    model = load_model(tmp_path / "m", dtype=torch.float32)
    skip = model.upsample[0].skip_connection.conv
    assert skip._parameters["weight"].dtype == torch.float16
    assert torch.equal(skip.weight, spconv_1x1_to_textbook(half["upsample.0.skip_connection.conv.weight"]).float())
    saved = model.state_dict()
    assert all(saved[k].dtype == v.dtype and torch.equal(saved[k], v) for k, v in half.items())


def test_the_convention_is_a_setting_of_the_checkpoint_config(tmp_path):
    """`conv1x1_convention` in the checkpoint's JSON args selects the textbook reading (weights taken as
    they are); an unknown value is refused naming the setting."""
    cfg = json.loads((PARITY / "slat_dec_mesh.json").read_text())
    state = load_file(str(PARITY / "slat_dec_mesh.safetensors"))
    shutil.copy(PARITY / "slat_dec_mesh.safetensors", tmp_path / "m.safetensors")
    (tmp_path / "m.json").write_text(json.dumps({**cfg, "args": {**cfg["args"], "conv1x1_convention": "textbook"}}))
    model = load_model(tmp_path / "m")
    assert model.conv1x1_convention == "textbook"
    assert all(b.skip_connection.conv.conv1x1_convention == "textbook" for b in model.upsample)
    key = "upsample.1.skip_connection.conv.weight"
    assert torch.equal(dict(model.named_parameters())[key], state[key])
    (tmp_path / "m.json").write_text(json.dumps({**cfg, "args": {**cfg["args"], "conv1x1_convention": "hwio"}}))
    with pytest.raises(CheckpointError, match="conv1x1_convention"):
        load_model(tmp_path / "m")


@torch.no_grad()
def test_the_skip_on_the_parents_uses_spconvs_product():
    """The subdivide block adds its 1×1 skip computed on the parent voxels, in place; written out the
    long way (the 8× subdivided input, spconv's `x @ weight.view(Cin, Cout)` on the children, as
    TRELLIS's block does) it is the same."""
    g = torch.Generator().manual_seed(3)
    block = SparseSubdivideBlock3d(64, 8, out_channels=32)
    stored = {k: torch.randn(v.shape, generator=g) * 0.1 + (1.0 if "act_layers" in k or "out_layers.1" in k else 0.0)
              for k, v in block.state_dict().items()}
    block.load_state_dict(stored)
    coords = torch.unique(torch.randint(0, 8, (40, 3), generator=g), dim=0)
    coords = torch.cat([torch.zeros(len(coords), 1, dtype=torch.long), coords], 1).int()
    x = SparseTensor(torch.randn(len(coords), 64, generator=g), coords)
    got = block(x)
    h = block.out_layers(sparse_subdivide(block.act_layers(x)))
    children = sparse_subdivide(x)
    w, b = stored["skip_connection.conv.weight"], stored["skip_connection.conv.bias"]
    want = h.feats + children.feats @ w.view(64, 32) + b
    assert torch.equal(got.coords, h.coords)
    assert _rel(got.feats, want) <= REL


def test_the_only_1x1_sparse_convs_are_the_mesh_decoders_skips():
    """Every network of TRELLIS-image-large and of CUPID's release, built from its checkpoint's JSON on
    the meta device: the kernel-size-1 sparse convolutions (the README's list) are the mesh decoder's
    two skips, and the release manifest's only [Cout, 1, 1, 1, Cin] tensors are their weights."""
    from cupid.models import build_model
    from cupid.sparse import SubMConv3d

    manifest = json.loads(MANIFEST.read_text())
    release = json.loads(RELEASE_CKPTS.read_text())
    configs = {**manifest, **{k: v for k, v in release.items() if not k.startswith("_")}}
    found = {}
    for stem, cfg in configs.items():
        with torch.device("meta"):
            model = build_model(cfg["name"], cfg["args"])
        for name, m in model.named_modules():
            if isinstance(m, SubMConv3d) and m.kernel_size == 1:
                found[f"{stem}:{name}"] = (m.in_channels, m.out_channels, m.conv1x1_convention)
    mesh = "slat_dec_mesh_swin8_B_64l8m256c_fp16"
    assert found == {f"{mesh}:upsample.0.skip_connection.conv": (768, 192, "spconv"),
                     f"{mesh}:upsample.1.skip_connection.conv": (192, 96, "spconv")}
    weights_1x1 = {f"{stem}:{k}" for stem, e in manifest.items() for k, (shape, _) in e["tensors"].items()
                   if len(shape) == 5 and shape[1:4] == [1, 1, 1]}
    assert weights_1x1 == {f"{k}.weight" for k in found}
