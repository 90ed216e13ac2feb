"""MoGe v1/v2 monocular geometry (affine-invariant point maps) on the shared DINOv2 backbone.

CUPID places every object of a scene photo in one camera frame with MoGe's point map (v1,
`Ruicheng/moge-vitl`); v2 (`Ruicheng/moge-2-vit{s,b,l}[-normal]`) adds metric scale and normals.
Official checkpoints are a torch `model.pt` holding `model_config` (constructor arguments) and
`model` (state dict). Module attribute names below mirror the official ones so that state dict
loads without renaming; the backbone is :class:`cupid.models.dinov2.DinoV2` under `backbone.`
(v1) or `encoder.backbone.` (v2).

The network predicts points up to an unknown focal length and z shift; :func:`recover_focal_shift`
finds both by least squares on the CPU, then depth, intrinsics and the camera-frame point map
(OpenCV: x right, y down, z forward) follow.
"""
from __future__ import annotations

import math
import os
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError, InputError
from .dinov2 import IMAGENET_MEAN, IMAGENET_STD, DinoV2, DinoV2Config
from ..hub import hub_file
from .loading import check_state_dict

# torch.hub DINOv2 names used in MoGe configs -> architecture. Every DINOv2 has 64-dim heads.
BACKBONES: dict[str, DinoV2Config] = {}
for _name, (_dim, _depth) in {"vits14": (384, 12), "vitb14": (768, 12), "vitl14": (1024, 24)}.items():
    BACKBONES[f"dinov2_{_name}"] = DinoV2Config(dim=_dim, depth=_depth, num_heads=_dim // 64, mlp_dim=4 * _dim,
                                                num_registers=0, interpolate_antialias=False,
                                                interpolate_offset=0.1)
    BACKBONES[f"dinov2_{_name}_reg"] = DinoV2Config(dim=_dim, depth=_depth, num_heads=_dim // 64,
                                                    mlp_dim=4 * _dim, num_registers=4)

# The backbone of `cupid make-tiny-model`'s MoGe: same structure, tiny sizes, for CPU tests.
BACKBONES["cupid_tiny14"] = DinoV2Config(dim=32, depth=2, num_heads=2, mlp_dim=64, img_size=70, num_registers=0,
                                         interpolate_antialias=False, interpolate_offset=0.1)


def backbone_config(name: str) -> DinoV2Config:
    if name not in BACKBONES:
        raise CheckpointError(f"MoGe backbone {name!r} is not supported (known: {', '.join(sorted(BACKBONES))})")
    return BACKBONES[name]


# ---------------------------------------------------------------- geometry (numpy / torch)

def view_plane_uv(width: int, height: int, aspect_ratio: float | None = None) -> np.ndarray:
    """[H, W, 2] pixel-centre coordinates on the view plane, in units of the half image diagonal.

    The corners of the image sit at (±W/diag, ±H/diag); a camera-frame point (x, y, z) with
    focal f (relative to the half diagonal) lands at f·(x/z, y/z).
    """
    ar = width / height if aspect_ratio is None else aspect_ratio
    sx, sy = ar / math.hypot(1.0, ar), 1.0 / math.hypot(1.0, ar)
    u = sx * (2.0 * (np.arange(width) + 0.5) / width - 1.0)
    v = sy * (2.0 * (np.arange(height) + 0.5) / height - 1.0)
    uu, vv = np.meshgrid(u, v, indexing="xy")
    return np.stack([uu, vv], axis=-1)


