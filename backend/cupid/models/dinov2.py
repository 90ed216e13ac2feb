"""DINOv2 ViT with register tokens, the image conditioner of TRELLIS/CUPID and the MoGe backbone.

Parameter names follow the torch.hub release (`dinov2_vitl14_reg4_pretrain.pth`) so that file loads
as is; the Hugging Face `Dinov2WithRegistersModel` safetensors layout is converted to those names.
TRELLIS conditions on the *pre-norm* tokens of the last block followed by a layer norm without
affine parameters, which is what `ImageConditioner.encode` returns.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError, InputError
from ..modules.attention import scaled_dot_product_attention
from ..hub import hub_file
from .loading import _target_dtype, check_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HF_DEFAULT_ID = "facebook/dinov2-with-registers-large"


@dataclass(frozen=True)
class DinoV2Config:
    """Architecture of one DINOv2 variant; `img_size` fixes the stored pos-embed grid (img_size/patch)²."""

    dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_dim: int = 4096
    patch_size: int = 14
    img_size: int = 518
    num_registers: int = 4
    # The *_reg hub models interpolate pos-embeds to an explicit size with antialiasing, no offset.
    interpolate_antialias: bool = True
    interpolate_offset: float = 0.0
    eps: float = 1e-6

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).unbind(2)
        return self.proj(scaled_dot_product_attention(q, k, v).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Block(nn.Module):
    def __init__(self, cfg: DinoV2Config):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.attn = _Attention(cfg.dim, cfg.num_heads)
        self.ls1 = _LayerScale(cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.mlp = _Mlp(cfg.dim, cfg.mlp_dim)
        self.ls2 = _LayerScale(cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, cfg: DinoV2Config):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoV2(nn.Module):
    """ViT/14 with registers; `forward_features` returns the hub dictionary (x_prenorm etc.)."""

    def __init__(self, config: DinoV2Config | None = None, **overrides: Any):
        super().__init__()
        cfg = config or DinoV2Config()
        if overrides:
            cfg = DinoV2Config(**{**asdict(cfg), **overrides})
        if cfg.dim % cfg.num_heads:
            raise ValueError(f"dim {cfg.dim} is not divisible by num_heads {cfg.num_heads}")
        self.config = cfg
        self.patch_size = cfg.patch_size
        self.num_registers = cfg.num_registers
        self.embed_dim = cfg.dim
        self.patch_embed = _PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid ** 2 + 1, cfg.dim))
        if cfg.num_registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_registers, cfg.dim))
        else:
            self.register_parameter("register_tokens", None)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.mask_token = nn.Parameter(torch.zeros(1, cfg.dim))

    @classmethod
    def vitl14_reg4(cls) -> "DinoV2":
        """ViT-L/14 with 4 registers, the TRELLIS/CUPID conditioner (`dinov2_vitl14_reg`)."""
        return cls(DinoV2Config())

    @classmethod
    def tiny(cls, dim: int = 32, depth: int = 2, num_heads: int = 2, img_size: int = 70,
             num_registers: int = 4) -> "DinoV2":
        """A small random network with the same structure, for tests."""
        return cls(DinoV2Config(dim=dim, depth=depth, num_heads=num_heads, mlp_dim=4 * dim,
                                img_size=img_size, num_registers=num_registers))

    def num_tokens(self, height: int, width: int) -> int:
        """1 cls + registers + (H/14)·(W/14) patches."""
        return 1 + self.num_registers + (height // self.patch_size) * (width // self.patch_size)

    def interpolate_pos_encoding(self, h0: int, w0: int, dtype: torch.dtype) -> torch.Tensor:
        """Positional embeddings of cls + an h0×w0 patch grid (bicubic resize of the stored grid)."""
        n = self.pos_embed.shape[1] - 1
        m = int(math.isqrt(n))
        if h0 == m and w0 == m:
            return self.pos_embed.to(dtype)
        pos = self.pos_embed.float()
        grid = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
        cfg = self.config
        if cfg.interpolate_offset > 0:
            kw: dict[str, Any] = {"scale_factor": ((h0 + cfg.interpolate_offset) / m,
                                                   (w0 + cfg.interpolate_offset) / m)}
        else:
            kw = {"size": (h0, w0)}
        grid = F.interpolate(grid, mode="bicubic", antialias=cfg.interpolate_antialias, **kw)
        grid = grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)
        return torch.cat([pos[:, :1], grid], dim=1).to(dtype)

    def prepare_tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        _, _, h, w = x.shape
        if h % self.patch_size or w % self.patch_size:
            raise InputError(f"DINOv2 input size {h}x{w} is not a multiple of the patch size {self.patch_size}")
        t = self.patch_embed(x)
        if masks is not None:
            t = torch.where(masks.unsqueeze(-1), self.mask_token.to(t.dtype).unsqueeze(0), t)
        t = torch.cat([self.cls_token.to(t.dtype).expand(t.shape[0], -1, -1), t], dim=1)
        t = t + self.interpolate_pos_encoding(h // self.patch_size, w // self.patch_size, t.dtype)
        if self.register_tokens is not None:
            regs = self.register_tokens.to(t.dtype).expand(t.shape[0], -1, -1)
            t = torch.cat([t[:, :1], regs, t[:, 1:]], dim=1)
        return t

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        t = self.prepare_tokens(x, masks)
        for blk in self.blocks:
            t = blk(t)
        tn = self.norm(t)
        r = 1 + self.num_registers
        return {"x_norm_clstoken": tn[:, 0], "x_norm_regtokens": tn[:, 1:r],
                "x_norm_patchtokens": tn[:, r:], "x_prenorm": t, "masks": masks}

    def get_intermediate_layers(self, x: torch.Tensor, n: int | list[int] = 1, norm: bool = True,
                                return_class_token: bool = False) -> tuple:
        """Patch tokens (and cls) after the last n blocks or the listed blocks, as MoGe reads them."""
        t = self.prepare_tokens(x)
        take = set(range(len(self.blocks) - n, len(self.blocks))) if isinstance(n, int) else set(n)
        outs = []
        for i, blk in enumerate(self.blocks):
            t = blk(t)
            if i in take:
                outs.append(self.norm(t) if norm else t)
        r = 1 + self.num_registers
        if return_class_token:
            return tuple((o[:, r:], o[:, 0]) for o in outs)
        return tuple(o[:, r:] for o in outs)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_features(x)


# ---------------------------------------------------------------- checkpoint layouts

_HF_PREFIXES = ("dinov2_with_registers.", "dinov2.", "model.")


def is_hf_layout(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("embeddings.") or ".embeddings." in k for k in state)


def hf_to_hub(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers `Dinov2WithRegistersModel` state dict to torch.hub names (q,k,v fused)."""
    src = {}
    for k, v in state.items():
        for p in _HF_PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
                break
        src[k] = v
    out: dict[str, torch.Tensor] = {}
    simple = {
        "embeddings.cls_token": "cls_token",
        "embeddings.mask_token": "mask_token",
        "embeddings.register_tokens": "register_tokens",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    per_layer = {
        "norm1": "norm1", "norm2": "norm2", "attention.output.dense": "attn.proj",
        "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    }
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    pat = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
    for k, v in src.items():
        if k in simple:
            out[simple[k]] = v
            continue
        m = pat.match(k)
        if not m:
            out[k] = v  # left for the strict check to report as unexpected
            continue
        i, mod, leaf = int(m.group(1)), m.group(2), m.group(3)
        if mod in ("attention.attention.query", "attention.attention.key", "attention.attention.value"):
            qkv.setdefault((i, leaf), {})[mod.rsplit(".", 1)[1]] = v
        elif mod == "layer_scale1" and leaf == "lambda1":
            out[f"blocks.{i}.ls1.gamma"] = v
        elif mod == "layer_scale2" and leaf == "lambda1":
            out[f"blocks.{i}.ls2.gamma"] = v
        elif mod in per_layer:
            out[f"blocks.{i}.{per_layer[mod]}.{leaf}"] = v
        else:
            out[k] = v
    for (i, leaf), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            absent = sorted({"query", "key", "value"} - set(parts))
            raise CheckpointError(f"Hugging Face DINOv2 checkpoint lacks encoder.layer.{i}.attention.attention."
                                  f"{{{','.join(absent)}}}.{leaf}: cannot build the fused qkv")
        out[f"blocks.{i}.attn.qkv.{leaf}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    if "mask_token" in out and out["mask_token"].dim() == 3:  # some exports keep [1, 1, C]
        out["mask_token"] = out["mask_token"].reshape(1, -1)
    return out


def config_from_state(state: dict[str, torch.Tensor], num_heads: int | None = None, **kw: Any) -> DinoV2Config:
    """Infer the architecture from a hub-layout state dict (heads default to dim/64, as in every DINOv2)."""
    try:
        dim = int(state["cls_token"].shape[-1])
        patch = int(state["patch_embed.proj.weight"].shape[-1])
        n = int(state["pos_embed"].shape[1]) - 1
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        mlp_dim = int(state["blocks.0.mlp.fc1.weight"].shape[0])
    except (KeyError, ValueError, IndexError) as exc:
        raise CheckpointError(f"not a DINOv2 state dict (cannot read {exc}); expected torch.hub key names "
                              "(cls_token, pos_embed, patch_embed.proj.weight, blocks.N...)") from exc
    m = math.isqrt(n)
    if m * m != n:
        raise CheckpointError(f"DINOv2 pos_embed holds {n} patch positions, not a square grid")
    regs = int(state["register_tokens"].shape[1]) if "register_tokens" in state else 0
    heads = num_heads or max(1, dim // 64)
    if not regs:  # the register-free hub models resize pos-embeds by scale factor (+0.1), no antialias
        kw = {"interpolate_antialias": False, "interpolate_offset": 0.1, **kw}
    return DinoV2Config(dim=dim, depth=depth, num_heads=heads, mlp_dim=mlp_dim, patch_size=patch,
                        img_size=m * patch, num_registers=regs, **kw)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A .safetensors file or a torch .pth/.pt (optionally wrapping the weights under 'model'/'state_dict')."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint file {p} does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(p), device="cpu")
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"unreadable checkpoint {p}: {type(exc).__name__}: {exc}") from exc
    for key in ("model", "state_dict", "teacher"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {p} does not hold a state dict of tensors")
    return obj


# torch.hub entry names (as in TRELLIS' pipeline.json `image_cond_model`) -> released weight files
HUB_FILES = {f"dinov2_{a}14{r}": f"dinov2_{a}14/dinov2_{a}14{'_reg4' if r else ''}_pretrain.pth"
             for a in ("vits", "vitb", "vitl") for r in ("", "_reg")}


# torch.hub names -> the Hugging Face repo holding the same weights (HF layout), used when the torch hub
# cache does not have the release file: the Hub is the one cache `cupid download` fills.
HUB_TO_HF = {"dinov2_vits14": "facebook/dinov2-small", "dinov2_vitb14": "facebook/dinov2-base",
             "dinov2_vitl14": "facebook/dinov2-large", "dinov2_vits14_reg": "facebook/dinov2-with-registers-small",
             "dinov2_vitb14_reg": "facebook/dinov2-with-registers-base",
             "dinov2_vitl14_reg": "facebook/dinov2-with-registers-large"}


def _torch_hub_cached(name: str) -> Path | None:
    """The torch.hub release file of `name` when it is already in the torch hub cache."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(HUB_FILES[name]).name
    return cached if cached.is_file() else None


def _download_hf(repo_id: str) -> tuple[Path, int | None]:
    """The safetensors of an HF DINOv2 repo and its head count (from config.json)."""
    weights = hub_file(repo_id, "model.safetensors", what=f"DINOv2 weights ({repo_id})")
    heads = None
    try:
        cfg = json.loads(hub_file(repo_id, "config.json").read_text())
        heads = int(cfg["num_attention_heads"])
    except (CheckpointError, OSError, ValueError, KeyError, TypeError):
        heads = None
    return weights, heads


def build_from_state(state: dict[str, torch.Tensor], label: str, num_heads: int | None = None) -> DinoV2:
    """Convert (if HF), infer the config, check strictly and load: the network in float32 on the CPU."""
    if is_hf_layout(state):
        state = hf_to_hub(state)
    cfg = config_from_state(state, num_heads=num_heads)
    with torch.device("meta"):
        model = DinoV2(cfg)
    check_state_dict(model, state, label=label)
    model.load_state_dict(state, strict=True, assign=True)
    return model.float()


def load_dinov2(path_or_id: str | os.PathLike = HF_DEFAULT_ID, device: str | torch.device | None = None,
                dtype: torch.dtype | None = None, num_heads: int | None = None) -> DinoV2:
    """Load DINOv2 strictly, in eval mode, from a local hub .pth / HF .safetensors file (or a folder
    holding model.safetensors), a torch.hub name such as 'dinov2_vitl14_reg' (TRELLIS' setting; the
    torch hub cache is used first), or an HF repo id such as 'facebook/dinov2-with-registers-large'.
    `dtype` (the whole network's) is honoured on every device; None: float32."""
    s = str(path_or_id)
    p = Path(s).expanduser()
    heads = num_heads
    if p.is_file():
        weights = p
        cfg_json = p.parent / "config.json"
        if heads is None and p.suffix == ".safetensors" and cfg_json.is_file():
            try:
                heads = int(json.loads(cfg_json.read_text())["num_attention_heads"])
            except Exception:
                heads = None
    elif p.is_dir() and (p / "model.safetensors").is_file():
        return load_dinov2(p / "model.safetensors", device, dtype, num_heads)
    elif s in HUB_FILES and _torch_hub_cached(s) is not None:
        weights = _torch_hub_cached(s)
    elif s in HUB_FILES:
        return load_dinov2(HUB_TO_HF[s], device, dtype, num_heads)
    elif s.startswith(("/", ".", "~")) or p.suffix in (".pth", ".pt", ".safetensors") or s.count("/") != 1:
        raise CheckpointError(f"DINOv2 checkpoint {s!r} not found (expected a .pth/.safetensors file or "
                              "a Hugging Face repo id like facebook/dinov2-with-registers-large)")
    else:
        weights, hub_heads = _download_hf(s)
        heads = heads or hub_heads
    model = build_from_state(read_state_dict(weights), label=f"DINOv2 checkpoint {weights.name}", num_heads=heads)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    model.to(device=dev, dtype=_target_dtype(dev, dtype, use_fp16=False))
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------- conditioner

class ImageConditioner(nn.Module):
    """TRELLIS image conditioning: ImageNet-normalise, DINOv2 pre-norm tokens, non-affine layer norm."""

    def __init__(self, model: DinoV2):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def load(cls, path_or_id: str | os.PathLike = HF_DEFAULT_ID, device: str | torch.device | None = None,
             dtype: torch.dtype | None = None) -> "ImageConditioner":
        model = load_dinov2(path_or_id, device=device, dtype=dtype)
        return cls(model).to(next(model.parameters()).device)

    @property
    def num_registers(self) -> int:
        return self.model.num_registers

    @property
    def dtype(self) -> torch.dtype:
        return self.model.cls_token.dtype

    @property
    def device(self) -> torch.device:
        return self.model.cls_token.device

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean.to(images)) / self.std.to(images)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1] (518² for TRELLIS) -> [B, 1 + registers + (H/14)(W/14), C] float32."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise InputError(f"conditioning images must be a [B, 3, H, W] tensor, got {shape}")
        x = self.normalize(images.to(self.device, torch.float32)).to(self.dtype)
        feats = self.model.forward_features(x)["x_prenorm"]
        return F.layer_norm(feats.float(), feats.shape[-1:])

    def patch_tokens(self, cond: torch.Tensor) -> torch.Tensor:
        """[B, N, C] conditioning tokens -> patch grid [B, C, g, g] (registers and cls dropped)."""
        patches = cond[:, 1 + self.num_registers:]
        g = math.isqrt(patches.shape[1])
        if g * g != patches.shape[1]:
            raise InputError(f"{patches.shape[1]} patch tokens do not form a square grid")
        return patches.transpose(1, 2).reshape(cond.shape[0], cond.shape[2], g, g)
