"""`cupid make-tiny-model`: a complete model in the official format, small enough for a CPU in seconds.

Every checkpoint the pipeline loads is written as `ckpts/NAME.json` + `NAME.safetensors` (the DINOv2
conditioner as a torch.hub-layout `.pth`, the segment-anything model as a `sam_vit_*.pth`-layout state
dict, the background remover as an ONNX file with u2net's interface) beside a `pipeline.json`, exactly as the release lays them out, so the tiny model runs the same
loading and inference code as the real weights.

Random networks give random shapes, and a random UV cube fits no camera. So that the whole pipeline
still runs end to end, the two stage-1 decoders are fitted (a few hundred Adam steps in float64, fixed seed;
seed 0's result ships as `assets/tiny_stage1_decoders_seed0.safetensors`) to ignore their latent and decode a spherical shell of radius 0.3 and the UV cube of that shell
seen by a fixed camera (`TINY_CAMERA`). Everything else gets seeded random weights (N(0, 0.05²), norm gains 1 + N(0, 0.05²)), so stage 2's
mesh is noise within the shell's voxels: the tiny model checks plumbing, not quality.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .geometry import voxel_centers
from .models import build_model
from .models.dinov2 import DinoV2
from .models.sam_tiny import TINY_SAM_FILE, write_tiny_sam

TINY_FLOW_RES = 4        # stage-1 latent grid; the decoders upsample 4× to a 16³ structure grid
TINY_GRID = 16
TINY_DINO_DIM = 64
SHELL_RADIUS = 0.3
TINY_REMOVER_FILE = "ckpts/u2net_tiny.onnx"  # pipeline.json's "background_model"
U2NET_SIDE = 320                              # rembg's u2net session feeds 1x3x320x320


def _look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV world->camera rotation and translation for a camera at `eye` looking at `target`."""
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return R, -R @ eye