def _view_plane_uv_torch(width: int, height: int, aspect_ratio: float, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(view_plane_uv(width, height, aspect_ratio)).to(like.device, like.dtype)


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source indices of torch's 'nearest' resize (floor(i·in/out))."""
    return np.minimum(np.floor(np.arange(n_out) * (n_in / n_out)).astype(np.int64), n_in - 1)


def _solve_shift(uv: np.ndarray, xyz: np.ndarray, focal: float | None) -> tuple[float, float]:
    """min over shift (and focal) of |f·xy/(z+shift) − uv|²; focal is closed-form for each shift."""
    from scipy.optimize import least_squares

    xy, z = xyz[:, :2], xyz[:, 2]

    def best_focal(shift: float) -> float:
        proj = xy / (z + shift)[:, None]
        return float((proj * uv).sum() / max(np.square(proj).sum(), 1e-300))

    def residual(s: np.ndarray) -> np.ndarray:
        proj = xy / (z + s[0])[:, None]
        f = focal if focal is not None else (proj * uv).sum() / max(np.square(proj).sum(), 1e-300)
        return (f * proj - uv).ravel()

    sol = least_squares(residual, x0=np.zeros(1), method="lm", xtol=1e-12, ftol=1e-12, gtol=1e-12)
    shift = float(sol.x[0])
    return shift, (focal if focal is not None else best_focal(shift))


def principal_point_offset(principal_point: Sequence[float] | None, width: int, height: int) -> np.ndarray:
    """Where a principal point given in uv ([0, 1]², (0.5, 0.5) = image centre) lies on the view plane
    of :func:`view_plane_uv` (units of the half image diagonal); (0, 0) when none is given."""
    if principal_point is None:
        return np.zeros(2)
    cu, cv = (float(c) for c in principal_point)
    if not (np.isfinite(cu) and np.isfinite(cv)):
        raise InputError(f"principal point must be finite uv, got {principal_point!r}")
    ar = width / height
    return np.array([ar / math.hypot(1.0, ar) * (2.0 * cu - 1.0), 1.0 / math.hypot(1.0, ar) * (2.0 * cv - 1.0)])


def recover_focal_shift(points: np.ndarray, mask: np.ndarray | None = None, focal: float | None = None,
                        downsample_size: tuple[int, int] = (64, 64),
                        principal_point: Sequence[float] | None = None) -> tuple[float, float]:
    """Focal (relative to the half image diagonal) and z shift that make an affine point map
    [H, W, 3] a pinhole projection. The principal point is the image centre unless
    `principal_point` (uv, [0, 1]²) gives it: an off-centre camera read as centred is off by a
    few to tens of percent of depth. Points are subsampled to `downsample_size` (nearest) first;
    fewer than 2 valid points give (1, 0) like MoGe."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[2] != 3:
        raise InputError(f"point map must be [H, W, 3], got {pts.shape}")
    h, w = pts.shape[:2]
    uv = view_plane_uv(w, h) - principal_point_offset(principal_point, w, h)
    ri, ci = _nearest_index(h, downsample_size[0]), _nearest_index(w, downsample_size[1])
    p_lr, uv_lr = pts[ri][:, ci], uv[ri][:, ci]
    keep = np.all(np.isfinite(p_lr), axis=-1)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != (h, w):
            raise InputError(f"mask shape {m.shape} does not match the point map {(h, w)}")
        keep &= m[ri][:, ci]
    if keep.sum() < 2:
        return (1.0 if focal is None else float(focal)), 0.0
    shift, f = _solve_shift(uv_lr[keep], p_lr[keep], None if focal is None else float(focal))
    return f, shift


def focal_to_intrinsics(focal: float, width: int, height: int,
                        principal_point: Sequence[float] | None = None) -> np.ndarray:
    """Normalised intrinsics (uv in [0,1]²) of a half-diagonal focal; principal point at the centre
    unless `principal_point` (uv) is given."""
    ar = width / height
    fx = focal / 2.0 * math.hypot(1.0, ar) / ar
    fy = focal / 2.0 * math.hypot(1.0, ar)
    cu, cv = (0.5, 0.5) if principal_point is None else (float(c) for c in principal_point)
    return np.array([[fx, 0.0, cu], [0.0, fy, cv], [0.0, 0.0, 1.0]])


def fov_x_to_focal(fov_x_deg: float, width: int, height: int) -> float:
    ar = width / height
    return ar / math.hypot(1.0, ar) / math.tan(math.radians(fov_x_deg) / 2.0)


def depth_to_points(depth: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """Unproject a depth map through normalised intrinsics at pixel centres -> [H, W, 3] (OpenCV)."""
    h, w = depth.shape
    u = (np.arange(w) + 0.5) / w
    v = (np.arange(h) + 0.5) / h
    uu, vv = np.meshgrid(u, v, indexing="xy")
    k = np.asarray(intrinsics, dtype=np.float64)
    x = (uu - k[0, 2]) / k[0, 0]
    y = (vv - k[1, 2]) / k[1, 1]
    return np.stack([x * depth, y * depth, depth], axis=-1)


# ---------------------------------------------------------------- network parts

def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope=0.2)
    if name == "silu":
        return nn.SiLU()
    if name == "elu":
        return nn.ELU()
    raise CheckpointError(f"unsupported MoGe activation {name!r}")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group_norm":
        return nn.GroupNorm(channels // 32, channels)
    if kind == "layer_norm":
        return nn.GroupNorm(1, channels)
    if kind == "instance_norm":
        return nn.InstanceNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise CheckpointError(f"unsupported MoGe norm {kind!r}")


class ResidualConvBlock(nn.Module):
    """norm → act → conv3 → norm → act → conv3, plus a (1×1 if needed) skip; replicate padding."""

    def __init__(self, in_ch: int, out_ch: int, hidden: int, kernel_size: int = 3, activation: str = "relu",
                 in_norm: str = "layer_norm", hidden_norm: str = "group_norm"):
        super().__init__()
        pad = kernel_size // 2
        self.layers = nn.Sequential(
            _norm(in_norm, in_ch), _activation(activation),
            nn.Conv2d(in_ch, hidden, kernel_size, padding=pad, padding_mode="replicate"),
            _norm(hidden_norm, hidden), _activation(activation),
            nn.Conv2d(hidden, out_ch, kernel_size, padding=pad, padding_mode="replicate"))
        self.skip_connection = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x) + self.skip_connection(x)


def _conv3(i: int, o: int) -> nn.Conv2d:
    return nn.Conv2d(i, o, 3, padding=1, padding_mode="replicate")


def _resampler(kind: str, i: int, o: int, s: int = 2) -> nn.Sequential:
    """×2 up/down-sampling stages of MoGe v2 (index layout as in the checkpoints)."""
    if kind == "conv_transpose":
        return nn.Sequential(nn.ConvTranspose2d(i, o, s, stride=s), _conv3(o, o))
    if kind in ("nearest", "bilinear"):
        up = nn.Upsample(scale_factor=s, mode=kind, align_corners=False if kind == "bilinear" else None)
        return nn.Sequential(up, _conv3(i, o))
    if kind == "pixel_shuffle":
        return nn.Sequential(_conv3(i, o * s * s), nn.PixelShuffle(s), _conv3(o, o))
    if kind == "pixel_unshuffle":
        return nn.Sequential(nn.PixelUnshuffle(s), _conv3(i * s * s, o))
    if kind == "avg_pool":
        return nn.Sequential(_conv3(i, o), nn.AvgPool2d(s, s))
    if kind == "max_pool":
        return nn.Sequential(_conv3(i, o), nn.MaxPool2d(s, s))
    raise CheckpointError(f"unsupported MoGe resampler {kind!r}")


def _per_level(v: Any, n: int) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v] * n


class ConvStack(nn.Module):
    """Multi-level conv pyramid of MoGe v2: per level add the input, run res blocks, emit, resample."""

    def __init__(self, dim_in: Any, dim_res_blocks: list[int], dim_out: Any, resamplers: Any,
                 dim_times_res_block_hidden: int = 1, num_res_blocks: Any = 1,
                 res_block_in_norm: str = "layer_norm", res_block_hidden_norm: str = "group_norm",
                 activation: str = "relu"):
        super().__init__()
        n = len(dim_res_blocks)
        ins, outs = _per_level(dim_in, n), _per_level(dim_out, n)
        nres, rs = _per_level(num_res_blocks, n), _per_level(resamplers, n - 1)
        self.input_blocks = nn.ModuleList(nn.Conv2d(i, d, 1) if i is not None else nn.Identity()
                                          for i, d in zip(ins, dim_res_blocks))
        self.resamplers = nn.ModuleList(_resampler(r, a, b) for a, b, r in
                                        zip(dim_res_blocks[:-1], dim_res_blocks[1:], rs))
        self.res_blocks = nn.ModuleList(
            nn.Sequential(*(ResidualConvBlock(d, d, dim_times_res_block_hidden * d, activation=activation,
                                              in_norm=res_block_in_norm, hidden_norm=res_block_hidden_norm)
                            for _ in range(k)))
            for d, k in zip(dim_res_blocks, nres))
        self.output_blocks = nn.ModuleList(nn.Conv2d(d, o, 1) if o is not None else nn.Identity()
                                           for o, d in zip(outs, dim_res_blocks))

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        x = None
        for i in range(len(self.res_blocks)):
            f = self.input_blocks[i](feats[i])
            x = f if x is None else x + f
            x = self.res_blocks[i](x)
            out.append(self.output_blocks[i](x))
            if i < len(self.resamplers):
                x = self.resamplers[i](x)
        return out


class MLP(nn.Sequential):
    def __init__(self, dims: Sequence[int]):
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-2], dims[1:-1]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-2], dims[-1]))
        super().__init__(*layers)


def _imagenet_buffers(module: nn.Module) -> None:
    # Non-persistent: checkpoints may or may not carry them; the loader checks them when present.
    module.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
    module.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)


def _remap(points: torch.Tensor, how: Any) -> torch.Tensor:
    if how in ("linear", False, None):
        return points
    if how in ("sinh", True):
        return torch.sinh(points)
    xy, z = points.split([2, 1], dim=-1)
    if how == "exp":
        z = torch.exp(z)
        return torch.cat([xy * z, z], dim=-1)
    if how == "sinh_exp":
        return torch.cat([torch.sinh(xy), torch.exp(z)], dim=-1)
    raise CheckpointError(f"unsupported MoGe remap_output {how!r}")


# ---------------------------------------------------------------- v1

class _HeadV1(nn.Module):
    """v1 decoder: per-layer 1×1 projections, ×2 upsamplers with uv channels, full-res output convs."""

    def __init__(self, num_features: int, dim_in: int, dim_out: list[int], dim_proj: int = 512,
                 dim_upsample: Sequence[int] = (256, 128, 128), dim_times_res_block_hidden: int = 1,
                 num_res_blocks: int = 1, res_block_norm: str = "group_norm", last_res_blocks: int = 0,
                 last_conv_channels: int = 32, last_conv_size: int = 1):
        super().__init__()
        up = list(dim_upsample)
        rb = partial(ResidualConvBlock, activation="relu", in_norm="layer_norm", hidden_norm=res_block_norm)
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, dim_proj, 1) for _ in range(num_features))
        self.upsample_blocks = nn.ModuleList(
            nn.Sequential(nn.Sequential(nn.ConvTranspose2d(i + 2, o, 2, stride=2), _conv3(o, o)),
                          *(rb(o, o, dim_times_res_block_hidden * o) for _ in range(num_res_blocks)))
            for i, o in zip([dim_proj] + up[:-1], up))
        c = last_conv_channels
        self.output_block = nn.ModuleList(
            nn.Sequential(_conv3(up[-1] + 2, c),
                          *(rb(c, c, dim_times_res_block_hidden * c) for _ in range(last_res_blocks)),
                          nn.ReLU(),
                          nn.Conv2d(c, d, last_conv_size, padding=last_conv_size // 2, padding_mode="replicate"))
            for d in dim_out)

    def forward(self, feats: Sequence[tuple[torch.Tensor, torch.Tensor]], img_h: int, img_w: int) -> list[torch.Tensor]:
        ph, pw = img_h // 14, img_w // 14
        x = sum(proj(f.transpose(1, 2).reshape(f.shape[0], -1, ph, pw)) for proj, (f, _) in zip(self.projects, feats))
        ar = img_w / img_h
        for block in self.upsample_blocks:
            uv = _view_plane_uv_torch(x.shape[-1], x.shape[-2], ar, x).permute(2, 0, 1)
            x = block(torch.cat([x, uv.expand(x.shape[0], -1, -1, -1)], dim=1))
        x = F.interpolate(x, (img_h, img_w), mode="bilinear", align_corners=False)
        uv = _view_plane_uv_torch(img_w, img_h, ar, x).permute(2, 0, 1)
        x = torch.cat([x, uv.expand(x.shape[0], -1, -1, -1)], dim=1)
        return [blk(x) for blk in self.output_block]


class MoGeV1(nn.Module):
    version = 1

    def __init__(self, encoder: str = "dinov2_vitb14", intermediate_layers: int | list[int] = 4,
                 dim_proj: int = 512, dim_upsample: Sequence[int] = (256, 128, 128),
                 dim_times_res_block_hidden: int = 1, num_res_blocks: int = 1, remap_output: Any = "linear",
                 res_block_norm: str = "group_norm", num_tokens_range: Sequence[int] = (1200, 2500),
                 last_res_blocks: int = 0, last_conv_channels: int = 32, last_conv_size: int = 1,
                 mask_threshold: float = 0.5, **legacy: Any):
        super().__init__()
        if "trained_area_range" in legacy:
            num_tokens_range = [legacy["trained_area_range"][0] // 196, legacy["trained_area_range"][1] // 196]
        self.remap_output = remap_output
        self.intermediate_layers = intermediate_layers
        self.num_tokens_range = list(num_tokens_range)
        self.mask_threshold = mask_threshold
        self.backbone = DinoV2(backbone_config(encoder))
        n = intermediate_layers if isinstance(intermediate_layers, int) else len(intermediate_layers)
        self.head = _HeadV1(n, self.backbone.embed_dim, [3, 1], dim_proj, dim_upsample, dim_times_res_block_hidden,
                            num_res_blocks, res_block_norm, last_res_blocks, last_conv_channels, last_conv_size)
        _imagenet_buffers(self)

    def forward(self, image: torch.Tensor, num_tokens: int) -> dict[str, torch.Tensor]:
        """image [B, 3, H, W] in [0, 1] -> affine points [B, H, W, 3] and mask logit-free score [B, H, W]."""
        h0, w0 = image.shape[-2:]
        k = math.sqrt(num_tokens * 196 / (h0 * w0))
        rh, rw = int(h0 * k), int(w0 * k)
        x = F.interpolate(image, (rh, rw), mode="bicubic", align_corners=False, antialias=True)
        x = (x - self.image_mean) / self.image_std
        x14 = F.interpolate(x, (rh // 14 * 14, rw // 14 * 14), mode="bilinear", align_corners=False, antialias=True)
        feats = self.backbone.get_intermediate_layers(x14, self.intermediate_layers, return_class_token=True)
        points, mask = self.head(feats, rh, rw)
        points = F.interpolate(points.float(), (h0, w0), mode="bilinear", align_corners=False)
        mask = F.interpolate(mask.float(), (h0, w0), mode="bilinear", align_corners=False)
        return {"points": _remap(points.permute(0, 2, 3, 1), self.remap_output), "mask": mask.squeeze(1)}

    def mask_from(self, raw: torch.Tensor) -> torch.Tensor:
        return raw > self.mask_threshold


# ---------------------------------------------------------------- v2

class _EncoderV2(nn.Module):
    def __init__(self, backbone: str, intermediate_layers: int | list[int], dim_out: int, **legacy: Any):
        super().__init__()
        self.intermediate_layers = intermediate_layers
        self.backbone = DinoV2(backbone_config(backbone))
        n = intermediate_layers if isinstance(intermediate_layers, int) else len(intermediate_layers)
        self.output_projections = nn.ModuleList(nn.Conv2d(self.backbone.embed_dim, dim_out, 1) for _ in range(n))
        _imagenet_buffers(self)

    def forward(self, image: torch.Tensor, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.interpolate(image, (rows * 14, cols * 14), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.image_mean) / self.image_std
        feats = self.backbone.get_intermediate_layers(x, n=self.intermediate_layers, return_class_token=True)
        b = image.shape[0]
        y = sum(p(f.transpose(1, 2).reshape(b, -1, rows, cols)) for p, (f, _) in zip(self.output_projections, feats))
        return y, feats[-1][1]


class MoGeV2(nn.Module):
    version = 2
    mask_threshold = 0.5

    def __init__(self, encoder: dict, neck: dict, points_head: dict | None = None, mask_head: dict | None = None,
                 normal_head: dict | None = None, scale_head: dict | None = None, remap_output: str = "linear",
                 num_tokens_range: Sequence[int] = (1200, 3600), **legacy: Any):
        super().__init__()
        self.remap_output = remap_output
        self.num_tokens_range = list(num_tokens_range)
        self.encoder = _EncoderV2(**encoder)
        self.neck = ConvStack(**neck)
        for name, cfg in (("points_head", points_head), ("mask_head", mask_head), ("normal_head", normal_head)):
            if cfg is not None:
                setattr(self, name, ConvStack(**cfg))
        if scale_head is not None:
            self.scale_head = MLP(**scale_head)

    @property
    def backbone(self) -> DinoV2:
        return self.encoder.backbone

    def forward(self, image: torch.Tensor, num_tokens: int) -> dict[str, torch.Tensor]:
        b, _, h, w = image.shape
        ar = w / h
        bh, bw = round(math.sqrt(num_tokens / ar)), round(math.sqrt(num_tokens * ar))
        feat, cls = self.encoder(image, bh, bw)
        levels = []
        for lv in range(5):
            uv = _view_plane_uv_torch(bw * 2 ** lv, bh * 2 ** lv, ar, feat).permute(2, 0, 1)
            uv = uv.unsqueeze(0).expand(b, -1, -1, -1)
            levels.append(torch.cat([feat, uv], dim=1) if lv == 0 else uv)
        levels = self.neck(levels)
        out: dict[str, torch.Tensor] = {}
        for name in ("points_head", "normal_head", "mask_head"):
            if hasattr(self, name):
                y = getattr(self, name)(levels)[-1]
                out[name[:-5]] = F.interpolate(y.float(), (h, w), mode="bilinear", align_corners=False)
        if "points" in out:
            out["points"] = _remap(out["points"].permute(0, 2, 3, 1), self.remap_output)
        if "normal" in out:
            out["normal"] = F.normalize(out["normal"].permute(0, 2, 3, 1), dim=-1)
        if "mask" in out:
            out["mask"] = out["mask"].squeeze(1).sigmoid()
        if hasattr(self, "scale_head"):
            out["metric_scale"] = self.scale_head(cls.float()).squeeze(1).exp()
        return out

    def mask_from(self, raw: torch.Tensor) -> torch.Tensor:
        return raw > self.mask_threshold


# ---------------------------------------------------------------- user-facing model

def _to_image_tensor(image: Any) -> torch.Tensor:
    """HxWx3 uint8/float array, PIL image, or [3,H,W]/[H,W,3] tensor -> float32 [1, 3, H, W] in [0, 1]."""
    try:
        from PIL import Image
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
    except ImportError:  # pragma: no cover
        pass
    if isinstance(image, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(image))
    elif isinstance(image, torch.Tensor):
        t = image.detach().cpu()
    else:
        raise InputError(f"MoGe needs an HxWx3 image array or tensor, got {type(image).__name__}")
    if t.dim() != 3:
        raise InputError(f"MoGe needs a single HxWx3 (or 3xHxW) image, got shape {tuple(t.shape)}")
    if t.shape[-1] in (3, 4) and t.shape[0] not in (3, 4):
        t = t[..., :3].permute(2, 0, 1)
    elif t.shape[0] in (3, 4):
        t = t[:3]
    else:
        raise InputError(f"MoGe needs 3 colour channels, got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.is_floating_point():
        t = t.float()
    else:
        raise InputError(f"unsupported image dtype {t.dtype} (use uint8 or float in [0, 1])")
    if t.shape[1] < 14 or t.shape[2] < 14:
        raise InputError(f"image {t.shape[2]}x{t.shape[1]} is too small for MoGe (at least 14x14)")
    return t.unsqueeze(0)


class MoGeModel:
    """A loaded MoGe network plus the post-processing that turns its output into camera geometry."""

    def __init__(self, net: MoGeV1 | MoGeV2, device: torch.device | None = None):
        self.net = net.eval().requires_grad_(False)
        self.device = device or next(net.parameters()).device

    @property
    def version(self) -> int:
        return self.net.version

    @property
    def metric(self) -> bool:
        """Whether the point maps are in meters (MoGe-2's scale head), not up to an unknown scale."""
        return hasattr(self.net, "scale_head")

    @torch.inference_mode()
    def infer(self, image: Any, *, fov_x: float | None = None, principal_point: Sequence[float] | None = None,
              resolution_level: int = 9,
              num_tokens: int | None = None, apply_mask: bool = True, force_projection: bool = True,
              use_fp16: bool = True) -> dict[str, Any]:
        """Camera geometry of one photo.

        Returns numpy arrays: `points` [H, W, 3] float32 (OpenCV camera frame; inf where invalid if
        apply_mask), `mask` [H, W] bool, `depth` [H, W] float32, `intrinsics` 3×3 normalised (uv in
        [0,1]²), `intrinsics_px` 3×3 in pixels of this image, `fov_x`/`fov_y` in degrees, and for v2
        `normal` [H, W, 3] and `metric_scale` when the network has those heads. A known
        `principal_point` (uv, [0, 1]²) is used by the focal/shift recovery and the intrinsics;
        otherwise it is the image centre, as MoGe assumes.
        """
        x = _to_image_tensor(image).to(self.device)
        _, _, h, w = x.shape
        if num_tokens is None:
            lo, hi = self.net.num_tokens_range
            num_tokens = int(lo + (min(max(resolution_level, 0), 9) / 9) * (hi - lo))
        fp16 = use_fp16 and self.device.type == "cuda"
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=fp16):
            out = self.net(x.to(next(self.net.parameters()).dtype), num_tokens)
        if "points" not in out:
            raise CheckpointError("this MoGe checkpoint has no points head")
        points = out["points"][0].float().cpu().numpy().astype(np.float64)
        mask = (self.net.mask_from(out["mask"][0].float()).cpu().numpy() if "mask" in out
                else np.ones((h, w), dtype=bool))
        mask &= np.all(np.isfinite(points), axis=-1)
        if fov_x is None:
            focal, shift = recover_focal_shift(points, mask, principal_point=principal_point)
        else:
            focal = fov_x_to_focal(float(fov_x), w, h)
            _, shift = recover_focal_shift(points, mask, focal=focal, principal_point=principal_point)
        k = focal_to_intrinsics(focal, w, h, principal_point)
        depth = points[..., 2] + shift
        if self.version == 2:
            mask &= depth > 0
        if force_projection:
            cam = depth_to_points(depth, k)
        else:
            cam = points.copy()
            cam[..., 2] += shift
        result: dict[str, Any] = {}
        if "metric_scale" in out:
            s = float(out["metric_scale"][0])
            cam, depth = cam * s, depth * s
            result["metric_scale"] = s
        if apply_mask:
            cam = np.where(mask[..., None], cam, np.inf)
            depth = np.where(mask, depth, np.inf)
        kp = k.copy()
        kp[0] *= w
        kp[1] *= h
        result.update(points=cam.astype(np.float32), mask=mask, depth=depth.astype(np.float32), intrinsics=k,
                      intrinsics_px=kp, fov_x=math.degrees(2 * math.atan(0.5 / k[0, 0])),
                      fov_y=math.degrees(2 * math.atan(0.5 / k[1, 1])))
        if "normal" in out:
            n = out["normal"][0].float().cpu().numpy()
            result["normal"] = np.where(mask[..., None], n, 0.0).astype(np.float32) if apply_mask else n
        return result


# ---------------------------------------------------------------- loading

def _resolve(path_or_id: str | os.PathLike) -> Path:
    s = str(path_or_id)
    p = Path(s).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        if (p / "model.pt").is_file():
            return p / "model.pt"
        raise CheckpointError(f"directory {p} holds no MoGe model.pt")
    if s.startswith(("/", ".", "~")) or p.suffix in (".pt", ".pth") or s.count("/") != 1:
        raise CheckpointError(f"MoGe checkpoint {s!r} not found (expected a model.pt file, a directory "
                              "holding one, or a Hugging Face repo id like Ruicheng/moge-vitl)")
    return hub_file(s, "model.pt", what=f"the MoGe point-map model ({s})")


_CONST_BUFFERS = {"image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD}


def _drop_constant_buffers(state: dict[str, torch.Tensor], label: str) -> dict[str, torch.Tensor]:
    """The ImageNet mean/std buffers are fixed: accept them when present (checked), never require them."""
    out = {}
    for k, v in state.items():
        leaf = k.rsplit(".", 1)[-1]
        if leaf in _CONST_BUFFERS and k in ("image_mean", "image_std", "encoder.image_mean", "encoder.image_std"):
            want = torch.tensor(_CONST_BUFFERS[leaf])
            if v.numel() != 3 or not torch.allclose(v.float().reshape(3), want, atol=1e-4):
                raise CheckpointError(f"{label}: buffer {k} is {v.reshape(-1).tolist()}, expected {list(want.tolist())}")
            continue
        out[k] = v
    return out


def build_moge(model_config: dict[str, Any]) -> MoGeV1 | MoGeV2:
    """v2 configs carry an encoder dict and a neck; v1 names the backbone with a string."""
    try:
        if isinstance(model_config.get("encoder"), dict) or "neck" in model_config:
            return MoGeV2(**model_config)
        return MoGeV1(**model_config)
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"invalid MoGe model_config: {type(exc).__name__}: {exc}") from exc


def load_moge(path_or_id: str | os.PathLike = "Ruicheng/moge-vitl", device: str | torch.device | None = None,
              model_kwargs: dict[str, Any] | None = None) -> MoGeModel:
    """Load an official MoGe checkpoint (local model.pt, a folder with one, or an HF repo id), strictly.

    Float32 everywhere; on CUDA `infer` may autocast to float16, on the CPU never."""
    path = _resolve(path_or_id)
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"unreadable MoGe checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model_config"), dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path} is not a MoGe checkpoint (needs 'model_config' and 'model' entries)")
    cfg = dict(ckpt["model_config"])
    cfg.update(model_kwargs or {})
    with torch.device("meta"):
        net = build_moge(cfg)
    label = f"MoGe checkpoint {path.name} (v{net.version})"
    state = _drop_constant_buffers(ckpt["model"], label)
    check_state_dict(net, state, label=label)
    net.load_state_dict(state, strict=True, assign=True)
    # non-persistent buffers were created on meta: rebuild them for real
    for mod in net.modules():
        if "image_mean" in mod._buffers:
            _imagenet_buffers(mod)
    net.float()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    net.to(dev)
    return MoGeModel(net, dev)
