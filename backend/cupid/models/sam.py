"""Segment Anything (SAM) in our own PyTorch, loading the official `sam_vit_{b,l,h}_*.pth` strictly.

We do not depend on the segment-anything package: it imports torchvision, which PyPI pairs only
with another torch than ours. The networks here keep segment-anything's module names, so its state
dicts (`image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`) load key for key; tests check the
outputs against segment-anything's own code on a tiny checkpoint (tests/fixtures/sam_parity).

:class:`SamModel` does what segment-anything's `SamPredictor` does: the photo is resized so its long
side is `img_size` (1024) with PIL's bilinear filter (torchvision's `resize` of a PIL image), normalised
by the ImageNet pixel mean/std in 0..255 units, zero-padded right/bottom to a square and encoded once;
prompts in photo pixels are scaled into that resized frame; the decoder's 256² low-res logits are
upscaled to the padded square, cropped to the resized photo and upscaled again to the photo's size
(bilinear, align_corners=False). A pixel belongs to the mask where the logit is > 0.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import config
from ..errors import CheckpointError, InputError
from ..hub import hub_file
from .loading import check_state_dict
from .sam_amg import MaskProposal, generate_proposals
from .sam_decoder import MASK_THRESHOLD, MaskDecoder, PromptEncoder, TwoWayTransformer
from .sam_encoder import ImageEncoderViT

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
SAM_CHECKPOINT_ENV = "CUPID_SAM_CHECKPOINT"  # a local sam_vit_*.pth or owner/repo/FILE.pth instead of the default


@dataclass(frozen=True)
class SamConfig:
    """Architecture of one SAM variant (segment-anything's `_build_sam` arguments)."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3

    @property
    def embedding_size(self) -> int:
        return self.img_size // self.patch_size


SAM_CONFIGS: dict[str, SamConfig] = {
    "vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31)),
    # `cupid make-tiny-model` and the parity fixture: same structure, tiny widths. A 256 px input
    # keeps a 16x16 token grid; windows of 5 tokens pad it to 20 as 14-token windows pad 64 to 70.
    "tiny": SamConfig(32, 2, 2, (1,), img_size=256, window_size=5, prompt_embed_dim=32, mask_in_chans=4,
                      decoder_num_heads=2, decoder_mlp_dim=64, iou_head_hidden_dim=32),
}


class Sam(nn.Module):
    """The three SAM networks under segment-anything's attribute names."""

    def __init__(self, config: SamConfig):
        super().__init__()
        c = config
        self.config = c
        self.image_encoder = ImageEncoderViT(c.img_size, c.patch_size, c.encoder_embed_dim, c.encoder_depth,
                                             c.encoder_num_heads, c.mlp_ratio, c.prompt_embed_dim, c.window_size,
                                             tuple(c.encoder_global_attn_indexes))
        grid = (c.embedding_size, c.embedding_size)
        self.prompt_encoder = PromptEncoder(c.prompt_embed_dim, grid, (c.img_size, c.img_size), c.mask_in_chans)
        self.mask_decoder = MaskDecoder(
            c.prompt_embed_dim, TwoWayTransformer(c.decoder_depth, c.prompt_embed_dim, c.decoder_num_heads,
                                                  c.decoder_mlp_dim),
            c.num_multimask_outputs, c.iou_head_depth, c.iou_head_hidden_dim)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)


# ---------------------------------------------------------------- pre/post-processing

