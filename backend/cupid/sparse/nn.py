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


class SparseGroupNorm(nn.GroupNorm):
    """Group norm over channels *and all voxels of a batch item*, as TRELLIS computes it."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(_per_item(x, super().forward))


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
