"""Dense multi-head attention (self / cross) on [B, L, C] tensors through torch SDPA."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """q [B, Lq, H, C], k/v [B, Lk, H, C] -> [B, Lq, H, C].

    q, k and v go to torch's kernel as contiguous [B, H, L, C]: strided views (what slicing a fused qkv
    projection gives) cost the CPU flash kernel 10-20% of its speed, far more than the one copy."""
    def heads_first(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).contiguous()

    out = F.scaled_dot_product_attention(heads_first(q), heads_first(k), heads_first(v), attn_mask=mask)
    return out.transpose(1, 2)


class MultiHeadRMSNorm(nn.Module):
    """Per-head RMS norm of queries/keys with learnt `gamma` [heads, dim]; float32 inside."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(heads, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.normalize(x.float(), dim=-1) * self.gamma * self.scale).to(x.dtype)


class MultiHeadAttention(nn.Module):
    """Full attention with TRELLIS parameter names (to_qkv | to_q + to_kv, to_out, q/k_rms_norm)."""

    def __init__(self, channels: int, num_heads: int, ctx_channels: int | None = None, type: str = "self",
                 attn_mode: str = "full", window_size: int | None = None, shift_window=None,
                 qkv_bias: bool = True, use_rope: bool = False, qk_rms_norm: bool = False):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by heads {num_heads}")
        if type not in ("self", "cross"):
            raise ValueError(f"attention type must be 'self' or 'cross', got {type!r}")
        if attn_mode != "full":
            raise ValueError(f"dense attention supports only attn_mode 'full', got {attn_mode!r}")
        if use_rope:
            raise ValueError("rotary position embeddings are not supported (released checkpoints use 'ape')")
        self.channels = channels
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.ctx_channels = ctx_channels if ctx_channels is not None else channels
        self._type = type
        self.qk_rms_norm = qk_rms_norm
        if type == "self":
            self.to_qkv = nn.Linear(channels, channels * 3, bias=qkv_bias)
        else:
            self.to_q = nn.Linear(channels, channels, bias=qkv_bias)
            self.to_kv = nn.Linear(self.ctx_channels, channels * 2, bias=qkv_bias)
        if qk_rms_norm:
            self.q_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
            self.k_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, l, _ = x.shape
        if self._type == "self":
            q, k, v = self.to_qkv(x).reshape(b, l, 3, self.num_heads, -1).unbind(2)
        else:
            if context is None:
                raise ValueError("cross attention needs a context tensor")
            q = self.to_q(x).reshape(b, l, self.num_heads, -1)
            k, v = self.to_kv(context).reshape(b, context.shape[1], 2, self.num_heads, -1).unbind(2)
        if self.qk_rms_norm:
            q = self.q_rms_norm(q)
            k = self.k_rms_norm(k)
        h = scaled_dot_product_attention(q, k, v)
        return self.to_out(h.reshape(b, l, -1))