def resized_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) of the photo resized so its long side is `long_side` (segment-anything's rounding)."""
    scale = long_side * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_photo(photo: np.ndarray, long_side: int) -> np.ndarray:
    """uint8 [h, w, 3]: PIL bilinear resize, which is what torchvision's `resize` does to a PIL image."""
    from PIL import Image

    h, w = resized_shape(photo.shape[0], photo.shape[1], long_side)
    return np.asarray(Image.fromarray(photo).resize((w, h), Image.Resampling.BILINEAR))


def scale_coords(coords: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """Photo pixel coordinates [..., 2] (x, y) → the resized photo's, in float64."""
    old_h, old_w = original_size
    new_h, new_w = resized_shape(old_h, old_w, long_side)
    out = np.array(coords, dtype=np.float64)
    out[..., 0] *= new_w / old_w
    out[..., 1] *= new_h / old_h
    return out


@dataclass
class SamImage:
    """One photo encoded by SAM: embedding [1, C, h, w], photo (H, W) and resized (h, w) sizes."""

    embedding: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]


@dataclass
class SamPrediction:
    """Decoder output for B prompts: low-res mask logits [B, M, 4h, 4w], predicted IoU [B, M]."""

    low_res_logits: torch.Tensor
    iou_predictions: torch.Tensor


class SamModel:
    """A loaded SAM with the predictor's pre/post-processing (see the module docstring)."""

    def __init__(self, net: Sam, device: torch.device | None = None, name: str = "sam"):
        self.net = net.eval().requires_grad_(False)
        self.device = device or net.pixel_mean.device
        self.name = name

    @property
    def config(self) -> SamConfig:
        return self.net.config

    @property
    def img_size(self) -> int:
        return self.net.config.img_size

    def preprocess(self, resized: np.ndarray) -> torch.Tensor:
        """uint8 [h, w, 3] (long side img_size) → normalised, zero-padded [1, 3, S, S] float32."""
        x = torch.as_tensor(np.array(resized, copy=True), device=self.device).permute(2, 0, 1)[None].float()
        x = (x - self.net.pixel_mean) / self.net.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    @torch.inference_mode()
    def embed(self, photo: np.ndarray) -> SamImage:
        """Encode an RGB uint8 photo [H, W, 3] (the expensive step, once per photo)."""
        photo = np.asarray(photo)
        if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
            raise InputError(f"SAM needs an HxWx3 uint8 RGB photo, got {photo.dtype} {photo.shape}")
        resized = resize_photo(photo, self.img_size)
        emb = self.net.image_encoder(self.preprocess(resized))
        return SamImage(emb, (int(photo.shape[0]), int(photo.shape[1])), (resized.shape[0], resized.shape[1]))

    @torch.inference_mode()
    def predict(self, image: SamImage, points: np.ndarray | None = None, labels: np.ndarray | None = None,
                boxes: np.ndarray | None = None, multimask: bool = True,
                mask_input: torch.Tensor | None = None) -> SamPrediction:
        """Masks for B prompts in photo pixels: `points` [B, N, 2] with `labels` [B, N] (1 object,
        0 background) and/or `boxes` [B, 4] (x0, y0, x1, y1); `mask_input` [B, 1, 4h, 4w] logits."""
        pts = None
        if points is not None:
            if labels is None:
                raise InputError("point prompts need labels (1 = object, 0 = background)")
            coords = torch.as_tensor(scale_coords(points, image.original_size, self.img_size),
                                     dtype=torch.float64, device=self.device)
            pts = (coords, torch.as_tensor(np.asarray(labels), dtype=torch.int32, device=self.device))
        box_t = None
        if boxes is not None:
            scaled = scale_coords(np.asarray(boxes, dtype=np.float64).reshape(-1, 2, 2), image.original_size,
                                  self.img_size)
            box_t = torch.as_tensor(scaled.reshape(-1, 4), dtype=torch.float32, device=self.device)
        if pts is None and box_t is None and mask_input is None:
            raise InputError("SAM needs at least one point, box or mask prompt")
        pe = self.net.prompt_encoder
        sparse, dense = pe(pts, box_t, None if mask_input is None else mask_input.to(self.device, torch.float32))
        low, iou = self.net.mask_decoder(image.embedding, pe.get_dense_pe(), sparse, dense, multimask)
        return SamPrediction(low, iou)

    @torch.inference_mode()
    def segment(self, image: SamImage, points: np.ndarray | None = None, labels: np.ndarray | None = None,
                boxes: np.ndarray | None = None, multimask: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """One bool mask [B, H, W] per prompt and its predicted IoU [B]: of SAM's three answers the
        one with the highest predicted IoU (multimask), else its single answer."""
        pred = self.predict(image, points, labels, boxes, multimask=multimask)
        best = pred.iou_predictions.argmax(dim=1)
        rows = torch.arange(best.shape[0], device=best.device)
        low = pred.low_res_logits[rows, best][:, None]
        masks = self.upscale(low, image)[:, 0] > MASK_THRESHOLD
        return masks.cpu().numpy(), pred.iou_predictions[rows, best].cpu().numpy()

    def automatic(self, photo: np.ndarray, **settings: Any) -> list[MaskProposal]:
        """SAM's automatic masks of an RGB uint8 photo (:func:`cupid.models.sam_amg.generate_proposals`)."""
        return generate_proposals(self, photo, **settings)

    @torch.inference_mode()
    def upscale(self, low_res_logits: torch.Tensor, image: SamImage) -> torch.Tensor:
        """Low-res logits [B, M, 4h, 4w] → logits [B, M, H, W] in photo pixels."""
        s = self.img_size
        x = F.interpolate(low_res_logits, (s, s), mode="bilinear", align_corners=False)
        x = x[..., :image.input_size[0], :image.input_size[1]]
        return F.interpolate(x, image.original_size, mode="bilinear", align_corners=False)


# ---------------------------------------------------------------- loading

def _variant(path: Path, state: dict[str, torch.Tensor], model_type: str | None) -> str:
    if model_type is not None:
        if model_type not in SAM_CONFIGS:
            raise CheckpointError(f"unknown SAM model type {model_type!r} (use {', '.join(SAM_CONFIGS)})")
        return model_type
    by_name = [t for t in SAM_CONFIGS if t in path.name]
    if len(by_name) == 1:
        return by_name[0]
    w = state.get("image_encoder.patch_embed.proj.weight")
    for name, cfg in SAM_CONFIGS.items():
        if w is not None and w.ndim == 4 and w.shape[0] == cfg.encoder_embed_dim:
            return name
    raise CheckpointError(f"{path.name} is not a segment-anything checkpoint: cannot tell its model type from "
                          f"the file name or image_encoder.patch_embed.proj.weight; pass model_type "
                          f"({', '.join(SAM_CONFIGS)})")


def resolve_sam(path_or_id: str | os.PathLike) -> Path:
    """A local `.pth` file, or `owner/repo/FILE.pth` on Hugging Face (the weights cache first)."""
    s = str(path_or_id)
    p = Path(s).expanduser()
    if p.is_file():
        return p
    parts = [q for q in s.split("/") if q]
    if p.is_absolute() or s.startswith((".", "~")) or len(parts) < 3:
        raise CheckpointError(f"no SAM weights at {s}: run 'cupid download' to fetch them, or give the path of "
                              "an official sam_vit_*.pth")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    return hub_file(repo, filename, what=f"the segment-anything weights {filename} ({repo})")


def read_sam_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"unreadable SAM checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a segment-anything state dict (a mapping of names to tensors)")
    return state


def load_sam(path_or_id: str | os.PathLike | None = None, device: str | torch.device | None = None,
             model_type: str | None = None) -> SamModel:
    """Load an official `sam_vit_{b,l,h}_*.pth` (or the tiny model's) strictly, float32, eval mode.

    `path_or_id` None means $CUPID_SAM_CHECKPOINT, else :data:`cupid.config.SAM_ID` (what `cupid download`
    fetches). The variant comes from `model_type`, else the file name, else the encoder width; every key
    and shape must then match that variant (:func:`cupid.models.loading.check_state_dict` names the bad ones).
    """
    if path_or_id is None:
        path_or_id = os.environ.get(SAM_CHECKPOINT_ENV, "").strip() or config.SAM_ID
    path = resolve_sam(path_or_id)
    state = read_sam_state(path)
    variant = _variant(path, state, model_type)
    with torch.device("meta"):
        net = Sam(SAM_CONFIGS[variant])
    check_state_dict(net, state, label=f"SAM checkpoint {path.name} ({variant})")
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    net.pixel_mean = torch.tensor(PIXEL_MEAN).view(-1, 1, 1)
    net.pixel_std = torch.tensor(PIXEL_STD).view(-1, 1, 1)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    net.to(dev)
    return SamModel(net, dev, name=path.name)


def build_sam(variant: str | SamConfig, **overrides: Any) -> Sam:
    """A randomly initialised SAM of a known variant (tests, the tiny model)."""
    cfg = SAM_CONFIGS[variant] if isinstance(variant, str) else variant
    return Sam(replace(cfg, **overrides) if overrides else cfg)
