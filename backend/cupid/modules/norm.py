"""Norm layers that compute in float32 whatever the activation dtype (fp16/bf16 torsos stay stable)."""
from __future__ import annotations

import torch
import torch.nn as nn


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """The norms compute in float32 as TRELLIS does (`x.float()`), but a float64 input stays float64
    (the tiny model's decoders are fitted in float64 so that every CPU fits the same weights)."""
    return x if x.dtype == torch.float64 else x.float()


class LayerNorm32(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(at_least_float32(x)).type(x.dtype)


class GroupNorm32(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(at_least_float32(x)).type(x.dtype)


class ChannelLayerNorm32(LayerNorm32):
    """Layer norm over the channel axis (dim 1) of a [B, C, *spatial] tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nd = x.dim()
        h = x.permute(0, *range(2, nd), 1).contiguous()
        h = super().forward(h)
        return h.permute(0, nd - 1, *range(1, nd - 1)).contiguous()
