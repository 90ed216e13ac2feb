"""Submanifold sparse convolution (outputs only at the input's active voxels), gather-GEMM-scatter.

Weights keep the spconv layout [Cout, k, k, k, Cin] so official checkpoints load unchanged; the module
tree `SparseConv3d.conv.{weight,bias}` mirrors the original wrapper around `spconv.SubMConv3d`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .neighbors import NeighborMap, neighbor_map
from .tensor import SparseTensor


# Kernel choice (`choose_kernel`), set by interleaved measurement on a 2-core AVX2 CPU in float32
# (bench/bench_sparse_conv.py --sweep): all three give the same result.
GATHER_MAX_WIDTH = 128  # im2col when max(Cin, Cout) is at most this
GATHER_CHUNK_BYTES = 4 << 20  # im2col block per chunk: stays in cache between the gather and the GEMM
COL2IM_MIN_RATIO = 4  # col2im when Cin >= this · Cout ...
COL2IM_MAX_BYTES = 512 << 20  # ... and its partial outputs for COL2IM_MIN_GROUP offsets fit in this
COL2IM_MIN_GROUP = 9


def chunk_rows(row_bytes: int, n: int, chunk_bytes: int | None = None) -> int:
    """Rows per gathered chunk: as many as fit `chunk_bytes` (default GATHER_CHUNK_BYTES), at least 1."""
    limit = GATHER_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    return max(1, min(n, limit // row_bytes))


def col2im_group(n: int, cout: int, k3: int, itemsize: int, max_bytes: int | None = None) -> int:
    """Kernel offsets per col2im GEMM: as many as keep the [N+1, group·Cout] partials under max_bytes."""
    limit = COL2IM_MAX_BYTES if max_bytes is None else max_bytes
    return max(1, min(k3, limit // max(1, (n + 1) * cout * itemsize)))


def choose_kernel(cin: int, cout: int, nmap: NeighborMap, itemsize: int = 4) -> str:
    """'gathered', 'col2im' or 'per_offset': the fastest kernel for this layer shape (by measurement).

    Narrow layers: per-offset GEMMs (K = Cin) run far below peak, so one im2col GEMM wins despite
    multiplying the missing neighbours' zero rows (a third of them on a surface shell). Cin ≫ Cout:
    per-offset moves Cin-wide rows and runs Cout-narrow GEMMs, col2im one wide GEMM and Cout-wide
    gathers. Wide both ways: per-offset GEMMs run near peak and only existing pairs are multiplied.
    """
    if nmap.num_pairs == nmap.num_rows:  # kernel 1 or no neighbours: a single matmul either way
        return "per_offset"
    if max(cin, cout) <= GATHER_MAX_WIDTH:
        return "gathered"
    k3 = len(nmap.out_idx)
    if cin >= COL2IM_MIN_RATIO * cout and col2im_group(nmap.num_rows, cout, k3, itemsize) >= min(k3, COL2IM_MIN_GROUP):
        return "col2im"
    return "per_offset"


def submanifold_conv3d(feats: torch.Tensor, nmap: NeighborMap, weight: torch.Tensor,
                       bias: torch.Tensor | None) -> torch.Tensor:
    """out[i] = bias + Σ_offsets W[offset] · feats[neighbour(i, offset)] over existing neighbours.

    Runs the kernel `choose_kernel` picks for the layer's shape; they agree to rounding.
    """
    cout, cin = weight.shape[0], weight.shape[-1]
    kernel = choose_kernel(cin, cout, nmap, weight.element_size())
    if kernel == "gathered":
        return gathered_conv3d(feats, nmap, weight, bias)
    if kernel == "col2im":
        return col2im_conv3d(feats, nmap, weight, bias)
    return per_offset_conv3d(feats, nmap, weight, bias)


def gathered_conv3d(feats: torch.Tensor, nmap: NeighborMap, weight: torch.Tensor, bias: torch.Tensor | None,
                    chunk_bytes: int | None = None) -> torch.Tensor:
    """im2col: per chunk of output rows, gather their k³ neighbours' features ([rows, k³·Cin], zero rows
    where a neighbour is missing) and multiply once by the weight as [k³·Cin, Cout].

    One GEMM instead of k³ small ones and no scatter-adds; it multiplies the zero rows too, so it pays
    where per-offset GEMMs are too small to run at full speed (narrow channels). The matmul runs in the
    input dtype (oneDNN accumulates low precision in float32 internally).
    """
    cout, cin = weight.shape[0], weight.shape[-1]
    n, k3 = nmap.num_rows, len(nmap.out_idx)
    w = weight.reshape(cout, k3 * cin)
    if feats.dtype != w.dtype:
        feats = feats.to(w.dtype)
    out = feats.new_empty(n, cout)
    if n == 0:
        return out
    table = nmap.neighbor_table
    padded = torch.cat([feats, feats.new_zeros(1, cin)])
    rows = chunk_rows(k3 * cin * feats.element_size(), n, chunk_bytes)
    buf = feats.new_empty(rows * k3, cin)
    wt = w.t()
    b = bias.to(feats.dtype) if bias is not None else None
    for s in range(0, n, rows):
        e = min(n, s + rows)
        g = buf[:(e - s) * k3]
        torch.index_select(padded, 0, table[s:e].reshape(-1), out=g)
        g = g.view(e - s, k3 * cin)
        if b is not None:
            torch.addmm(b, g, wt, out=out[s:e])
        else:
            torch.mm(g, wt, out=out[s:e])
    return out


def col2im_conv3d(feats: torch.Tensor, nmap: NeighborMap, weight: torch.Tensor, bias: torch.Tensor | None,
                  max_bytes: int | None = None, chunk_bytes: int | None = None) -> torch.Tensor:
    """Multiply first, gather after: Z = feats · [W_0 … W_k³₋₁] ([N, k³·Cout], one wide GEMM), then
    out[i] = bias + Σ_k Z[neighbour(i, k), k] (a Cout-wide gather and sum per chunk of output rows).

    Pays where Cin ≫ Cout: the gathers move Cout-wide rows instead of Cin-wide ones and the GEMM is
    wide, though it also multiplies rows whose pair is missing. The offsets go in groups so the
    partials stay under `max_bytes` (default COL2IM_MAX_BYTES). Low precision sums in float32.
    """
    cout, cin = weight.shape[0], weight.shape[-1]
    n, k3 = nmap.num_rows, len(nmap.out_idx)
    w = weight.reshape(cout, k3, cin)
    if feats.dtype != w.dtype:
        feats = feats.to(w.dtype)
    acc_dtype = torch.float32 if feats.dtype in (torch.float16, torch.bfloat16) else feats.dtype
    out = torch.empty(n, cout, dtype=acc_dtype, device=feats.device)
    if n > 0:
        table = nmap.neighbor_table
        group = col2im_group(n, cout, k3, feats.element_size(), max_bytes)
        z = feats.new_empty((n + 1) * group * cout)
        rows = chunk_rows(group * cout * feats.element_size(), n, chunk_bytes)
        buf = feats.new_empty(rows * group, cout)
        for g0 in range(0, k3, group):
            gs = min(group, k3 - g0)
            zg = z[:(n + 1) * gs * cout].view(n + 1, gs * cout)
            torch.mm(feats, w[:, g0:g0 + gs].transpose(0, 1).reshape(gs * cout, cin).t(), out=zg[:n])
            zg[n].zero_()  # the missing neighbour's row
            flat = zg.view((n + 1) * gs, cout)
            idx = table[:, g0:g0 + gs] * gs + torch.arange(gs, device=table.device)
            for s in range(0, n, rows):
                e = min(n, s + rows)
                b = buf[:(e - s) * gs]
                torch.index_select(flat, 0, idx[s:e].reshape(-1), out=b)
                part = b.view(e - s, gs, cout)
                if g0 == 0:  # the first group writes the output rows, later ones add
                    torch.sum(part, 1, dtype=acc_dtype, out=out[s:e])
                else:
                    out[s:e] += part.sum(1, dtype=acc_dtype)
    if bias is not None:
        out += bias.to(acc_dtype)
    return out.to(feats.dtype)


def per_offset_conv3d(feats: torch.Tensor, nmap: NeighborMap, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """Per kernel offset: gather the neighbour rows, one GEMM, scatter-add into the output.

    Only existing neighbour pairs are multiplied, which wins for wide channels where each offset's GEMM
    is already large. The gather and GEMM results go to buffers reused across offsets (fresh large
    allocations cost page faults on CPU). Low-precision inputs accumulate in float32.
    """
    cout, cin = weight.shape[0], weight.shape[-1]
    w = weight.reshape(cout, -1, cin)
    if feats.dtype != w.dtype:
        feats = feats.to(w.dtype)
    feats = feats.contiguous()
    center = w[:, nmap.center].t()
    acc_dtype = torch.float32 if feats.dtype in (torch.float16, torch.bfloat16) else feats.dtype
    if bias is not None:
        acc = torch.addmm(bias.to(feats.dtype), feats, center)
    else:
        acc = feats @ center
    low = acc.dtype != acc_dtype
    if low:
        acc = acc.to(acc_dtype)
    sizes = [t.numel() for k, t in enumerate(nmap.out_idx) if k != nmap.center]
    most = max(sizes, default=0)
    if most == 0:
        return acc.to(feats.dtype) if low else acc
    gbuf = feats.new_empty(most, cin)
    mbuf = feats.new_empty(most, cout)
    for k in range(w.shape[1]):
        p = nmap.out_idx[k].numel()
        if k == nmap.center or p == 0:
            continue
        g = gbuf[:p]
        torch.index_select(feats, 0, nmap.in_idx[k], out=g)
        m = mbuf[:p]
        torch.mm(g, w[:, k].t(), out=m)
        acc.index_add_(0, nmap.out_idx[k], m.to(acc_dtype) if low else m)
    return acc.to(feats.dtype) if low else acc


class SubMConv3d(nn.Module):
    """Parameter holder + kernel, named like spconv's module so state-dict keys match."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1,
                 bias: bool = True):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.dilation = dilation
        k = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, k, k, k, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight.is_meta:
            return
        fan_in = self.in_channels * self.kernel_size ** 3
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: SparseTensor) -> SparseTensor:
        nmap = neighbor_map(x, self.kernel_size, self.dilation)
        return x.replace(submanifold_conv3d(x.feats, nmap, self.weight, self.bias))


class SparseConv3d(nn.Module):
    """TRELLIS's `sp.SparseConv3d` for stride 1 (submanifold); the only form its networks use."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, padding: int | None = None, bias: bool = True,
                 indice_key: str | None = None):
        super().__init__()
        if stride not in (1, (1, 1, 1)) or padding is not None:
            raise ValueError("only submanifold (stride 1, no padding) sparse convolution is supported")
        self.conv = SubMConv3d(in_channels, out_channels, kernel_size, dilation, bias)

    @property
    def in_channels(self) -> int:
        return self.conv.in_channels

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.conv(x)
