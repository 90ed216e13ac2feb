"""Dense transformer blocks (plain and adaLN-modulated) with TRELLIS parameter names."""
from __future__ import annotations

import torch
import torch.nn as nn

from .attention import MultiHeadAttention
from .norm import LayerNorm32


class FeedForwardNet(nn.Module):
    """`mlp.0` Linear -> tanh-GELU -> `mlp.2` Linear."""

    def __init__(self, channels: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


def _modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return h * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TransformerBlock(nn.Module):
    """Self attention + FFN, pre-norm."""

    def __init__(self, channels: int, num_heads: int, mlp_ratio: float = 4.0, attn_mode: str = "full",
                 window_size=None, shift_window=None, use_checkpoint: bool = False, use_rope: bool = False,
                 qk_rms_norm: bool = False, qkv_bias: bool = True, ln_affine: bool = False):
        super().__init__()
        self.norm1 = LayerNorm32(channels, elementwise_affine=ln_affine, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=ln_affine, eps=1e-6)
        self.attn = MultiHeadAttention(channels, num_heads, attn_mode=attn_mode, qkv_bias=qkv_bias,
                                       use_rope=use_rope, qk_rms_norm=qk_rms_norm)
        self.mlp = FeedForwardNet(channels, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerCrossBlock(nn.Module):
    """Self attention + cross attention + FFN, pre-norm."""

    def __init__(self, channels: int, ctx_channels: int, num_heads: int, mlp_ratio: float = 4.0,
                 attn_mode: str = "full", window_size=None, shift_window=None, use_checkpoint: bool = False,
                 use_rope: bool = False, qk_rms_norm: bool = False, qk_rms_norm_cross: bool = False,
                 qkv_bias: bool = True, ln_affine: bool = False):
        super().__init__()
        self.norm1 = LayerNorm32(channels, elementwise_affine=ln_affine, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=ln_affine, eps=1e-6)
        self.norm3 = LayerNorm32(channels, elementwise_affine=ln_affine, eps=1e-6)
        self.self_attn = MultiHeadAttention(channels, num_heads, type="self", attn_mode=attn_mode,
                                            qkv_bias=qkv_bias, use_rope=use_rope, qk_rms_norm=qk_rms_norm)
        self.cross_attn = MultiHeadAttention(channels, num_heads, ctx_channels=ctx_channels, type="cross",
                                             qkv_bias=qkv_bias, qk_rms_norm=qk_rms_norm_cross)
        self.mlp = FeedForwardNet(channels, mlp_ratio)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), context)
        return x + self.mlp(self.norm3(x))


class ModulatedTransformerBlock(nn.Module):
    """Self attention + FFN with adaLN (shift, scale, gate) from a conditioning vector."""

    def __init__(self, channels: int, num_heads: int, mlp_ratio: float = 4.0, attn_mode: str = "full",
                 window_size=None, shift_window=None, use_checkpoint: bool = False, use_rope: bool = False,
                 qk_rms_norm: bool = False, qkv_bias: bool = True, share_mod: bool = False):
        super().__init__()
        self.share_mod = share_mod
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.attn = MultiHeadAttention(channels, num_heads, attn_mode=attn_mode, qkv_bias=qkv_bias,
                                       use_rope=use_rope, qk_rms_norm=qk_rms_norm)
        self.mlp = FeedForwardNet(channels, mlp_ratio)
        if not share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels, bias=True))

    def forward(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        m = mod if self.share_mod else self.adaLN_modulation(mod)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = m.chunk(6, dim=1)
        x = x + self.attn(_modulate(self.norm1(x), shift_msa, scale_msa)) * gate_msa.unsqueeze(1)
        return x + self.mlp(_modulate(self.norm2(x), shift_mlp, scale_mlp)) * gate_mlp.unsqueeze(1)


class ModulatedTransformerCrossBlock(nn.Module):
    """adaLN self attention + affine-normed cross attention + adaLN FFN (the TRELLIS DiT block)."""

    def __init__(self, channels: int, ctx_channels: int, num_heads: int, mlp_ratio: float = 4.0,
                 attn_mode: str = "full", window_size=None, shift_window=None, use_checkpoint: bool = False,
                 use_rope: bool = False, qk_rms_norm: bool = False, qk_rms_norm_cross: bool = False,
                 qkv_bias: bool = True, share_mod: bool = False):
        super().__init__()
        self.share_mod = share_mod
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm3 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.self_attn = MultiHeadAttention(channels, num_heads, type="self", attn_mode=attn_mode,
                                            qkv_bias=qkv_bias, use_rope=use_rope, qk_rms_norm=qk_rms_norm)
        self.cross_attn = MultiHeadAttention(channels, num_heads, ctx_channels=ctx_channels, type="cross",
                                             qkv_bias=qkv_bias, qk_rms_norm=qk_rms_norm_cross)
        self.mlp = FeedForwardNet(channels, mlp_ratio)
        if not share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels, bias=True))

    def forward(self, x: torch.Tensor, mod: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        m = mod if self.share_mod else self.adaLN_modulation(mod)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = m.chunk(6, dim=1)
        x = x + self.self_attn(_modulate(self.norm1(x), shift_msa, scale_msa)) * gate_msa.unsqueeze(1)
        x = x + self.cross_attn(self.norm2(x), context)
        return x + self.mlp(_modulate(self.norm3(x), shift_mlp, scale_mlp)) * gate_mlp.unsqueeze(1)
