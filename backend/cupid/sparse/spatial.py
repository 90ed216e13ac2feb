"""Resolution changes of sparse tensors: mean-pool downsample, its paired upsample, and subdivide."""
from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn as nn

from .tensor import SparseTensor


def _factor3(factor: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(factor) if isinstance(factor, (tuple, list)) else (factor,) * 3


def sparse_downsample(x: SparseTensor, factor: int | tuple[int, int, int] = 2) -> SparseTensor:
    """Pool voxels into cells of `factor`³; new rows sorted by (batch, x, y, z).

    Reproduces TRELLIS's pooling, a `scatter_reduce(zeros, 'mean')` that counts the zero initial value:
    each cell's value is Σ feats / (count + 1), not the plain mean (the checkpoints were trained so).
    """
    f = _factor3(factor)
    c = x.coords.long()
    cell = torch.stack([c[:, 0], c[:, 1] // f[0], c[:, 2] // f[1], c[:, 3] // f[2]], dim=1)
    size = (cell.max(0).values + 1).tolist()
    code = ((cell[:, 0] * size[1] + cell[:, 1]) * size[2] + cell[:, 2]) * size[3] + cell[:, 3]
    uniq, inv = torch.unique(code, sorted=True, return_inverse=True)
    m = uniq.shape[0]
    feats = x.feats
    acc = torch.zeros(m, *feats.shape[1:], dtype=torch.float32 if feats.dtype != torch.float64 else feats.dtype,
                      device=feats.device)
    acc.index_add_(0, inv, feats.to(acc.dtype))
    count = torch.bincount(inv, minlength=m).to(acc.dtype) + 1
    new_feats = (acc / count.view(-1, *([1] * (feats.dim() - 1)))).to(feats.dtype)
    zc = uniq // size[3]
    new_coords = torch.stack([
        zc // (size[1] * size[2]), (zc // size[2]) % size[1], zc % size[2], uniq % size[3]
    ], dim=1).to(torch.int32)
    scale = tuple(s * Fraction(ff) for s, ff in zip(x.scale, f))
    out = x.derived(new_feats, new_coords, scale)
    out.register_spatial_cache(f"upsample_{f}", (x.coords, x._layout, inv))
    return out


def sparse_upsample(x: SparseTensor, factor: int | tuple[int, int, int] = 2) -> SparseTensor:
    """Nearest upsampling back onto the voxels that the paired `sparse_downsample` pooled."""
    f = _factor3(factor)
    cached = x.get_spatial_cache(f"upsample_{f}")
    if cached is None:
        raise ValueError("sparse upsample needs the coordinates cached by a matching sparse downsample")
    coords, layout, inv = cached
    scale = tuple(s / Fraction(ff) for s, ff in zip(x.scale, f))
    return x.derived(x.feats[inv], coords, scale, layout)


def sparse_subdivide(x: SparseTensor) -> SparseTensor:
    """Split every voxel into its 8 children at twice the resolution (children in (dx, dy, dz) row-major order)."""
    child = torch.stack(torch.meshgrid(*[torch.arange(2, device=x.device)] * 3, indexing="ij"), -1).reshape(8, 3)
    child = torch.cat([torch.zeros(8, 1, dtype=child.dtype, device=x.device), child], 1).to(torch.int32)
    base = x.coords.clone()
    base[:, 1:] *= 2
    new_coords = (base.unsqueeze(1) + child.unsqueeze(0)).reshape(-1, 4)
    n = x.feats.shape[0]
    new_feats = x.feats.unsqueeze(1).expand(n, 8, *x.feats.shape[1:]).reshape(n * 8, *x.feats.shape[1:])
    scale = tuple(s / 2 for s in x.scale)
    return x.derived(new_feats, new_coords, scale)


class SparseDownsample(nn.Module):
    def __init__(self, factor: int | tuple[int, int, int] = 2):
        super().__init__()
        self.factor = factor

    def forward(self, x: SparseTensor) -> SparseTensor:
        return sparse_downsample(x, self.factor)


class SparseUpsample(nn.Module):
    def __init__(self, factor: int | tuple[int, int, int] = 2):
        super().__init__()
        self.factor = factor

    def forward(self, x: SparseTensor) -> SparseTensor:
        return sparse_upsample(x, self.factor)


class SparseSubdivide(nn.Module):
    def forward(self, x: SparseTensor) -> SparseTensor:
        return sparse_subdivide(x)
