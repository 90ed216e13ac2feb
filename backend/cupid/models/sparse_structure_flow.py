"""SparseStructureFlowModel: the dense DiT that denoises the 16³×8 sparse-structure latent."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..modules.embedders import AbsolutePositionEmbedder
from ..modules.spatial import patchify, unpatchify
from ..modules.transformer import ModulatedTransformerCrossBlock
from .flow_core import FlowCoreMixin


class SparseStructureFlowModel(FlowCoreMixin, nn.Module):
    """Velocity field v(x, t | cond) on a dense [B, C, R, R, R] latent, TRELLIS layout and keys."""

    torso_names = ("blocks",)

    def __init__(self, resolution: int, in_channels: int, model_channels: int, cond_channels: int,
                 out_channels: int, num_blocks: int, num_heads: int | None = None, num_head_channels: int = 64,
                 mlp_ratio: float = 4, patch_size: int = 2, pe_mode: str = "ape", use_fp16: bool = False,
                 use_checkpoint: bool = False, share_mod: bool = False, qk_rms_norm: bool = False,
                 qk_rms_norm_cross: bool = False):
        super().__init__()
        self._init_flow_core(resolution=resolution, in_channels=in_channels, model_channels=model_channels,
                             cond_channels=cond_channels, out_channels=out_channels, num_blocks=num_blocks,
                             num_heads=num_heads, num_head_channels=num_head_channels, mlp_ratio=mlp_ratio,
                             patch_size=patch_size, pe_mode=pe_mode, share_mod=share_mod, use_fp16=use_fp16)
        grid = resolution // patch_size
        ax = torch.arange(grid)
        pos = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), dim=-1).reshape(-1, 3)
        self.register_buffer("pos_emb", AbsolutePositionEmbedder(model_channels, 3)(pos))
        self.input_layer = nn.Linear(in_channels * patch_size ** 3, model_channels)
        self.blocks = nn.ModuleList([
            ModulatedTransformerCrossBlock(model_channels, cond_channels, num_heads=self.num_heads,
                                           mlp_ratio=mlp_ratio, attn_mode="full", share_mod=share_mod,
                                           qk_rms_norm=qk_rms_norm, qk_rms_norm_cross=qk_rms_norm_cross)
            for _ in range(num_blocks)
        ])
        self.out_layer = nn.Linear(model_channels, out_channels * patch_size ** 3)
        if use_fp16:
            self.set_compute_dtype(torch.float16)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        expect = [x.shape[0], self.in_channels, *[self.resolution] * 3]
        if list(x.shape) != expect:
            raise ValueError(f"input shape {list(x.shape)} does not match {expect}")
        h = patchify(x, self.patch_size)
        h = h.reshape(*h.shape[:2], -1).permute(0, 2, 1).contiguous()
        h = self.input_layer(h) + self.pos_emb[None]
        t_emb = self.embed_timestep(t)
        h = h.type(self.dtype)
        cond = cond.type(self.dtype)
        for block in self.blocks:
            h = block(h, t_emb, cond)
        h = h.type(x.dtype)
        h = F.layer_norm(h, h.shape[-1:])
        h = self.out_layer(h)
        g = self.resolution // self.patch_size
        h = h.permute(0, 2, 1).reshape(h.shape[0], h.shape[2], g, g, g)
        return unpatchify(h, self.patch_size).contiguous()
