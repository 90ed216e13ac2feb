"""Submanifold sparse convolution (outputs only at the input's active voxels), gather-GEMM-scatter.

Weights keep the spconv layout [Cout, k, k, k, Cin] so official checkpoints load unchanged; the module
tree `SparseConv3d.conv.{weight,bias}` mirrors the original wrapper around `spconv.SubMConv3d`.

Kernel size 1 is the exception. spconv 2.x (`spconv/pytorch/conv.py`, the `conv1x1` branch, with its
default `FILTER_HWIO = False`) computes a 1×1 convolution as `features @ weight.view(Cin, Cout)`: the
[Cout, 1, 1, 1, Cin] tensor's memory read as a [Cin, Cout] matrix, a reshape and not a transpose, so
not the textbook `features @ Wᵀ` (square 1×1 weights are scrambled too). Networks trained on spconv,
TRELLIS's and CUPID's among them, only make sense that way. A `SubMConv3d` of kernel size 1 under the
"spconv" convention therefore re-lays the weight once as it is loaded (`spconv_1x1_to_textbook`) and
back as it is saved, so that checkpoints round-trip unchanged and the kernels below, which compute
the textbook convolution, run at no extra cost; under "textbook" the weight is taken as it is.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .neighbors import NeighborMap, neighbor_map
from .tensor import SparseTensor


# Kernel choice (`use_gathered`) and chunk sizes, set by interleaved measurement on a 2-core AVX2 CPU
# in float32 (bench/bench_sparse_conv.py --sweep); both kernels give the same result.
GATHER_MAX_WIDTH = 128  # im2col when max(Cin, Cout) is at most this
GATHER_CHUNK_BYTES = 4 << 20  # im2col block per chunk: stays in cache between the gather and the GEMM
PER_OFFSET_CHUNK_BYTES = 2 << 20  # per-offset gathered rows per GEMM, likewise
# im2col reads missing neighbours from a zero row appended to a copy of the input; above this input
# size it gathers from the input itself and zeroes those rows per chunk instead, so that the layers of
# the mesh decoder at 256³ (200 MB inputs) do not hold a second copy at the decode's memory peak
GATHER_COPY_MAX_BYTES = 32 << 20


# How a kernel-size-1 weight is meant: as spconv computes it (the default: TRELLIS/CUPID checkpoints)
# or as the textbook convolution / `torch.nn.functional.conv3d` does
CONV1X1_CONVENTIONS = ("spconv", "textbook")


def check_conv1x1_convention(convention: str) -> str:
    """`convention` if it is one of CONV1X1_CONVENTIONS, else a ValueError naming them."""
    if convention not in CONV1X1_CONVENTIONS:
        raise ValueError(f"conv1x1_convention must be one of {', '.join(map(repr, CONV1X1_CONVENTIONS))}, "
                         f"got {convention!r}")
    return convention


def spconv_1x1_to_textbook(weight: torch.Tensor) -> torch.Tensor:
    """A [Cout, 1, 1, 1, Cin] weight as spconv stores it -> the textbook weight giving the same outputs.

    spconv multiplies by `weight.view(Cin, Cout)`, i.e. W_textbook[o, i] = weight.flatten()[i*Cout + o]."""
    cout, cin = weight.shape[0], weight.shape[-1]
    return weight.reshape(cin, cout).t().contiguous().reshape(weight.shape)


def textbook_1x1_to_spconv(weight: torch.Tensor) -> torch.Tensor:
    """The inverse of `spconv_1x1_to_textbook`: the tensor spconv must hold to compute this textbook weight."""
    cout, cin = weight.shape[0], weight.shape[-1]
    return weight.reshape(cout, cin).t().contiguous().reshape(weight.shape)


def chunk_rows(row_bytes: int, n: int, chunk_bytes: int) -> int:
    """Rows per gathered chunk: as many as fit `chunk_bytes`, at least 1, at most n."""
    return max(1, min(n, chunk_bytes // row_bytes))


def use_gathered(cin: int, cout: int, nmap: NeighborMap) -> bool:
    """Whether im2col (`gathered_conv3d`) beats `per_offset_conv3d` for this layer shape (by measurement).

    Narrow layers: per-offset GEMMs (K = Cin, N = Cout) run far below peak, so one im2col GEMM wins
    despite multiplying the missing neighbours' zero rows (a third of them on a surface shell). Wide
    layers: per-offset GEMMs run near peak and multiply only existing pairs.
    """
    if nmap.num_pairs == nmap.num_rows:  # kernel 1 or no neighbours: a single matmul either way
        return False
    return max(cin, cout) <= GATHER_MAX_WIDTH


def submanifold_conv3d(feats: torch.Tensor, nmap: NeighborMap, weight: torch.Tensor,
                       bias: torch.Tensor | None) -> torch.Tensor:
    """out[i] = bias + Σ_offsets W[offset] · feats[neighbour(i, offset)] over existing neighbours.

    Runs `gathered_conv3d` or `per_offset_conv3d` as `use_gathered` says; they agree to rounding.
    """
    cout, cin = weight.shape[0], weight.shape[-1]
    if feats.shape[0] != nmap.num_in_rows:
        raise ValueError(f"features have {feats.shape[0]} rows but the neighbour map expects {nmap.num_in_rows}")
    if use_gathered(cin, cout, nmap):
        return gathered_conv3d(feats, nmap, weight, bias)
    return per_offset_conv3d(feats, nmap, weight, bias)


def gathered_conv3d(feats: torch.Tensor, nmap: NeighborMap, weight: torch.Tensor, bias: torch.Tensor | None,
                    chunk_bytes: int | None = None) -> torch.Tensor:
    """im2col: per chunk of output rows, gather their k³ neighbours' features ([rows, k³·Cin], zero rows
    where a neighbour is missing) and multiply once by the weight as [k³·Cin, Cout].

    One GEMM instead of k³ small ones and no scatter-adds; it multiplies the zero rows too, so it pays
    where per-offset GEMMs are too small to run at full speed (narrow channels). The matmul runs in the
    input dtype (oneDNN accumulates low precision in float32 internally). With `nmap.in_group` > 1,
    `feats` holds one row per parent (`NeighborMap.on_parents`). Missing neighbours read a zero row
    appended to a copy of `feats`, or, above GATHER_COPY_MAX_BYTES, are zeroed after the gather.
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
    missing = nmap.num_in_rows
    copy = feats.numel() * feats.element_size() <= GATHER_COPY_MAX_BYTES
    source = torch.cat([feats, feats.new_zeros(1, cin)]) if copy else feats
    rows = chunk_rows(k3 * cin * feats.element_size(), n,
                      GATHER_CHUNK_BYTES if chunk_bytes is None else chunk_bytes)
    buf = feats.new_empty(rows * k3, cin)
    wt = w.t()
    b = bias.to(feats.dtype) if bias is not None else None
    for s in range(0, n, rows):
        e = min(n, s + rows)
        g = buf[:(e - s) * k3]
        idx = table[s:e].reshape(-1)
        if copy:
            torch.index_select(source, 0, idx, out=g)
        else:
            absent = idx == missing
            torch.index_select(source, 0, idx.masked_fill(absent, 0), out=g)
            g.masked_fill_(absent[:, None], 0)
        g = g.view(e - s, k3 * cin)
        if b is not None:
            torch.addmm(b, g, wt, out=out[s:e])
        else:
            torch.mm(g, wt, out=out[s:e])
    return out