def tiny_camera() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fixed camera of the tiny model, in pixels of a 518² crop: 40° field of view, 2.2 units away."""
    az, el = np.radians(30.0), np.radians(20.0)
    eye = 2.2 * np.array([np.cos(el) * np.sin(az), -np.cos(el) * np.cos(az), np.sin(el)])
    R, t = _look_at(eye, np.zeros(3), np.array([0.0, 0.0, 1.0]))
    f = 259.0 / np.tan(np.radians(20.0))
    K = np.array([[f, 0, 259.0], [0, f, 259.0], [0, 0, 1.0]])
    return K, R, t


TINY_CAMERA = tiny_camera()


def shell_targets(res: int = TINY_GRID) -> tuple[np.ndarray, np.ndarray]:
    """Occupancy of a spherical shell (one voxel thick) and its true uv in the tiny camera."""
    idx = np.stack(np.meshgrid(*(np.arange(res),) * 3, indexing="ij"), -1).reshape(-1, 3)
    centres = voxel_centers(idx, res)
    r = np.linalg.norm(centres, axis=1)
    occ = (np.abs(r - SHELL_RADIUS) < 0.75 / res).reshape(res, res, res)
    K, R, t = TINY_CAMERA
    cam = centres @ R.T + t
    uv = (cam @ K.T)[:, :2] / cam[:, 2:3] / 518.0
    return occ, uv.reshape(res, res, res, 2)


def _configs() -> dict[str, dict[str, Any]]:
    """Tiny args for every checkpoint: only argument names the release's own classes accept (its stage-2
    flow takes no `pretrained_slat_enc`; the pipeline hands it the SLat encoder of pipeline.json)."""
    flow_common = {"model_channels": 32, "cond_channels": TINY_DINO_DIM, "num_blocks": 1, "num_heads": 2,
                   "mlp_ratio": 2, "pe_mode": "ape", "qk_rms_norm": True, "use_fp16": False}
    ss_dec = {"latent_channels": 8, "num_res_blocks": 1, "num_res_blocks_middle": 1, "channels": [32, 16, 8],
              "use_fp16": False}
    swin = {"num_blocks": 1, "num_heads": 2, "mlp_ratio": 2, "attn_mode": "swin", "window_size": 4,
            "use_fp16": False}
    return {
        "suv_flow_tiny": {"name": "SparseStructureFlowModel", "args": {
            "resolution": TINY_FLOW_RES, "in_channels": 16, "out_channels": 16, "patch_size": 1, **flow_common}},
        "ss_dec_tiny": {"name": "SparseStructureDecoder", "args": {"out_channels": 1, **ss_dec}},
        "uv_vae_tiny_decoder": {"name": "SparseStructureDecoder", "args": {"out_channels": 3, **ss_dec}},
        "slat_flow_tiny": {"name": "ElasticVisualLatentConditioningSLatFlowModel", "args": {
            "resolution": TINY_GRID, "in_channels": 8, "out_channels": 8, "cond_latent_channels": 8,
            "patch_size": 2, "num_io_res_blocks": 1, "io_block_channels": [16], "visual_feat_channels": [4, 4, 4, 4],
            "visual_feat_resolution": 64, "visual_conv_kernel_size": 3, **flow_common}},
        "slat_enc_tiny": {"name": "SLatEncoder", "args": {
            "resolution": TINY_GRID, "in_channels": TINY_DINO_DIM, "model_channels": 32, "latent_channels": 8,
            **swin}},
        "slat_dec_mesh_tiny": {"name": "SLatMeshDecoder", "args": {
            "resolution": TINY_GRID, "model_channels": 256, "latent_channels": 8,
            "representation_config": {"use_color": True}, **swin}},
        "slat_dec_gs_tiny": {"name": "SLatGaussianDecoder", "args": {
            "resolution": TINY_GRID, "model_channels": 32, "latent_channels": 8, "representation_config": {
                "lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1},
                "perturb_offset": True, "voxel_size": 1.5, "num_gaussians": 4, "2d_filter_kernel_size": 0.1,
                "3d_filter_kernel_size": 9e-4, "scaling_bias": 4e-3, "opacity_bias": 0.1,
                "scaling_activation": "softplus"}, **swin}},
    }


ROLES = {
    "sparse_structure_flow_model": "ckpts/suv_flow_tiny",
    "sparse_structure_decoder": "ckpts/ss_dec_tiny",
    "sparse_structure_uv_decoder": "ckpts/uv_vae_tiny_decoder",
    "slat_flow_model": "ckpts/slat_flow_tiny",
    "slat_encoder": "ckpts/slat_enc_tiny",
    "slat_decoder_mesh": "ckpts/slat_dec_mesh_tiny",
    "slat_decoder_gs": "ckpts/slat_dec_gs_tiny",
}


def randomize_weights(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Draw every parameter from N(0, 0.05²) and shift norm gains by +1 (as the parity fixtures do):
    the networks' own initialisation zeroes output layers, which would make every output constant."""
    with torch.no_grad():
        for module_name, module in model.named_modules():
            for name, p in module.named_parameters(recurse=False):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
                if name == "weight" and ("norm" in type(module).__name__.lower() or "norm" in module_name.split(".")[-1]):
                    p.add_(1.0)


FITTED_STEMS = ("ss_dec_tiny", "uv_vae_tiny_decoder")
# The two fitted decoders of seed 0, as `fit_stage1_decoder` makes them (see `write_fitted_asset`).
FITTED_ASSET = Path(__file__).resolve().parent / "assets" / "tiny_stage1_decoders_seed0.safetensors"


