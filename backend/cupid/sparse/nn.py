"""Row-wise layers on SparseTensors (linear, activations, norms) with the original parameter names."""
from __future__ import annotations

import torch
import torch.nn as nn

from .tensor import SparseTensor


class SparseLinear(nn.Linear):
    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(super().forward(x.feats))


class SparseActivation(nn.Module):
    def __init__(self, activation: nn.Module):
        super().__init__()
        self.activation = activation

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(self.activation(x.feats))


class SparseReLU(nn.ReLU):
    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(super().forward(x.feats))


class SparseSiLU(nn.SiLU):
    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(super().forward(x.feats))


class SparseGELU(nn.GELU):
    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(super().forward(x.feats))


def _per_item(x: SparseTensor, fn) -> torch.Tensor:
    """Apply `fn` to each batch item's [1, C, n] features (norms that pool over the voxels of an item)."""
    out = torch.empty_like(x.feats)
    for sl in x.layout:
        f = x.feats[sl]
        if f.shape[0] == 0:
            continue
        y = fn(f.t().reshape(1, f.shape[1], -1))
        out[sl] = y.reshape(f.shape[1], -1).t()
    return out


def _group_norm_rows(f: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                     eps: float, out: torch.Tensor) -> None:
    """GroupNorm of one item's [n, C] rows as of its [1, C, n] transpose, straight on the rows: the
    statistics reduce a [n, G, C/G] view and the result is written once, where the transpose route
    holds three more copies (the 256³ mesh-decoder layers are 200 MB each). Writes into `out` [n, C]."""
    n, c = f.shape
    v = f.view(n, groups, c // groups)
    var, mean = torch.var_mean(v, dim=(0, 2), unbiased=False)
    scale = torch.rsqrt(var + eps)[:, None]
    if weight is not None:
        scale = scale * weight.view(groups, -1)
    o = out.view(n, groups, c // groups)
    torch.sub(v, mean[:, None], out=o)
    o.mul_(scale)
    if bias is not None:
        o.add_(bias.view(groups, -1))


class SparseGroupNorm(nn.GroupNorm):
    """Group norm over channels *and all voxels of a batch item*, as TRELLIS computes it."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        if x.feats.dtype not in (torch.float32, torch.float64) or x.feats.dim() != 2:
            return x.replace(_per_item(x, super().forward))
        feats = x.feats.contiguous()
        out = torch.empty_like(feats)
        for sl in x.layout:
            if sl.stop > sl.start:
                _group_norm_rows(feats[sl], self.num_groups, self.weight, self.bias, self.eps, out[sl])
        return x.replace(out)


class SparseLayerNorm(nn.LayerNorm):
    """TRELLIS's sparse layer norm (normalises a [1, C, n] view per batch item; kept for parity)."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(_per_item(x, super().forward))


class SparseGroupNorm32(SparseGroupNorm):
    """Runs in float32 whatever the feature dtype."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return super().forward(x.float()).type(x.dtype)


class SparseLayerNorm32(SparseLayerNorm):
    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return super().forward(x.float()).type(x.dtype)