def per_offset_conv3d(feats: torch.Tensor, nmap: NeighborMap, weight: torch.Tensor, bias: torch.Tensor | None,
                      chunk_bytes: int | None = None) -> torch.Tensor:
    """Per kernel offset and chunk of pairs: gather the neighbour rows, GEMM, scatter-add into the output.

    Only existing neighbour pairs are multiplied, which wins for wide channels where each offset's
    GEMM runs near peak. Chunks of `chunk_bytes` (default PER_OFFSET_CHUNK_BYTES) of gathered rows are
    multiplied and added while still in cache (Cin-wide rows would otherwise make a round trip through
    memory), into two chunk-sized buffers reused throughout (fresh large allocations cost page faults on
    the CPU, and an offset-sized product buffer would be as large as the output). Each offset's rows
    are distinct, so the sums run in the same order as one scatter per offset. Low-precision inputs
    accumulate in float32. With `nmap.in_group` > 1 the centre term is computed once per parent row.
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
    if nmap.in_group > 1:
        acc = acc.repeat_interleave(nmap.in_group, 0)
    low = acc.dtype != acc_dtype
    if low:
        acc = acc.to(acc_dtype)
    sizes = [t.numel() for k, t in enumerate(nmap.out_idx) if k != nmap.center]
    most = max(sizes, default=0)
    if most == 0:
        return acc.to(feats.dtype) if low else acc
    rows = chunk_rows(cin * feats.element_size(), most,
                      PER_OFFSET_CHUNK_BYTES if chunk_bytes is None else chunk_bytes)
    gbuf = feats.new_empty(rows, cin)
    mbuf = feats.new_empty(rows, cout)
    for k in range(w.shape[1]):
        p = nmap.out_idx[k].numel()
        if k == nmap.center or p == 0:
            continue
        wk = w[:, k].t()
        for s in range(0, p, rows):
            e = min(p, s + rows)
            g, m = gbuf[:e - s], mbuf[:e - s]
            torch.index_select(feats, 0, nmap.in_idx[k][s:e], out=g)
            torch.mm(g, wk, out=m)
            acc.index_add_(0, nmap.out_idx[k][s:e], m.to(acc_dtype) if low else m)
    return acc.to(feats.dtype) if low else acc


class SubMConv3d(nn.Module):
    """Parameter holder + kernel, named like spconv's module so state-dict keys match.

    `conv1x1_convention` (kernel size 1 only, see the module docstring): "spconv" holds the textbook
    re-lay of the checkpoint's weight (`weight` computes `F.conv3d`'s convolution either way) and
    translates in `load_state_dict` / `state_dict`; "textbook" takes the checkpoint's weight as it is.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1,
                 bias: bool = True, conv1x1_convention: str = "spconv"):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.conv1x1_convention = check_conv1x1_convention(conv1x1_convention)
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

    @property
    def relays_weight(self) -> bool:
        """Whether the checkpoint's weight is re-laid at load (kernel size 1, spconv convention)."""
        return self.kernel_size == 1 and self.conv1x1_convention == "spconv"

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # `load_state_dict` hands every module its own copy of the top-level dict: replacing an entry
        # leaves the caller's tensors alone. A mis-shaped weight is left for the usual error.
        key = prefix + "weight"
        if self.relays_weight and key in state_dict and state_dict[key].shape == self._parameters["weight"].shape:
            state_dict[key] = spconv_1x1_to_textbook(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        key = prefix + "weight"
        if self.relays_weight and key in destination:
            with torch.no_grad():
                destination[key] = textbook_1x1_to_spconv(destination[key])

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        if self.dilation != 1:
            s += f", dilation={self.dilation}"
        if self.kernel_size == 1:
            s += f", conv1x1_convention={self.conv1x1_convention!r}"
        return s

    def forward(self, x: SparseTensor) -> SparseTensor:
        nmap = neighbor_map(x, self.kernel_size, self.dilation)
        return x.replace(submanifold_conv3d(x.feats, nmap, self.weight, self.bias))

    def forward_on_parents(self, parents: SparseTensor, children: SparseTensor, group: int = 8) -> SparseTensor:
        """`forward` of `children` whose every row carries its parent's features (a subdivision:
        rows parent*group ... parent*group + group-1), read from `parents` without making that copy.
        Only `children`'s coordinates are used; the result lives on them."""
        if children.coords.shape[0] != parents.feats.shape[0] * group:
            raise ValueError(f"{children.coords.shape[0]} child rows are not {group} per parent "
                             f"({parents.feats.shape[0]} parents)")
        nmap = neighbor_map(children, self.kernel_size, self.dilation).on_parents(group)
        return children.replace(submanifold_conv3d(parents.feats, nmap, self.weight, self.bias))


class SparseConv3d(nn.Module):
    """TRELLIS's `sp.SparseConv3d` for stride 1 (submanifold); the only form its networks use."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, padding: int | None = None, bias: bool = True,
                 indice_key: str | None = None, conv1x1_convention: str = "spconv"):
        super().__init__()
        if stride not in (1, (1, 1, 1)) or padding is not None:
            raise ValueError("only submanifold (stride 1, no padding) sparse convolution is supported")
        self.conv = SubMConv3d(in_channels, out_channels, kernel_size, dilation, bias, conv1x1_convention)

    @property
    def in_channels(self) -> int:
        return self.conv.in_channels

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.conv(x)

    def forward_on_parents(self, parents: SparseTensor, children: SparseTensor, group: int = 8) -> SparseTensor:
        """See `SubMConv3d.forward_on_parents`."""
        return self.conv.forward_on_parents(parents, children, group)
