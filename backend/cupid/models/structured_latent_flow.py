"""SLatFlowModel: the sparse DiT that denoises the structured latent (8 channels on the active 64³ voxels).

Layout: input SparseLinear -> sparse conv res blocks that pool 2× per stage (the patching) -> modulated
transformer blocks with full attention per object + cross attention to the image tokens -> res blocks
that unpool (with skip concatenation) -> layer norm -> output SparseLinear.

Subclasses that add per-voxel conditioning (CUPID's visual-latent model) build the parent with a larger
`in_channels` and concatenate their features to `x.feats` before calling `SLatFlowModel.forward`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..modules.embedders import AbsolutePositionEmbedder
from ..modules.norm import LayerNorm32
from ..modules.utils import zero_module
from .flow_core import FlowCoreMixin
from ..sparse import (ModulatedSparseTransformerCrossBlock, SparseConv3d, SparseDownsample, SparseLinear,
                      SparseTensor, SparseUpsample)


class SparseResBlock3d(nn.Module):
    """Timestep-modulated residual block of two submanifold convs, optionally pooling or unpooling first."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None,
                 downsample: bool = False, upsample: bool = False):
        super().__init__()
        if downsample and upsample:
            raise ValueError("a res block cannot both downsample and upsample")
        self.channels = channels
        self.emb_channels = emb_channels
        self.out_channels = out_channels or channels
        self.downsample = downsample
        self.upsample = upsample
        self.norm1 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm2 = LayerNorm32(self.out_channels, elementwise_affine=False, eps=1e-6)
        self.conv1 = SparseConv3d(channels, self.out_channels, 3)
        self.conv2 = zero_module(SparseConv3d(self.out_channels, self.out_channels, 3))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels, bias=True))
        self.skip_connection = (SparseLinear(channels, self.out_channels) if channels != self.out_channels
                                else nn.Identity())
        self.updown: nn.Module | None = None
        if downsample:
            self.updown = SparseDownsample(2)
        elif upsample:
            self.updown = SparseUpsample(2)

    def forward(self, x: SparseTensor, emb: torch.Tensor) -> SparseTensor:
        scale, shift = self.emb_layers(emb).type(x.dtype).chunk(2, dim=1)
        if self.updown is not None:
            x = self.updown(x)
        h = x.replace(F.silu(self.norm1(x.feats)))
        h = self.conv1(h)
        h = h.replace(self.norm2(h.feats)) * (1 + scale) + shift
        h = h.replace(F.silu(h.feats))
        h = self.conv2(h)
        return h + self.skip_connection(x)


class SLatFlowModel(FlowCoreMixin, nn.Module):
    """Velocity field on a SparseTensor latent, conditioned on the timestep and dense image tokens."""

    torso_names = ("input_blocks", "blocks", "out_blocks")

    def __init__(self, resolution: int, in_channels: int, model_channels: int, cond_channels: int,
                 out_channels: int, num_blocks: int, num_heads: int | None = None, num_head_channels: int = 64,
                 mlp_ratio: float = 4, patch_size: int = 2, num_io_res_blocks: int = 2,
                 io_block_channels: list[int] | None = None, pe_mode: str = "ape", use_fp16: bool = False,
                 use_checkpoint: bool = False, use_skip_connection: bool = True, share_mod: bool = False,
                 qk_rms_norm: bool = False, qk_rms_norm_cross: bool = False):
        super().__init__()
        if io_block_channels is not None:
            stages = math.log2(patch_size)
            if stages != int(stages) or int(stages) != len(io_block_channels):
                raise ValueError("patch_size must be 2**len(io_block_channels)")
        self._init_flow_core(resolution=resolution, in_channels=in_channels, model_channels=model_channels,
                             cond_channels=cond_channels, out_channels=out_channels, num_blocks=num_blocks,
                             num_heads=num_heads, num_head_channels=num_head_channels, mlp_ratio=mlp_ratio,
                             patch_size=patch_size, pe_mode=pe_mode, share_mod=share_mod, use_fp16=use_fp16)
        self.num_io_res_blocks = num_io_res_blocks
        self.io_block_channels = io_block_channels
        self.use_skip_connection = use_skip_connection
        self.pos_embedder = AbsolutePositionEmbedder(model_channels)
        first = model_channels if io_block_channels is None else io_block_channels[0]
        self.input_layer = SparseLinear(in_channels, first)

        self.input_blocks = nn.ModuleList()
        if io_block_channels is not None:
            for chs, next_chs in zip(io_block_channels, io_block_channels[1:] + [model_channels]):
                self.input_blocks.extend([SparseResBlock3d(chs, model_channels, out_channels=chs)
                                          for _ in range(num_io_res_blocks - 1)])
                self.input_blocks.append(SparseResBlock3d(chs, model_channels, out_channels=next_chs,
                                                          downsample=True))
        self.blocks = nn.ModuleList([
            ModulatedSparseTransformerCrossBlock(model_channels, cond_channels, num_heads=self.num_heads,
                                                 mlp_ratio=mlp_ratio, attn_mode="full", share_mod=share_mod,
                                                 qk_rms_norm=qk_rms_norm, qk_rms_norm_cross=qk_rms_norm_cross)
            for _ in range(num_blocks)
        ])
        self.out_blocks = nn.ModuleList()
        if io_block_channels is not None:
            rev = list(reversed(io_block_channels))
            prevs = [model_channels] + list(reversed(io_block_channels[1:]))
            mult = 2 if use_skip_connection else 1
            for chs, prev_chs in zip(rev, prevs):
                self.out_blocks.append(SparseResBlock3d(prev_chs * mult, model_channels, out_channels=chs,
                                                        upsample=True))
                self.out_blocks.extend([SparseResBlock3d(chs * mult, model_channels, out_channels=chs)
                                        for _ in range(num_io_res_blocks - 1)])
        self.out_layer = SparseLinear(first, out_channels)
        if use_fp16:
            self.set_compute_dtype(torch.float16)

    def forward(self, x: SparseTensor, t: torch.Tensor, cond: torch.Tensor) -> SparseTensor:
        if x.feats.shape[-1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.feats.shape[-1]}")
        h = self.input_layer(x).type(self.dtype)
        t_emb = self.embed_timestep(t)
        cond = cond.type(self.dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, t_emb)
            skips.append(h.feats)
        h = h + self.pos_embedder(h.coords[:, 1:]).type(self.dtype)
        for block in self.blocks:
            h = block(h, t_emb, cond)
        for block, skip in zip(self.out_blocks, reversed(skips)):
            if self.use_skip_connection:
                h = h.replace(torch.cat([h.feats, skip], dim=1))
            h = block(h, t_emb)
        h = h.replace(F.layer_norm(h.feats.float(), h.feats.shape[-1:]).type(x.dtype))
        return self.out_layer(h)


class ElasticSLatFlowModel(SLatFlowModel):
    """Checkpoint name of the same network; TRELLIS's 'elastic' variant only trades memory in training."""
