"""Sparse transformer blocks (plain, cross, adaLN-modulated) with TRELLIS parameter names."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..modules.norm import LayerNorm32
from .attention import SparseMultiHeadAttention
from .nn import SparseGELU, SparseLinear
from .tensor import SparseTensor


class SparseFeedForwardNet(nn.Module):
    def __init__(self, channels: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(SparseLinear(channels, hidden), SparseGELU(approximate="tanh"),
                                 SparseLinear(hidden, channels))

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.mlp(x)


def _norm(norm: nn.Module, x: SparseTensor) -> SparseTensor:
    return x.replace(norm(x.feats))


def _self_attn(channels: int, num_heads: int, attn_mode: str, window_size, shift_window, qkv_bias: bool,
               use_rope: bool, qk_rms_norm: bool) -> SparseMultiHeadAttention:
    return SparseMultiHeadAttention(channels, num_heads, type="self", attn_mode=attn_mode, window_size=window_size,
                                    shift_window=shift_window, qkv_bias=qkv_bias, use_rope=use_rope,
                                    qk_rms_norm=qk_rms_norm)


class SparseTransformerBlock(nn.Module):
    """Self attention (full or windowed) + FFN."""

    def __init__(self, channels: int, num_heads: int, mlp_ratio: float = 4.0, attn_mode: str = "full",
                 window_size: int | None = None, shift_sequence: int | None = None,
                 shift_window=None, serialize_mode=None, use_checkpoint: bool = False,
                 use_rope: bool = False, qk_rms_norm: bool = False, qkv_bias: bool = True,
                 ln_affine: bool = False):
        super().__init__()
        self.norm1 = LayerNorm32(channels, elementwise_affine=ln_affine, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=ln_affine, eps=1e-6)
        self.attn = _self_attn(channels, num_heads, attn_mode, window_size, shift_window, qkv_bias, use_rope,
                               qk_rms_norm)
        self.mlp = SparseFeedForwardNet(channels, mlp_ratio)

    def forward(self, x: SparseTensor) -> SparseTensor:
        x = x + self.attn(_norm(self.norm1, x))
        return x + self.mlp(_norm(self.norm2, x))


class SparseTransformerCrossBlock(nn.Module):
    """Self attention + cross attention to a dense context + FFN."""

    def __init__(self, channels: int, ctx_channels: int, num_heads: int, mlp_ratio: float = 4.0,
                 attn_mode: str = "full", window_size: int | None = None, shift_sequence: int | None = None,
                 shift_window=None, serialize_mode=None, use_checkpoint: bool = False,
                 use_rope: bool = False, qk_rms_norm: bool = False, qk_rms_norm_cross: bool = False,
                 qkv_bias: bool = True, ln_affine: bool = False):
        super().__init__()
        self.norm1 = LayerNorm32(channels, elementwise_affine=ln_affine, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=ln_affine, eps=1e-6)
        self.norm3 = LayerNorm32(channels, elementwise_affine=ln_affine, eps=1e-6)
        self.self_attn = _self_attn(channels, num_heads, attn_mode, window_size, shift_window, qkv_bias,
                                    use_rope, qk_rms_norm)
        self.cross_attn = SparseMultiHeadAttention(channels, num_heads, ctx_channels=ctx_channels, type="cross",
                                                   qkv_bias=qkv_bias, qk_rms_norm=qk_rms_norm_cross)
        self.mlp = SparseFeedForwardNet(channels, mlp_ratio)

    def forward(self, x: SparseTensor, context: torch.Tensor) -> SparseTensor:
        x = x + self.self_attn(_norm(self.norm1, x))
        x = x + self.cross_attn(_norm(self.norm2, x), context)
        return x + self.mlp(_norm(self.norm3, x))


class ModulatedSparseTransformerBlock(nn.Module):
    """adaLN self attention + adaLN FFN."""

    def __init__(self, channels: int, num_heads: int, mlp_ratio: float = 4.0, attn_mode: str = "full",
                 window_size: int | None = None, shift_sequence: int | None = None,
                 shift_window=None, serialize_mode=None, use_checkpoint: bool = False,
                 use_rope: bool = False, qk_rms_norm: bool = False, qkv_bias: bool = True,
                 share_mod: bool = False):
        super().__init__()
        self.share_mod = share_mod
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.attn = _self_attn(channels, num_heads, attn_mode, window_size, shift_window, qkv_bias, use_rope,
                               qk_rms_norm)
        self.mlp = SparseFeedForwardNet(channels, mlp_ratio)
        if not share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels, bias=True))

    def forward(self, x: SparseTensor, mod: torch.Tensor) -> SparseTensor:
        m = mod if self.share_mod else self.adaLN_modulation(mod)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = m.chunk(6, dim=1)
        h = _norm(self.norm1, x) * (1 + scale_msa) + shift_msa
        x = x + self.attn(h) * gate_msa
        h = _norm(self.norm2, x) * (1 + scale_mlp) + shift_mlp
        return x + self.mlp(h) * gate_mlp


class ModulatedSparseTransformerCrossBlock(nn.Module):
    """adaLN self attention + affine-normed cross attention + adaLN FFN (the SLat flow DiT block)."""

    def __init__(self, channels: int, ctx_channels: int, num_heads: int, mlp_ratio: float = 4.0,
                 attn_mode: str = "full", window_size: int | None = None, shift_sequence: int | None = None,
                 shift_window=None, serialize_mode=None, use_checkpoint: bool = False,
                 use_rope: bool = False, qk_rms_norm: bool = False, qk_rms_norm_cross: bool = False,
                 qkv_bias: bool = True, share_mod: bool = False):
        super().__init__()
        self.share_mod = share_mod
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm3 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.self_attn = _self_attn(channels, num_heads, attn_mode, window_size, shift_window, qkv_bias,
                                    use_rope, qk_rms_norm)
        self.cross_attn = SparseMultiHeadAttention(channels, num_heads, ctx_channels=ctx_channels, type="cross",
                                                   qkv_bias=qkv_bias, qk_rms_norm=qk_rms_norm_cross)
        self.mlp = SparseFeedForwardNet(channels, mlp_ratio)
        if not share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels, bias=True))

    def forward(self, x: SparseTensor, mod: torch.Tensor, context: torch.Tensor) -> SparseTensor:
        m = mod if self.share_mod else self.adaLN_modulation(mod)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = m.chunk(6, dim=1)
        h = _norm(self.norm1, x) * (1 + scale_msa) + shift_msa
        x = x + self.self_attn(h) * gate_msa
        x = x + self.cross_attn(_norm(self.norm2, x), context)
        h = _norm(self.norm3, x) * (1 + scale_mlp) + shift_mlp
        return x + self.mlp(h) * gate_mlp
