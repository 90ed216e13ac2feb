"""Parity with the original TRELLIS code: tiny official-format checkpoints with random weights, inputs
and reference outputs computed by the original implementation in float32 (shared fixtures)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from cupid.models import load_model
from cupid.representations.gaussian import gaussians_from_decoder_output, offset_perturbation
from cupid.sparse import SparseTensor
from tests.conftest import PARITY

TOL = 1e-4


def _fixture(name: str) -> dict[str, torch.Tensor]:
    path = PARITY / f"{name}.io.safetensors"
    if not path.is_file():
        pytest.fail(f"parity fixture missing: {path}")
    return load_file(str(path))


def _match_rows(coords_a: torch.Tensor, coords_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row orders that sort both coordinate sets identically (asserting the sets are equal)."""
    def order(c: torch.Tensor) -> torch.Tensor:
        c = c.long()
        key = ((c[:, 0] * 4096 + c[:, 1]) * 4096 + c[:, 2]) * 4096 + c[:, 3]
        return torch.argsort(key)
    oa, ob = order(coords_a), order(coords_b)
    assert torch.equal(coords_a[oa], coords_b[ob]), "output voxels differ from the reference"
    return oa, ob


@torch.no_grad()
def test_ss_flow_parity() -> None:
    io = _fixture("ss_flow")
    model = load_model(PARITY / "ss_flow")
    out = model(io["x"], io["t"], io["cond"])
    assert out.shape == io["out"].shape
    assert (out - io["out"]).abs().max().item() <= TOL


@torch.no_grad()
def test_ss_dec_parity() -> None:
    io = _fixture("ss_dec")
    model = load_model(PARITY / "ss_dec")
    out = model(io["x"])
    assert out.shape == io["out"].shape
    assert (out - io["out"]).abs().max().item() <= TOL


@torch.no_grad()
def test_slat_flow_parity() -> None:
    io = _fixture("slat_flow")
    model = load_model(PARITY / "slat_flow")
    out = model(SparseTensor(io["feats"], io["coords"]), io["t"], io["cond"])
    oa, ob = _match_rows(out.coords, io["out_coords"])
    assert (out.feats[oa] - io["out_feats"][ob]).abs().max().item() <= TOL


@torch.no_grad()
def test_slat_flow_bfloat16_close() -> None:
    """bfloat16 torso on the CPU stays near the float32 reference (mixed precision, not a parity claim)."""
    io = _fixture("slat_flow")
    model = load_model(PARITY / "slat_flow", dtype=torch.bfloat16)
    assert model.blocks[0].self_attn.to_qkv.weight.dtype == torch.bfloat16
    assert model.input_layer.weight.dtype == torch.float32
    out = model(SparseTensor(io["feats"], io["coords"]), io["t"], io["cond"])
    ref = io["out_feats"]
    rel = (out.feats.float() - ref).norm() / ref.norm()
    assert rel.item() < 0.05


def test_gaussians_from_reference_decoder_output() -> None:
    """Raw Gaussian-decoder outputs -> activated Gaussians exactly as the original representation."""
    io = _fixture("slat_dec_gs")
    args = json.loads((PARITY / "slat_dec_gs.json").read_text())["args"]
    rc = args["representation_config"]
    buffer = load_file(str(PARITY / "slat_dec_gs.safetensors"))["offset_perturbation"]
    assert torch.equal(offset_perturbation(rc["num_gaussians"], rc["voxel_size"]), buffer)
    gaussians = gaussians_from_decoder_output(io["coords"], io["out_feats"], rc, args["resolution"], buffer)
    assert len(gaussians) == 2
    for i, gs in enumerate(gaussians):
        for key in ("xyz", "scaling", "opacity", "rotation", "features_dc"):
            ref = io[f"gs{i}_{key}"]
            got = getattr(gs, key)
            assert got.shape == ref.shape, key
            assert (got - ref).abs().max().item() <= 1e-6, key
        assert torch.equal(gs.get_xyz, gs.xyz)