def fit_stage1_decoder(model: torch.nn.Module, target_occ: np.ndarray, target_uv: np.ndarray | None,
                       steps: int = 300) -> float:
    """Fit a stage-1 decoder to output the target from any latent; returns the final loss.

    Fitted in float64 on one thread: a float32 fit rounds differently on different CPUs (MKL and oneDNN
    pick other kernels on AMX, AVX-512 or AVX2 machines, and on AMD than on Intel), and hundreds of Adam
    steps amplify that to 1% of the decoded UV cube. In float64 those differences stay ~1e-11, far below
    the float32 rounding of the saved weights, so the same seed gives the same bits everywhere (the
    release-parity fixtures were computed from them)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.double()
    model.dtype = torch.float64
    try:
        return _fit_steps(model, target_occ, target_uv, steps)
    finally:
        model.float()
        model.dtype = torch.float32
        torch.set_num_threads(threads)


def _fit_steps(model: torch.nn.Module, target_occ: np.ndarray, target_uv: np.ndarray | None, steps: int) -> float:
    f64 = torch.float64
    with torch.no_grad():
        model.input_layer.weight.zero_()   # the latent is ignored: zero padding gives the position
    params = [p for n, p in model.named_parameters() if not n.startswith("input_layer.weight")]
    opt = torch.optim.Adam(params, lr=3e-3)
    occ = torch.from_numpy(target_occ.astype(np.float64))
    x = torch.zeros(1, model.latent_channels, TINY_FLOW_RES, TINY_FLOW_RES, TINY_FLOW_RES, dtype=f64)
    if target_uv is not None:
        uv = torch.from_numpy(np.clip(target_uv, 0.02, 0.98).astype(np.float64)).permute(3, 0, 1, 2)
        uv_logit = torch.log(uv / (1 - uv))
    loss = torch.zeros((), dtype=f64)
    for _ in range(steps):
        out = model(x)[0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out[0], occ, pos_weight=torch.tensor(4.0, dtype=f64))
        if target_uv is not None:
            loss = loss + 4.0 * ((out[1:3] - uv_logit) ** 2 * (occ + 0.05)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def _fit_targets(stem: str) -> tuple[np.ndarray, np.ndarray | None]:
    occ, uv = shell_targets()
    return occ, (uv if stem == "uv_vae_tiny_decoder" else None)


def _load_fitted(model: torch.nn.Module, stem: str) -> None:
    """Seed 0's fitted weights from the packaged asset: a 300-step float64 fit takes minutes on 2 cores."""
    from safetensors.torch import load_file

    state = load_file(str(FITTED_ASSET))
    prefix = stem + "."
    model.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})


def write_fitted_asset(path: str | Path = FITTED_ASSET) -> Path:
    """Fit seed 0's two stage-1 decoders from scratch and store them (how the packaged asset was made)."""
    from safetensors.torch import save_file

    fitted, _ = _checkpoint_networks(seed=0, refit=True)
    state = {f"{stem}.{k}": v.detach().contiguous().clone()
             for stem in FITTED_STEMS for k, v in fitted[stem].state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return Path(path)


def save_checkpoint(model: torch.nn.Module, ckpts: Path, stem: str, spec: dict[str, Any]) -> None:
    """Write ckpts/STEM.json ({"name", "args"}) and STEM.safetensors: the official checkpoint format."""
    from safetensors.torch import save_file

    (ckpts / f"{stem}.json").write_text(json.dumps(spec, indent=1))
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(ckpts / f"{stem}.safetensors"))


TINY_MOGE_CONFIG = {"encoder": "cupid_tiny14", "remap_output": "exp", "intermediate_layers": 2, "dim_proj": 32,
                    "dim_upsample": [32, 32, 32], "dim_times_res_block_hidden": 2, "num_res_blocks": 1,
                    "num_tokens_range": [20, 40], "last_conv_channels": 32, "last_conv_size": 1}


def _write_tiny_moge(folder: Path, generator: torch.Generator) -> None:
    """A MoGe v1 `model.pt` ({"model_config", "model"}, as the official release stores it) on a tiny backbone."""
    from .models.moge import build_moge

    net = build_moge(TINY_MOGE_CONFIG)
    randomize_weights(net, generator)
    with torch.no_grad():  # every pixel valid, depths around 2 units: a usable (if noisy) point map
        points_out, mask_out = net.head.output_block[0][-1], net.head.output_block[1][-1]
        mask_out.weight.zero_()
        mask_out.bias.fill_(10.0)
        points_out.weight.mul_(0.01)
        points_out.bias[2] = float(np.log(2.0))
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model_config": TINY_MOGE_CONFIG,
                "model": {k: v.detach().clone() for k, v in net.state_dict().items()}}, folder / "model.pt")


