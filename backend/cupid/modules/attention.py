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


def empty_context_items(context: torch.Tensor) -> torch.Tensor:
    """bool [B]: the batch items whose cross-attention context is all zeros (guidance's unconditional
    pass: the release conditions it on `zeros_like(cond)`)."""
    return ~context.reshape(context.shape[0], -1).ne(0).any(1)


def empty_context_output(to_kv: nn.Linear, to_out: nn.Linear, like: torch.Tensor) -> torch.Tensor:
    """[C]: cross-attention's output for an all-zero context, whatever the queries.

    Every key is then to_kv's bias (and equally normalised), so the softmax weights are uniform and each
    query's result is the one value row; the output is to_out of it. Computing it from one zero row skips
    the queries' projection, the attention and the output projection of those items (exact up to
    rounding: the full computation sums identical rows)."""
    zero = like.new_zeros(1, to_kv.in_features)
    v = to_kv(zero)[:, to_out.in_features:]  # to_kv's output is [k | v]
    return to_out(v)[0]


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
        if self._type == "cross":
            if context is None:
                raise ValueError("cross attention needs a context tensor")
            empty = empty_context_items(context)
            if bool(empty.any()):  # items with a zero context get the constant output, the rest attend
                out = empty_context_output(self.to_kv, self.to_out, x).expand(*x.shape).clone()
                keep = ~empty
                if bool(keep.any()):
                    out[keep] = self._attend(x[keep], context[keep])
                return out
        return self._attend(x, context)

    def _attend(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        b, l, _ = x.shape
        if self._type == "self":
            q, k, v = self.to_qkv(x).reshape(b, l, 3, self.num_heads, -1).unbind(2)
        else:
            q = self.to_q(x).reshape(b, l, self.num_heads, -1)
            k, v = self.to_kv(context).reshape(b, context.shape[1], 2, self.num_heads, -1).unbind(2)
        if self.qk_rms_norm:
            q = self.q_rms_norm(q)
            k = self.k_rms_norm(k)
        h = scaled_dot_product_attention(q, k, v)
        return self.to_out(h.reshape(b, l, -1))
