"""CUPID's release (hbb1/Cupid) as it is: every checkpoint class built from its release JSON has the
state dict that CUPID's code defines, derived here from the official TRELLIS-image-large manifest
plus the documented changes (16-channel stage-1 flow, 3-channel UV VAE, the stage-2 flow's 32-channel
input and visual conv head, the SLat encoder that compresses DINOv2 features to 8 channels).

The release JSONs are in tests/assets/cupid_release_ckpts.json (from cupid3d/Cupid's configs);
the weights cannot be downloaded here, so names, shapes and dtypes are what is checked.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cupid import config
from cupid.errors import CheckpointError
from cupid.models import build_model, load_model
from tests.conftest import MANIFEST

RELEASE = {k: v for k, v in json.loads((Path(__file__).parent / "assets" / "cupid_release_ckpts.json")
                                       .read_text()).items() if not k.startswith("_")}
Table = dict[str, tuple[list[int], str]]


@pytest.fixture(scope="module")
def trellis() -> dict[str, Table]:
    assert MANIFEST.is_file(), f"manifest not found at {MANIFEST}"
    return {stem: {k: (list(s), d) for k, (s, d) in e["tensors"].items()}
            for stem, e in json.loads(MANIFEST.read_text()).items()}


def _with(table: Table, **changes: tuple[list[int], str]) -> Table:
    out = dict(table)
    for name, value in changes.items():
        out[name.replace("__", ".")] = value
    return out


def _res_block(table: Table, channels: int) -> Table:
    """The tensors of one TRELLIS ResBlock3d of `channels` (suffix -> shape, dtype), from the manifest."""
    for name, (shape, _) in table.items():
        if name.endswith(".norm1.weight") and shape == [channels]:
            prefix = name[: -len("norm1.weight")]
            return {k[len(prefix):]: v for k, v in table.items() if k.startswith(prefix)}
    raise AssertionError(f"no {channels}-channel res block in the manifest")


def expected_suv_flow(t: dict[str, Table]) -> Table:
    """TRELLIS's ss flow with 16 channels in and out (8 occupancy latent + 8 UV latent)."""
    return _with(t["ss_flow_img_dit_L_16l8_fp16"], input_layer__weight=([1024, 16], "float32"),
                 out_layer__weight=([16, 1024], "float32"), out_layer__bias=([16], "float32"))


def expected_uv_decoder(t: dict[str, Table]) -> Table:
    """TRELLIS's ss decoder with 3 output channels: [in-image flag, u, v]."""
    return _with(t["ss_dec_conv3d_16l8_fp16"], out_layer__2__weight=([3, 32, 3, 3, 3], "float32"),
                 out_layer__2__bias=([3], "float32"))


def expected_uv_encoder(t: dict[str, Table]) -> Table:
    """TRELLIS's ss encoder layout (the decoder mirrored) with 3 input channels: res blocks per level,
    a stride-2 conv between levels (fp16 torso), float32 input/output layers."""
    dec = t["ss_dec_conv3d_16l8_fp16"]
    channels, latent = [32, 128, 512], 8
    out: Table = {"input_layer.weight": ([32, 3, 3, 3, 3], "float32"), "input_layer.bias": ([32], "float32")}
    idx = 0
    for level, ch in enumerate(channels):
        for _ in range(2):
            out.update({f"blocks.{idx}.{k}": v for k, v in _res_block(dec, ch).items()})
            idx += 1
        if level + 1 < len(channels):
            nxt = channels[level + 1]
            out[f"blocks.{idx}.conv.weight"] = ([nxt, ch, 2, 2, 2], "float16")
            out[f"blocks.{idx}.conv.bias"] = ([nxt], "float16")
            idx += 1
    for i in range(2):
        out.update({f"middle_block.{i}.{k}": v for k, v in _res_block(dec, 512).items()})
    out.update({"out_layer.0.weight": ([512], "float32"), "out_layer.0.bias": ([512], "float32"),
                "out_layer.2.weight": ([2 * latent, 512, 3, 3, 3], "float32"),
                "out_layer.2.bias": ([2 * latent], "float32")})
    return out


def expected_slat_encoder(t: dict[str, Table]) -> Table:
    """The swin transformer torso shared with TRELLIS's Gaussian decoder; 1024 DINOv2 channels in,
    mean and log-variance of 8 latent channels out."""
    gs = t["slat_dec_gs_swin8_B_64l8gs32_fp16"]
    out = {k: v for k, v in gs.items() if k.startswith("blocks.")}
    out.update({"input_layer.weight": ([768, 1024], "float32"), "input_layer.bias": ([768], "float32"),
                "out_layer.weight": ([16, 768], "float32"), "out_layer.bias": ([16], "float32")})
    return out


def expected_slat_flow(t: dict[str, Table]) -> Table:
    """TRELLIS's SLat flow whose input layer takes [noisy 8 ‖ encoded DINOv2 8 ‖ conv features 16],
    plus four float32 Conv2d 3→4→4→4→4 (k3)."""
    out = _with(t["slat_flow_img_dit_L_64l8p2_fp16"], input_layer__weight=([128, 32], "float32"))
    c_in = 3
    for i in range(4):
        out[f"visual_conv_blocks.{i}.weight"] = ([4, c_in, 3, 3], "float32")
        out[f"visual_conv_blocks.{i}.bias"] = ([4], "float32")
        c_in = 4
    return out


