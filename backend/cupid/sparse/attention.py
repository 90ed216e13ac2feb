"""Sparse multi-head attention: full (per batch item) and shifted-window (swin), all through SDPA.

Full attention attends among the voxels of one batch item; cross attention lets every voxel of item b
attend to the dense context of item b. Windowed attention partitions voxels into cubes of
`window_size`³ after shifting coordinates by `shift_window` (TRELLIS: shift = window_size // 2 on odd
blocks) and attends within each cube; windows of different sizes are padded in length buckets.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..modules.attention import (MultiHeadRMSNorm, empty_context_items, empty_context_output,
                                 scaled_dot_product_attention)
from .tensor import SparseTensor


_sdpa = scaled_dot_product_attention   # q,k,v [B, L, H, C] -> [B, L, H, C], optional mask


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     q_lens: Sequence[int], kv_lens: Sequence[int]) -> torch.Tensor:
    """Packed variable-length attention: segment i of q attends to segment i of k/v. [T, H, C] rows."""
    if len(q_lens) == 1:
        return _sdpa(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0))[0]
    if len(set(q_lens)) == 1 and len(set(kv_lens)) == 1:
        b = len(q_lens)
        out = _sdpa(q.reshape(b, q_lens[0], *q.shape[1:]), k.reshape(b, kv_lens[0], *k.shape[1:]),
                    v.reshape(b, kv_lens[0], *v.shape[1:]))
        return out.reshape(-1, *out.shape[2:])
    outs, qs, ks = [], 0, 0
    for ql, kl in zip(q_lens, kv_lens):
        outs.append(_sdpa(q[qs:qs + ql].unsqueeze(0), k[ks:ks + kl].unsqueeze(0), v[ks:ks + kl].unsqueeze(0))[0])
        qs += ql
        ks += kl
    return torch.cat(outs, 0)


def sparse_self_attention(qkv: SparseTensor) -> SparseTensor:
    """Full self attention within each batch item; qkv feats [T, 3, H, C] -> [T, H, C]."""
    q, k, v = qkv.feats.unbind(1)
    lens = qkv.seq_lens()
    return qkv.replace(varlen_attention(q, k, v, lens, lens))


def cross_attention_rows(q: torch.Tensor, lens: Sequence[int], kv: torch.Tensor) -> torch.Tensor:
    """The lens[b] rows of item b (q [T, H, C], items in order) attend to dense context kv[b]
    ([B, L, 2, H, C]) -> [T, H, C]."""
    k, v = kv.unbind(2)
    b, l = k.shape[:2]
    return varlen_attention(q, k.reshape(b * l, *k.shape[2:]), v.reshape(b * l, *v.shape[2:]), lens, [l] * b)


def sparse_cross_attention(q: SparseTensor, kv: torch.Tensor) -> SparseTensor:
    """Voxels of item b (q feats [T, H, C]) attend to dense context kv[b] ([B, L, 2, H, C])."""
    return q.replace(cross_attention_rows(q.feats, q.seq_lens(), kv))


class WindowPartition:
    """Token order grouping the voxels by window, window lengths and padding buckets."""

    def __init__(self, coords: torch.Tensor, window_size: int, shift: Sequence[int],
                 max_elems: int = 1 << 24):
        c = coords.long()
        ws = window_size
        shifted = c[:, 1:] + torch.tensor(list(shift), device=c.device)
        w = shifted // ws
        size = (w.max(0).values + 1).tolist()
        key = ((c[:, 0] * size[0] + w[:, 0]) * size[1] + w[:, 1]) * size[2] + w[:, 2]
        _, inv = torch.unique(key, return_inverse=True)
        lens = torch.bincount(inv)
        # windows sorted by decreasing length, tokens grouped by window in that order
        win_order = torch.argsort(lens, descending=True, stable=True)
        rank = torch.empty_like(win_order)
        rank[win_order] = torch.arange(win_order.numel(), device=c.device)
        tok_rank = rank[inv]
        self.order = torch.argsort(tok_rank, stable=True)            # tokens, window-grouped
        sorted_lens = lens[win_order]
        starts = torch.cumsum(sorted_lens, 0) - sorted_lens
        win_of_tok = tok_rank[self.order]
        self.pos = torch.arange(c.shape[0], device=c.device) - starts[win_of_tok]  # position in window
        self.win_of_tok = win_of_tok
        lens_list = sorted_lens.tolist()
        self.lens = lens_list
        # buckets of consecutive windows: similar lengths, bounded padded attention size
        self.buckets: list[tuple[int, int, int, int, int]] = []  # (w0, w1, tok0, tok1, Lmax)
        i, tok = 0, 0
        n = len(lens_list)
        while i < n:
            lmax = lens_list[i]
            j, t = i, tok
            while j < n and lens_list[j] * 4 >= lmax * 3 and (j - i + 1) * lmax * lmax <= max_elems:
                t += lens_list[j]
                j += 1
            if j == i:
                t += lens_list[j]
                j += 1
            self.buckets.append((i, j, tok, t, lmax))
            i, tok = j, t


def window_partition(x: SparseTensor, window_size: int, shift: int | Sequence[int]) -> WindowPartition:
    shift3 = (shift,) * 3 if isinstance(shift, int) else tuple(shift)
    key = f"window_partition_{window_size}_{shift3}"
    cached = x.get_spatial_cache(key)
    if cached is not None and cached[0] is x.coords:
        return cached[1]
    part = WindowPartition(x.coords, window_size, shift3)
    x.register_spatial_cache(key, (x.coords, part))
    return part


def windowed_attention(qkv: torch.Tensor, part: WindowPartition) -> torch.Tensor:
    """Attention inside each window; qkv [T, 3, H, C] in the original row order -> [T, H, C]."""
    t, _, h, c = qkv.shape
    g = qkv.index_select(0, part.order)
    out = torch.empty(t, h, c, dtype=qkv.dtype, device=qkv.device)
    for w0, w1, t0, t1, lmax in part.buckets:
        nb = w1 - w0
        seg = g[t0:t1]
        if all(part.lens[w] == lmax for w in (w0, w1 - 1)):
            blk = seg.reshape(nb, lmax, 3, h, c)
            o = _sdpa(blk[:, :, 0], blk[:, :, 1], blk[:, :, 2])
            out[t0:t1] = o.reshape(-1, h, c)
            continue
        win = part.win_of_tok[t0:t1] - w0
        pos = part.pos[t0:t1]
        pad = qkv.new_zeros(nb, lmax, 3, h, c)
        pad[win, pos] = seg
        valid = torch.zeros(nb, lmax, dtype=torch.bool, device=qkv.device)
        valid[win, pos] = True
        o = _sdpa(pad[:, :, 0], pad[:, :, 1], pad[:, :, 2], valid[:, None, None, :])
        out[t0:t1] = o[win, pos]
    res = torch.empty_like(out)
    res[part.order] = out
    return res


def sparse_windowed_self_attention(qkv: SparseTensor, window_size: int, shift: int | Sequence[int] = 0) -> SparseTensor:
    part = window_partition(qkv, window_size, shift)
    return qkv.replace(windowed_attention(qkv.feats, part))


# q/k RMS norm acts on feature rows exactly as on dense tokens: one module serves both.
SparseMultiHeadRMSNorm = MultiHeadRMSNorm


class SparseMultiHeadAttention(nn.Module):
    """Self (full or swin-windowed) or cross attention on sparse tensors; TRELLIS parameter names."""

    def __init__(self, channels: int, num_heads: int, ctx_channels: int | None = None, type: str = "self",
                 attn_mode: str = "full", window_size: int | None = None, shift_sequence: int | None = None,
                 shift_window: int | tuple[int, int, int] | None = None, serialize_mode=None,
                 qkv_bias: bool = True, use_rope: bool = False, qk_rms_norm: bool = False):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by heads {num_heads}")
        if type not in ("self", "cross"):
            raise ValueError(f"attention type must be 'self' or 'cross', got {type!r}")
        if attn_mode not in ("full", "windowed"):
            raise ValueError(f"attention mode {attn_mode!r} is not supported (only 'full' and 'windowed', "
                             "which every released TRELLIS/CUPID checkpoint uses)")
        if type == "cross" and attn_mode != "full":
            raise ValueError("cross attention is always full attention")
        if use_rope:
            raise ValueError("rotary position embeddings are not supported (released checkpoints use 'ape')")
        self.channels = channels
        self.num_heads = num_heads
        self.ctx_channels = ctx_channels if ctx_channels is not None else channels
        self._type = type
        self.attn_mode = attn_mode
        self.window_size = window_size
        self.shift_window = shift_window if shift_window is not None else 0
        self.qk_rms_norm = qk_rms_norm
        if type == "self":
            self.to_qkv = nn.Linear(channels, channels * 3, bias=qkv_bias)
        else:
            self.to_q = nn.Linear(channels, channels, bias=qkv_bias)
            self.to_kv = nn.Linear(self.ctx_channels, channels * 2, bias=qkv_bias)
        if qk_rms_norm:
            self.q_rms_norm = SparseMultiHeadRMSNorm(channels // num_heads, num_heads)
            self.k_rms_norm = SparseMultiHeadRMSNorm(channels // num_heads, num_heads)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: SparseTensor, context: torch.Tensor | None = None) -> SparseTensor:
        heads = self.num_heads
        if self._type == "self":
            qkv = self.to_qkv(x.feats).reshape(x.feats.shape[0], 3, heads, -1)
            if self.qk_rms_norm:
                q, k, v = qkv.unbind(1)
                qkv = torch.stack([self.q_rms_norm(q), self.k_rms_norm(k), v], dim=1)
            qkv_t = x.replace(qkv)
            if self.attn_mode == "full":
                h = sparse_self_attention(qkv_t)
            else:
                h = sparse_windowed_self_attention(qkv_t, self.window_size, self.shift_window)
        else:
            if context is None:
                raise ValueError("cross attention needs a context tensor")
            return x.replace(self._cross(x, context))
        return h.replace(self.to_out(h.feats.reshape(h.feats.shape[0], -1)))

    def _cross(self, x: SparseTensor, context: torch.Tensor) -> torch.Tensor:
        """Cross-attention output rows [T, C]; items with an all-zero context get the constant output
        (`empty_context_output`) and only the others' voxels attend."""
        empty = empty_context_items(context).tolist()
        lens = x.seq_lens()
        if not any(empty):
            return self._cross_rows(x.feats, lens, context)
        out = empty_context_output(self.to_kv, self.to_out, x.feats).expand(x.feats.shape[0], -1).clone()
        keep = [i for i, e in enumerate(empty) if not e]
        if keep:
            rows = torch.cat([torch.arange(x.layout[i].start, x.layout[i].stop, device=x.device) for i in keep])
            out[rows] = self._cross_rows(x.feats[rows], [lens[i] for i in keep], context[keep])
        return out

    def _cross_rows(self, feats: torch.Tensor, lens: list[int], context: torch.Tensor) -> torch.Tensor:
        """Rows of item i (lens[i] of them, in order) attend to context[i]; to_out applied."""
        heads = self.num_heads
        q = self.to_q(feats).reshape(feats.shape[0], heads, -1)
        kv = self.to_kv(context).reshape(*context.shape[:2], 2, heads, -1)
        if self.qk_rms_norm:
            k, v = kv.unbind(2)
            q = self.q_rms_norm(q)
            kv = torch.stack([self.k_rms_norm(k), v], dim=2)
        h = cross_attention_rows(q, lens, kv)
        return self.to_out(h.reshape(h.shape[0], -1))
