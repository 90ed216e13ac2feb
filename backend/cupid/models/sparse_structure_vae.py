"""Sparse-structure VAE: dense 3D conv encoder/decoder between 64³ occupancy and the 16³×8 latent."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..modules.norm import ChannelLayerNorm32, GroupNorm32
from ..modules.spatial import pixel_shuffle_3d
from ..modules.utils import zero_module
from .dtype import TorsoDtypeMixin


def norm_layer(norm_type: str, channels: int) -> nn.Module:
    if norm_type == "group":
        return GroupNorm32(32, channels)
    if norm_type == "layer":
        return ChannelLayerNorm32(channels)
    raise ValueError(f"norm type must be 'group' or 'layer', got {norm_type!r}")


class ResBlock3d(nn.Module):
    def __init__(self, channels: int, out_channels: int | None = None, norm_type: str = "layer"):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.norm1 = norm_layer(norm_type, channels)
        self.norm2 = norm_layer(norm_type, self.out_channels)
        self.conv1 = nn.Conv3d(channels, self.out_channels, 3, padding=1)
        self.conv2 = zero_module(nn.Conv3d(self.out_channels, self.out_channels, 3, padding=1))
        self.skip_connection = (nn.Conv3d(channels, self.out_channels, 1) if channels != self.out_channels
                                else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip_connection(x)


class DownsampleBlock3d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, mode: str = "conv"):
        super().__init__()
        if mode not in ("conv", "avgpool"):
            raise ValueError(f"downsample mode must be 'conv' or 'avgpool', got {mode!r}")
        if mode == "avgpool" and in_channels != out_channels:
            raise ValueError("avgpool downsampling keeps the channel count")
        self.in_channels = in_channels
        self.out_channels = out_channels
        if mode == "conv":
            self.conv = nn.Conv3d(in_channels, out_channels, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if hasattr(self, "conv") else F.avg_pool3d(x, 2)


class UpsampleBlock3d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, mode: str = "conv"):
        super().__init__()
        if mode not in ("conv", "nearest"):
            raise ValueError(f"upsample mode must be 'conv' or 'nearest', got {mode!r}")
        if mode == "nearest" and in_channels != out_channels:
            raise ValueError("nearest upsampling keeps the channel count")
        self.in_channels = in_channels
        self.out_channels = out_channels
        if mode == "conv":
            self.conv = nn.Conv3d(in_channels, out_channels * 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "conv"):
            return pixel_shuffle_3d(self.conv(x), 2)
        return F.interpolate(x, scale_factor=2, mode="nearest")


class SparseStructureEncoder(TorsoDtypeMixin, nn.Module):
    """64³ occupancy [B, 1, 64, 64, 64] -> latent [B, latent_channels, 16, 16, 16] (posterior mean by default)."""

    torso_names = ("blocks", "middle_block")

    def __init__(self, in_channels: int, latent_channels: int, num_res_blocks: int, channels: list[int],
                 num_res_blocks_middle: int = 2, norm_type: str = "layer", use_fp16: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.channels = channels
        self.use_fp16 = use_fp16
        self.dtype = torch.float16 if use_fp16 else torch.float32
        self.input_layer = nn.Conv3d(in_channels, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for i, ch in enumerate(channels):
            self.blocks.extend([ResBlock3d(ch, ch) for _ in range(num_res_blocks)])
            if i < len(channels) - 1:
                self.blocks.append(DownsampleBlock3d(ch, channels[i + 1]))
        self.middle_block = nn.Sequential(*[ResBlock3d(channels[-1], channels[-1])
                                            for _ in range(num_res_blocks_middle)])
        self.out_layer = nn.Sequential(norm_layer(norm_type, channels[-1]), nn.SiLU(),
                                       nn.Conv3d(channels[-1], latent_channels * 2, 3, padding=1))
        if use_fp16:
            self.set_compute_dtype(torch.float16)

    def forward(self, x: torch.Tensor, sample_posterior: bool = False, return_raw: bool = False,
                generator: torch.Generator | None = None):
        h = self.input_layer(x).type(self.dtype)
        for block in self.blocks:
            h = block(h)
        h = self.middle_block(h)
        h = self.out_layer(h.type(x.dtype))
        mean, logvar = h.chunk(2, dim=1)
        if sample_posterior:
            std = torch.exp(0.5 * logvar)
            z = mean + std * torch.randn(std.shape, generator=generator, dtype=std.dtype, device=std.device)
        else:
            z = mean
        return (z, mean, logvar) if return_raw else z


class SparseStructureDecoder(TorsoDtypeMixin, nn.Module):
    """Latent [B, latent_channels, 16, 16, 16] -> occupancy logits [B, out_channels, 64, 64, 64]."""

    torso_names = ("blocks", "middle_block")

    def __init__(self, out_channels: int, latent_channels: int, num_res_blocks: int, channels: list[int],
                 num_res_blocks_middle: int = 2, norm_type: str = "layer", use_fp16: bool = False):
        super().__init__()
        self.out_channels = out_channels
        self.latent_channels = latent_channels
        self.channels = channels
        self.use_fp16 = use_fp16
        self.dtype = torch.float16 if use_fp16 else torch.float32
        self.input_layer = nn.Conv3d(latent_channels, channels[0], 3, padding=1)
        self.middle_block = nn.Sequential(*[ResBlock3d(channels[0], channels[0])
                                            for _ in range(num_res_blocks_middle)])
        self.blocks = nn.ModuleList()
        for i, ch in enumerate(channels):
            self.blocks.extend([ResBlock3d(ch, ch) for _ in range(num_res_blocks)])
            if i < len(channels) - 1:
                self.blocks.append(UpsampleBlock3d(ch, channels[i + 1]))
        self.out_layer = nn.Sequential(norm_layer(norm_type, channels[-1]), nn.SiLU(),
                                       nn.Conv3d(channels[-1], out_channels, 3, padding=1))
        if use_fp16:
            self.set_compute_dtype(torch.float16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input_layer(x).type(self.dtype)
        h = self.middle_block(h)
        for block in self.blocks:
            h = block(h)
        return self.out_layer(h.type(x.dtype))