def _tiny_stack(dim_in: Any, dim_out: Any, num_res_blocks: list[int]) -> dict:
    dims = [16] * 5
    return {"dim_in": dim_in, "dim_out": dim_out, "dim_res_blocks": dims, "num_res_blocks": num_res_blocks,
            "res_block_in_norm": "none", "res_block_hidden_norm": "none",
            "resamplers": ["conv_transpose", "conv_transpose", "conv_transpose", "bilinear"]}


TINY_MOGE2_CONFIG = {
    "encoder": {"backbone": "cupid_tiny14", "intermediate_layers": [0, 1], "dim_out": 16},
    "neck": _tiny_stack([18, 2, 2, 2, 2], None, [0, 1, 0, 0, 0]),
    "points_head": _tiny_stack([16] * 5, [None, None, None, None, 3], [0, 0, 0, 0, 0]),
    "mask_head": _tiny_stack([16] * 5, [None, None, None, None, 1], [0, 0, 0, 0, 0]),
    "scale_head": {"dims": [32, 16, 1]},
    "remap_output": "exp", "num_tokens_range": [20, 40],
}


def write_tiny_moge2(folder: str | Path, seed: int = 0, metric_scale: float = 1.0) -> Path:
    """A metric MoGe-2 `model.pt` (scale head included, the official layout) on the tiny backbone: every
    pixel valid, depths around 2 units times `metric_scale` meters. For tests of *Real size*."""
    from .models.moge import build_moge

    generator = torch.Generator().manual_seed(seed)
    net = build_moge(TINY_MOGE2_CONFIG)
    randomize_weights(net, generator)
    with torch.no_grad():
        points_out, mask_out = net.points_head.output_blocks[-1], net.mask_head.output_blocks[-1]
        mask_out.weight.zero_()
        mask_out.bias.fill_(10.0)
        points_out.weight.mul_(0.01)
        points_out.bias[2] = float(np.log(2.0))
        last = net.scale_head[-1]
        last.weight.zero_()
        last.bias.fill_(float(np.log(metric_scale)))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model_config": TINY_MOGE2_CONFIG,
                "model": {k: v.detach().clone() for k, v in net.state_dict().items()}}, folder / "model.pt")
    return folder


def _checkpoint_networks(seed: int, refit: bool) -> tuple[dict[str, torch.nn.Module], torch.Generator]:
    """The networks stored as ckpts/STEM.json + .safetensors, seeded in a fixed order; the generator goes
    on to the DINOv2 and MoGe weights. The stage-1 decoders are fitted (seed 0: read from the asset)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    networks = {}
    for stem, spec in _configs().items():
        model = build_model(spec["name"], spec["args"])
        randomize_weights(model, generator)   # always: the stream must reach the next network unchanged
        if stem in FITTED_STEMS:
            if seed == 0 and not refit:
                _load_fitted(model, stem)
            else:
                fit_stage1_decoder(model, *_fit_targets(stem))
        networks[stem] = model
    return networks, generator


def make_tiny_model(out_dir: str | Path, seed: int = 0, refit: bool = False) -> Path:
    """Write the tiny model to `out_dir` and return it; `refit` fits seed 0's decoders instead of reading them."""
    out = Path(out_dir)
    ckpts = out / "ckpts"
    ckpts.mkdir(parents=True, exist_ok=True)
    specs = _configs()
    networks, generator = _checkpoint_networks(seed, refit)
    for stem, model in networks.items():
        save_checkpoint(model, ckpts, stem, specs[stem])
    dino = DinoV2.tiny(dim=TINY_DINO_DIM, depth=2, num_heads=1, img_size=518)
    randomize_weights(dino, generator)
    torch.save({k: v.detach().clone() for k, v in dino.state_dict().items()}, ckpts / "dinov2_tiny.pth")
    _write_tiny_moge(out / "ckpts" / "moge_tiny", generator)
    write_tiny_sam(ckpts)  # hand-built, segments by colour (cupid.models.sam_tiny)
    write_tiny_remover(out / TINY_REMOVER_FILE)
    sampler = {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
               "params": {"steps": 4, "cfg_strength": 3.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}}
    pipeline = {"name": "Cupid3DPipeline", "args": {
        "models": ROLES, "sparse_structure_sampler": sampler, "slat_sampler": sampler,
        "slat_normalization": {"mean": [0.0] * 8, "std": [1.0] * 8},
        "image_cond_model": "ckpts/dinov2_tiny.pth", "moge_model": "ckpts/moge_tiny",
        "sam_model": f"ckpts/{TINY_SAM_FILE}", "background_model": TINY_REMOVER_FILE, "tiny": True,
        "export": {"target_faces": 4000, "texture_size": 256, "chart_iterations": 0}}}
    (out / "pipeline.json").write_text(json.dumps(pipeline, indent=1))
    return out


