"""CUPID's stage-2 flow: TRELLIS's SLat flow with pose-aligned conditioning per voxel.

Each active voxel is projected with the solved camera to uv. There the flow reads (a) DINOv2 patch
tokens, bilinearly sampled and compressed to `cond_latent_channels` by the frozen TRELLIS SLat
encoder (posterior mean), and (b) a light conv head's maps of the RGB×alpha photo, each sampled
and concatenated. Both are concatenated with the noisy latent before the input layer, which is why
`in_channels` of the underlying flow grows by cond_latent_channels + sum(visual_feat_channels).
The encoder is held outside the module's parameters: it is a separate (TRELLIS) checkpoint.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError
from ..sparse import SparseTensor
from .structured_latent_flow import SLatFlowModel


def sample_at_uv(maps: torch.Tensor, uvs: SparseTensor) -> torch.Tensor:
    """Bilinearly sample [B, C, H, W] maps at each voxel's uv (zeros outside, align_corners=False)."""
    out = []
    for i, uv in enumerate(uvs.unbind(0)):
        grid = uv.feats.to(maps.dtype)[None, None] * 2 - 1
        s = F.grid_sample(maps[i:i + 1], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out.append(s[0, :, 0].transpose(0, 1))
    return torch.cat(out, dim=0)


class VisualLatentConditioningSLatFlowModel(SLatFlowModel):
    """SLatFlowModel whose input is [noisy latent ‖ encoded DINOv2 features ‖ conv features] at uv."""

    def __init__(self, resolution: int, in_channels: int, model_channels: int, cond_channels: int,
                 cond_latent_channels: int, out_channels: int, num_blocks: int,
                 visual_input_channels: int = 3, visual_feat_resolution: int = 256,
                 visual_feat_channels: list[int] | None = None, visual_conv_kernel_size: int = 3,
                 **kwargs: Any):
        feat_channels = list(visual_feat_channels or [4, 4, 4, 4])
        super().__init__(resolution, in_channels + cond_latent_channels + sum(feat_channels), model_channels,
                         cond_channels, out_channels, num_blocks, **kwargs)
        self.noise_channels = in_channels
        self.cond_latent_channels = cond_latent_channels
        self.visual_feat_resolution = visual_feat_resolution
        self.visual_feat_channels = feat_channels
        self._slat_encoder: list[nn.Module | None] = [None]  # a list keeps it out of the state dict
        convs = []
        c_in, res_in, res_out = visual_input_channels, visual_feat_resolution, visual_feat_resolution
        for c_out in feat_channels:
            convs.append(nn.Conv2d(c_in, c_out, visual_conv_kernel_size, padding=visual_conv_kernel_size // 2,
                                   stride=2 if res_out < res_in else 1))
            c_in, res_in, res_out = c_out, res_out, res_out // 2
        self.visual_conv_blocks = nn.ModuleList(convs)

    def attach_slat_encoder(self, encoder: nn.Module) -> None:
        """Give the frozen SLat encoder that compresses DINOv2 features (loaded by the pipeline)."""
        self._slat_encoder[0] = encoder.eval()

    def encode_latent(self, uvs: SparseTensor, dino_cond: torch.Tensor) -> torch.Tensor:
        encoder = self._slat_encoder[0]
        if encoder is None:
            raise CheckpointError("the stage-2 flow needs its SLat encoder: call attach_slat_encoder first")
        b, n, c = dino_cond.shape
        side = int(math.isqrt(n - 1))
        registers = n - side * side
        # the unconditional pass (all-zero tokens, registers included) reads zeros by construction
        null = (dino_cond[:, :registers] == 0).flatten(1).all(dim=1)
        if bool(null.all()):
            return torch.zeros(uvs.feats.shape[0], self.cond_latent_channels, device=uvs.device)
        tokens = dino_cond[:, registers:].transpose(1, 2).reshape(b, c, side, side)
        feats = sample_at_uv(tokens.float(), uvs)
        latent = encoder(SparseTensor(feats, uvs.coords), sample_posterior=False).feats
        return latent * (1 - null.to(latent.dtype)[uvs.coords[:, 0].long()])[:, None]

    def encode_visual_feat(self, uvs: SparseTensor, visual_cond: torch.Tensor) -> torch.Tensor:
        v = F.interpolate(visual_cond.float(), size=(self.visual_feat_resolution,) * 2, mode="bilinear",
                          align_corners=False, antialias=True)
        sampled = []
        for conv in self.visual_conv_blocks:
            v = conv(v)
            sampled.append(sample_at_uv(v, uvs))
        return torch.cat(sampled, dim=1)

    def voxel_condition(self, uvs: SparseTensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """[N, cond_latent_channels + sum(visual_feat_channels)]: what each voxel reads from the photo.
        It is the same at every sampler step, so a sampling run computes it once per condition and
        passes it as cond["voxel_cond"] (the SLat encoder is ~40% of a forward otherwise)."""
        return torch.cat([self.encode_latent(uvs, cond["dino_cond"]),
                          self.encode_visual_feat(uvs, cond["visual_cond"])], dim=1)

    def forward(self, x: SparseTensor, t: torch.Tensor, cond: dict[str, torch.Tensor],  # type: ignore[override]
                uvs: SparseTensor | None = None) -> SparseTensor:
        feats = cond.get("voxel_cond")
        if feats is None:
            if uvs is None:
                raise ValueError("the visual-conditioning flow needs the voxels' uv (uvs=...)")
            feats = self.voxel_condition(uvs, cond)
        if feats.shape[0] != x.feats.shape[0]:
            raise ValueError(f"voxel condition has {feats.shape[0]} rows for {x.feats.shape[0]} voxels")
        x = x.replace(torch.cat([x.feats, feats.to(x.feats.dtype)], dim=1))
        return super().forward(x, t, cond["dino_cond"])


class ElasticVisualLatentConditioningSLatFlowModel(VisualLatentConditioningSLatFlowModel):
    """The release's class name; 'elastic' only changed training-time memory management."""