EXPECTED = {
    "ckpts/suv_flow_img_dit_L_16l8_fp16": expected_suv_flow,
    "ckpts/uv_vae_conv3d_16l8_fp16_encoder": expected_uv_encoder,
    "ckpts/uv_vae_conv3d_16l8_fp16_decoder": expected_uv_decoder,
    "ckpts/slat_flow_img_dit_L_64l8p2_fp16": expected_slat_flow,
    "microsoft/TRELLIS-image-large/ckpts/slat_enc_swin8_B_64l8_fp16": expected_slat_encoder,
}


def _state_table(name: str, args: dict) -> Table:
    with torch.device("meta"):
        model = build_model(name, args)
    return {k: (list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()}


def test_every_release_checkpoint_is_covered():
    assert set(EXPECTED) == set(RELEASE)


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_release_class_matches_the_release_layout(stem, trellis):
    entry = RELEASE[stem]
    got, want = _state_table(entry["name"], entry["args"]), EXPECTED[stem](trellis)
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, f"missing {missing[:8]} extra {extra[:8]}"
    wrong = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not wrong, f"shape/dtype mismatches: {dict(list(wrong.items())[:8])}"


def test_elastic_names_of_cupids_configs_build_the_same_networks():
    enc = RELEASE["microsoft/TRELLIS-image-large/ckpts/slat_enc_swin8_B_64l8_fp16"]
    assert _state_table("ElasticSLatEncoder", enc["args"]) == _state_table(enc["name"], enc["args"])
    flow = RELEASE["ckpts/slat_flow_img_dit_L_64l8p2_fp16"]
    assert (_state_table("VisualLatentConditioningSLatFlowModel", flow["args"])
            == _state_table(flow["name"], flow["args"]))


def test_pipeline_roles_point_at_the_release_and_download_fetches_them():
    """config.RELEASE_MODELS names exactly these checkpoints, and `cupid download` fetches each."""
    import fnmatch

    def repo_and_file(stem: str) -> tuple[str, str]:
        parts = stem.split("/")
        return (config.CUPID_MODEL_ID, stem) if parts[0] == "ckpts" else ("/".join(parts[:2]), "/".join(parts[2:]))

    roles = config.RELEASE_MODELS
    assert roles["sparse_structure_flow_model"] == "ckpts/suv_flow_img_dit_L_16l8_fp16"
    assert roles["sparse_structure_uv_decoder"] == "ckpts/uv_vae_conv3d_16l8_fp16_decoder"
    assert roles["slat_flow_model"] == "ckpts/slat_flow_img_dit_L_64l8p2_fp16"
    assert roles["slat_encoder"] == "microsoft/TRELLIS-image-large/ckpts/slat_enc_swin8_B_64l8_fp16"
    for stem in roles.values():
        repo, path = repo_and_file(stem)
        for ext in (".json", ".safetensors"):
            assert any(fnmatch.fnmatch(path + ext, pat) for pat in config.DOWNLOAD_PATTERNS[repo]), path + ext


def _tiny_suv_args() -> dict:
    return dict(RELEASE["ckpts/suv_flow_img_dit_L_16l8_fp16"]["args"], resolution=4, model_channels=32,
                cond_channels=16, num_blocks=1, num_heads=2)


def test_float32_weights_load_strictly_into_the_fp16_layout(tmp_path):
    """The release stores the stage-1 flow in float32 though its JSON says use_fp16: it must load."""
    name = RELEASE["ckpts/suv_flow_img_dit_L_16l8_fp16"]["name"]
    args = _tiny_suv_args()
    ref = build_model(name, args)
    state = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(i)).float()
             for i, (k, v) in enumerate(ref.state_dict().items())}
    assert {str(v.dtype) for v in ref.state_dict().values()} == {"torch.float32", "torch.float16"}
    save_file(state, str(tmp_path / "suv.safetensors"))
    (tmp_path / "suv.json").write_text(json.dumps({"name": name, "args": args}))
    model = load_model(tmp_path / "suv")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v.float(), state[k], msg=k)
    x = torch.randn(1, 16, 4, 4, 4)
    out = model(x, torch.tensor([500.0]), torch.randn(1, 5, 16))
    assert out.shape == (1, 16, 4, 4, 4) and torch.isfinite(out).all()


def test_an_8_channel_checkpoint_under_the_16_channel_json_is_refused(tmp_path):
    """TRELLIS's ss flow weights with CUPID's stage-1 JSON: a clear error naming the tensor."""
    name, args = RELEASE["ckpts/suv_flow_img_dit_L_16l8_fp16"]["name"], _tiny_suv_args()
    trellis_like = build_model(name, dict(args, in_channels=8, out_channels=8)).state_dict()
    save_file({k: v.float().contiguous() for k, v in trellis_like.items()}, str(tmp_path / "suv.safetensors"))
    (tmp_path / "suv.json").write_text(json.dumps({"name": name, "args": args}))
    with pytest.raises(CheckpointError, match="input_layer.weight"):
        load_model(tmp_path / "suv")