def write_tiny_remover(path: str | Path, side: int = U2NET_SIDE) -> Path:
    """A tiny ONNX background remover with u2net's interface: input `input.1` [1, 3, 320, 320] (rembg's
    normalised photo), seven outputs [1, 1, 320, 320] (u2net's d0..d6 probability maps; rembg reads d0).

    Its few weights are set by hand: d0 = sigmoid(gain · contrast · (box - 0.5)), where `box` is 1 on
    the central half of the frame (the outer product of two 0/1 vectors) and `contrast` is the mean of
    max(|photo - its channel means| - tolerance, 0): the tolerance (a third of one grey level at least)
    absorbs float32 rounding of the means, so a uniform photo has exactly zero contrast. Any photo with
    contrast gives the central box after rembg's min-max normalisation; a uniform photo gives a
    constant map, which rembg turns into an empty mask ("no object found"). Written with the `onnx`
    package: torch.onnx.export needs it too, and building the graph directly keeps the weights explicit.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inside = np.zeros(side, np.float32)
    inside[side // 4: 3 * side // 4] = 1.0
    weights = [numpy_helper.from_array(inside.reshape(1, 1, side, 1), "box_rows"),
               numpy_helper.from_array(inside.reshape(1, 1, 1, side), "box_cols"),
               numpy_helper.from_array(np.array(0.5, np.float32), "half"),
               numpy_helper.from_array(np.array(0.005, np.float32), "tolerance"),
               numpy_helper.from_array(np.array(8.0, np.float32), "gain")]
    node = helper.make_node
    nodes = [node("ReduceMean", ["input.1"], ["channel_mean"], axes=[2, 3], keepdims=1),
             node("Sub", ["input.1", "channel_mean"], ["centred"]),
             node("Abs", ["centred"], ["deviation"]),
             node("Sub", ["deviation", "tolerance"], ["excess"]),
             node("Relu", ["excess"], ["significant"]),
             node("ReduceMean", ["significant"], ["contrast"], axes=[1, 2, 3], keepdims=1),
             node("Mul", ["box_rows", "box_cols"], ["box"]),
             node("Sub", ["box", "half"], ["signed_box"]),
             node("Mul", ["signed_box", "contrast"], ["scaled"]),
             node("Mul", ["scaled", "gain"], ["logits"]),
             node("Sigmoid", ["logits"], ["d0"])]
    nodes += [node("Identity", ["d0"], [f"d{k}"]) for k in range(1, 7)]
    shape = [1, 1, side, side]
    graph = helper.make_graph(
        nodes, "u2net_tiny", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info(f"d{k}", TensorProto.FLOAT, shape) for k in range(7)], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="cupid.tiny",
                              ir_version=8)
    onnx.checker.check_model(model)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out
