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


def submanifold_conv3d(feats: torch.Tensor, nmap: NeighborMap, weight: torch.Tensor,
                       bias: torch.Tensor | None) -> torch.Tensor:
    """out[i] = bias + Σ_offsets W[offset] · feats[neighbour(i, offset)] over existing neighbours.

    Per kernel offset: gather the neighbour rows, one GEMM, scatter-add into the output. The gather and
    GEMM results go to buffers reused across offsets (fresh large allocations cost page faults on CPU).
    Low-precision inputs accumulate in float32.
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
